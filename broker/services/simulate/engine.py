"""The replay of one policy on one seed: a discrete-event loop on a virtual clock.

Nothing here decides where a job goes or what it costs. Jobs are submitted with
``jobs.submit``, planned with ``planning.schedule`` (the real planner), run with
``execution.run_allocation`` against fake clouds that stand in for each provider of the
offers (one thread per allocation, see ``handoff``), and metered into the usage ledger by
the executor's teardown. The virtual clock is ``broker.domain.use_clock``: every timestamp
the services write is simulated time. What differs between policies is in ``policies``.
"""

from __future__ import annotations

import heapq
import math
import random
import time
from collections import defaultdict
from collections.abc import Callable
from dataclasses import replace
from datetime import datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

from sqlalchemy import select

from broker.config import Settings
from broker.db.engine import Database
from broker.db.models import JobRow
from broker.domain import JobState, Pricing, use_clock
from broker.errors import Infeasible
from broker.services.simulate import handoff
from broker.services.simulate.handoff import SimRun, SimRunner
from broker.services.simulate.policies import (
    BROKER,
    offers_seen,
    policy_offers,
    policy_settings,
    policy_spec,
)
from broker.services.simulate.results import RunResult
from broker.services.simulate.scenario import Arrival, LoadedScenario, arrivals
from broker.services.simulate.supply import SimPool, build_pools
from broker.services.simulate.work_left import keep_checkpointed
from scheduler.candidate_rules import RESTART_HOURS

RUNTIME_NOISE = 0.10  # a run takes its estimate x U(1 - n, 1 + n)
PREEMPTED = "preempted: the provider reclaimed the spot nodes"
RECOVERY = timedelta(hours=RESTART_HOURS)

