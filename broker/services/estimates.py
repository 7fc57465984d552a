"""Estimates against current offers.

For a training spec: per GPU type, the cheapest feasible (offer, node count) with its GPUs,
hours, cost, assumed MFU and memory headroom; for the GPU types that cannot run it, why.
For an inference spec: per GPU type, the cheapest offer with the replicas that serve the
request rate within the SLO, and the cost per hour. Calibrations
(:mod:`broker.services.calibrations`) replace the default MFU where one was measured.
"""

from __future__ import annotations

import fnmatch
import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from decimal import Decimal
from typing import Any

from broker.db.engine import Database
from broker.db.models import OfferRow
from broker.domain import Fabric, Pricing, money, round_cents, utcnow
from broker.errors import NotFound, UserError
from broker.services.calibrations import CalibrationView, calibration_for, latest_calibrations
from workloads.estimate import (
    Calibration,
    Hardware,
    InferenceEstimate,
    TrainingEstimate,
    estimate_inference,
    estimate_inference_cpu,
    estimate_training,
    min_gpus,
    replicas_per_node,
    training_flops,
)
from workloads.gpus import GPUS, resolve
from workloads.regions import area_of
from workloads.spec import InferenceJob, JobSpec, TrainingJob

MAX_NODES_TRIED = 64
TENSOR_PARALLEL = (1, 2, 4, 8)


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
    hours: float | None  # training: to finish; inference: None (priced per hour)
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

    def as_row(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class Infeasible:
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
    infeasible: list[Infeasible]
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


# --- offers -----------------------------------------------------------------------------


@dataclass(frozen=True)
class _Offer:
    id: int | None
    provider: str | None
    region: str | None
    zone: str | None
    instance_type: str | None
    gpu: str | None
    gpus_per_node: int
    vcpus: int | None
    memory_gib: float | None
    pricing: str | None
    price_per_hour: Decimal | None
    interconnect_gbps: float | None
    rdma: bool
    capacity_nodes: int | None


def _from_row(row: Any) -> _Offer:
    rdma = str(getattr(row, "rdma", "none") or "none")
    return _Offer(
        id=row.id,
        provider=row.provider,
        region=row.region,
        zone=row.zone or None,
        instance_type=row.instance_type,
        gpu=row.gpu,
        gpus_per_node=row.gpus_per_node or 0,
        vcpus=row.vcpus,
        memory_gib=row.memory_gib,
        pricing=str(row.pricing),
        price_per_hour=row.price_per_hour,
        interconnect_gbps=row.interconnect_gbps,
        rdma=rdma not in ("", Fabric.NONE.value, "false"),
        capacity_nodes=row.capacity_nodes,
    )


def current_offers(db: Database, settings: Any, spec: JobSpec | None = None) -> list[_Offer]:
    """Fresh offers with a GPU we know (or CPU-only), narrowed by the spec's providers and
    GPU allow-list; the bundled catalog is loaded into an empty database. Region globs are
    matched later against region or zone (SkyPilot's ``zone`` lands there)."""
    from broker.services.catalog import OfferFilter, ensure_catalog, query_offers

    ensure_catalog(db, settings)
    c = spec.constraints if spec is not None else None
    filters = OfferFilter(
        providers=tuple(c.providers) if c else (),
        include_stale=False,
    )
    offers = [_from_row(view) for view in query_offers(db, filters)]
    allowed = set(c.gpus) if c and c.gpus else None
    return [
        o
        for o in offers
        if (o.gpu is None and allowed is None)
        or (o.gpu in GPUS and (allowed is None or o.gpu in allowed))
    ]


def _offer_by_id(db: Database, offer_id: int) -> _Offer:
    with db.session() as session:
        row = session.get(OfferRow, offer_id)
        if row is None:
            raise NotFound(f"offer {offer_id}: no such offer (see gpubroker offers)")
        return _from_row(row)


def _allowed(job: JobSpec, offer: _Offer) -> str | None:
    """Why the job's constraints rule this offer out, or None."""
    c = job.constraints
    if c.providers and offer.provider not in c.providers:
        return "provider not in constraints.providers"
    if c.regions and not any(
        fnmatch.fnmatchcase(offer.region or "", pattern)
        or fnmatch.fnmatchcase(offer.zone or "", pattern)
        for pattern in c.regions
    ):
        return "region not in constraints.regions"
    if offer.pricing == Pricing.SPOT.value and not c.spot:
        return "spot not allowed (constraints.spot)"
    if offer.pricing == Pricing.RESERVED.value:
        return "reserved capacity needs a commitment"
    return None


def _cost(price: Decimal | None, nodes: int, hours: float, overhead: float) -> Decimal | None:
    if price is None:
        return None
    return round_cents(price * nodes * money(round(hours * (1 + overhead), 6)))


def _rank(option: Option) -> tuple[int, Decimal, int, float]:
    """Feasible first, then cheapest; at equal cost the fewer nodes, then the faster."""
    return (
        0 if option.feasible else 1,
        option.cost if option.cost is not None else Decimal("Infinity"),
        option.nodes,
        option.hours or 0.0,
    )


# --- training ---------------------------------------------------------------------------


def _node_counts(job: TrainingJob, offer: _Offer, forced: int | None) -> list[int]:
    if forced is not None:
        return [forced]
    if job.nodes is not None:
        return [job.nodes]
    per_node = offer.gpus_per_node
    if offer.gpu is None:
        return [1]
    needed = min_gpus(job, offer.gpu)
    if needed is None or per_node < 1:
        return [1]
    first = max(1, math.ceil(needed / per_node))
    cap = min(
        job.constraints.max_nodes or MAX_NODES_TRIED,
        offer.capacity_nodes or MAX_NODES_TRIED,
        MAX_NODES_TRIED,
    )
    counts = [first]
    while counts[-1] * 2 <= cap:
        counts.append(counts[-1] * 2)
    return counts


def _training_option(
    job: TrainingJob,
    offer: _Offer,
    nodes: int,
    calibration: Calibration | None,
) -> tuple[Option, TrainingEstimate]:
    hw = Hardware(
        gpu=offer.gpu,
        gpus_per_node=offer.gpus_per_node,
        nodes=nodes,
        interconnect_gbps=offer.interconnect_gbps,
        rdma=offer.rdma,
        vcpus=offer.vcpus,
        memory_gib=offer.memory_gib,
    )
    est = estimate_training(job, hw, calibration=calibration)
    reason = est.reason
    overhead = 0.0
    if offer.pricing == Pricing.SPOT.value:
        from scheduler.candidates import training_spot_overhead  # the planner's own rule

        overhead = training_spot_overhead(job, est.step_seconds, nodes)
    if reason is None and offer.capacity_nodes is not None and nodes > offer.capacity_nodes:
        reason = f"{nodes} nodes exceed the offer's capacity ({offer.capacity_nodes})"
    hours = est.hours * (1 + overhead)
    if reason is None and job.deadline is not None:
        left = (job.deadline - utcnow()).total_seconds() / 3600
        if hours > left:
            reason = f"needs {hours:.1f} h; the deadline is {max(left, 0):.1f} h away"
    cost = _cost(offer.price_per_hour, nodes, est.hours, overhead)
    if reason is None and job.budget is not None and offer.id is not None:
        if cost is None:
            reason = "the offer's price is unknown, so the budget cannot be checked"
        elif cost > job.budget:
            reason = f"costs {cost} USD, over the budget of {job.budget} USD"
    option = Option(
        gpu=offer.gpu,
        gpus_per_node=offer.gpus_per_node,
        nodes=nodes,
        gpus=est.gpus,
        provider=offer.provider,
        region=offer.region,
        zone=offer.zone,
        instance_type=offer.instance_type,
        pricing=offer.pricing,
        offer_id=offer.id,
        price_per_hour=offer.price_per_hour,
        hours=round(hours, 4),
        cost=cost,
        step_seconds=round(est.step_seconds, 6),
        assumed_mfu=round(est.assumed_mfu, 4) if offer.gpu else None,
        mfu=round(est.mfu, 4) if offer.gpu else None,
        memory_per_gpu_gib=round(est.memory_per_gpu_gib, 2),
        memory_headroom_gib=round(est.memory_headroom_gib, 2),
        interconnect_gbps=offer.interconnect_gbps,
        rdma=offer.rdma,
        spot_overhead=round(overhead, 4),
        feasible=reason is None,
        reason=reason,
    )
    return option, est


def _estimate_training(
    job: TrainingJob,
    offers: Sequence[_Offer],
    calibrations: dict[str, CalibrationView],
    *,
    nodes: int | None,
) -> tuple[list[Option], list[Infeasible], set[str]]:
    best: dict[str | None, Option] = {}
    used: set[str] = set()
    cache: dict[tuple[Any, ...], tuple[Option, TrainingEstimate]] = {}
    for offer in offers:
        ruled_out = _allowed(job, offer)
        view = calibration_for(calibrations, offer.gpu, this_machine=offer.provider == "local")
        for count in _node_counts(job, offer, nodes):
            key = (offer, count)
            if key not in cache:
                cache[key] = _training_option(job, offer, count, view and view.calibration)
            option = cache[key][0]
            if ruled_out is not None and option.feasible:
                option = _replace(option, feasible=False, reason=ruled_out)
            if view is not None and option.feasible:
                used.add(view.device)
            current = best.get(offer.gpu)
            if current is None or _rank(option) < _rank(current):
                best[offer.gpu] = option
    return _split(best, used)


def _replace(option: Option, **changes: Any) -> Option:
    return Option(**{**asdict(option), **changes})


def _split(
    best: dict[str | None, Option], used: set[str]
) -> tuple[list[Option], list[Infeasible], set[str]]:
    options = sorted((o for o in best.values() if o.feasible), key=_rank)
    infeasible = [
        Infeasible(o.gpu, o.reason or "infeasible")
        for o in sorted(best.values(), key=lambda o: o.gpu or "")
        if not o.feasible
    ]
    return options, infeasible, used


# --- inference --------------------------------------------------------------------------


def _inference_option(job: InferenceJob, offer: _Offer, area: str | None, share: float) -> Option:
    """Replicas on ``offer`` for ``share`` of the requests (those of ``area``); a CPU-only
    node holds one replica, as the planner counts it."""
    candidates: list[InferenceEstimate] = (
        [estimate_inference_cpu(job, offer.vcpus)]
        if offer.gpu is None
        else [
            estimate_inference(job, offer.gpu, tp)
            for tp in TENSOR_PARALLEL
            if tp <= offer.gpus_per_node
        ]
    )
    feasible = [c for c in candidates if c.fits]
    est = (
        max(feasible, key=lambda c: c.requests_per_second / max(c.gpus_per_replica, 1))
        if feasible
        else (candidates[-1] if candidates else None)
    )
    reason = None if feasible else (est.reason if est else "no GPUs on the node")
    replicas = None
    if est is not None and est.fits and est.requests_per_second > 0:
        replicas = max(
            math.ceil(job.min_replicas * share - 1e-9),
            math.ceil(job.request_rate * share / est.requests_per_second - 1e-9),
        )
    nodes = 0
    if replicas is not None and est is not None:
        per_node = replicas_per_node(est, offer.gpus_per_node)
        nodes = math.ceil(replicas / per_node)
        if offer.capacity_nodes is not None and nodes > offer.capacity_nodes:
            reason = f"needs {nodes} nodes; the offer has {offer.capacity_nodes}"
    cost = None
    if offer.price_per_hour is not None and nodes:
        cost = round_cents(offer.price_per_hour * nodes)
        if reason is None and job.budget is not None and cost > job.budget:
            reason = f"costs {cost} USD per hour, over the budget of {job.budget} USD"
    return Option(
        gpu=offer.gpu,
        gpus_per_node=offer.gpus_per_node,
        nodes=nodes,
        gpus=nodes * offer.gpus_per_node,
        provider=offer.provider,
        region=offer.region,
        zone=offer.zone,
        instance_type=offer.instance_type,
        pricing=offer.pricing,
        offer_id=offer.id,
        price_per_hour=offer.price_per_hour,
        hours=None,
        cost=cost,
        step_seconds=None,
        assumed_mfu=None,
        mfu=None,
        memory_per_gpu_gib=None,
        memory_headroom_gib=None,
        interconnect_gbps=offer.interconnect_gbps,
        rdma=offer.rdma,
        spot_overhead=0.0,
        feasible=reason is None,
        reason=reason,
        replicas=replicas,
        gpus_per_replica=est.gpus_per_replica if est else None,
        requests_per_second=round(est.requests_per_second, 4) if est else None,
        ttft_ms=round(est.ttft_ms, 2) if est else None,
        tpot_ms=round(est.tpot_ms, 3) if est else None,
        area=area,
    )


def user_areas(job: InferenceJob) -> dict[str | None, float]:
    """The job's share of requests per user area (one None area when it names none)."""
    if not job.regions:
        return {None: 1.0}
    areas: dict[str | None, float] = {}
    for name, share in job.regions.items():
        area = area_of(name) or name
        areas[area] = areas.get(area, 0.0) + share
    return areas


def _estimate_inference(
    job: InferenceJob, offers: Sequence[_Offer]
) -> tuple[list[Option], list[Infeasible], set[str]]:
    """Per GPU type and user area, the cheapest offer in that area with its replicas."""
    areas = user_areas(job)
    best: dict[tuple[str | None, str | None], Option] = {}
    gpus_seen: set[str] = set()
    for offer in offers:
        gpus_seen.add(offer.gpu or "cpu")
        ruled_out = _allowed(job, offer)
        offer_area = area_of(offer.region) if offer.region else None
        for area, share in areas.items():
            if area is not None and offer.region is not None and offer_area != area:
                continue
            option = _inference_option(job, offer, area, share)
            if ruled_out is not None and option.feasible:
                option = _replace(option, feasible=False, reason=ruled_out)
            current = best.get((offer.gpu or "cpu", area))
            if current is None or _rank(option) < _rank(current):
                best[(offer.gpu or "cpu", area)] = option
    options = sorted((o for o in best.values() if o.feasible), key=_rank)
    infeasible: list[Infeasible] = []
    for gpu in sorted(gpus_seen):
        for area in areas:
            option = best.get((gpu, area))
            where = f"{area}: " if area is not None else ""
            if option is None:
                infeasible.append(Infeasible(gpu, f"{where}no offer in this area"))
            elif not option.feasible:
                infeasible.append(Infeasible(gpu, f"{where}{option.reason or 'infeasible'}"))
    return options, infeasible, set()


# --- the entry point --------------------------------------------------------------------


def _hypothetical(job: JobSpec, gpu: str) -> _Offer:
    """A node of ``gpu`` with no price, for ``--gpu`` when no offer has that GPU."""
    per_node = getattr(job, "gpus_per_node", None) or 8
    return _Offer(
        None, None, None, None, None, gpu, per_node, None, None, None, None, None, False, None
    )


def estimate_spec(
    db: Database,
    settings: Any,
    spec: JobSpec,
    *,
    gpu: str | None = None,
    nodes: int | None = None,
    offer_id: int | None = None,
) -> EstimateReport:
    """Estimate ``spec`` on the current offers, or on one GPU type or one offer."""
    if nodes is not None and not 1 <= nodes <= 100_000:
        raise UserError("--nodes: must be between 1 and 100000")
    if offer_id is not None and gpu is not None:
        raise UserError("--offer and --gpu: give one of them")
    target = None
    if gpu is not None:
        resolved = resolve(gpu)
        if not resolved.known:
            raise UserError("--gpu: unknown GPU; known: " + ", ".join(sorted(GPUS)))
        target = resolved.name
    offers: list[_Offer]
    if offer_id is not None:
        offers = [_offer_by_id(db, offer_id)]
    else:
        offers = current_offers(db, settings, spec)
        if target is not None:
            offers = [o for o in offers if o.gpu == target] or [_hypothetical(spec, target)]
    calibrations = latest_calibrations(db)
    if isinstance(spec, TrainingJob):
        if nodes is not None and spec.nodes is not None and nodes != spec.nodes:
            raise UserError(f"--nodes: the spec fixes nodes to {spec.nodes}")
        options, infeasible, used = _estimate_training(spec, offers, calibrations, nodes=nodes)
        gpu_types = sorted({o.gpu for o in offers if o.gpu is not None})
        modelled = not spec.is_estimated_by_user
        return EstimateReport(
            job=spec.name,
            kind="training",
            params=spec.model.n_params() if spec.model is not None else None,
            tokens=spec.total_tokens() if modelled else None,
            steps=spec.total_steps() if modelled else spec.steps,
            flops_total=training_flops(spec) if modelled else None,
            min_gpus={name: min_gpus(spec, name) for name in gpu_types},
            options=options,
            infeasible=infeasible,
            calibrations=sorted(used),
        )
    if nodes is not None:
        raise UserError("--nodes: applies to training specs; inference sizes its replicas")
    options, infeasible, _ = _estimate_inference(spec, offers)
    return EstimateReport(
        job=spec.name,
        kind="inference",
        params=spec.model.n_params(),
        tokens=None,
        steps=None,
        flops_total=None,
        min_gpus={},
        options=options,
        infeasible=infeasible,
    )
