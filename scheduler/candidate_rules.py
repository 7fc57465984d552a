"""The rules every candidate is judged by, shared by ``plan`` (``scheduler.candidates``)
and ``estimate`` (the estimates service): which pools a job's constraints allow, and for a
training job on one pool the gang sizes worth trying, the fabric and hours they assume, the
spot recovery overhead, and the deadline and budget checks. Both go through these, so
``estimate``'s cheapest option is what ``plan`` picks for the job alone on an empty fleet.
"""

from __future__ import annotations

import fnmatch
import math
from collections.abc import Mapping
from dataclasses import dataclass

from scheduler.problem import Pool
from workloads.estimate import (
    DEFAULT_FABRIC_GBPS,
    Calibration,
    Hardware,
    TrainingEstimate,
    estimate_training,
    min_gpus,
    spot_overhead,
)
from workloads.gpus import GPUS
from workloads.spec import JobSpec, TrainingJob

SERVING_HORIZON_HOURS = 24.0  # inference is planned (and priced) one day at a time
PREEMPTIONS_PER_HOUR = 0.05  # assumed spot reclaim rate of one node where nothing better is known
RESTART_HOURS = 0.15  # relaunch, rejoin and reload after a preemption


def training_spot_overhead(
    spec: TrainingJob,
    step_seconds: float,
    nodes: int,
    preemptions_per_node_hour: float = PREEMPTIONS_PER_HOUR,
) -> float:
    """Expected spot recovery time as a fraction of the estimated hours (the one rule
    ``estimate`` and ``plan`` share). Checkpoint writes are already in those hours, so only
    restarts and the work lost since the last checkpoint are added; any of the gang's
    nodes can be reclaimed, so the rate grows with ``nodes``."""
    interval = spec.checkpoint_every * step_seconds / 3600.0
    return spot_overhead(preemptions_per_node_hour * nodes, 0.0, RESTART_HOURS, interval or None)


def serving_spot_overhead(pricing: str, preemptions_per_node_hour: float) -> float:
    """Expected spot recovery of a serving node, as a fraction of its hours: each
    preemption costs a relaunch while the other replicas carry the load."""
    return preemptions_per_node_hour * RESTART_HOURS if pricing == "spot" else 0.0


@dataclass(frozen=True)
class CandidateSettings:
    """The planning assumptions candidates are built on (kept apart from broker.config)."""

    preemptions_per_hour: float = PREEMPTIONS_PER_HOUR
    horizon_hours: float = SERVING_HORIZON_HOURS
    # between nodes of an offer that does not state its fabric (flagged in the plan)
    unknown_interconnect_gbps: float = DEFAULT_FABRIC_GBPS


def pool_exclusion(spec: JobSpec, pool: Pool) -> tuple[str, str] | None:
    """(stage, why in words) when the job's constraints rule ``pool`` out; None: allowed."""
    cons = spec.constraints
    if cons.gpus and pool.gpu not in cons.gpus:
        return "gpu", f"{pool.gpu or 'a CPU-only node'} is not in constraints.gpus"
    if pool.gpu is None and cons.min_gpu_memory_gib:
        return "gpu", "a CPU-only node, but constraints.min_gpu_memory_gib asks for GPUs"
    if cons.min_gpu_memory_gib is not None:
        spec_gpu = GPUS.get(pool.gpu or "")
        if spec_gpu is None or spec_gpu.memory_gib < cons.min_gpu_memory_gib:
            return "gpu", f"{pool.gpu} has less memory than constraints.min_gpu_memory_gib"
    if cons.providers and pool.provider not in cons.providers:
        return "where", "provider not in constraints.providers"
    if cons.regions and not any(
        fnmatch.fnmatchcase(pool.region, g) or fnmatch.fnmatchcase(pool.zone, g)
        for g in cons.regions
    ):
        return "where", "region not in constraints.regions"
    if pool.pricing == "spot" and not cons.spot:
        return "spot", "spot not allowed (constraints.spot)"
    return None


def training_exclusion(spec: TrainingJob, pool: Pool) -> tuple[str, str] | None:
    """(stage, why) when ``pool`` is out for the training job before any estimate."""
    out = pool_exclusion(spec, pool)
    wanted = spec.gpus_per_node
    if out is None and wanted is not None and pool.gpu and pool.gpus_per_node != wanted:
        out = "gpu", f"the job asks for {wanted} GPUs per node, the node has {pool.gpus_per_node}"
    return out


@dataclass(slots=True)
class TrainingOption:
    """One gang of ``nodes`` nodes in one pool, judged by the rules ``plan`` and ``estimate``
    share. ``stage`` None: a candidate; else what removes it ("fit", "gang", "deadline",
    "budget"), with ``reason`` in words."""

    nodes: int
    estimate: TrainingEstimate
    overhead: float  # expected spot recovery, a fraction of the estimated hours
    cost: float  # price x nodes x hours x (1 + overhead)
    fabric_gbps: float | None  # between nodes, as the hours assume it
    fabric_assumed: bool  # the pool does not state its fabric: the setting stood in
    calibration: Calibration | None
    stage: str | None = None
    reason: str | None = None

    @property
    def wall_hours(self) -> float:
        """Hours on the wall clock: the estimate plus the spot recovery overhead (the
        figure deadlines are checked against)."""
        return self.estimate.hours * (1 + self.overhead)


