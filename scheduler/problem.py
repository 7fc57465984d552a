"""The scheduler's input and output: jobs, offer pools, candidates, quotas, budgets, plans.

The core (model, solve, validate, baselines, explain) sees only these values; it knows
nothing of specs or the estimator. Candidates are stored column-wise (numpy arrays) because
a fleet of a thousand jobs against ten thousand pools has millions of them.

A candidate belongs to a job *shape*, not to one job: jobs with the same shape (same
estimate inputs, constraints and deadline) share every candidate, which is what lets the
model aggregate identical jobs.

Training candidate: one gang of ``nodes`` nodes in one pool for ``hours``; a job takes at
most one. Inference candidate: one *unit* (``nodes`` nodes holding ``replicas`` replicas
that serve ``rate`` requests/s at the SLO) for the demand key ``area``; a job takes any
integer number of units, mixing GPU types and regions.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np

TRAINING = "training"
INFERENCE = "inference"


def placement_weight(priority: int) -> int:
    """What placing one job of ``priority`` is worth against leaving it out: 1 + its
    priority (negative priorities count as 0). Penalties scale with it, and a plan's
    placement is measured in it."""
    return 1 + max(priority, 0)


@dataclass(frozen=True)
class Pool:
    """Offers with the same provider, zone, instance type and pricing, with a node capacity."""

    provider: str
    region: str
    zone: str
    instance_type: str
    pricing: str
    gpu: str | None
    gpus_per_node: int
    price_per_hour: float  # per node
    capacity: int  # nodes still free for this plan
    interconnect_gbps: float | None = None
    rdma: str = "none"
    offer_id: int | None = None
    vcpus: int | None = None
    memory_gib: float | None = None  # host memory per node

    @property
    def key(self) -> str:
        zone = self.zone or "-"
        return f"{self.provider}/{self.region}/{zone}/{self.instance_type}/{self.pricing}"

    @property
    def label(self) -> str:
        """Short human name, e.g. ``p5.48xlarge/use1-az4``."""
        return f"{self.instance_type}/{self.zone or self.region}"


@dataclass(frozen=True)
class Job:
    """One pending job as the scheduler sees it.

    ``demand`` (inference only) is ((demand key, requests/s), ...); a key is a user area
    (``us``) or a region. The constraint fields are repeated here so the validator can check
    every candidate the plan uses against them.
    """

    id: int
    name: str
    team: str
    priority: int
    shape: int  # index into Problem.shapes
    kind: str = TRAINING
    demand: tuple[tuple[str, float], ...] = ()
    min_replicas: int = 0
    spot: bool = False
    min_interconnect_gbps: float | None = None
    max_nodes: int | None = None
    deadline_hours: float | None = None
    budget: float | None = None
    gpus: tuple[str, ...] = ()  # allowed GPU types; empty: any
    providers: tuple[str, ...] = ()
    no_candidate_reason: str | None = None  # set by candidates.py when none survived


@dataclass(frozen=True)
class Quota:
    """At most ``limit`` GPUs in pools matching provider (and region, GPU family, pricing)."""

    provider: str
    limit: float
    region: str | None = None
    family: str | None = None
    pricing: str | None = None
    name: str = ""

    def matches(self, pool: Pool) -> bool:
        return (
            pool.provider == self.provider
            and (self.region is None or pool.region == self.region)
            and (self.family is None or pool.gpu == self.family)
            and (self.pricing is None or pool.pricing == self.pricing)
        )

    @property
    def label(self) -> str:
        parts = [self.provider, self.region or "all regions", self.family or "all GPUs"]
        return self.name or "quota " + "/".join(parts)


_COLUMNS = (
    "shape",
    "pool",
    "nodes",
    "hours",
    "cost",
    "gpus",
    "area",
    "rate",
    "replicas",
    "overhead",
)
CANDIDATE_DTYPES = {
    "shape": np.int32,
    "pool": np.int32,
    "nodes": np.int32,
    "hours": np.float64,
    "cost": np.float64,
    "gpus": np.int32,
    "area": np.int16,
    "rate": np.float64,
    "replicas": np.int32,
    "overhead": np.float64,
}


@dataclass
class Candidates:
    """Column store of candidates, sorted by (shape, cost, pool, nodes).

    ``cost`` = pool price x nodes x hours x (1 + overhead); ``overhead`` is the expected
    spot recovery overhead (0 for on-demand). ``area`` indexes the job's demand keys
    (-1 for training); ``rate`` and ``replicas`` are per unit (0 for training).
    """

    shape: np.ndarray
    pool: np.ndarray
    nodes: np.ndarray
    hours: np.ndarray
    cost: np.ndarray
    gpus: np.ndarray
    area: np.ndarray
    rate: np.ndarray
    replicas: np.ndarray
    overhead: np.ndarray
    starts: np.ndarray = field(init=False)  # candidates of shape s: starts[s]:starts[s+1]

    @classmethod
    def from_rows(cls, rows: Sequence[tuple[Any, ...]], n_shapes: int) -> Candidates:
        """Build from tuples in ``_COLUMNS`` order (any order of rows)."""
        cols: list[Sequence[Any]] = (
            list(zip(*rows, strict=True)) if rows else [[] for _ in _COLUMNS]
        )
        arrays = {
            name: np.asarray(col, dtype=CANDIDATE_DTYPES[name])
            for name, col in zip(_COLUMNS, cols, strict=True)
        }
        return cls.from_arrays(arrays, n_shapes)

    @classmethod
    def from_arrays(cls, arrays: dict[str, np.ndarray], n_shapes: int) -> Candidates:
        """Build from one array per column (a missing one is filled in); the arrays are
        taken out of ``arrays`` as each is sorted, so that at 10^7 candidates the input and
        the table are never both held whole."""
        size = len(arrays["shape"])
        order = np.lexsort(
            tuple(np.asarray(arrays[name]) for name in ("nodes", "pool", "cost", "shape"))
        )
        full = {}
        for name in _COLUMNS:
            value, dtype = arrays.pop(name, None), CANDIDATE_DTYPES[name]
            if value is None:
                full[name] = np.full(size, -1 if name == "area" else 0, dtype=dtype)
            else:
                full[name] = np.asarray(value, dtype=dtype)[order]
            del value
        del order
        table = cls(**full)
        table.starts = np.searchsorted(table.shape, np.arange(n_shapes + 1)).astype(np.int64)
        return table

    def __len__(self) -> int:
        return len(self.shape)

    def of_shape(self, shape: int) -> range:
        return range(int(self.starts[shape]), int(self.starts[shape + 1]))


@dataclass
class Problem:
    jobs: list[Job]
    pools: list[Pool]
    candidates: Candidates
    n_shapes: int
    demand_keys: dict[int, tuple[str, ...]] = field(default_factory=dict)  # shape -> keys
    quotas: list[Quota] = field(default_factory=list)
    budgets: dict[str, float] = field(default_factory=dict)  # team -> dollars left
    max_provider_share: float | None = None  # None or 1.0: no cap
    share_on: Literal["gpus", "spend"] = "gpus"
    # what live allocations already hold per provider, in the share's unit (GPUs, or
    # dollars of estimated cost): the cap is on each provider's share of the whole fleet
    held: dict[str, float] = field(default_factory=dict)
    seed: int = 0
    # pools whose offers do not state their fabric: the Gbps multi-node estimates assumed
    assumed_fabric_gbps: dict[int, float] = field(default_factory=dict)

    def penalty(self, job: Job) -> float:
        """Cost of leaving ``job`` unplaced: above any placement, growing with priority."""
        return self.penalty_scale * placement_weight(job.priority)

    def placed_weight(self, plan: Plan) -> int:
        """The priority weight of the jobs ``plan`` places (``placement_weight``)."""
        return sum(placement_weight(j.priority) for j in self.jobs if j.id not in plan.unplaced)

    @property
    def penalty_scale(self) -> float:
        """Ten times the dearest placement of any one job (training gang or serving mix)."""
        cached = getattr(self, "_penalty_scale", None)
        if cached is None:
            c = self.candidates
            top = 1.0
            training = c.area < 0
            if training.any():
                top = max(top, float(c.cost[training].max()))
            for job in self.jobs:
                if job.kind != INFERENCE:
                    continue
                rows = c.of_shape(job.shape)
                if len(rows) == 0:
                    continue
                costs, rates = c.cost[rows.start : rows.stop], c.rate[rows.start : rows.stop]
                worst = float(np.max(costs / np.maximum(rates, 1e-9)))
                total = sum(rate for _, rate in job.demand)
                top = max(top, worst * total + float(costs.max()) * (job.min_replicas + 1))
            cached = 10.0 * top
            self._penalty_scale = cached
        return cached

    @property
    def share_cap(self) -> float | None:
        share = self.max_provider_share
        return share if share is not None and share < 1.0 else None

    def share_room(self, provider: str) -> float:
        """How far ``provider``'s new placements may pass the cap's share of all new ones.

        The fleet rule new_v + held_v <= cap x (new + held) is new_v - cap x new <=
        cap x held - held_v. A provider already above the cap through what it holds gets
        room 0 rather than less (a plan cannot move what is running): it takes at most the
        cap's share of what is new, so its share of the fleet only falls."""
        share = self.share_cap
        if share is None:
            return math.inf
        return max(share * sum(self.held.values()) - self.held.get(provider, 0.0), 0.0)

    @property
    def providers(self) -> list[str]:
        return sorted({p.provider for p in self.pools})


