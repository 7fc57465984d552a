"""Job specs x offer pools -> a ``Problem``, with hours and costs from ``workloads.estimate``.

Training: for each pool whose GPU, memory, provider, region and pricing the job allows, the
node counts worth trying are the smallest that holds the model and its doubles (or the
count the spec fixes). A multi-node gang stays in one pool (one zone, or one region where
the provider names no zones) and, when the job asks for it, needs a fabric of at least
``min_interconnect_gbps``; its hours come from the estimator's
communication model, so a slow fabric makes it slower and dearer. Candidates that miss the
deadline or the job's own budget are not generated. Spot candidates (only for jobs that
allow spot) carry the expected preemption overhead.

Inference: per pool and demand key (user area or region, and size class when the spec has
a mix), one unit is a node holding as many replicas as fit, serving their combined
requests/s of that class at the SLO for the horizon; so each class goes to the GPU type
that serves it cheapest. A spec's ``gpus_per_replica`` fixes the replica's width.

Jobs with the same estimate inputs, constraints, deadline and budget share one *shape*.
When a job keeps no candidate, the stage that removed the last one becomes its reason.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime

from scheduler.candidate_rules import (
    CandidateSettings,
    TrainingRules,
    pool_exclusion,
    serving_spot_overhead,
    training_exclusion,
)
from scheduler.problem import INFERENCE, TRAINING, Candidates, Job, Pool, Problem, Quota
from workloads.estimate import (
    Calibration,
    InferenceEstimate,
    estimate_inference,
    estimate_inference_cpu,
    replicas_per_node,
)
from workloads.regions import area_of
from workloads.spec import InferenceJob, JobSpec, RequestClass, TrainingJob


def shape_key(spec: JobSpec) -> str:
    """Everything that changes a job's candidates (not its name, team or priority)."""
    data = spec.model_dump(mode="json", exclude={"name", "team", "priority"})
    return json.dumps(data, sort_keys=True)


def _allowed(spec: JobSpec, pool: Pool) -> str | None:
    """The stage that rules ``pool`` out for ``spec`` (None: allowed)."""
    out = pool_exclusion(spec, pool)
    return out[0] if out else None


def serving_replica(
    spec: InferenceJob, pool: Pool, request: RequestClass, cpu_calibration: Calibration | None
) -> InferenceEstimate:
    """One replica's estimate on ``pool``'s node for ``request``'s sizes (the replica shape
    ``plan`` and ``estimate`` both use)."""
    if not pool.gpu:  # a CPU-only node holds one replica
        return estimate_inference_cpu(spec, pool.vcpus, cpu_calibration, request=request)
    est = estimate_inference(spec, pool.gpu, request=request)
    if est.fits and est.gpus_per_replica > pool.gpus_per_node and not spec.gpus_per_replica:
        # the best replica shape is wider than this node: use the widest that fits
        width = 1 << (max(pool.gpus_per_node, 1).bit_length() - 1)
        est = estimate_inference(spec, pool.gpu, width, request=request)
    return est


@dataclass(frozen=True)
class _Demand:
    """Requests/s of one size class from one user area (or region): ``key`` names both
    ("us", or "us/long" when the spec has a mix of classes)."""

    key: str
    rate: float
    where: str
    request: RequestClass


def _demands(spec: InferenceJob) -> list[_Demand]:
    areas = sorted(spec.regions.items()) if spec.regions else [("anywhere", 1.0)]
    classes = spec.request_classes()
    return [
        _Demand(
            f"{where}/{request.name}" if spec.mix else where,
            spec.request_rate * share * request.share,
            where,
            request,
        )
        for where, share in areas
        for request in classes
    ]


def _demand_keys(spec: InferenceJob) -> list[tuple[str, float]]:
    return [(demand.key, demand.rate) for demand in _demands(spec)]


def _serves(key: str, pool: Pool) -> bool:
    if key == "anywhere":
        return True
    if key in (pool.region, pool.zone):
        return True
    area = area_of(key) if not any(ch.isdigit() for ch in key) else None
    return area is not None and area_of(pool.region) == area


_Row = tuple[int, int, int, float, float, int, int, float, int, float]  # problem._COLUMNS


