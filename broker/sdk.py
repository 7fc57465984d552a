"""The Python SDK: ``from broker import Broker``.

A thin facade over ``broker.services``: every public method returns dataclasses, takes
plain Python values and raises ``broker.errors`` types. The CLI is built on it. Services
are imported inside methods so that importing the SDK stays cheap.
"""

from __future__ import annotations

import builtins
from collections.abc import Mapping
from functools import cached_property
from typing import TYPE_CHECKING

from broker.config import Settings, load_settings

if TYPE_CHECKING:
    from collections.abc import Callable, Sequence
    from datetime import datetime, timedelta
    from decimal import Decimal
    from pathlib import Path

    from broker.db.engine import Database
    from broker.domain import Pricing
    from broker.services.budgets import BudgetView
    from broker.services.daemon import Daemon
    from broker.services.execution.endpoints import EndpointView
    from broker.services.execution.handle import JobHandle
    from broker.services.execution.reconcile import ReconcileReport
    from broker.services.execution.summary import JobSummary
    from broker.services.jobs.store import EventView, JobView
    from broker.services.offers.check import ProviderCheck
    from broker.services.offers.imports import ImportReport
    from broker.services.offers.refresh import RefreshProgress, RefreshReport
    from broker.services.offers.values import GpuSummary, OfferView
    from broker.services.planning.calibrations import CalibrationView
    from broker.services.planning.estimates import EstimateReport
    from broker.services.planning.plan import PlanReport, ScheduleResult
    from broker.services.reports.render import Report
    from broker.services.reports.schedules import MadeReport, ScheduleView
    from broker.services.reports.status import JobResources, Status
    from workloads.spec import JobSpec


