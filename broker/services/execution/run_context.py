"""What one run of an allocation is given and hands back, and the names around it.

The executor's lease is ``alloc-<id>``, held by ``host:pid``; the reconciler asks
:func:`executor_alive`. Crash points for tests live here too: set ``GPUBROKER_CRASH_AT``
to one of :data:`CRASH_POINTS` and the process exits there.
"""

from __future__ import annotations

import os
import socket
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from decimal import Decimal
from pathlib import Path
from typing import TYPE_CHECKING, Any

from broker.config import Settings
from broker.db import leases
from broker.db.engine import Database
from broker.services.execution import ray_jobs

if TYPE_CHECKING:
    from broker.services.execution.node_boot import ClusterSpec


CRASH_ENV = "GPUBROKER_CRASH_AT"

CRASH_POINTS = ("after_launch_record", "after_cloud_create", "before_ray_start", "mid_training")

CRASH_EXIT_CODE = 71

LEASE_TTL_S = 120.0

POLL_S = 0.5


def crash_point(name: str) -> None:
    """Exit the process on the spot when ``GPUBROKER_CRASH_AT`` names this point."""
    if os.environ.get(CRASH_ENV) == name:
        sys.stderr.flush()
        os._exit(CRASH_EXIT_CODE)


def lease_name(allocation_id: int) -> str:
    return f"alloc-{allocation_id}"


def lease_holder() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"


def executor_alive(db: Database, allocation_id: int) -> bool:
    """Whether a process still holds the allocation's lease (checked by pid on this host)."""
    from providers.local import processes

    holder = leases.holder_of(db, lease_name(allocation_id))
    if holder is None:
        return False
    host, _, pid = holder.rpartition(":")
    if host == socket.gethostname() and pid.isdigit():
        return processes.alive(int(pid))
    return True  # another host's executor: trust its unexpired lease


def cluster_key(allocation_id: int) -> str:
    return f"a{allocation_id}"


def run_dir(settings: Settings, job_id: int) -> Path:
    return settings.runs_dir / f"job-{job_id}"


@dataclass(frozen=True)
class Progress:
    """One progress line of a run, as the CLI's bar shows it."""

    job_id: int
    state: str
    step: int | None = None
    steps: int | None = None
    loss: float | None = None
    tokens_per_s: float | None = None
    mfu: float | None = None
    cost: Decimal = Decimal(0)
    message: str | None = None


ProgressFn = Callable[[Progress], None]


@dataclass
class RunContext:
    db: Database
    settings: Settings
    job_id: int
    allocation_id: int
    spec: dict[str, Any]
    nodes: int
    gpu: str | None
    gpus_per_node: int
    provider: str = "local"
    head: ray_jobs.Head | None = None  # None: the runner needs no cluster
    cluster: ClusterSpec | None = None

    @property
    def run_dir(self) -> Path:
        return run_dir(self.settings, self.job_id)

    @property
    def metrics_path(self) -> Path:
        return self.run_dir / "metrics.jsonl"


@dataclass
class Outcome:
    """How a training attempt ended: ``ok``, or stopped (cancel/preemption), or an error."""

    ok: bool
    stop: str | None = None
    error: str | None = None
    metrics: dict[str, Any] = field(default_factory=dict)
