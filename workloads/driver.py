"""The Ray job every run is: ``python -m workloads.driver`` on the allocation's head node.

The broker submits it through the Ray Jobs API with the run described as JSON in the
``GPUBROKER_RUN`` variable and this package shipped as a ``py_modules`` entry, so the
nodes need nothing of the broker but Ray and torch. It waits until every node of the
allocation has joined (each carries the custom resource ``<resource>-<rank>``), then:

- ``command``: runs ``setup`` with bash on every node at once, then (all done) ``run``,
  one Ray task pinned per node, with the node's GPUs, in the job's working directory,
  streaming each line back prefixed ``[node <rank>]``; the job fails with the first
  non-zero exit code;
- ``train``: runs ``package.module:function`` under Ray Train's ``TorchTrainer`` with one
  worker per node and that node's GPUs (the bundled GPT: one worker per GPU),
  checkpoints under the run's storage.
- ``serve``: deploys the bundled GPT (:mod:`workloads.serve_gpt`) or the user's Ray Serve
  application on the cluster, its HTTP proxy on the head node at ``serve_port``, with
  Serve's autoscaling held between ``min_replicas`` and ``max_replicas``; it then reports
  the application's state, replicas and traffic every few seconds until it is stopped,
  and deletes the application (draining its requests) on the way out.

Lines starting with :data:`EVENT_MARK` carry JSON events (progress, checkpoints) that the
broker files as job events; everything else is the program's own output.
"""

from __future__ import annotations

import ctypes
import importlib
import json
import os
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from typing import Any

RUN_ENV = "GPUBROKER_RUN"
EVENT_MARK = "GPUBROKER_EVENT "
JOIN_TIMEOUT_S = 900.0
_PR_SET_PDEATHSIG = 1


@dataclass
class RunSpec:
    """What the broker asks the driver to do (the JSON in ``GPUBROKER_RUN``)."""

    mode: str  # "command" or "train"
    resource: str  # the allocation's custom resource
    nodes: int
    gpus_per_node: int = 0
    setup: str | None = None
    run: str | None = None
    envs: dict[str, str] = field(default_factory=dict)
    train: str | None = None  # package.module:function
    config: dict[str, Any] = field(default_factory=dict)  # the training loop's config
    name: str = "run"
    storage: str | None = None  # checkpoints: s3://, gs://, file:// or a path
    max_failures: int = 0
    join_timeout_s: float = JOIN_TIMEOUT_S
    workers_per_node: int = 1  # train mode: the node's GPUs are split evenly among them
    serve: dict[str, Any] = field(default_factory=dict)  # serve mode: see ServeSpec

    def to_env(self) -> str:
        return json.dumps(asdict(self))

    @classmethod
    def from_env(cls, text: str) -> RunSpec:
        return cls(**json.loads(text))


def emit(kind: str, **payload: Any) -> None:
    """Print one event line for the broker (flushed: the broker follows it live)."""
    print(EVENT_MARK + json.dumps({"event": kind, **payload}), flush=True)


# --- the cluster --------------------------------------------------------------------------


def wait_for_nodes(spec: RunSpec) -> list[str]:
    """The node addresses by rank, once every node has joined the cluster."""
    import ray

    deadline = time.monotonic() + spec.join_timeout_s
    while True:
        found: dict[int, str] = {}
        for node in ray.nodes():
            if not node.get("Alive"):
                continue
            for name in node.get("Resources", {}):
                prefix = f"{spec.resource}-"
                if name.startswith(prefix) and name[len(prefix) :].isdigit():
                    found[int(name[len(prefix) :])] = node["NodeManagerAddress"]
        if all(rank in found for rank in range(spec.nodes)):
            return [found[rank] for rank in range(spec.nodes)]
        if time.monotonic() > deadline:
            missing = sorted(set(range(spec.nodes)) - set(found))
            raise TimeoutError(f"nodes {missing} did not join within {spec.join_timeout_s:g} s")
        time.sleep(1.0)


def node_env(spec: RunSpec, rank: int, ips: list[str]) -> dict[str, str]:
    """The variables a node's command sees (ours and SkyPilot's names)."""
    listing = "\n".join(ips)
    return {
        **spec.envs,
        "GPUBROKER_NODE_RANK": str(rank),
        "GPUBROKER_NUM_NODES": str(len(ips)),
        "GPUBROKER_NODE_IPS": listing,
        "GPUBROKER_HEAD_IP": ips[0],
        "SKYPILOT_NODE_RANK": str(rank),
        "SKYPILOT_NUM_NODES": str(len(ips)),
        "SKYPILOT_NODE_IPS": listing,
        "SKYPILOT_NUM_GPUS_PER_NODE": str(spec.gpus_per_node),
    }


# --- command mode -------------------------------------------------------------------------


