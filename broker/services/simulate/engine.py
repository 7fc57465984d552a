"""The replay of one policy on one seed: a discrete-event loop on a virtual clock.

Nothing here decides where a job goes or what it costs. Jobs are submitted with
``jobs.submit``, planned with ``planning.schedule`` (the real planner), run with
``execution.run_allocation`` against fake clouds that stand in for each provider of the
offers, and metered into the usage ledger by the executor's teardown. The virtual clock is
``broker.domain.use_clock``: every timestamp the services write is simulated time.

The policies differ only in what they give the planner. ``gpubroker`` plans every pending
job at once over all offers, knowing each pool's capacity, with deadlines and team
budgets, and re-plans on arrivals, ends, preemptions and price or capacity moves. The
per-job rules give each job its own cheapest offer: no deadlines or budgets (SkyPilot and
dstack know none), every pool assumed to have room until a launch fails there (the
executor's cool-down is the failover): ``per-job-cheapest`` over all offers, spot as the
job allows; ``single-cloud-on-demand`` over one provider's on-demand offers;
``spot-greedy`` over spot offers only, every job forced to spot.

``run_allocation`` blocks while its run lasts, so each allocation runs in a thread of its
own whose runner parks until the loop reaches the run's end (it finished, or its pool
reclaimed the nodes). Only one thread moves at a time (the loop waits for each hand-off),
so a replay is as deterministic as the code it drives.

Work is carried across preemptions: a preempted job keeps what its last checkpoint saved
(``checkpoint_every`` steps), and its stored spec shrinks to the work still left, so the
planner prices only what remains.
"""

from __future__ import annotations

import heapq
import math
import random
import threading
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

from sqlalchemy import select

from broker.config import Settings
from broker.db.engine import Database
from broker.db.models import AllocationRow, InstanceRow, JobRow
from broker.domain import JobState, Pricing, use_clock
from broker.errors import BrokerError, Infeasible, SpecError
from broker.services.simulate.scenario import Arrival, LoadedScenario, arrivals
from broker.services.simulate.supply import SimPool, build_pools

RUNTIME_NOISE = 0.10  # a run takes its estimate x U(1 - n, 1 + n)
PREEMPTED = "preempted: the provider reclaimed the spot nodes"
HANDOFF_TIMEOUT_S = 120.0
UNKNOWN_ROOM = 1000  # nodes the per-job rules assume a pool has


@dataclass
class _Run:
    """One allocation's executor thread and the hand-off with the loop."""

    allocation_id: int
    job_id: int
    thread: threading.Thread | None = None
    turn: threading.Event = field(default_factory=threading.Event)  # runner parked or done
    release: threading.Event = field(default_factory=threading.Event)
    parked: bool = False
    outcome: Any = None
    error: BaseException | None = None
    pool: tuple[str, ...] = ()
    nodes: int = 0
    started: datetime | None = None
    ends: datetime | None = None
    hours: float = 0.0


class _SimRunner:
    """The executor's runner during a replay: parks until the loop says how the run ended."""

    needs_cluster = False

    def __init__(self, runs: dict[int, _Run]) -> None:
        self.runs = runs

    def __call__(self, ctx: Any, monitor: Any) -> Any:
        run = self.runs[ctx.allocation_id]
        run.parked = True
        run.turn.set()
        if not run.release.wait(HANDOFF_TIMEOUT_S):
            raise BrokerError(f"simulation: allocation {ctx.allocation_id} was never released")
        return run.outcome


@dataclass
class RunResult:
    """Where one replay left its ledger, and what the loop itself counted."""

    policy: str
    seed: int
    database: Path
    start: datetime
    end: datetime
    deadlines: dict[int, datetime | None]  # job id -> the deadline its arrival carried
    plans: int
    refused: int
    wall_seconds: float
    budgets: dict[str, tuple[Decimal, str]]  # team -> (amount, period), as the scenario says


