"""``estimate``: a spec against the current offers, one GPU type, or one offer."""

from __future__ import annotations

from broker.config import Settings
from broker.db.engine import Database
from broker.domain import utcnow
from broker.errors import UserError
from broker.services.planning.estimates.inference import estimate_inference_options
from broker.services.planning.estimates.offers import (
    EstimateOffer,
    current_offers,
    hypothetical,
    offer_by_id,
)
from broker.services.planning.estimates.report import EstimateReport
from broker.services.planning.estimates.training import estimate_training
from scheduler.candidate_rules import TrainingRules
from workloads.estimate import min_gpus, training_flops
from workloads.gpus import GPUS, resolve
from workloads.spec import JobSpec, TrainingJob

MAX_NODES = 100_000


def estimate_spec(
    db: Database,
    settings: Settings,
    spec: JobSpec,
    *,
    gpu: str | None = None,
    nodes: int | None = None,
    offer_id: int | None = None,
) -> EstimateReport:
    """Estimate ``spec`` on the current offers, or on one GPU type or one offer."""
    from broker.services.planning.assumptions import candidate_settings
    from broker.services.planning.calibrations import calibration_map

    if nodes is not None and not 1 <= nodes <= MAX_NODES:
        raise UserError(f"--nodes: must be between 1 and {MAX_NODES}")
    if offer_id is not None and gpu is not None:
        raise UserError("--offer and --gpu: give one of them")
    target = None
    if gpu is not None:
        resolved = resolve(gpu)
        if not resolved.known:
            raise UserError("--gpu: unknown GPU; known: " + ", ".join(sorted(GPUS)))
        target = resolved.name
    offers: list[EstimateOffer]
    if offer_id is not None:
        offers = [offer_by_id(db, settings, offer_id)]
    else:
        offers = current_offers(db, settings, spec)
        if target is not None:
            offers = [o for o in offers if o.pool.gpu == target] or [hypothetical(spec, target)]
    now = utcnow()
    with db.session() as session:  # what ``plan`` assumes too
        assumptions = candidate_settings(session, settings, now)
    calibrations = calibration_map(db)
    if isinstance(spec, TrainingJob):
        if nodes is not None and spec.nodes is not None and nodes != spec.nodes:
            raise UserError(f"--nodes: the spec fixes nodes to {spec.nodes}")
        rules = TrainingRules(assumptions, calibrations)
        options, infeasible, used = estimate_training(spec, offers, rules, now=now, nodes=nodes)
        gpu_types = sorted({o.pool.gpu for o in offers if o.pool.gpu is not None})
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
    options, infeasible = estimate_inference_options(spec, offers, assumptions, calibrations)
    return EstimateReport(
        job=spec.name,
        kind="inference",
        params=spec.model.n_params() if spec.model is not None else None,
        tokens=None,
        steps=None,
        flops_total=None,
        min_gpus={},
        options=options,
        infeasible=infeasible,
    )