def _die_with_parent() -> None:
    """In the child: be killed when the Ray worker that started it dies (a cancel)."""
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(_PR_SET_PDEATHSIG, 9)


def _node_lines(env: dict[str, str], command: str) -> Iterator[tuple[str, Any]]:
    """Run ``command`` on this node: ("line", text) items, then ("exit", code)."""
    proc = subprocess.Popen(
        ["bash", "-c", command],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        stdin=subprocess.DEVNULL,
        env={**os.environ, **env},
        text=True,
        errors="replace",
        preexec_fn=_die_with_parent,
    )
    assert proc.stdout is not None
    for line in proc.stdout:
        yield ("line", line.rstrip("\n"))
    yield ("exit", proc.wait())


def _on_every_node(spec: RunSpec, ips: list[str], command: str) -> dict[int, int]:
    """``command`` on every node at once, output streamed; exit code per rank."""
    import ray

    task = ray.remote(num_cpus=0)(_node_lines)
    codes: dict[int, int] = {}
    lock = threading.Lock()

    def follow(rank: int) -> None:
        options: dict[str, Any] = {"resources": {f"{spec.resource}-{rank}": 0.001}}
        if spec.gpus_per_node:
            options["num_gpus"] = spec.gpus_per_node
        stream = task.options(num_returns="streaming", **options).remote(
            node_env(spec, rank, ips), command
        )
        for ref in stream:
            kind, value = ray.get(ref)
            if kind == "exit":
                codes[rank] = int(value)
                continue
            with lock:
                print(f"[node {rank}] {value}", flush=True)

    threads = [threading.Thread(target=follow, args=(rank,)) for rank in range(spec.nodes)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return codes


def run_commands(spec: RunSpec, ips: list[str]) -> int:
    """``setup`` on every node, and once all are done, ``run`` on every node (as SkyPilot
    does); the first non-zero exit code, or 0."""
    if spec.run is None:
        raise ValueError("command mode needs run")
    for phase, command in (("setup", spec.setup), ("run", spec.run)):
        if command is None:
            continue
        codes = _on_every_node(spec, ips, command)
        missing = [rank for rank in range(spec.nodes) if rank not in codes]
        if missing:
            print(f"{phase}: nodes {missing} ended without an exit code", file=sys.stderr)
            return 1
        failed = [(rank, code) for rank, code in sorted(codes.items()) if code != 0]
        if failed:
            rank, code = failed[0]
            print(f"node {rank}: {phase} exited with code {code}", file=sys.stderr, flush=True)
            return code
    return 0


# --- train mode ---------------------------------------------------------------------------


def load_target(target: str) -> Any:
    """The function ``package.module:function`` names (the working dir is importable)."""
    module_name, _, attribute = target.partition(":")
    if os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())
    module = importlib.import_module(module_name)
    return getattr(module, attribute)


def run_train(spec: RunSpec) -> dict[str, Any]:
    """The training loop under a TorchTrainer, one worker per node; its last metrics."""
    from ray.train import CheckpointConfig, FailureConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchConfig, TorchTrainer

    from workloads import storage

    if spec.train is None:
        raise ValueError("train mode needs train")
    loop = load_target(spec.train)
    per_node = max(1, spec.workers_per_node)
    # One unit of the allocation's resource per node, shared by its workers, keeps the
    # worker group on exactly the allocated nodes, evenly.
    resources: dict[str, float] = {"CPU": 1, spec.resource: 1 / per_node}
    use_gpu = spec.gpus_per_node > 0
    if use_gpu:
        resources["GPU"] = spec.gpus_per_node / per_node
    run_config: dict[str, Any] = {
        "name": spec.name,
        "failure_config": FailureConfig(max_failures=spec.max_failures),
        "checkpoint_config": CheckpointConfig(num_to_keep=2),
    }
    if spec.storage:
        filesystem, path = storage.filesystem(spec.storage)
        run_config.update(storage_path=path, storage_filesystem=filesystem)
    trainer = TorchTrainer(
        loop,
        train_loop_config=spec.config or None,
        torch_config=TorchConfig(backend="nccl" if use_gpu else "gloo"),
        scaling_config=ScalingConfig(
            num_workers=spec.nodes * per_node, use_gpu=use_gpu, resources_per_worker=resources
        ),
        run_config=RunConfig(**run_config),
    )
    result = trainer.fit()
    return dict(result.metrics or {})


# --- serve mode ---------------------------------------------------------------------------

NAMESPACE = "gpubroker"
APP_NAME = "endpoint"
REPORT_EVERY_S = 2.0


@dataclass
class ServeSpec:
    """What an allocation serves (the ``serve`` part of the run)."""

    port: int
    min_replicas: int
    max_replicas: int
    app: str | None = None  # the user's ``package.module:app``; None: the bundled GPT
    model: dict[str, Any] = field(default_factory=dict)  # the GPT's GPTConfig fields
    checkpoint: str | None = None  # where the GPT's weights come from (None: fresh)
    max_batch_size: int = 8
    batch_wait_s: float = 0.01