PoolKey = tuple[str, ...]


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
        self.pools: dict[PoolKey, SimPool] = {p.key: p for p in pools}
        self.spot_pools = [p for p in pools if p.spot]
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
        self.settings = policy_settings(
            settings, policy, self.scenario, self.db.url, self.providers
        )
        self.runs: dict[int, SimRun] = {}
        self.in_pool: dict[PoolKey, dict[int, SimRun]] = defaultdict(dict)  # parked runs
        self.slots: dict[PoolKey, dict[int, int]] = defaultdict(dict)  # node slot -> allocation
        self.runner = SimRunner(self.runs)
        self.events: list[tuple[datetime, int, str, Any]] = []
        self.sequence = 0
        self.dirty = False
        self.plan_due: datetime | None = None
        self.reclaimed = False  # a run lost its nodes since the last re-plan was set
        self.plans = 0
        self.refused = 0  # plans the planner refused as infeasible
        self.deadlines: dict[int, datetime | None] = {}
        self.noise: dict[int, float] = {}
        self.open_jobs: set[int] = set()
        self.arrivals_left = 0
        self.seen: dict[PoolKey, tuple[int, Any]] = {}  # spot pool -> (capacity, price)

    # --- the loop -----------------------------------------------------------------------

    def run(self, progress: Callable[[float], None] | None = None) -> RunResult:
        began = time.perf_counter()
        with use_clock(self.clock.now):
            self._setup()
            for arrival in arrivals(self.loaded, self.seed):
                self._push(arrival.at, "arrive", arrival)
                self.arrivals_left += 1
            for tick in range(self.ticks):
                self._push(self._tick_time(tick), "tick", tick)
            for pool in self.spot_pools:
                for hours, slot in pool.preemptions:
                    at = self.scenario.start + timedelta(hours=hours)
                    self._push(at, "reclaim", (pool.key, slot))
            span = (self.horizon - self.scenario.start).total_seconds()
            last_report = -1.0
            while self.events:
                at, _, kind, payload = heapq.heappop(self.events)
                if at > self.horizon:
                    break
                if at > self.clock.now():
                    self.clock.set(at)
                getattr(self, f"_on_{kind}")(payload)
                if self.dirty:
                    self._plan_by(self._next_plan(at))
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

    def _next_plan(self, at: datetime) -> datetime:
        """The next re-plan: at the planner's next quantum, or sooner after a reclaim (a
        daemon notices a lost node within seconds; the run is back after the restart time
        the planner prices spot with)."""
        quantum = timedelta(minutes=self.scenario.planner.replan_minutes)
        due = self.scenario.start + quantum * math.ceil((at - self.scenario.start) / quantum)
        if self.reclaimed:
            self.reclaimed = False
            due = min(due, at + RECOVERY)
        return max(due, at)

    def _plan_by(self, due: datetime) -> None:
        if self.plan_due is None or due < self.plan_due:
            self.plan_due = due
            self._push(due, "plan", None)

    def _push(self, at: datetime, kind: str, payload: Any) -> None:
        self.sequence += 1
        heapq.heappush(self.events, (at, self.sequence, kind, payload))

    def _tick_time(self, tick: int) -> datetime:
        return self.scenario.start + timedelta(hours=tick * self.tick_hours)

    def _setup(self) -> None:
        from broker.services import budgets
        from broker.services.offers.upsert import upsert_offers

        self.db.ensure_schema()
        for name, provider in sorted(self.providers.items()):
            seen = offers_seen(list(provider.list_offers()), self.policy)
            upsert_offers(self.db, seen, provider=name, full=True)
        if self.policy == BROKER:  # the per-job rules stop at no budget
            for team, cfg in sorted(self.scenario.teams.items()):
                budgets.set_budget(self.db, team, cfg.budget, period=cfg.period)

    # --- events -------------------------------------------------------------------------

    def _on_arrive(self, arrival: Arrival) -> None:
        from broker.services.jobs import store as jobs
        from workloads.spec import parse_spec

        view = jobs.submit(self.db, parse_spec(policy_spec(arrival.spec, self.policy)))
        self.arrivals_left -= 1
        self.deadlines[view.id] = arrival.deadline
        self.noise[view.id] = 1.0 + RUNTIME_NOISE * (2.0 * self.rng.random() - 1.0)
        self.open_jobs.add(view.id)
        self.dirty = True

    def _on_tick(self, tick: int) -> None:
        """A refresh: the clouds' capacity and spot prices move, the offers table learns
        the pools that changed (``upsert_offers`` records each price change), and nodes
        beyond a pool's new capacity are reclaimed."""
        from broker.services.offers.upsert import upsert_offers

        changed: dict[str, list[Any]] = defaultdict(list)
        learns = self.policy == BROKER
        for pool in self.spot_pools:
            key = pool.key
            capacity, price = pool.capacity_at(tick), pool.price_at(tick)
            before = self.seen.get(key)
            if before != (capacity, price):
                self.seen[key] = (capacity, price)
                record = pool.record
                self.providers[record.provider].set_offer(
                    str(record.zone),
                    record.instance_type,
                    Pricing.SPOT,
                    capacity_nodes=capacity,
                    price_per_hour=price,
                )
                if learns or before is None or before[1] != price:  # the rules see no capacity
                    changed[record.provider].append(
                        replace(
                            record,
                            capacity_nodes=capacity if learns else None,
                            price_per_hour=price,
                            as_of=self.clock.now(),
                        )
                    )
            running = self.in_pool.get(key)
            if not running:
                continue
            live = sorted(running.values(), key=lambda r: (r.started, r.allocation_id))
            over = sum(r.nodes for r in live) - capacity
            while over > 0 and live:
                newest = live.pop()
                over -= newest.nodes
                self._end(newest, preempted=True)
        for name, records in sorted(changed.items()):
            upsert_offers(self.db, records, provider=name, full=False)
        if changed and learns:
            self.dirty = True  # the broker re-plans when prices or capacity move
        self._expire_deadlines()

    def _on_reclaim(self, where: tuple[PoolKey, int]) -> None:
        """The node in one slot of a spot pool is reclaimed: its run ends."""
        key, slot = where
        allocation_id = self.slots[key].get(slot)
        if allocation_id is not None:
            self._end(self.runs[allocation_id], preempted=True)

    def _on_finish(self, allocation_id: int) -> None:
        run = self.runs.get(allocation_id)
        if run is not None and run.parked and run.ends == self.clock.now():
            self._end(run, preempted=False)

    def _on_plan(self, _: Any) -> None:
        from broker.services.planning.schedule import schedule

        self.plan_due = None
        if not self.dirty:
            return
        self.dirty = False
        self._expire_deadlines()
        if not self._in_state(JobState.PENDING):
            return
        # For the per-job rules the planner sees no capacity, budget, share cap or deadline
        # binding two jobs together, so one call gives each job its own cheapest offer:
        # the same choice as asking for each job alone.
        self.plans += 1
        try:
            result = schedule(self.db, self.settings)
        except Infeasible:  # e.g. a share cap no plan can meet now: as a daemon, try later
            self.refused += 1
            return
        self._launch(result.allocation_ids)

    # --- runs ---------------------------------------------------------------------------

    def _in_state(self, state: JobState) -> list[int]:
        with self.db.session() as session:
            return list(
                session.scalars(
                    select(JobRow.id).where(JobRow.state == state.value).order_by(JobRow.id)
                )
            )

    def _launch(self, allocation_ids: list[int]) -> None:
        from broker.services.execution.executor import run_allocation

        def execute(allocation_id: int) -> object:
            return run_allocation(self.db, self.settings, allocation_id, runner=self.runner)

        for run in handoff.planned_runs(self.db, allocation_ids):
            allocation_id, job_id = run.allocation_id, run.job_id
            self.runs[allocation_id] = run
            handoff.start(run, execute)
            if not run.parked:  # ended while provisioning (capacity, budget): already final
                handoff.join(run)
                self._forget(run)
                continue
            run.started = self.clock.now()
            run.ends = run.started + timedelta(hours=run.hours * self.noise[job_id])
            self.in_pool[run.pool][allocation_id] = run
            sim_pool = self.pools.get(run.pool)
            if sim_pool is not None and sim_pool.spot:
                taken = self.slots[run.pool]
                free = [slot for slot in range(sim_pool.capacity) if slot not in taken]
                run.slots = tuple(free[: run.nodes])
                taken.update(dict.fromkeys(run.slots, allocation_id))
            self._push(run.ends, "finish", allocation_id)

    def _end(self, run: SimRun, *, preempted: bool) -> None:
        """Let the parked runner return: finished, or its nodes reclaimed."""
        from broker.services.execution.run_context import Outcome

        self._vacate(run)
        if preempted:
            self.reclaimed = True
            self._take_nodes(run)
            assert run.started is not None and run.ends is not None
            keep_checkpointed(self.db, run.job_id, run.started, run.ends, self.clock.now())
            handoff.finish(run, Outcome(ok=False, stop=PREEMPTED))
        else:
            handoff.finish(run, Outcome(ok=True))
        self._forget(run)

    def _vacate(self, run: SimRun) -> None:
        self.in_pool[run.pool].pop(run.allocation_id, None)
        for slot in run.slots:
            self.slots[run.pool].pop(slot, None)

    def _forget(self, run: SimRun) -> None:
        """The run is over: the broker re-plans, and a job in a final state is closed."""
        self.runs.pop(run.allocation_id, None)
        self.dirty = True
        with self.db.session() as session:
            job = session.get(JobRow, run.job_id)
            assert job is not None
            if JobState(job.state).terminal:
                self.open_jobs.discard(run.job_id)

    def _take_nodes(self, run: SimRun) -> None:
        self.providers[run.pool[0]].preempt(handoff.node_ids(self.db, run.allocation_id))

    def _expire_deadlines(self) -> None:
        """Under the broker, a job still waiting when its deadline passes is cancelled (a
        missed deadline); the per-job rules know no deadlines and run it late."""
        from broker.services.execution.cancel import cancel

        if self.policy != BROKER:
            return
        now = self.clock.now()
        due = {j for j in self.open_jobs if (d := self.deadlines.get(j)) is not None and d <= now}
        if not due:
            return
        for job_id in self._in_state(JobState.PENDING):
            if job_id in due:
                cancel(self.db, self.settings, job_id)
                self.open_jobs.discard(job_id)

    def _close(self) -> None:
        """The horizon: runs still going stop, jobs still waiting are cancelled."""
        from broker.services.execution.cancel import cancel
        from broker.services.execution.run_context import Outcome

        for run in sorted(list(self.runs.values()), key=lambda r: r.allocation_id):
            if run.parked:
                cancel(self.db, self.settings, run.job_id)
                self._vacate(run)
                handoff.finish(run, Outcome(ok=False, stop="cancelled"))
                self._forget(run)
        for job_id in self._in_state(JobState.PENDING) + self._in_state(JobState.PLANNED):
            cancel(self.db, self.settings, job_id)
        self.open_jobs.clear()
