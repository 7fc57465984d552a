"""What ``estimate`` answers: one option per GPU type (and user area), and why the others
cannot run the job."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, replace
from decimal import Decimal
from typing import Any


@dataclass(frozen=True)
class Option:
    """One way to run the job: an offer, a node count and what it would take."""

    gpu: str | None
    gpus_per_node: int
    nodes: int
    gpus: int
    provider: str | None
    region: str | None
    zone: str | None
    instance_type: str | None
    pricing: str | None
    offer_id: int | None
    price_per_hour: Decimal | None  # per node
    hours: float | None  # training: to finish, spot recovery included; inference: None
    cost: Decimal | None  # training: total; inference: per hour
    step_seconds: float | None
    assumed_mfu: float | None
    mfu: float | None
    memory_per_gpu_gib: float | None
    memory_headroom_gib: float | None
    interconnect_gbps: float | None
    rdma: bool
    spot_overhead: float
    feasible: bool
    reason: str | None
    replicas: int | None = None  # inference
    gpus_per_replica: int | None = None
    requests_per_second: float | None = None  # per replica
    ttft_ms: float | None = None
    tpot_ms: float | None = None
    area: str | None = None  # inference: the user area these replicas serve
    # the offer does not state its fabric: the Gbps the multi-node hours assume instead
    assumed_interconnect_gbps: float | None = None

    def as_row(self) -> dict[str, Any]:
        return asdict(self)

    def ruled_out(self, reason: str) -> Option:
        return replace(self, feasible=False, reason=reason)


def rank(option: Option) -> tuple[int, Decimal, int, float]:
    """Feasible first, then cheapest; at equal cost the fewer nodes, then the faster."""
    return (
        0 if option.feasible else 1,
        option.cost if option.cost is not None else Decimal("Infinity"),
        option.nodes,
        option.hours or 0.0,
    )


@dataclass(frozen=True)
class InfeasibleGpu:
    """A GPU type (None: CPU-only) that cannot run the job, and why."""

    gpu: str | None
    reason: str


@dataclass(frozen=True)
class EstimateReport:
    job: str
    kind: str
    params: int | None  # None: user code, whose model the broker does not know
    tokens: int | None
    steps: int | None
    flops_total: float | None
    min_gpus: dict[str, int | None]
    options: list[Option]  # the cheapest per GPU type, cheapest first
    infeasible: list[InfeasibleGpu]
    calibrations: list[str] = field(default_factory=list)  # devices whose calibration was used

    def to_dict(self) -> dict[str, Any]:
        return {
            "job": self.job,
            "kind": self.kind,
            "params": self.params,
            "tokens": self.tokens,
            "steps": self.steps,
            "flops_total": self.flops_total,
            "min_gpus": dict(self.min_gpus),
            "options": [option.as_row() for option in self.options],
            "infeasible": [asdict(item) for item in self.infeasible],
            "calibrations": list(self.calibrations),
        }