def _bundled_app(spec: RunSpec, serving: ServeSpec) -> Any:
    """The GPT deployment, bound, with autoscaling inside the plan's bounds; each replica
    takes its share of one node's allocation resource, so replicas stay on these nodes."""
    from workloads.serve_gpt import gpt_deployment

    per_node = max(1, -(-serving.max_replicas // max(spec.nodes, 1)))
    actor: dict[str, Any] = {"num_cpus": 0, "resources": {spec.resource: 1 / per_node}}
    if spec.gpus_per_node:
        actor["num_gpus"] = spec.gpus_per_node / per_node
    threads = None if spec.gpus_per_node else max(1, int(_node_cpus(spec) // per_node))
    return gpt_deployment.options(
        ray_actor_options=actor,
        max_ongoing_requests=serving.max_batch_size * 4,
        autoscaling_config={
            "min_replicas": serving.min_replicas,
            "initial_replicas": serving.min_replicas,
            "max_replicas": serving.max_replicas,
            "target_ongoing_requests": serving.max_batch_size,
            "upscale_delay_s": 5.0,
            "downscale_delay_s": 60.0,
        },
    ).bind(serving.model, serving.checkpoint, serving.max_batch_size, serving.batch_wait_s, threads)


def _node_cpus(spec: RunSpec) -> float:
    """The CPUs the smallest of the allocation's nodes gives Ray (a replica's torch threads
    share them; loopback nodes share one machine, so this is not ``os.cpu_count()``)."""
    import ray

    counts = [
        node["Resources"].get("CPU", 1.0)
        for node in ray.nodes()
        if node.get("Alive") and spec.resource in node.get("Resources", {})
    ]
    return min(counts) if counts else float(os.cpu_count() or 1)


def serve_status(app_name: str = APP_NAME) -> dict[str, Any]:
    """The application's state and its running / wanted replicas, from Serve's status."""
    from ray import serve

    app = serve.status().applications.get(app_name)
    if app is None:
        return {"state": "NOT_STARTED", "replicas": 0}
    running = 0
    for deployment in app.deployments.values():
        for state, count in deployment.replica_states.items():
            if str(getattr(state, "value", state)) == "RUNNING":
                running += count
    return {"state": str(getattr(app.status, "value", app.status)), "replicas": running}


def _interrupt(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt


def run_serve(spec: RunSpec, ips: list[str]) -> int:
    """Deploy, then report every few seconds until stopped; delete the app on the way out."""
    import signal

    import ray
    from ray import serve
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    from workloads.serve_gpt import METER, Meter

    serving = ServeSpec(**spec.serve)
    # The meter lives on the head, beside this driver: a lost worker node must not take it.
    head = NodeAffinitySchedulingStrategy(ray.get_runtime_context().get_node_id(), soft=False)
    meter = (
        ray.remote(num_cpus=0)(Meter)
        .options(name=METER, namespace=NAMESPACE, scheduling_strategy=head)
        .remote()
    )
    serve.start(
        proxy_location="HeadOnly",
        http_options={"host": ips[0], "port": serving.port},
    )
    app = load_target(serving.app) if serving.app else _bundled_app(spec, serving)
    signal.signal(signal.SIGTERM, _interrupt)  # a stopped Ray job gets SIGTERM first
    try:
        # No access log: at hundreds of requests a second it would drown the run's output.
        quiet = {"enable_access_log": False}
        serve.run(app, name=APP_NAME, route_prefix="/", blocking=False, logging_config=quiet)
        emit("endpoint", host=ips[0], port=serving.port)
        while True:
            counts = ray.get(meter.read.remote())
            emit("serving", **serve_status(), **counts)
            time.sleep(REPORT_EVERY_S)
    except KeyboardInterrupt:
        print("stopping: draining the endpoint", flush=True)
        emit("serving", state="DELETING", replicas=0, **ray.get(meter.read.remote()))
    finally:
        serve.delete(APP_NAME)  # waits for in-flight requests (graceful shutdown)
        emit("serving", state="DELETED", replicas=0, **ray.get(meter.read.remote()))
    return 0


def main() -> int:
    import ray

    spec = RunSpec.from_env(os.environ[RUN_ENV])
    ray.init(log_to_driver=True, namespace=NAMESPACE)
    ips = wait_for_nodes(spec)
    emit("cluster", nodes=ips)
    if spec.mode == "command":
        return run_commands(spec, ips)
    if spec.mode == "serve":
        return run_serve(spec, ips)
    metrics = run_train(spec)
    emit("finished", **{k: v for k, v in metrics.items() if isinstance(v, int | float | str)})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