class Broker:
    """One broker over one database.

    >>> broker = Broker()                      # settings from GPUBROKER_* and config.toml
    >>> broker = Broker(database_url="sqlite:///fleet.db")
    """

    def __init__(
        self,
        settings: Settings | None = None,
        *,
        home: str | None = None,
        database_url: str | None = None,
        env: Mapping[str, str] | None = None,
    ) -> None:
        if settings is None:
            import os

            merged = dict(os.environ if env is None else env)
            if home is not None:
                merged["GPUBROKER_HOME"] = str(home)
            if database_url is not None:
                merged["GPUBROKER_DATABASE_URL"] = database_url
            settings = load_settings(merged)
        self.settings = settings

    @cached_property
    def db(self) -> Database:
        from broker.db.engine import Database

        self.settings.ensure_home()
        return Database(self.settings.database_url)

    def close(self) -> None:
        if "db" in self.__dict__:
            self.db.dispose()

    def __enter__(self) -> Broker:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # --- offers and providers (catalog, refresh, check) ---

    def offers(
        self,
        *,
        gpus: str | Sequence[str] = (),
        min_gpus: int | None = None,
        max_gpus: int | None = None,
        min_gpu_memory: float | None = None,
        providers: str | Sequence[str] = (),
        regions: str | Sequence[str] = (),
        pricing: Pricing | str | None = None,
        max_price: Decimal | float | None = None,
        min_interconnect: float | None = None,
        rdma: bool = False,
        include_stale: bool = True,
        sort: str = "price",
        limit: int | None = None,
    ) -> list[OfferView]:
        """Offers matching every filter given (see ``gpubroker offers --help``): GPU names or
        aliases, GPUs per node, GiB per GPU, providers, region globs (``"us-*"``), pricing,
        the most per node-hour, Gbps between nodes, an RDMA-class fabric, whether prices past
        their age count; sorted by ``sort``. Loads the bundled catalog into an empty
        database first."""
        from decimal import Decimal

        from broker.domain import Pricing
        from broker.errors import UserError
        from broker.services.offers.bootstrap import ensure_catalog
        from broker.services.offers.query import query_offers
        from broker.services.offers.values import OfferFilter

        if pricing is not None and pricing not in set(Pricing):
            raise UserError(f"pricing: {pricing!r} is not one of {', '.join(Pricing)}")
        ensure_catalog(self.db, self.settings)
        filters = OfferFilter(
            gpus=_names(gpus),
            min_gpus=min_gpus,
            max_gpus=max_gpus,
            min_gpu_memory=min_gpu_memory,
            providers=_names(providers),
            regions=_names(regions),
            pricing=None if pricing is None else Pricing(pricing),
            max_price=None if max_price is None else Decimal(str(max_price)),
            min_interconnect=min_interconnect,
            rdma=rdma,
            include_stale=include_stale,
            sort=sort,
            limit=limit,
        )
        return query_offers(self.db, filters)

    def offers_summary(self) -> list[GpuSummary]:
        """One row per GPU: cheapest on-demand and spot price per GPU-hour, and where."""
        from broker.services.offers.bootstrap import ensure_catalog
        from broker.services.offers.query import summary

        ensure_catalog(self.db, self.settings)
        return summary(self.db)

    def import_offers(
        self, path: str, fmt: str, provider: str | None = None, strict: bool = False
    ) -> ImportReport:
        """Import a SkyPilot or gpuhunt catalog CSV (a full re-import of its provider)."""
        from broker.services.offers.imports import import_file

        return import_file(self.db, path, fmt, provider=provider, strict=strict)

    def refresh(
        self,
        providers: Sequence[str] = ("all",),
        regions: Sequence[str] | None = None,
        progress: Callable[[RefreshProgress], None] | None = None,
    ) -> RefreshReport:
        """Refresh offers from live providers, region by region (see ``offers refresh``)."""
        from broker.services.offers import refresh
        from broker.services.offers.bootstrap import ensure_catalog

        ensure_catalog(self.db, self.settings)
        return refresh.refresh(
            self.db, self.settings, list(providers), list(regions) if regions else None, progress
        )

    def check(self, probe: bool = False) -> list[ProviderCheck]:
        """Which providers are usable, with which credential source and endpoint; with
        `probe`, each makes one cheap API call to prove its credentials work."""
        from broker.services.offers.check import check

        return check(self.settings, probe=probe)

    # --- estimates and calibration ---

    def load_spec(self, spec_or_path: object) -> JobSpec:
        """A validated spec from a spec object, a dict, or the path of a YAML file."""
        from pathlib import Path

        from workloads.spec import InferenceJob, TrainingJob, load_spec, parse_spec

        if isinstance(spec_or_path, TrainingJob | InferenceJob):
            return spec_or_path
        if isinstance(spec_or_path, str | Path):
            return load_spec(spec_or_path)
        return parse_spec(spec_or_path)

    def estimate(
        self,
        spec_or_path: object,
        gpu: str | None = None,
        nodes: int | None = None,
        offer_id: int | None = None,
    ) -> EstimateReport:
        """GPUs, nodes, hours and cost per GPU type from the current offers (or one target)."""
        from broker.services.planning.estimates import estimate_spec

        spec = self.load_spec(spec_or_path)
        return estimate_spec(self.db, self.settings, spec, gpu=gpu, nodes=nodes, offer_id=offer_id)

    def calibrate(
        self, steps: int = 20, *, preset: str | None = None, threads: int | None = None
    ) -> CalibrationView:
        """Train the transformer briefly here and store the achieved FLOP/s for this device."""
        from broker.services.planning.calibrations import run_calibration

        return run_calibration(self.db, steps=steps, preset=preset, threads=threads)

    def calibrations(self) -> list[CalibrationView]:
        from broker.services.planning.calibrations import list_calibrations

        return list_calibrations(self.db)

    # --- planning ---

    def plan(
        self,
        *,
        solver: str | None = None,
        time_limit: float | None = None,
        max_provider_share: float | None = None,
        job_ids: Sequence[int] | None = None,
    ) -> PlanReport:
        """Plan the pending jobs against current offers without committing anything."""
        from broker.services.planning.plan import plan

        return plan(
            self.db,
            self.settings,
            solver=solver,
            time_limit=time_limit,
            max_provider_share=max_provider_share,
            job_ids=job_ids,
        )

    def schedule(
        self,
        *,
        solver: str | None = None,
        time_limit: float | None = None,
        max_provider_share: float | None = None,
        job_ids: Sequence[int] | None = None,
    ) -> ScheduleResult:
        """Plan and commit: jobs PENDING -> PLANNED with their allocations stored."""
        from broker.services.planning.schedule import schedule

        return schedule(
            self.db,
            self.settings,
            solver=solver,
            time_limit=time_limit,
            max_provider_share=max_provider_share,
            job_ids=job_ids,
        )

    # --- jobs and execution ---

    def submit(
        self, spec_or_path: object, *, wait: bool = False, progress: object = None
    ) -> JobHandle:
        """Store a job (a spec object, a dict, or a YAML path); ``wait`` plans and runs it."""
        from pathlib import Path

        from broker.services.execution.handle import JobHandle
        from broker.services.jobs import store as jobs
        from workloads.spec import parse_spec

        base = Path(spec_or_path).parent if isinstance(spec_or_path, str | Path) else None
        spec = jobs.prepare(self.load_spec(spec_or_path), self.settings, base=base)
        if spec.kind == "inference" and spec.model_from is not None:
            from broker.services.execution import endpoints as serving
            from workloads.spec import spec_to_dict

            spec = parse_spec(serving.resolve_model_from(self.db, spec_to_dict(spec)))
        view = jobs.submit(self.db, spec)
        handle = JobHandle(self.db, self.settings, view.id)
        if wait:
            handle.wait(progress)
        return handle

    def jobs(self, state: str | list[str] | None = None) -> list[JobView]:
        from broker.services.jobs import store as jobs

        states = [state] if isinstance(state, str) else state
        return jobs.list_jobs(self.db, states)

    def job(self, job_id: int) -> JobHandle:
        """A handle on a stored job: ``.view()``, ``.state``, ``.wait()``, ``.logs()``,
        ``.cancel()``. Raises NotFound for an unknown id."""
        from broker.services.execution.handle import JobHandle
        from broker.services.jobs import store as jobs

        jobs.get(self.db, job_id)
        return JobHandle(self.db, self.settings, job_id)

    def endpoints(self, job_id: int | None = None, *, live: bool = True) -> list[EndpointView]:
        """Serving endpoints (one per allocation): job_id, area, url, replicas, state and
        traffic; ``live=False`` includes stopped and lost ones."""
        from broker.services.execution import endpoints as serving

        return serving.endpoints(self.db, job_id, live=live)

    def job_summary(self, job_id: int) -> JobSummary:
        """Steps, first and last loss, latest checkpoint and metered cost of a job."""
        from broker.services.execution.summary import job_summary

        return job_summary(self.db, self.settings, job_id)

    def job_output(self, job_id: int, offset: int = 0) -> tuple[list[str], int]:
        """The run's stdout and stderr after byte ``offset`` (kept under the run folder,
        so also after the nodes are gone), and the offset to read on from."""
        from broker.services.execution import ray_jobs
        from broker.services.execution.run_context import run_dir
        from broker.services.jobs import store as jobs

        jobs.get(self.db, job_id)  # NotFound for an unknown job
        return ray_jobs.read_output(run_dir(self.settings, job_id), offset)

    def job_events(self, job_id: int, after_id: int = 0) -> list[EventView]:
        from broker.services.jobs import store as jobs

        return jobs.events(self.db, job_id, after_id)

    def cancel(self, job_id: int) -> JobView:
        from broker.services.execution.cancel import cancel

        return cancel(self.db, self.settings, job_id)

    def status(self) -> Status:
        """Live allocations and instances per provider: age, $/h, cost so far, burn rate."""
        from broker.services.reports import status

        return status.live_status(self.db)

    def job_resources(self, job_ids: Sequence[int]) -> dict[int, JobResources]:
        """Per job: GPU, nodes, provider and region of its newest allocation; cost so far
        (metered plus instances still up) and its estimate."""
        from broker.services.reports import status

        return status.job_resources(self.db, job_ids)

    def run_pending(self) -> list[int]:
        """Plan every PENDING job and run the planned allocations in this process."""
        from broker.services.execution.job_runs import run_pending

        return run_pending(self.db, self.settings)

    def reconcile(
        self, providers: list[str] | None = None, *, dry_run: bool = False
    ) -> ReconcileReport:
        """Terminate what nothing owns; with ``dry_run``, only report what it would do."""
        from broker.services.execution import reconcile

        return reconcile.reconcile(self.db, self.settings, providers, dry_run=dry_run)

    # --- reports, budgets and schedules ---

    def report(
        self,
        *,
        since: str | timedelta | None = None,
        start: str | datetime | None = None,
        end: str | datetime | None = None,
        group_by: str | Sequence[str] | None = None,
        top: int = 10,
    ) -> Report:
        """Cost report from the usage ledger over ``since`` (e.g. ``"7d"``, ending now or at
        ``end``) or ``[start, end)``; grouped by team, provider, region, gpu and/or job."""
        from broker.services.reports.build import build_report
        from broker.services.reports.windows import parse_group_by, window

        begin, stop = window(since=since, start=start, end=end)
        return build_report(self.db, begin, stop, group_by=parse_group_by(group_by), top=top)

    @cached_property
    def budgets(self) -> Budgets:
        """Team budgets: ``set(team, amount, period)``, ``list()``, ``remaining(team)``."""
        return Budgets(self)

    @cached_property
    def schedules(self) -> ReportSchedules:
        """Scheduled reports: ``add(cron, out_dir=...)``, ``list()``, ``remove(id)``."""
        return ReportSchedules(self)

    def daemon(self, *, interval: float = 30.0, refresh_interval: float = 3600.0) -> Daemon:
        """The daemon loop over this broker's database; call ``.run()`` or ``.tick()``."""
        from broker.services.daemon import Daemon

        return Daemon(self.db, self.settings, interval=interval, refresh_interval=refresh_interval)


