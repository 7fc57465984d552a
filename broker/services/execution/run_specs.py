"""What a run executes: the ``workloads.driver.RunSpec`` (a command, a training loop, the
bundled GPT, or a Serve app) and the bundled GPT's training config, from the job's spec."""

from __future__ import annotations

from dataclasses import asdict
from typing import Any, TypedDict

from broker.config import Settings
from broker.errors import BrokerError
from broker.services.execution.run_context import RunContext, run_dir
from broker.services.jobs import store as jobs_service


def train_config(ctx: RunContext, *, metrics_path: str | None, storage_path: str) -> Any:
    """The ``workloads.train.TrainConfig`` of the bundled GPT for this job."""
    from workloads.gpus import resolve
    from workloads.spec import parse_spec
    from workloads.train import TrainConfig

    spec = parse_spec(ctx.spec)
    assert spec.kind == "training" and spec.model is not None
    peak = None
    use_gpu = bool(ctx.gpu) and ctx.gpus_per_node > 0
    if use_gpu and ctx.gpu:
        resolved = resolve(ctx.gpu)
        if resolved.spec is not None:
            peak = resolved.spec.bf16_tflops * 1e12  # a worker drives one GPU
    steps = spec.total_steps()
    return TrainConfig(
        name=ctx.run_dir.name,
        storage_path=storage_path,
        metrics_path=metrics_path,
        model={
            "n_layer": spec.model.layers,
            "n_head": spec.model.heads,
            "d_model": spec.model.d_model,
            "seq_len": spec.model.seq_len,
            "vocab_size": spec.model.vocab,
        },
        steps=steps,
        global_batch=spec.global_batch,
        learning_rate=spec.learning_rate,
        checkpoint_every=spec.checkpoint_every,
        report_every=max(1, min(25, steps // 20)),
        data=spec.data,
        precision=spec.precision,
        num_workers=ctx.nodes * gpt_workers_per_node(ctx),
        use_gpu=use_gpu,
        peak_flops_per_worker=peak,
    )


class _TrainingFields(TypedDict):
    """The ``RunSpec`` fields every training run fills in the same way."""

    resource: str
    nodes: int
    gpus_per_node: int
    envs: dict[str, str]
    name: str
    storage: str | None
    max_failures: int
    join_timeout_s: float


def run_spec(ctx: RunContext) -> Any:
    """The ``workloads.driver.RunSpec`` of this job: a command, a loop, or the GPT."""
    from workloads.driver import RunSpec
    from workloads.spec import parse_spec

    spec = parse_spec(ctx.spec)
    assert spec.kind == "training" and ctx.cluster is not None
    storage = spec.storage or default_storage(ctx)
    common: _TrainingFields = {
        "resource": ctx.cluster.resource,
        "nodes": ctx.nodes,
        "gpus_per_node": ctx.gpus_per_node if ctx.gpu else 0,
        "envs": dict(spec.envs),
        "name": ctx.run_dir.name,
        "storage": storage,
        "max_failures": spec.max_failures,
        "join_timeout_s": ctx.settings.head_timeout_s,
    }
    if spec.run is not None:
        return RunSpec(mode="command", setup=spec.setup, run=spec.run, **common)
    if spec.train is not None:
        return RunSpec(mode="train", train=spec.train, **common)
    cfg = train_config(ctx, metrics_path=None, storage_path=storage or str(ctx.run_dir.parent))
    return RunSpec(
        mode="train",
        train=GPT_LOOP,
        config=asdict(cfg),
        workers_per_node=gpt_workers_per_node(ctx),
        **common,
    )


GPT_LOOP = "workloads.train:gpt_worker"


def serve_run_spec(ctx: RunContext, low: int, high: int) -> Any:
    """The ``workloads.driver.RunSpec`` of a serving allocation holding ``low``..``high``
    replicas: the user's Serve app, or the bundled GPT (fresh, or a training job's weights)."""
    from workloads.driver import RunSpec
    from workloads.spec import parse_spec

    spec = parse_spec(ctx.spec)
    assert spec.kind == "inference" and ctx.cluster is not None
    checkpoint = None
    if spec.source_job is not None:
        source = jobs_service.get(ctx.db, spec.source_job)
        checkpoint = newest_checkpoint(ctx.settings, source.id, source.spec)
        if checkpoint is None:
            raise BrokerError(f"model_from: job {source.id} has no checkpoint to serve")
    serve = {
        "port": ctx.settings.serve_port,
        "min_replicas": low,
        "max_replicas": high,
        "app": spec.serve,
        "model": spec.shape.gpt_config().to_dict(),
        "checkpoint": checkpoint,
        "max_batch_size": spec.max_batch_size,
        "batch_wait_s": spec.batch_wait_ms / 1000,
    }
    return RunSpec(
        mode="serve",
        resource=ctx.cluster.resource,
        nodes=ctx.nodes,
        gpus_per_node=ctx.gpus_per_node if ctx.gpu else 0,
        envs=dict(spec.envs),
        name=ctx.run_dir.name,
        join_timeout_s=ctx.settings.head_timeout_s,
        serve=serve,
    )


def newest_checkpoint(settings: Settings, job_id: int, spec: dict[str, Any]) -> str | None:
    """Where the job's newest checkpoint is: under its ``storage:``, else its run folder
    (a storage URI, or a local path)."""
    from workloads import storage

    folder = run_dir(settings, job_id)
    where = storage.join(spec["storage"], folder.name) if spec.get("storage") else str(folder)
    try:
        found = storage.latest_checkpoint(where)
    except (BrokerError, OSError):  # storage out of reach from here: say nothing
        return None
    return None if found is None else found[0]


def gpt_workers_per_node(ctx: RunContext) -> int:
    """The bundled GPT is data-parallel over every GPU: one worker each (one per CPU node)."""
    return ctx.gpus_per_node if ctx.gpu and ctx.gpus_per_node > 0 else 1


def default_storage(ctx: RunContext) -> str | None:
    """Where checkpoints go without ``storage:``: the runs folder when every node is this
    machine; on cloud nodes, nowhere shared (a lost node's work cannot resume elsewhere)."""
    return f"file://{ctx.run_dir.parent.resolve()}" if ctx.provider == "local" else None
