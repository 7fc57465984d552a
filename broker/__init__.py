"""gpubroker: a multi-cloud GPU broker and cost-aware fleet scheduler for LLM work.

``from broker import Broker, JobView, PlanReport`` gives the SDK and the types its methods
return. Each name is imported on first use (a module ``__getattr__``), so ``import broker``
(and ``gpubroker --help``, which imports ``broker.cli``) loads no service, database or
solver module.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

# Exported name -> the module that defines it.
_EXPORTS: dict[str, str] = {
    "Broker": "broker.sdk",
    "Budgets": "broker.sdk",
    "ReportSchedules": "broker.sdk",
    "Settings": "broker.config",
    "JobSpec": "workloads.spec",  # TrainingJob | InferenceJob
    "TrainingJob": "workloads.spec",
    "InferenceJob": "workloads.spec",
    "BudgetView": "broker.services.budgets",
    "CalibrationView": "broker.services.planning.calibrations",
    "GpuSummary": "broker.services.offers.values",
    "ImportReport": "broker.services.offers.imports",
    "OfferView": "broker.services.offers.values",
    "ProviderCheck": "broker.services.offers.check",
    "Daemon": "broker.services.daemon",
    "EstimateReport": "broker.services.planning.estimates",
    "JobSummary": "broker.services.execution.summary",
    "EventView": "broker.services.jobs.store",
    "JobHandle": "broker.services.execution.handle",
    "JobView": "broker.services.jobs.store",
    "PlanReport": "broker.services.planning.plan",
    "ScheduleResult": "broker.services.planning.plan",
    "ReconcileReport": "broker.services.execution.reconcile",
    "RefreshProgress": "broker.services.offers.refresh",
    "RefreshReport": "broker.services.offers.refresh",
    "Report": "broker.services.reports.render",
    "MadeReport": "broker.services.reports.schedules",
    "ScheduleView": "broker.services.reports.schedules",
    "EndpointView": "broker.services.execution.endpoints",
    "JobResources": "broker.services.reports.status",
    "Status": "broker.services.reports.status",
}

__all__ = [
    "Broker",
    "BudgetView",
    "Budgets",
    "CalibrationView",
    "Daemon",
    "EndpointView",
    "EstimateReport",
    "EventView",
    "GpuSummary",
    "ImportReport",
    "InferenceJob",
    "JobHandle",
    "JobResources",
    "JobSpec",
    "JobSummary",
    "JobView",
    "MadeReport",
    "OfferView",
    "PlanReport",
    "ProviderCheck",
    "ReconcileReport",
    "RefreshProgress",
    "RefreshReport",
    "Report",
    "ReportSchedules",
    "ScheduleResult",
    "ScheduleView",
    "Settings",
    "Status",
    "TrainingJob",
    "__version__",
]

if TYPE_CHECKING:
    from broker.config import Settings
    from broker.sdk import Broker, Budgets, ReportSchedules
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
    from workloads.spec import InferenceJob, JobSpec, TrainingJob


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'broker' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value  # later look-ups skip this function
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *_EXPORTS})
