"""Job specs x offer pools -> a ``Problem``, with hours and costs from ``workloads.estimate``.

Training: for each pool whose GPU, memory, provider, region and pricing the job allows, the
node counts worth trying are the smallest that holds the model and its doubles (or the
count the spec fixes). A multi-node gang stays in one pool (one zone, or one region where
the provider names no zones) and, when the job asks for it, needs a fabric of at least
``min_interconnect_gbps``; its hours come from the estimator's
communication model, so a slow fabric makes it slower and dearer. Candidates that miss the
deadline or the job's own budget are not generated. Spot candidates (only for jobs that
allow spot) carry the expected preemption overhead.

Inference: per pool and demand key (user area or region), one unit is a node holding as
many replicas as fit, serving their combined requests/s at the SLO for the horizon.

Jobs with the same estimate inputs, constraints, deadline and budget share one *shape*.
When a job keeps no candidate, the stage that removed the last one becomes its reason.
"""

from __future__ import annotations

import fnmatch
import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from scheduler.problem import INFERENCE, TRAINING, Candidates, Job, Pool, Problem, Quota
from workloads.estimate import (
    DEFAULT_FABRIC_GBPS,
    Calibration,
    Hardware,
    estimate_inference,
    estimate_inference_cpu,
    estimate_training,
    min_gpus,
    replicas_per_node,
    spot_overhead,
)
from workloads.gpus import GPUS
from workloads.regions import area_of
from workloads.spec import InferenceJob, JobSpec, TrainingJob

SERVING_HORIZON_HOURS = 24.0  # inference is planned (and priced) one day at a time
PREEMPTIONS_PER_HOUR = 0.05  # assumed spot reclaim rate of one node where nothing better is known
RESTART_HOURS = 0.15  # relaunch, rejoin and reload after a preemption


def training_spot_overhead(spec: TrainingJob, step_seconds: float, nodes: int,
                           preemptions_per_node_hour: float = PREEMPTIONS_PER_HOUR) -> float:
    """Expected spot recovery time as a fraction of the estimated hours (the one rule
    ``estimate`` and ``plan`` share). Checkpoint writes are already in those hours, so only
    restarts and the work lost since the last checkpoint are added; any of the gang's
    nodes can be reclaimed, so the rate grows with ``nodes``."""
    interval = spec.checkpoint_every * step_seconds / 3600.0
    return spot_overhead(preemptions_per_node_hour * nodes, 0.0, RESTART_HOURS,
                         interval or None)


@dataclass(frozen=True)
class Settings:
    """Planning knobs the service passes in (kept apart from broker.config on purpose)."""

    preemptions_per_hour: float = PREEMPTIONS_PER_HOUR
    horizon_hours: float = SERVING_HORIZON_HOURS
    # between nodes of an offer that does not state its fabric (flagged in the plan)
    unknown_interconnect_gbps: float = DEFAULT_FABRIC_GBPS


def shape_key(spec: JobSpec) -> str:
    """Everything that changes a job's candidates (not its name, team or priority)."""
    data = spec.model_dump(mode="json", exclude={"name", "team", "priority"})
    return json.dumps(data, sort_keys=True)


def _allowed(spec: JobSpec, pool: Pool) -> str | None:
    """Why ``pool`` is out for ``spec`` (None: allowed)."""
    cons = spec.constraints
    if cons.gpus and pool.gpu not in cons.gpus:
        return "gpu"
    if pool.gpu is None and (cons.gpus or cons.min_gpu_memory_gib):
        return "gpu"
    if cons.min_gpu_memory_gib is not None:
        spec_gpu = GPUS.get(pool.gpu or "")
        if spec_gpu is None or spec_gpu.memory_gib < cons.min_gpu_memory_gib:
            return "gpu"
    if cons.providers and pool.provider not in cons.providers:
        return "where"
    if cons.regions and not any(
        fnmatch.fnmatchcase(pool.region, g) or fnmatch.fnmatchcase(pool.zone, g)
        for g in cons.regions
    ):
        return "where"
    if pool.pricing == "spot" and not cons.spot:
        return "spot"
    return None


