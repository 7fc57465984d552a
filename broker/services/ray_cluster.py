"""Start and stop the Ray processes of one allocation on this machine.

A local allocation's nodes are loopback addresses (127.0.0.2, 127.0.0.3, ...): the first
runs ``ray start --head``, each further one a raylet joining it. Every node carries two
custom resources: ``<tag>`` (one unit, so a worker group asking for one unit per worker
lands on exactly one worker per node) and ``<tag>-<i>`` naming the node.

Facts of Ray 2.60 this module is built around:
- ``ray start`` turns token authentication on unless ``RAY_AUTH_MODE`` is set the same way
  for every ``ray`` command and driver of the cluster, so :func:`ray_env` fixes it;
- Ray rewrites ``127.0.0.1`` to the host's routable address, so nodes start at 127.0.0.2;
- each raylet counts the whole machine's memory, so ``--memory`` and
  ``--object-store-memory`` are always passed;
- ``ray start --head`` spawns a client server whose command line carries neither the temp
  dir nor a parent of ours; it is found by its ``--address``.

Teardown stops exactly the processes of this cluster: those whose command line names the
cluster's own temp dir or head address, their descendants, and the driver we started.
It never runs ``ray stop`` (that kills every Ray process of the user).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path

from broker.config import Settings
from broker.errors import BrokerError

NODE_MEMORY_BYTES = 2 * 1024**3
OBJECT_STORE_BYTES = 96 * 1024**2
START_TIMEOUT_S = 120.0


@dataclass
class Cluster:
    """What is needed to reach and later stop one cluster (stored as JSON in the home)."""

    key: str
    addresses: list[str]
    port: int
    temp_dir: str
    resource: str
    cpus_per_node: int
    driver_pid: int | None = None
    pids: list[int] = field(default_factory=list)

    @property
    def head_ip(self) -> str:
        return self.addresses[0]

    @property
    def address(self) -> str:
        return f"{self.head_ip}:{self.port}"

    @property
    def client_port(self) -> int:
        return self.port + 1


def ray_env(base: dict[str, str] | None = None) -> dict[str, str]:
    """The environment every ``ray`` command and driver of our clusters runs with."""
    env = dict(os.environ if base is None else base)
    env["RAY_AUTH_MODE"] = "disabled"
    env["RAY_USAGE_STATS_ENABLED"] = "0"
    env.setdefault("RAY_DEDUP_LOGS", "0")
    return env


def clusters_dir(settings: Settings) -> Path:
    return settings.home / "ray"


def _state_path(settings: Settings, key: str) -> Path:
    return clusters_dir(settings) / f"{key}.json"


def _save(settings: Settings, cluster: Cluster) -> None:
    path = _state_path(settings, cluster.key)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(asdict(cluster)))
    tmp.replace(path)


def load(settings: Settings, key: str) -> Cluster | None:
    path = _state_path(settings, key)
    if not path.exists():
        return None
    return Cluster(**json.loads(path.read_text()))


def known_keys(settings: Settings) -> list[str]:
    folder = clusters_dir(settings)
    return sorted(p.stem for p in folder.glob("*.json")) if folder.exists() else []


def _temp_dir(settings: Settings, key: str) -> str:
    # Ray's unix sockets live under the temp dir; keep the path short.
    digest = hashlib.sha1(f"{settings.home.resolve()}:{key}".encode()).hexdigest()[:10]
    return f"/tmp/gbr-{digest}"


def _ray_bin() -> str:
    candidate = Path(sys.executable).with_name("ray")
    return str(candidate) if candidate.exists() else "ray"


def _run(args: list[str], what: str) -> None:
    proc = subprocess.run(
        args, env=ray_env(), capture_output=True, text=True, timeout=START_TIMEOUT_S
    )
    if proc.returncode != 0:
        tail = (proc.stderr or proc.stdout).strip().splitlines()[-1:] or ["no output"]
        raise BrokerError(f"ray: {what} failed ({tail[0]})")


def start(
    settings: Settings, key: str, addresses: Sequence[str], *, cpus_per_node: int = 1
) -> Cluster:
    """Start the head on ``addresses[0]`` and one raylet per further address."""
    if not addresses:
        raise BrokerError("ray: a cluster needs at least one node")
    existing = load(settings, key)
    if existing is not None:
        stop(settings, key)
    cluster = Cluster(
        key=key,
        addresses=list(addresses),
        port=settings.ray_port,
        temp_dir=_temp_dir(settings, key),
        resource=f"gpubroker-{key}",
        cpus_per_node=cpus_per_node,
    )
    _save(settings, cluster)  # recorded first, so a crash mid-start can still be cleaned up
    common = [
        f"--num-cpus={cpus_per_node}",
        f"--memory={NODE_MEMORY_BYTES}",
        f"--object-store-memory={OBJECT_STORE_BYTES}",
        f"--temp-dir={cluster.temp_dir}",
        "--disable-usage-stats",
    ]
    ray = _ray_bin()

    def node_args(index: int, ip: str) -> list[str]:
        resources = json.dumps({cluster.resource: 1, f"{cluster.resource}-{index}": 1})
        if index == 0:
            args = [
                ray,
                "start",
                "--head",
                f"--port={cluster.port}",
                f"--node-ip-address={ip}",
                f"--ray-client-server-port={cluster.client_port}",
                "--include-dashboard=false",
                f"--dashboard-port={cluster.port + 2}",
            ]
        else:
            args = [ray, "start", f"--address={cluster.address}", f"--node-ip-address={ip}"]
        return [*args, *common, f"--resources={resources}"]

    _run(node_args(0, cluster.head_ip), f"start of the head on {cluster.head_ip}")
    # The further raylets join in parallel: each ``ray start`` is seconds of Python start-up.
    with ThreadPoolExecutor(max_workers=max(1, len(cluster.addresses) - 1)) as pool:
        list(
            pool.map(
                lambda item: _run(node_args(*item), f"start of node {item[1]}"),
                list(enumerate(cluster.addresses))[1:],
            )
        )
    cluster.pids = our_processes(cluster)
    _save(settings, cluster)
    return cluster


def record_driver(settings: Settings, cluster: Cluster, pid: int) -> None:
    cluster.driver_pid = pid
    _save(settings, cluster)


# --- processes --------------------------------------------------------------------------


def cmdline(pid: int) -> list[str]:
    try:
        raw = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return []
    return [part.decode(errors="replace") for part in raw.split(b"\0") if part]


def _stat(pid: int) -> tuple[str, int] | None:
    """(state letter, parent pid) of a process, or None when it is gone."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = text[text.rindex(")") + 2 :].split()
    return fields[0], int(fields[1])


