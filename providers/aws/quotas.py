"""EC2 vCPU quotas for the GPU families, from Service Quotas, and what they allow.

EC2 limits running instances per family in vCPUs, separately for on-demand and spot:

==============  =========  ==========================================
code            pricing    quota
==============  =========  ==========================================
L-417A185B      on-demand  Running On-Demand P instances
L-DB2E81BA      on-demand  Running On-Demand G and VT instances
L-7212CCBC      spot       All P Spot Instance Requests
L-3819A6DF      spot       All G and VT Spot Instance Requests
==============  =========  ==========================================
"""

from __future__ import annotations

from dataclasses import dataclass

from broker.domain import Pricing
from providers.base import QuotaRecord

PROVIDER = "aws"
SERVICE_CODE = "ec2"


@dataclass(frozen=True)
class QuotaCode:
    code: str
    family: str  # "P" or "G" (G and VT share one quota)
    pricing: Pricing
    title: str


QUOTA_CODES: tuple[QuotaCode, ...] = (
    QuotaCode("L-417A185B", "P", Pricing.ON_DEMAND, "Running On-Demand P instances"),
    QuotaCode("L-DB2E81BA", "G", Pricing.ON_DEMAND, "Running On-Demand G and VT instances"),
    QuotaCode("L-7212CCBC", "P", Pricing.SPOT, "All P Spot Instance Requests"),
    QuotaCode("L-3819A6DF", "G", Pricing.SPOT, "All G and VT Spot Instance Requests"),
)


def quota_family(instance_type: str) -> str | None:
    """'p5.48xlarge' -> 'P'; 'g5.xlarge', 'gr6.4xlarge', 'vt1.3xlarge' -> 'G'; else None."""
    family = instance_type.split(".", 1)[0].lower()
    if family.startswith("p"):
        return "P"
    if family.startswith(("g", "vt")):
        return "G"
    return None


def quota_code(instance_type: str, pricing: Pricing) -> QuotaCode | None:
    family = quota_family(instance_type)
    for quota in QUOTA_CODES:
        if quota.family == family and quota.pricing == pricing:
            return quota
    return None


def quota_record(region: str, quota: QuotaCode, value: float, used: float = 0.0) -> QuotaRecord:
    return QuotaRecord(
        provider=PROVIDER,
        region=region,
        name=quota.code,
        scope=quota.family,
        unit="vcpus",
        limit=float(value),
        used=used,
        pricing=quota.pricing,
    )


def nodes_that_fit(quota: QuotaRecord, vcpus_per_node: int) -> int:
    """How many more nodes of ``vcpus_per_node`` vCPUs the quota leaves room for."""
    if vcpus_per_node <= 0:
        raise ValueError("vcpus_per_node must be > 0")
    return max(0, int((quota.limit - quota.used) // vcpus_per_node))
