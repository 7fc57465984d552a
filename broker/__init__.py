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
    "CalibrationView": "broker.services.calibrations",
    "GpuSummary": "broker.services.catalog",
    "ImportReport": "broker.services.catalog",
    "OfferView": "broker.services.catalog",
    "ProviderCheck": "broker.services.check",
    "Daemon": "broker.services.daemon",
    "EstimateReport": "broker.services.estimates",
    "JobSummary": "broker.services.execution",
    "EventView": "broker.services.jobs",
    "JobHandle": "broker.services.jobs",
    "JobView": "broker.services.jobs",
    "PlanReport": "broker.services.planning",
    "ScheduleResult": "broker.services.planning",
    "ReconcileReport": "broker.services.reconcile",
    "RefreshProgress": "broker.services.refresh",
    "RefreshReport": "broker.services.refresh",
    "Report": "broker.services.reports",
    "MadeReport": "broker.services.schedules",
    "ScheduleView": "broker.services.schedules",
    "EndpointView": "broker.services.serving",
    "JobResources": "broker.services.status",
    "Status": "broker.services.status",
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
    from broker.services.calibrations import CalibrationView
    from broker.services.catalog import GpuSummary, ImportReport, OfferView
    from broker.services.check import ProviderCheck
    from broker.services.daemon import Daemon
    from broker.services.estimates import EstimateReport
    from broker.services.execution import JobSummary
    from broker.services.jobs import EventView, JobHandle, JobView
    from broker.services.planning import PlanReport, ScheduleResult
    from broker.services.reconcile import ReconcileReport
    from broker.services.refresh import RefreshProgress, RefreshReport
    from broker.services.reports import Report
    from broker.services.schedules import MadeReport, ScheduleView
    from broker.services.serving import EndpointView
    from broker.services.status import JobResources, Status
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
