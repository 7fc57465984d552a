"""GPU quotas: per-region ``NVIDIA_*_GPUS`` (on demand) and ``PREEMPTIBLE_NVIDIA_*_GPUS``
(Spot), and the project-wide ``GPUS_ALL_REGIONS`` that caps them all together."""

from __future__ import annotations

from collections.abc import Iterator, Sequence

from broker.domain import Pricing
from providers.base import QuotaRecord
from providers.gcp.errors import PROVIDER, call
from providers.gcp.families import ACCELERATORS, QUOTA_METRICS
from providers.gcp.offers import zones_by_region
from providers.gcp.session import Session
from workloads.gpus import resolve

ALL_REGIONS_METRIC = "GPUS_ALL_REGIONS"
_SPOT_PREFIX = "PREEMPTIBLE_"


def _gpu_scope(metric: str) -> tuple[str, Pricing] | None:
    """(canonical GPU, pricing) a regional metric limits, or None for other metrics."""
    pricing = Pricing.ON_DEMAND
    if metric.startswith(_SPOT_PREFIX):
        metric, pricing = metric[len(_SPOT_PREFIX) :], Pricing.SPOT
    accelerator = QUOTA_METRICS.get(metric)
    if accelerator is None:
        return None
    spec = ACCELERATORS[accelerator]
    return resolve(accelerator, spec.memory_gib).name, pricing


def region_quotas(session: Session, region: str) -> Iterator[QuotaRecord]:
    client = session.compute("RegionsClient")
    found = call(
        lambda: client.get(project=session.project, region=region, retry=None, timeout=60.0),
        what=f"get region {region}",
        policy=session.policy,
    )
    for quota in found.quotas:
        scope = _gpu_scope(quota.metric)
        if scope is None:
            continue
        yield QuotaRecord(
            provider=PROVIDER,
            region=region,
            name=quota.metric,
            scope=scope[0],
            unit="gpus",
            limit=float(quota.limit),
            used=float(quota.usage),
            pricing=scope[1],
        )


def project_quota(session: Session) -> Iterator[QuotaRecord]:
    client = session.compute("ProjectsClient")
    project = call(
        lambda: client.get(project=session.project, retry=None, timeout=60.0),
        what="get project",
        policy=session.policy,
    )
    for quota in project.quotas:
        if quota.metric == ALL_REGIONS_METRIC:
            yield QuotaRecord(
                provider=PROVIDER,
                region="global",
                name=ALL_REGIONS_METRIC,
                scope="all",
                unit="gpus",
                limit=float(quota.limit),
                used=float(quota.usage),
            )


def list_quotas(session: Session, regions: Sequence[str] | None) -> Iterator[QuotaRecord]:
    names = list(regions) if regions else list(zones_by_region(session, None))
    yield from project_quota(session)
    for region in names:
        yield from region_quotas(session, region)