class _Builder:
    def __init__(
        self,
        pools: Sequence[Pool],
        now: datetime,
        knobs: CandidateSettings,
        calibrations: Mapping[str, Calibration],
    ) -> None:
        self.pools = pools
        self.now = now
        self.knobs = knobs
        self.calibrations = calibrations
        self.rules = TrainingRules(knobs, calibrations)
        self.rows: list[_Row] = []
        self.assumed_fabric: dict[int, float] = {}  # pool index -> Gbps assumed for gangs

    def training(self, shape: int, spec: TrainingJob) -> str | None:
        hours_left = None
        if spec.deadline is not None:
            hours_left = (spec.deadline - self.now).total_seconds() / 3600.0
        stages = dict.fromkeys(
            ("gpu", "where", "spot", "fit", "gang", "deadline", "budget", "ok"), 0
        )
        fastest = math.inf
        cheapest = math.inf
        why_fit = None
        for p, pool in enumerate(self.pools):
            out = training_exclusion(spec, pool)
            if out:
                stages[out[0]] += 1
                continue
            # a pool is one zone, or one region of a provider that names no zones
            # (Lambda, catalog rows without zones): a gang stays inside it either way
            for option in self.rules.options(spec, pool, hours_left=hours_left, memo_key=shape):
                est = option.estimate
                if est.fits:
                    fastest = min(fastest, est.hours)
                    if option.stage != "deadline":
                        cheapest = min(cheapest, option.cost)
                if option.stage is not None:
                    stages[option.stage] += 1
                    if option.stage == "fit":
                        why_fit = why_fit or option.reason
                    continue
                if option.fabric_assumed and option.fabric_gbps is not None:
                    self.assumed_fabric[p] = option.fabric_gbps
                stages["ok"] += 1
                self.rows.append(
                    (
                        shape,
                        p,
                        option.nodes,
                        est.hours,
                        option.cost,
                        option.nodes * pool.gpus_per_node,
                        -1,
                        0.0,
                        0,
                        option.overhead,
                    )
                )
        if stages["ok"]:
            return None
        return _training_reason(
            spec,
            stages,
            why_fit,
            fastest,
            hours_left,
            cheapest,
            float(spec.budget) if spec.budget is not None else None,
        )

    def _replica(self, spec: InferenceJob, pool: Pool, request: RequestClass) -> InferenceEstimate:
        return serving_replica(spec, pool, request, self.calibrations.get("cpu"))

    def inference(self, shape: int, spec: InferenceJob) -> str | None:
        demands = _demands(spec)
        memo: dict[tuple[str, int, str], InferenceEstimate] = {}
        served = [0] * len(demands)
        why = None
        allowed = 0
        for p, pool in enumerate(self.pools):
            if _allowed(spec, pool):
                continue
            allowed += 1
            overhead = serving_spot_overhead(pool.pricing, self.knobs.preemptions_per_hour)
            hours = self.knobs.horizon_hours
            cost = pool.price_per_hour * hours * (1 + overhead)
            for a, demand in enumerate(demands):
                if not _serves(demand.where, pool):
                    continue
                node = (pool.gpu or "", pool.gpus_per_node or -(pool.vcpus or 0))
                key = (*node, demand.request.name)
                est = memo.get(key)
                if est is None:
                    est = memo[key] = self._replica(spec, pool, demand.request)
                if not est.fits or est.requests_per_second <= 0:
                    why = why or est.reason
                    continue
                if est.gpus_per_replica > pool.gpus_per_node:
                    why = why or f"a replica needs {est.gpus_per_replica} GPUs per node"
                    continue
                replicas = replicas_per_node(est, pool.gpus_per_node)
                served[a] += 1
                rate = est.requests_per_second * replicas
                row = (shape, p, 1, hours, cost, pool.gpus_per_node, a, rate, replicas, overhead)
                self.rows.append(row)
        if allowed == 0:
            return "no offer with a GPU type, provider and region the job allows"
        missing = [demands[a].key for a in range(len(demands)) if served[a] == 0]
        if missing:
            detail = f" ({why})" if why else ""
            return f"no offer can serve {', '.join(missing)} at the SLO{detail}"
        return None


