"""Concurrent planners never promise the same nodes or the same budget twice.

Two ``schedule`` calls on disjoint job sets run at once, each through its own engine, as
two processes would; each round six two-node jobs compete for one four-node pool and a
team budget that holds two of them.
"""

from __future__ import annotations

import threading
from decimal import Decimal
from pathlib import Path

from sqlalchemy import func, select, update

from broker.config import load_settings
from broker.db.engine import Database
from broker.db.models import AllocationRow, BudgetRow, JobRow, OfferRow
from broker.domain import AllocationState, JobState
from broker.errors import ConflictError
from broker.services.planning.plan import plan
from broker.services.planning.schedule import schedule
from workloads.spec import parse_spec, spec_to_dict

ROUNDS = 20
POOL_NODES = 4


def _spec(name: str) -> dict[str, object]:
    data = {
        "kind": "training",
        "name": name,
        "team": "ml",
        "model": {"preset": "gpt-125m"},
        "tokens": 200_000_000,
        "nodes": 2,
        "constraints": {"gpus": ["H100"]},
    }
    return spec_to_dict(parse_spec(data))


def _live(database: Database) -> tuple[int, Decimal]:
    live = [s.value for s in AllocationState if s.live]
    with database.session() as session:
        nodes = session.scalar(
            select(func.coalesce(func.sum(AllocationRow.nodes), 0)).where(
                AllocationRow.state.in_(live)
            )
        )
        cost = session.scalar(
            select(func.coalesce(func.sum(AllocationRow.est_cost), 0)).where(
                AllocationRow.state.in_(live)
            )
        )
    return int(nodes), Decimal(str(cost))


def test_concurrent_disjoint_planning_never_double_books(
    database: Database, tmp_path: Path
) -> None:
    settings = load_settings(
        {
            "GPUBROKER_HOME": str(tmp_path),
            "GPUBROKER_DATABASE_URL": database.url,
            "GPUBROKER_SOLVER_TIME_LIMIT": "10",
        }
    )
    with database.session() as session:
        session.add(
            OfferRow(
                provider="aws",
                region="us-east-1",
                zone="use1-az1",
                instance_type="p5.48xlarge",
                gpu="H100-80GB",
                gpus_per_node=8,
                gpu_memory_gib=80,
                pricing="on_demand",
                price_per_hour=Decimal("50"),
                interconnect_gbps=3200.0,
                rdma="efa",
                capacity_nodes=POOL_NODES,
                source="test",
            )
        )
    one_job = _one_job_cost(database, settings)
    budget = one_job * Decimal("2.5")  # two jobs fit the money, two fit the nodes
    with database.session() as session:
        session.add(BudgetRow(team="ml", amount=budget, period="month"))

    double_booked = overcommitted = conflicts = 0
    for round_no in range(ROUNDS):
        with database.session() as session:
            rows = [
                JobRow(
                    name=f"r{round_no}-{i}",
                    kind="training",
                    spec=_spec(f"r{round_no}-{i}"),
                    team="ml",
                    priority=0,
                    state=JobState.PENDING.value,
                )
                for i in range(6)
            ]
            session.add_all(rows)
            session.flush()
            ids = [r.id for r in rows]
        halves = [ids[0::2], ids[1::2]]
        failures: list[BaseException] = []
        start = threading.Barrier(2)

        def plan(
            job_ids: list[int],
            failures: list[BaseException] = failures,
            start: threading.Barrier = start,
        ) -> None:
            own = Database(database.url)  # its own engine, as another process would have
            try:
                start.wait()
                schedule(own, settings, job_ids=job_ids)
            except ConflictError as exc:  # the loser may be told to try again
                failures.append(exc)
            finally:
                own.dispose()

        threads = [threading.Thread(target=plan, args=(half,)) for half in halves]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        conflicts += len(failures)
        nodes, cost = _live(database)
        double_booked += nodes > POOL_NODES
        overcommitted += cost > budget
        with database.session() as session:  # free the pool and the money for the next round
            session.execute(
                update(AllocationRow)
                .where(AllocationRow.state == AllocationState.PLANNED.value)
                .values(state=AllocationState.RELEASED.value)
            )
    assert (double_booked, overcommitted) == (0, 0), f"{conflicts} conflicts"


def _one_job_cost(database: Database, settings: object) -> Decimal:
    with database.session() as session:
        row = JobRow(
            name="probe",
            kind="training",
            spec=_spec("probe"),
            team="ml",
            priority=0,
            state=JobState.PENDING.value,
        )
        session.add(row)
        session.flush()
        probe = row.id
    report = plan(database, settings, job_ids=[probe])  # type: ignore[arg-type]
    with database.session() as session:
        job = session.get(JobRow, probe)
        assert job is not None
        job.state = JobState.CANCELLED.value
    (alloc,) = report.allocations
    return Decimal(str(alloc["est_cost"]))
