"""Training estimates: per GPU type, the cheapest feasible gang, found by the planner's own
rules (``scheduler.candidate_rules.TrainingRules``): the same node counts, fabric, spot overhead,
deadline and budget arithmetic, so ``estimate``'s cheapest option is what ``plan`` picks for
the job alone on an empty fleet."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime

from broker.domain import money, round_cents
from broker.services.planning.estimates.offers import EstimateOffer
from broker.services.planning.estimates.report import InfeasibleGpu, Option, rank
from scheduler.candidate_rules import TrainingOption, TrainingRules, training_exclusion
from workloads.spec import TrainingJob


def _option(offer: EstimateOffer, gang: TrainingOption) -> Option:
    pool, est = offer.pool, gang.estimate
    cost = None
    if offer.price is not None and est is not None:
        cost = round_cents(money(gang.cost))
    return Option(
        **offer.placement(gang.nodes),
        hours=round(gang.wall_hours, 4) if est is not None else None,
        cost=cost,
        step_seconds=round(est.step_seconds, 6) if est is not None else None,
        assumed_mfu=round(est.assumed_mfu, 4) if est is not None and pool.gpu else None,
        mfu=round(est.mfu, 4) if est is not None and pool.gpu else None,
        memory_per_gpu_gib=round(est.memory_per_gpu_gib, 2) if est is not None else None,
        memory_headroom_gib=round(est.memory_headroom_gib, 2) if est is not None else None,
        spot_overhead=round(gang.overhead, 4),
        feasible=gang.stage is None,
        reason=gang.reason,
        assumed_interconnect_gbps=gang.fabric_gbps if gang.fabric_assumed else None,
    )


def estimate_training(
    job: TrainingJob,
    offers: Sequence[EstimateOffer],
    rules: TrainingRules,
    *,
    now: datetime,
    nodes: int | None,
) -> tuple[list[Option], list[InfeasibleGpu], set[str]]:
    """The cheapest option per GPU type, why the other types cannot run the job, and the
    calibrations the feasible options used."""
    hours_left = None
    if job.deadline is not None:
        hours_left = (job.deadline - now).total_seconds() / 3600.0
    best: dict[str | None, Option] = {}
    used: set[str] = set()
    for offer in offers:
        excluded = training_exclusion(job, offer.pool)
        for gang in rules.options(job, offer.pool, hours_left=hours_left, nodes=nodes):
            option = _option(offer, gang)
            if option.feasible and excluded is not None:
                option = option.ruled_out(excluded[1])
            unpriced = offer.price is None and offer.pool.offer_id is not None
            if option.feasible and unpriced and job.budget is not None:
                option = option.ruled_out(
                    "the offer's price is unknown, so the budget cannot be checked"
                )
            if option.feasible and gang.calibration is not None:
                used.add(gang.calibration.device)
            current = best.get(offer.pool.gpu)
            if current is None or rank(option) < rank(current):
                best[offer.pool.gpu] = option
    options = sorted((o for o in best.values() if o.feasible), key=rank)
    infeasible = [
        InfeasibleGpu(o.gpu, o.reason or "infeasible")
        for o in sorted(best.values(), key=lambda o: o.gpu or "")
        if not o.feasible
    ]
    return options, infeasible, used