@dataclass(frozen=True)
class Assignment:
    """``count`` units of candidate ``candidate`` given to job ``job`` (1 for training)."""

    job: int
    candidate: int
    count: int = 1


@dataclass
class Plan:
    assignments: list[Assignment]
    unplaced: dict[int, str]  # job id -> reason in words
    objective: float  # cost + penalties of unplaced jobs
    cost: float
    lp_bound: float | None = None
    gap: float | None = None
    status: str = "feasible"
    solver: str = ""
    solve_seconds: float = 0.0
    clock_stop: bool = False  # the wall-clock safety stop, not the work limits, ended a step
    # Placement and cost apart. Placement in priority weight (``placement_weight``): what
    # the plan places, and the most any plan can place (an LP bound; None where not
    # computed, as for the baselines' plans). The cost gap over the jobs the plan
    # places: against the bound less the penalties of the jobs it leaves out, or, where
    # pricing converged and it is larger, the LP's cost of its own placement (objective
    # less its fractional penalties) or, where the LP places more, the LP's least cost of
    # placing what the plan places.
    placed_weight: int = 0
    most_placeable: int | None = None
    cost_gap: float | None = None
    timings: dict[str, float] = field(default_factory=dict)
    explain: dict[int, dict[str, Any]] = field(default_factory=dict)

    def by_job(self) -> dict[int, list[Assignment]]:
        out: dict[int, list[Assignment]] = {}
        for a in self.assignments:
            out.setdefault(a.job, []).append(a)
        return out