class Replay:
    def __init__(
        self,
        loaded: LoadedScenario,
        policy: str,
        seed: int,
        offers: list[Any],
        database: Path,
        settings: Settings,
    ) -> None:
        from providers.fake import FakeProvider, ManualClock

        self.loaded = loaded
        self.scenario = loaded.scenario
        self.policy = policy
        self.seed = seed
        cfg = self.scenario.supply
        self.tick_hours = cfg.refresh_minutes / 60.0
        horizon_hours = (self.scenario.days + self.scenario.drain_days) * 24.0
        self.ticks = max(1, math.ceil(horizon_hours / self.tick_hours))
        self.horizon = self.scenario.start + timedelta(hours=horizon_hours)
        pools = build_pools(
            policy_offers(offers, policy, self.scenario.single_cloud), loaded, seed, self.ticks
        )
        self.pools: dict[tuple[str, ...], SimPool] = {p.key: p for p in pools}
        self.clock = ManualClock(self.scenario.start)
        self.rng = random.Random(f"runs:{self.scenario.seed}:{seed}")
        self.providers: dict[str, Any] = {}
        for name in sorted({p.record.provider for p in pools}):
            records = [p.record for p in pools if p.record.provider == name]
            self.providers[name] = FakeProvider(
                name, seed=seed, offers=records, quotas={}, clock=self.clock
            )
        database.parent.mkdir(parents=True, exist_ok=True)
        for stale in (database, *(database.with_name(database.name + x) for x in ("-wal", "-shm"))):
            stale.unlink(missing_ok=True)  # a fresh ledger for every replay
        self.database = database
        self.db = Database(f"sqlite:///{database}")
        self.settings = replace(
            settings,
            database_url=self.db.url,
            solver_time_limit=self.scenario.planner.time_limit,
            # the per-job rules assume a pool has room until a launch says otherwise
            default_pool_capacity=(
                settings.default_pool_capacity if policy == "gpubroker" else UNKNOWN_ROOM
            ),
            max_provider_share=self.scenario.planner.max_provider_share
            if policy == "gpubroker"
            else 1.0,
            extra={**dict(settings.extra), "provider_instances": self.providers},
        )
        self.runs: dict[int, _Run] = {}
        self.runner = _SimRunner(self.runs)
        self.events: list[tuple[datetime, int, str, Any]] = []
        self.sequence = 0
        self.dirty = False
        self.plan_due: datetime | None = None
        self.plans = 0
        self.refused = 0  # plans the planner refused as infeasible
        self.deadlines: dict[int, datetime | None] = {}
        self.noise: dict[int, float] = {}
        self.open_jobs: set[int] = set()
        self.arrivals_left = 0
        self.seen: dict[tuple[str, ...], tuple[int, Any]] = {}  # spot pool -> (capacity, price)

    # --- the loop -----------------------------------------------------------------------

    def run(self, progress: Callable[[float], None] | None = None) -> RunResult:
        import time

        began = time.perf_counter()
        with use_clock(self.clock.now):
            self._setup()
            for arrival in arrivals(self.loaded, self.seed):
                self._push(arrival.at, "arrive", arrival)
                self.arrivals_left += 1
            for tick in range(self.ticks):
                self._push(self._tick_time(tick), "tick", tick)
            for key, pool in self.pools.items():
                for hours in pool.preemptions:
                    self._push(self.scenario.start + timedelta(hours=hours), "reclaim", key)
            span = (self.horizon - self.scenario.start).total_seconds()
            last_report = -1.0
            while self.events:
                at, _, kind, payload = heapq.heappop(self.events)
                if at > self.horizon:
                    break
                if at > self.clock.now():
                    self.clock.set(at)
                getattr(self, f"_on_{kind}")(payload)
                if self.dirty and self.plan_due is None:
                    quantum = timedelta(minutes=self.scenario.planner.replan_minutes)
                    offset = (at - self.scenario.start) / quantum
                    due = self.scenario.start + quantum * math.ceil(offset)
                    self.plan_due = max(due, at)
                    self._push(self.plan_due, "plan", None)
                if progress is not None:
                    done = (self.clock.now() - self.scenario.start).total_seconds() / span
                    if done - last_report >= 0.01:
                        last_report = done
                        progress(min(done, 1.0))
                if not self.open_jobs and not self.arrivals_left:
                    break
            self._close()
        if progress is not None:
            progress(1.0)
        self.db.dispose()
        return RunResult(
            policy=self.policy,
            seed=self.seed,
            database=self.database,
            start=self.scenario.start,
            end=self.clock.now(),
            deadlines=self.deadlines,
            plans=self.plans,
            refused=self.refused,
            wall_seconds=time.perf_counter() - began,
            budgets={
                team: (Decimal(str(cfg.budget)), cfg.period)
                for team, cfg in sorted(self.scenario.teams.items())
            },
        )

    def _push(self, at: datetime, kind: str, payload: Any) -> None:
        self.sequence += 1
        heapq.heappush(self.events, (at, self.sequence, kind, payload))

    def _tick_time(self, tick: int) -> datetime:
        return self.scenario.start + timedelta(hours=tick * self.tick_hours)

    def _setup(self) -> None:
        from broker.services import budgets
        from broker.services.catalog import upsert_offers

        self.db.ensure_schema()
        for name, provider in sorted(self.providers.items()):
            upsert_offers(self.db, self._offers_seen(provider), provider=name, full=True)
        if self.policy == "gpubroker":  # the per-job rules stop at no budget
            for team, cfg in sorted(self.scenario.teams.items()):
                budgets.set_budget(self.db, team, cfg.budget, period=cfg.period)

    def _offers_seen(self, provider: Any) -> list[Any]:
        """What the offers table learns from a cloud: the broker learns each pool's
        capacity; the per-job rules never look at it (their planner sees it unknown)."""
        offers = list(provider.list_offers())
        if self.policy == "gpubroker":
            return offers
        return [replace(offer, capacity_nodes=None) for offer in offers]

    # --- events -------------------------------------------------------------------------

    def _on_arrive(self, arrival: Arrival) -> None:
        from broker.services import jobs
        from workloads.spec import parse_spec

        spec = dict(arrival.spec)
        if self.policy != "gpubroker":
            spec.pop("deadline", None)  # the per-job rules know no deadlines
        if self.policy == "spot-greedy":
            spec["constraints"] = {**spec.get("constraints", {}), "spot": True}
        elif self.policy == "single-cloud-on-demand":
            spec["constraints"] = {**spec.get("constraints", {}), "spot": False}
        view = jobs.submit(self.db, parse_spec(spec))
        self.arrivals_left -= 1
        self.deadlines[view.id] = arrival.deadline
        self.noise[view.id] = 1.0 + RUNTIME_NOISE * (2.0 * self.rng.random() - 1.0)
        self.open_jobs.add(view.id)
        self.dirty = True

    def _on_tick(self, tick: int) -> None:
        """A refresh: the clouds' capacity and spot prices move, the offers table learns
        the pools that changed (``upsert_offers`` records each price change), and nodes
        beyond a pool's new capacity are reclaimed."""
        from broker.services.catalog import upsert_offers

        changed: dict[str, list[Any]] = defaultdict(list)
        for key, pool in self.pools.items():
            if not pool.spot:
                continue
            capacity, price = pool.capacity_at(tick), pool.price_at(tick)
            if self.seen.get(key) != (capacity, price):
                self.seen[key] = (capacity, price)
                record = pool.record
                self.providers[record.provider].set_offer(
                    str(record.zone),
                    record.instance_type,
                    Pricing.SPOT,
                    capacity_nodes=capacity,
                    price_per_hour=price,
                )
                learnt = capacity if self.policy == "gpubroker" else None
                changed[record.provider].append(
                    replace(
                        record, capacity_nodes=learnt, price_per_hour=price, as_of=self.clock.now()
                    )
                )
            live = sorted(
                (r for r in self.runs.values() if r.parked and r.pool == key),
                key=lambda r: (r.started, r.allocation_id),
            )
            over = sum(r.nodes for r in live) - capacity
            while over > 0 and live:
                newest = live.pop()
                over -= newest.nodes
                self._end(newest, preempted=True)
        for name, records in sorted(changed.items()):
            upsert_offers(self.db, records, provider=name, full=False)
        if changed and self.policy == "gpubroker":
            self.dirty = True  # the broker re-plans when prices or capacity move
        self._expire_deadlines()

    def _on_reclaim(self, key: tuple[str, ...]) -> None:
        for run in sorted(self.runs.values(), key=lambda r: r.allocation_id):
            if run.parked and run.pool == key:
                self._end(run, preempted=True)

    def _on_finish(self, allocation_id: int) -> None:
        run = self.runs.get(allocation_id)
        if run is not None and run.parked and run.ends == self.clock.now():
            self._end(run, preempted=False)

    def _on_plan(self, _: Any) -> None:
        from broker.services import planning

        self.plan_due = None
        if not self.dirty:
            return
        self.dirty = False
        self._expire_deadlines()
        pending = self._pending()
        if not pending:
            return
        # For the per-job rules the planner sees no capacity, budget, share cap or deadline
        # binding two jobs together, so one call gives each job its own cheapest offer:
        # the same choice as asking for each job alone.
        self.plans += 1
        try:
            result = planning.schedule(self.db, self.settings)
        except Infeasible:  # e.g. a share cap no plan can meet now: as a daemon, try later
            self.refused += 1
            return
        self._launch(result.allocation_ids)

    # --- runs ---------------------------------------------------------------------------

    def _pending(self) -> list[int]:
        with self.db.session() as session:
            return list(
                session.scalars(
                    select(JobRow.id)
                    .where(JobRow.state == JobState.PENDING.value)
                    .order_by(JobRow.id)
                )
            )

    def _launch(self, allocation_ids: list[int]) -> None:
        from broker.services import execution

        for allocation_id in allocation_ids:
            with self.db.session() as session:
                alloc = session.get(AllocationRow, allocation_id)
                assert alloc is not None
                job_id = alloc.job_id
                pool = (
                    alloc.provider,
                    alloc.region,
                    alloc.zone,
                    alloc.instance_type,
                    alloc.pricing,
                )
                nodes, hours = alloc.nodes, float(alloc.est_hours)
            run = _Run(allocation_id, job_id, pool=pool, nodes=nodes, hours=hours)
            self.runs[allocation_id] = run

            def work(run: _Run = run) -> None:
                try:
                    execution.run_allocation(
                        self.db, self.settings, run.allocation_id, runner=self.runner
                    )
                except BrokerError as exc:  # e.g. a budget refused the launch
                    run.error = exc
                except BaseException as exc:  # a bug: surfaces in the loop
                    run.error = exc
                finally:
                    run.parked = False
                    run.turn.set()

            run.thread = threading.Thread(
                target=work, name=f"sim-alloc-{allocation_id}", daemon=True
            )
            run.thread.start()
            if not run.turn.wait(HANDOFF_TIMEOUT_S):
                raise BrokerError(f"simulation: allocation {allocation_id} did not start")
            if not run.parked:  # ended while provisioning (capacity, budget): already final
                self._joined(run)
                continue
            run.started = self.clock.now()
            run.ends = run.started + timedelta(hours=run.hours * self.noise[job_id])
            self._push(run.ends, "finish", allocation_id)

    def _end(self, run: _Run, *, preempted: bool) -> None:
        """Let the parked runner return: finished, or its nodes reclaimed."""
        from broker.services.runners import Outcome

        if preempted:
            self._take_nodes(run)
            self._keep_progress(run)
            run.outcome = Outcome(ok=False, stop=PREEMPTED)
        else:
            run.outcome = Outcome(ok=True)
        run.parked = False
        run.turn.clear()
        run.release.set()
        if not run.turn.wait(HANDOFF_TIMEOUT_S):
            raise BrokerError(f"simulation: allocation {run.allocation_id} did not finish")
        self._joined(run)

    def _joined(self, run: _Run) -> None:
        assert run.thread is not None
        run.thread.join(HANDOFF_TIMEOUT_S)
        self.runs.pop(run.allocation_id, None)
        if run.error is not None and not isinstance(run.error, BrokerError):
            raise run.error
        self.dirty = True
        with self.db.session() as session:
            job = session.get(JobRow, run.job_id)
            assert job is not None
            if JobState(job.state).terminal:
                self.open_jobs.discard(run.job_id)

    def _take_nodes(self, run: _Run) -> None:
        with self.db.session() as session:
            ids = [
                i
                for i in session.scalars(
                    select(InstanceRow.provider_instance_id).where(
                        InstanceRow.allocation_id == run.allocation_id
                    )
                )
                if i
            ]
        self.providers[run.pool[0]].preempt(ids)

    def _keep_progress(self, run: _Run) -> None:
        """Shrink the job's stored spec to the work its last checkpoint had not saved."""
        from workloads.spec import parse_spec

        assert run.started is not None and run.ends is not None
        total = (run.ends - run.started).total_seconds()
        elapsed = (self.clock.now() - run.started).total_seconds()
        with self.db.session() as session:
            job = session.get(JobRow, run.job_id)
            assert job is not None
            spec = parse_spec(job.spec)
            if total <= 0 or spec.kind != "training":
                return
            steps = spec.total_steps() if spec.model is not None else 0
            every = total * spec.checkpoint_every / steps if steps else total
            saved = math.floor(elapsed / every) * every if every > 0 else 0.0
            left = max(0.0, 1.0 - saved / total)
            if left >= 1.0:
                return
            data = dict(job.spec)
            for key in ("tokens", "steps"):
                if data.get(key):
                    data[key] = max(1, math.ceil(data[key] * left))
            hours = data.get("estimated_hours")
            if isinstance(hours, int | float):
                data["estimated_hours"] = max(hours * left, 1e-3)
            elif isinstance(hours, dict):
                data["estimated_hours"] = {k: max(v * left, 1e-3) for k, v in hours.items()}
            job.spec = data

    def _expire_deadlines(self) -> None:
        """Under the broker, a job still waiting when its deadline passes is cancelled (a
        missed deadline); the per-job rules know no deadlines and run it late."""
        from broker.services import jobs

        now = self.clock.now()
        for job_id in self._pending():
            deadline = self.deadlines.get(job_id)
            if self.policy == "gpubroker" and deadline is not None and deadline <= now:
                jobs.cancel(self.db, self.settings, job_id)
                self.open_jobs.discard(job_id)

    def _close(self) -> None:
        """The horizon: runs still going stop, jobs still waiting are cancelled."""
        from broker.services import jobs
        from broker.services.runners import Outcome

        for run in sorted(list(self.runs.values()), key=lambda r: r.allocation_id):
            if run.parked:
                run.outcome = Outcome(ok=False, stop="cancelled")
                jobs.cancel(self.db, self.settings, run.job_id)
                run.parked = False
                run.turn.clear()
                run.release.set()
                run.turn.wait(HANDOFF_TIMEOUT_S)
                self._joined(run)
        for job_id in self._pending() + self._planned():
            jobs.cancel(self.db, self.settings, job_id)
        self.open_jobs.clear()

    def _planned(self) -> list[int]:
        with self.db.session() as session:
            return list(
                session.scalars(
                    select(JobRow.id)
                    .where(JobRow.state == JobState.PLANNED.value)
                    .order_by(JobRow.id)
                )
            )


def policy_offers(offers: list[Any], policy: str, single_cloud: str | None) -> list[Any]:
    """The offers a policy may use: every one, one provider's on-demand, or spot only."""
    if policy == "single-cloud-on-demand":
        counts: dict[str, int] = defaultdict(int)
        for offer in offers:
            counts[offer.provider] += 1
        name = single_cloud or max(sorted(counts), key=lambda n: counts[n])
        kept = [o for o in offers if o.provider == name and o.pricing == Pricing.ON_DEMAND]
        if not kept:
            raise SpecError(
                "single_cloud", f"no on-demand offer of provider {name!r} in the supply"
            )
        return kept
    if policy == "spot-greedy":
        kept = [o for o in offers if o.pricing == Pricing.SPOT]
        if not kept:
            raise SpecError("supply", "no spot offer for the spot-greedy policy")
        return kept
    return list(offers)
