"""Each allocation of a replay runs the real executor in a thread of its own.

``run_allocation`` blocks while its run lasts, so its runner (``SimRunner``) parks until the
replay's loop says how the run ended: it finished, or its pool reclaimed the nodes. Only
one thread moves at a time (the loop waits for each hand-off), so a replay is as
deterministic as the code it drives.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from sqlalchemy import select

from broker.db.engine import Database
from broker.db.models import AllocationRow, InstanceRow
from broker.errors import BrokerError

HANDOFF_TIMEOUT_S = 120.0


@dataclass
class SimRun:
    """One allocation's executor thread and the hand-off with the loop."""

    allocation_id: int
    job_id: int
    pool: tuple[str, ...]
    nodes: int
    hours: float
    thread: threading.Thread | None = None
    turn: threading.Event = field(default_factory=threading.Event)  # runner parked or done
    release: threading.Event = field(default_factory=threading.Event)
    parked: bool = False
    outcome: Any = None
    error: BaseException | None = None
    started: datetime | None = None
    ends: datetime | None = None
    slots: tuple[int, ...] = ()  # the spot pool's node slots its nodes hold


class SimRunner:
    """The executor's runner during a replay: parks until the loop says how the run ended."""

    needs_cluster = False

    def __init__(self, runs: dict[int, SimRun]) -> None:
        self.runs = runs

    def __call__(self, ctx: Any, monitor: Any) -> Any:
        run = self.runs[ctx.allocation_id]
        run.parked = True
        run.turn.set()
        if not run.release.wait(HANDOFF_TIMEOUT_S):
            raise BrokerError(f"simulation: allocation {ctx.allocation_id} was never released")
        return run.outcome


def start(run: SimRun, execute: Callable[[int], object]) -> None:
    """Run ``execute(allocation_id)`` in the run's thread until its runner parks (the nodes
    run) or it returns (it ended while provisioning: capacity, budget)."""

    def work() -> None:
        try:
            execute(run.allocation_id)
        except BaseException as exc:  # a BrokerError is an outcome; anything else a bug
            run.error = exc
        finally:
            run.parked = False
            run.turn.set()

    run.thread = threading.Thread(target=work, name=f"sim-alloc-{run.allocation_id}", daemon=True)
    run.thread.start()
    if not run.turn.wait(HANDOFF_TIMEOUT_S):
        raise BrokerError(f"simulation: allocation {run.allocation_id} did not start")


def finish(run: SimRun, outcome: Any) -> None:
    """Let the parked runner return ``outcome`` and wait until its executor has ended."""
    run.outcome = outcome
    run.parked = False
    run.turn.clear()
    run.release.set()
    if not run.turn.wait(HANDOFF_TIMEOUT_S):
        raise BrokerError(f"simulation: allocation {run.allocation_id} did not finish")
    join(run)


def join(run: SimRun) -> None:
    """The run's thread is over; a bug in it is raised here, in the loop."""
    assert run.thread is not None
    run.thread.join(HANDOFF_TIMEOUT_S)
    if run.error is not None and not isinstance(run.error, BrokerError):
        raise run.error


def planned_runs(db: Database, allocation_ids: list[int]) -> list[SimRun]:
    """A run for each planned allocation, in the order given."""
    with db.session() as session:
        rows = session.execute(
            select(
                AllocationRow.id,
                AllocationRow.job_id,
                AllocationRow.provider,
                AllocationRow.region,
                AllocationRow.zone,
                AllocationRow.instance_type,
                AllocationRow.pricing,
                AllocationRow.nodes,
                AllocationRow.est_hours,
            ).where(AllocationRow.id.in_(allocation_ids))
        ).all()
    planned = {row[0]: row for row in rows}
    runs = []
    for allocation_id in allocation_ids:
        _, job_id, *pool, nodes, hours = planned[allocation_id]
        runs.append(SimRun(allocation_id, job_id, tuple(pool), nodes, float(hours)))
    return runs


def node_ids(db: Database, allocation_id: int) -> list[str]:
    """The cloud's ids of the allocation's nodes."""
    with db.session() as session:
        ids = session.scalars(
            select(InstanceRow.provider_instance_id).where(
                InstanceRow.allocation_id == allocation_id
            )
        )
        return [i for i in ids if i]