class Budgets:
    """``broker.budgets``: spending caps per team, enforced by planning and execution."""

    def __init__(self, broker: Broker) -> None:
        self._broker = broker

    def set(self, team: str, amount: Decimal | str | int, period: str = "month") -> BudgetView:
        """Create or replace ``team``'s budget of ``amount`` USD per ``month`` or ``week``."""
        from broker.services import budgets

        return budgets.set_budget(self._broker.db, team, amount, period)

    def list(self) -> list[BudgetView]:
        """Every budget with what is spent and left in its current period."""
        from broker.services import budgets

        return budgets.list_budgets(self._broker.db)

    def remaining(self, team: str, at: datetime | None = None) -> Decimal | None:
        """What ``team`` may still spend now (or at ``at``); None when it has no budget."""
        from broker.domain import utcnow
        from broker.services import budgets

        return budgets.remaining(self._broker.db, team, at or utcnow())

    def remove(self, team: str) -> None:
        from broker.services import budgets

        budgets.remove_budget(self._broker.db, team)


class ReportSchedules:
    """``broker.schedules``: reports made by the daemon at cron times (UTC)."""

    def __init__(self, broker: Broker) -> None:
        self._broker = broker

    def add(
        self,
        cron: str,
        *,
        out_dir: str | Path,
        period: str = "7d",
        format: str = "html",
        webhook: str | None = None,
        email: str | Sequence[str] | None = None,
        group_by: str = "team,provider",
    ) -> ScheduleView:
        """Make a ``format`` report of the last ``period`` in ``out_dir`` at each cron time;
        with ``email``, also send it to those addresses (the ``smtp_*`` settings)."""
        from broker.services.reports import schedules

        return schedules.add_schedule(
            self._broker.db,
            cron,
            period=period,
            fmt=format,
            out_dir=out_dir,
            webhook=webhook,
            email=email,
            group_by=group_by,
            home=self._broker.settings.home,
        )

    def list(self) -> list[ScheduleView]:
        from broker.services.reports import schedules

        return schedules.list_schedules(self._broker.db)

    def remove(self, schedule_id: int) -> None:
        from broker.services.reports import schedules

        schedules.remove_schedule(self._broker.db, schedule_id, self._broker.settings.home)

    def run_due(self, now: datetime | None = None) -> builtins.list[MadeReport]:
        """Make the reports that are due now (the daemon does this every tick)."""
        from broker.services.reports import schedules

        return schedules.run_due(self._broker.db, now=now, settings=self._broker.settings)


def _names(value: str | Sequence[str]) -> tuple[str, ...]:
    return (value,) if isinstance(value, str) else tuple(value)