def _all_pids() -> list[int]:
    return [int(name) for name in os.listdir("/proc") if name.isdigit()]


def alive(pid: int) -> bool:
    stat = _stat(pid)
    return stat is not None and stat[0] not in ("Z", "X")


def _descendants(roots: set[int]) -> set[int]:
    children: dict[int, list[int]] = {}
    for pid in _all_pids():
        stat = _stat(pid)
        if stat is not None:
            children.setdefault(stat[1], []).append(pid)
    found, todo = set(roots), list(roots)
    while todo:
        for child in children.get(todo.pop(), []):
            if child not in found:
                found.add(child)
                todo.append(child)
    return found


def our_processes(cluster: Cluster) -> list[int]:
    """Live processes of this cluster: marked by its temp dir or head address, and below."""
    own = os.getpid()
    marks = (cluster.temp_dir, f"--address={cluster.address}")
    roots = set()
    for pid in _all_pids():
        if pid == own:
            continue
        args = cmdline(pid)
        if any(mark in arg for arg in args for mark in marks):
            roots.add(pid)
    if cluster.driver_pid and alive(cluster.driver_pid):
        roots.add(cluster.driver_pid)
    return sorted(pid for pid in _descendants(roots) if pid != own and alive(pid))


def stop(settings: Settings, key: str, *, grace_s: float = 3.0) -> int:
    """Stop every process of cluster ``key``; returns how many there were. Idempotent."""
    cluster = load(settings, key)
    if cluster is None:
        return 0
    pids = our_processes(cluster)
    for sig, wait in ((signal.SIGTERM, grace_s), (signal.SIGKILL, 5.0)):
        for pid in pids:
            if alive(pid):
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, sig)
        deadline = time.monotonic() + wait
        while time.monotonic() < deadline and any(alive(pid) for pid in pids):
            time.sleep(0.1)
        # Workers started while we were stopping the rest are caught by a second look.
        pids = sorted(set(pids) | set(our_processes(cluster)))
    leftover = [pid for pid in pids if alive(pid)]
    if leftover:
        raise BrokerError(f"ray: processes {leftover} of cluster {key} did not stop")
    shutil.rmtree(cluster.temp_dir, ignore_errors=True)
    _state_path(settings, key).unlink(missing_ok=True)
    return len(pids)