def _demand_keys(spec: InferenceJob) -> list[tuple[str, float]]:
    if not spec.regions:
        return [("anywhere", spec.request_rate)]
    return [(key, spec.request_rate * share) for key, share in sorted(spec.regions.items())]


def _serves(key: str, pool: Pool) -> bool:
    if key == "anywhere":
        return True
    if key in (pool.region, pool.zone):
        return True
    area = area_of(key) if not any(ch.isdigit() for ch in key) else None
    return area is not None and area_of(pool.region) == area


class _Builder:
    def __init__(
        self,
        pools: Sequence[Pool],
        now: datetime,
        knobs: Settings,
        calibrations: Mapping[str, Calibration],
    ) -> None:
        self.pools = pools
        self.now = now
        self.knobs = knobs
        self.calibrations = calibrations
        self.rows: list[tuple] = []
        self.assumed_fabric: dict[int, float] = {}  # pool index -> Gbps assumed for gangs
        self._train_memo: dict[tuple, object] = {}

    def training(self, shape: int, spec: TrainingJob) -> str | None:
        cons = spec.constraints
        hours_left = None
        if spec.deadline is not None:
            hours_left = (spec.deadline - self.now).total_seconds() / 3600.0
        budget = float(spec.budget) if spec.budget is not None else None
        stages = {
            "gpu": 0,
            "where": 0,
            "spot": 0,
            "fit": 0,
            "gang": 0,
            "deadline": 0,
            "budget": 0,
            "ok": 0,
        }
        fastest = math.inf
        cheapest = math.inf
        why_fit = None
        for p, pool in enumerate(self.pools):
            out = _allowed(spec, pool)
            if out:
                stages[out] += 1
                continue
            gpn = pool.gpus_per_node
            if (
                spec.gpus_per_node is not None
                and pool.gpu is not None
                and gpn != spec.gpus_per_node
            ):
                stages["gpu"] += 1
                continue
            options = self._node_options(spec, pool)
            if not options:
                stages["fit"] += 1
                why_fit = why_fit or f"the model does not fit on {pool.gpu or 'CPU'} nodes"
                continue
            for nodes in options:
                # a pool is one zone, or one region of a provider that names no zones
                # (Lambda, catalog rows without zones): a gang stays inside it either way
                if nodes > 1 and (
                    cons.min_interconnect_gbps is not None
                    and (pool.interconnect_gbps or 0.0) < cons.min_interconnect_gbps
                ):
                    stages["gang"] += 1
                    continue
                est = self._estimate(spec, shape, p, pool, nodes)
                if not est.fits:
                    stages["fit"] += 1
                    why_fit = why_fit or est.reason
                    continue
                hours = est.hours
                overhead = 0.0
                if pool.pricing == "spot":
                    overhead = training_spot_overhead(
                        spec, est.step_seconds, nodes, self.knobs.preemptions_per_hour
                    )
                fastest = min(fastest, hours)
                if hours_left is not None and hours * (1 + overhead) > hours_left:
                    stages["deadline"] += 1
                    continue
                cost = pool.price_per_hour * nodes * hours * (1 + overhead)
                cheapest = min(cheapest, cost)
                if budget is not None and cost > budget:
                    stages["budget"] += 1
                    continue
                stages["ok"] += 1
                self.rows.append((shape, p, nodes, hours, cost, nodes * gpn, -1, 0.0, 0, overhead))
        if stages["ok"]:
            return None
        return _training_reason(spec, stages, why_fit, fastest, hours_left, cheapest, budget)

    def _node_options(self, spec: TrainingJob, pool: Pool) -> list[int]:
        limit = min(spec.constraints.max_nodes or pool.capacity, pool.capacity)
        if spec.nodes is not None:
            return [spec.nodes] if spec.nodes <= pool.capacity else []
        if pool.gpu is None:
            return [1]
        need = min_gpus(spec, pool.gpu)
        if need is None:
            return []
        smallest = max(1, math.ceil(need / max(pool.gpus_per_node, 1)))
        return [n for n in (smallest, 2 * smallest, 4 * smallest) if n <= limit]

    def _estimate(self, spec: TrainingJob, shape: int, p: int, pool: Pool, nodes: int):  # type: ignore[no-untyped-def]
        fabric = pool.interconnect_gbps
        if fabric is None and nodes > 1:
            # the offer does not say: the planning setting stands in, and the plan says so
            fabric = self.knobs.unknown_interconnect_gbps
            self.assumed_fabric[p] = fabric
        key = (
            shape,
            pool.gpu,
            pool.gpus_per_node,
            nodes,
            fabric,
            pool.rdma,
            pool.vcpus,
        )
        est = self._train_memo.get(key)
        if est is None:
            hw = Hardware(
                gpu=pool.gpu,
                gpus_per_node=pool.gpus_per_node,
                nodes=nodes,
                interconnect_gbps=fabric,
                rdma=pool.rdma != "none",
                vcpus=pool.vcpus,
            )
            calibration = self.calibrations.get(pool.gpu or "cpu")
            est = estimate_training(spec, hw, calibration=calibration)
            self._train_memo[key] = est
        return est

    def inference(self, shape: int, spec: InferenceJob) -> str | None:
        keys = _demand_keys(spec)
        memo: dict[tuple[str, int], Any] = {}
        served = [0] * len(keys)
        why = None
        allowed = 0
        for p, pool in enumerate(self.pools):
            if _allowed(spec, pool):
                continue
            allowed += 1
            key = (pool.gpu or "", pool.gpus_per_node or -(pool.vcpus or 0))
            est = memo.get(key)
            if est is None and not pool.gpu:  # a CPU-only node holds one replica
                est = estimate_inference_cpu(spec, pool.vcpus, self.calibrations.get("cpu"))
                memo[key] = est
            if est is None:
                est = estimate_inference(spec, pool.gpu or "")
                if est.fits and est.gpus_per_replica > pool.gpus_per_node:
                    # the best replica shape is wider than this node: use the widest that fits
                    width = 1 << (max(pool.gpus_per_node, 1).bit_length() - 1)
                    est = estimate_inference(spec, pool.gpu or "", width)
                memo[key] = est
            if not est.fits or est.requests_per_second <= 0:
                why = why or est.reason
                continue
            if est.gpus_per_replica > pool.gpus_per_node:
                why = why or f"a replica needs {est.gpus_per_replica} GPUs per node"
                continue
            replicas = replicas_per_node(est, pool.gpus_per_node)
            overhead = (
                self.knobs.preemptions_per_hour * RESTART_HOURS if pool.pricing == "spot" else 0.0
            )
            hours = self.knobs.horizon_hours
            cost = pool.price_per_hour * hours * (1 + overhead)
            for a, (key, _) in enumerate(keys):
                if _serves(key, pool):
                    served[a] += 1
                    self.rows.append(
                        (
                            shape,
                            p,
                            1,
                            hours,
                            cost,
                            pool.gpus_per_node,
                            a,
                            est.requests_per_second * replicas,
                            replicas,
                            overhead,
                        )
                    )
        if allowed == 0:
            return "no offer with a GPU type, provider and region the job allows"
        missing = [keys[a][0] for a in range(len(keys)) if served[a] == 0]
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
    knobs: Settings | None = None,
    calibrations: Mapping[str, Calibration] | None = None,
) -> Problem:
    """The scheduler's problem for ``jobs`` (id, spec) against ``pools``."""
    builder = _Builder(list(pools), now, knobs or Settings(), calibrations or {})
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
