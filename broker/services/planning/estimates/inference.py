"""Inference estimates: per GPU type and user area, the cheapest offer with the replicas
that serve that area's requests within the SLO, priced per hour (spot recovery included,
as the planner prices it)."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

from broker.domain import money, round_cents
from broker.services.planning.estimates.offers import EstimateOffer
from broker.services.planning.estimates.report import InfeasibleGpu, Option, rank
from scheduler.candidate_rules import CandidateSettings, pool_exclusion, serving_spot_overhead
from scheduler.candidates import serving_replica
from workloads.estimate import Calibration, InferenceEstimate, replicas_per_node
from workloads.regions import area_of
from workloads.spec import InferenceJob


def _nodes(
    job: InferenceJob, offer: EstimateOffer, share: float, cpu: Calibration | None
) -> tuple[int, int, InferenceEstimate | None, str | None]:
    """(nodes, replicas, the first size class's replica, why not) for ``share`` of the
    requests on ``offer``: per size class, whole nodes of the replica shape the planner uses
    (``serving_replica``), as many as that class's requests need."""
    pool = offer.pool
    nodes = replicas = 0
    first: InferenceEstimate | None = None
    for index, request in enumerate(job.request_classes()):
        est = serving_replica(job, pool, request, cpu)
        first = first or est
        if not est.fits or est.requests_per_second <= 0:
            return 0, 0, first, est.reason or "no replica fits"
        if est.gpus_per_replica > pool.gpus_per_node and pool.gpu:
            return 0, 0, first, f"a replica needs {est.gpus_per_replica} GPUs per node"
        wanted = math.ceil(
            job.request_rate * share * request.share / est.requests_per_second - 1e-9
        )
        if index == 0:
            wanted = max(wanted, math.ceil(job.min_replicas * share - 1e-9))
        per_node = replicas_per_node(est, pool.gpus_per_node)
        nodes += math.ceil(wanted / per_node)
        replicas += wanted
    return nodes, replicas, first, None


def _option(
    job: InferenceJob,
    offer: EstimateOffer,
    area: str | None,
    share: float,
    settings: CandidateSettings,
    cpu: Calibration | None,
) -> Option:
    """Replicas on ``offer`` for ``share`` of the requests (those of ``area``)."""
    pool = offer.pool
    nodes, replicas, est, reason = _nodes(job, offer, share, cpu)
    if reason is None and nodes > pool.capacity:
        reason = f"needs {nodes} nodes; the offer has {pool.capacity}"
    overhead = serving_spot_overhead(pool.pricing, settings.preemptions_per_hour)
    cost = None
    if offer.price is not None and nodes:
        cost = round_cents(money(pool.price_per_hour * nodes * (1 + overhead)))
        if reason is None and job.budget is not None and cost > job.budget:
            reason = f"costs {cost} USD per hour, over the budget of {job.budget} USD"
    return Option(
        **offer.placement(nodes),
        hours=None,
        cost=cost,
        step_seconds=None,
        assumed_mfu=None,
        mfu=None,
        memory_per_gpu_gib=None,
        memory_headroom_gib=None,
        spot_overhead=round(overhead, 4),
        feasible=reason is None,
        reason=reason,
        replicas=replicas if reason is None else None,
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


def estimate_inference_options(
    job: InferenceJob,
    offers: Sequence[EstimateOffer],
    settings: CandidateSettings,
    calibrations: Mapping[str, Calibration],
) -> tuple[list[Option], list[InfeasibleGpu]]:
    """Per GPU type and user area, the cheapest offer in that area with its replicas."""
    areas = user_areas(job)
    best: dict[tuple[str, str | None], Option] = {}
    gpus_seen: set[str] = set()
    for offer in offers:
        pool = offer.pool
        gpus_seen.add(pool.gpu or "cpu")
        excluded = pool_exclusion(job, pool)
        offer_area = area_of(pool.region) if pool.region else None
        for area, share in areas.items():
            if area is not None and pool.region and offer_area != area:
                continue
            option = _option(job, offer, area, share, settings, calibrations.get("cpu"))
            if excluded is not None and option.feasible:
                option = option.ruled_out(excluded[1])
            current = best.get((pool.gpu or "cpu", area))
            if current is None or rank(option) < rank(current):
                best[(pool.gpu or "cpu", area)] = option
    options = sorted((o for o in best.values() if o.feasible), key=rank)
    infeasible: list[InfeasibleGpu] = []
    for gpu in sorted(gpus_seen):
        for area in areas:
            found = best.get((gpu, area))
            where = f"{area}: " if area is not None else ""
            if found is None:
                infeasible.append(InfeasibleGpu(gpu, f"{where}no offer in this area"))
            elif not found.feasible:
                infeasible.append(InfeasibleGpu(gpu, f"{where}{found.reason or 'infeasible'}"))
    return options, infeasible