class TrainingRules:
    """How a training job becomes gangs on one pool: node counts, fabric, hours, spot
    overhead, deadline and budget. ``build_problem`` (for ``plan``) and the estimates
    service both go through it, so the two judge every gang alike."""

    def __init__(
        self, settings: CandidateSettings, calibrations: Mapping[str, Calibration]
    ) -> None:
        self.settings = settings
        self.calibrations = calibrations
        self._memo: dict[tuple[object, ...], TrainingEstimate] = {}
        self._need: dict[tuple[int, str], int | None] = {}
        self._spot: dict[tuple[int, float, int], float] = {}

    def calibration(self, pool: Pool) -> Calibration | None:
        """The GPU's calibration; for a CPU-only node, this machine's, on local nodes only."""
        if pool.gpu is not None:
            return self.calibrations.get(pool.gpu)
        return self.calibrations.get("cpu") if pool.provider == "local" else None

    def node_counts(
        self, spec: TrainingJob, pool: Pool, nodes: int | None = None, memo_key: int = 0
    ) -> list[int]:
        """The gang sizes worth trying: the count given or fixed by the spec, else the
        smallest that holds the model and its doubles, within max_nodes and capacity."""
        if nodes is not None:
            return [nodes]
        if spec.nodes is not None:
            return [spec.nodes]
        if pool.gpu is None:
            return [1]
        need = self._need.get((memo_key, pool.gpu), -1)
        if need == -1:
            need = self._need[(memo_key, pool.gpu)] = min_gpus(spec, pool.gpu)
        if need is None:
            return [1]  # the estimate says why the model does not fit
        smallest = max(1, math.ceil(need / max(pool.gpus_per_node, 1)))
        limit = min(spec.constraints.max_nodes or pool.capacity, pool.capacity)
        return [n for n in (smallest, 2 * smallest, 4 * smallest) if n <= limit] or [smallest]

    def options(
        self,
        spec: TrainingJob,
        pool: Pool,
        *,
        hours_left: float | None,
        memo_key: int = 0,
        nodes: int | None = None,
    ) -> list[TrainingOption]:
        """Every gang size of ``spec`` on ``pool`` with its hours and cost, or the stage
        that removes it. ``memo_key`` names the spec in the estimate cache."""
        need = spec.constraints.min_interconnect_gbps
        calibration = self.calibration(pool)
        out = []
        for count in self.node_counts(spec, pool, nodes, memo_key):
            fabric = pool.interconnect_gbps
            assumed = fabric is None and count > 1
            if assumed:
                fabric = self.settings.unknown_interconnect_gbps
            est = self._estimate(spec, pool, count, fabric, calibration, memo_key)
            overhead = 0.0
            if pool.pricing == "spot" and est.fits:
                spot_key = (memo_key, est.step_seconds, count)
                overhead = self._spot.get(spot_key, -1.0)
                if overhead < 0:
                    overhead = self._spot[spot_key] = training_spot_overhead(
                        spec, est.step_seconds, count, self.settings.preemptions_per_hour
                    )
            wall = est.hours * (1 + overhead)
            cost = pool.price_per_hour * count * wall
            stage = reason = None
            if count > 1 and need is not None and (pool.interconnect_gbps or 0.0) < need:
                stage = "gang"  # an unknown fabric never counts as fast enough
                reason = (
                    f"{pool.interconnect_gbps or 0:g} Gbps between nodes, below "
                    f"constraints.min_interconnect_gbps ({need:g})"
                )
            elif not est.fits:
                stage, reason = "fit", est.reason
            elif count > pool.capacity:
                stage = "fit"
                reason = f"{count} nodes exceed the offer's capacity ({pool.capacity})"
            elif hours_left is not None and wall > hours_left:
                stage = "deadline"
                reason = f"needs {wall:.1f} h; the deadline is {max(hours_left, 0):.1f} h away"
            elif spec.budget is not None and cost > float(spec.budget):
                stage = "budget"
                reason = f"costs {cost:,.2f} USD, over the budget of {spec.budget} USD"
            option = TrainingOption(
                count, est, overhead, cost, fabric, assumed, calibration, stage, reason
            )
            out.append(option)
        return out

    def _estimate(
        self,
        spec: TrainingJob,
        pool: Pool,
        nodes: int,
        fabric: float | None,
        calibration: Calibration | None,
        memo_key: int,
    ) -> TrainingEstimate:
        rdma = pool.rdma not in ("", "none", "false")
        key = (
            memo_key,
            pool.gpu,
            pool.gpus_per_node,
            nodes,
            fabric,
            rdma,
            pool.vcpus,
            pool.memory_gib,
            calibration,
        )
        est = self._memo.get(key)
        if est is None:
            hw = Hardware(
                gpu=pool.gpu,
                gpus_per_node=pool.gpus_per_node,
                nodes=nodes,
                interconnect_gbps=fabric,
                rdma=rdma,
                vcpus=pool.vcpus,
                memory_gib=pool.memory_gib,
            )
            est = self._memo[key] = estimate_training(spec, hw, calibration=calibration)
        return est