def _training_reason(
    spec: TrainingJob,
    stages: dict[str, int],
    why_fit: str | None,
    fastest: float,
    hours_left: float | None,
    cheapest: float,
    budget: float | None,
) -> str:
    cons = spec.constraints
    if stages["budget"]:
        return f"cheapest placement costs ${cheapest:,.2f}, above the job's budget ${budget:,.2f}"
    if stages["deadline"]:
        return (
            f"no placement finishes before the deadline (fastest takes {fastest:.1f} h, "
            f"{max(hours_left or 0, 0):.1f} h left)"
        )
    if stages["gang"] and not stages["fit"]:
        need = cons.min_interconnect_gbps
        fabric = f" with >= {need:g} Gbps fabric" if need else " in one zone"
        return f"no pool can hold the multi-node gang{fabric}"
    if stages["fit"]:
        return why_fit or "the model does not fit on any allowed offer"
    what = []
    if cons.gpus:
        what.append("/".join(cons.gpus) + " GPUs")
    if cons.min_gpu_memory_gib:
        what.append(f">= {cons.min_gpu_memory_gib:g} GB GPUs")
    where = " in the allowed regions" if cons.regions or cons.providers else ""
    if not stages["gpu"] and not stages["where"] and stages["spot"]:
        return "only spot offers match and the job does not allow spot"
    return f"no offer with {' and '.join(what) or 'a usable GPU'}{where}"


def build_problem(
    jobs: Sequence[tuple[int, JobSpec]],
    pools: Sequence[Pool],
    *,
    now: datetime,
    quotas: Sequence[Quota] = (),
    budgets: Mapping[str, float] | None = None,
    max_provider_share: float | None = None,
    share_on: str = "gpus",
    seed: int = 0,
    knobs: CandidateSettings | None = None,
    calibrations: Mapping[str, Calibration] | None = None,
) -> Problem:
    """The scheduler's problem for ``jobs`` (id, spec) against ``pools``."""
    builder = _Builder(list(pools), now, knobs or CandidateSettings(), calibrations or {})
    shapes: dict[str, int] = {}
    reasons: dict[int, str | None] = {}
    out_jobs: list[Job] = []
    for job_id, spec in sorted(jobs, key=lambda item: item[0]):
        key = shape_key(spec)
        shape = shapes.get(key)
        if shape is None:
            shape = shapes[key] = len(shapes)
            if isinstance(spec, TrainingJob):
                reasons[shape] = builder.training(shape, spec)
            else:
                reasons[shape] = builder.inference(shape, spec)
        cons = spec.constraints
        hours_left = None
        if spec.deadline is not None:
            hours_left = (spec.deadline - now).total_seconds() / 3600.0
        demand: tuple[tuple[str, float], ...] = ()
        min_replicas = 0
        if isinstance(spec, InferenceJob):
            demand = tuple(_demand_keys(spec))
            min_replicas = spec.min_replicas
        out_jobs.append(
            Job(
                id=job_id,
                name=spec.name,
                team=spec.team,
                priority=spec.priority,
                shape=shape,
                kind=TRAINING if isinstance(spec, TrainingJob) else INFERENCE,
                demand=demand,
                min_replicas=min_replicas,
                spot=cons.spot,
                min_interconnect_gbps=cons.min_interconnect_gbps,
                max_nodes=cons.max_nodes if isinstance(spec, TrainingJob) else None,
                deadline_hours=hours_left,
                budget=float(spec.budget) if spec.budget is not None else None,
                gpus=tuple(cons.gpus),
                providers=tuple(cons.providers),
                no_candidate_reason=reasons[shape],
            )
        )
    candidates = Candidates.from_rows(builder.rows, len(shapes))
    return Problem(
        jobs=out_jobs,
        pools=list(pools),
        candidates=candidates,
        n_shapes=len(shapes),
        quotas=list(quotas),
        budgets=dict(budgets or {}),
        max_provider_share=max_provider_share,
        share_on="spend" if share_on == "spend" else "gpus",
        seed=seed,
        assumed_fabric_gbps=dict(builder.assumed_fabric),
    )
