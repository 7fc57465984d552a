"""Calibrations: the training throughput ``gpubroker calibrate`` measured on a device.

They live in the ``calibrations`` table; the newest per device wins. Estimates and the
planner use them in place of the datasheet peak x the default MFU.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import select

from broker.db.engine import Database
from broker.db.models import CalibrationRow
from broker.domain import utcnow
from broker.errors import UserError
from workloads.estimate import (
    Calibration,
)


@dataclass(frozen=True)
class CalibrationView:
    id: int
    device: str
    gpu: str | None
    achieved_flops: float
    peak_flops: float | None
    mfu: float | None
    detail: dict[str, Any]
    measured_at: datetime

    @property
    def calibration(self) -> Calibration:
        return Calibration(device=self.device, achieved_flops=self.achieved_flops, mfu=self.mfu)

    def as_row(self) -> dict[str, Any]:
        return asdict(self)


def _calibration_view(row: CalibrationRow) -> CalibrationView:
    return CalibrationView(
        id=row.id,
        device=row.device,
        gpu=row.gpu,
        achieved_flops=row.achieved_flops,
        peak_flops=row.peak_flops,
        mfu=row.mfu,
        detail=dict(row.detail or {}),
        measured_at=row.measured_at,
    )


def save_calibration(
    db: Database,
    *,
    device: str,
    gpu: str | None,
    achieved_flops: float,
    peak_flops: float | None = None,
    mfu: float | None = None,
    detail: dict[str, Any] | None = None,
) -> CalibrationView:
    if not achieved_flops > 0 or not math.isfinite(achieved_flops):
        raise UserError("calibration: achieved FLOP/s must be a positive number")
    with db.session() as session:
        row = CalibrationRow(
            device=device[:128],
            gpu=gpu,
            achieved_flops=float(achieved_flops),
            peak_flops=peak_flops,
            mfu=mfu,
            detail=detail or {},
            measured_at=utcnow(),
        )
        session.add(row)
        session.flush()
        return _calibration_view(row)


def latest_calibrations(db: Database) -> dict[str, CalibrationView]:
    """The newest calibration of each device."""
    with db.session() as session:
        rows = session.scalars(
            select(CalibrationRow).order_by(CalibrationRow.measured_at, CalibrationRow.id)
        ).all()
        return {row.device: _calibration_view(row) for row in rows}


def calibration_for(
    calibrations: dict[str, CalibrationView], gpu: str | None, *, this_machine: bool
) -> CalibrationView | None:
    """The calibration that applies to a node: its GPU's, or this CPU's for a local node."""
    if gpu is not None:
        return calibrations.get(gpu)
    if not this_machine:
        return None
    from workloads.calibrate import cpu_name

    mine = calibrations.get(cpu_name())
    if mine is not None:
        return mine
    cpus = [view for view in calibrations.values() if view.device.startswith("cpu")]
    return max(cpus, key=lambda view: view.measured_at) if cpus else None


def calibration_map(db: Database) -> dict[str, Calibration]:
    """Calibrations for the planner: canonical GPU name -> its newest calibration, and
    ``"cpu"`` -> this machine's CPU calibration (for the local provider's nodes)."""
    latest = latest_calibrations(db)
    mapping = {name: view.calibration for name, view in latest.items() if view.gpu is not None}
    cpu = calibration_for(latest, None, this_machine=True)
    if cpu is not None:
        mapping["cpu"] = cpu.calibration
    return mapping


def run_calibration(
    db: Database,
    *,
    steps: int = 20,
    preset: str | None = None,
    device: str = "auto",
    threads: int | None = None,
) -> CalibrationView:
    """Train the transformer briefly on this machine and store the achieved FLOP/s."""
    if not 1 <= steps <= 100_000:
        raise UserError("--steps: must be between 1 and 100000")
    if threads is not None and not 1 <= threads <= 1024:
        raise UserError("--threads: must be between 1 and 1024")
    from workloads.calibrate import calibrate

    try:
        result = calibrate(steps, preset=preset, device=device, threads=threads)
    except ValueError as exc:
        raise UserError(f"calibrate: {exc}") from None
    return save_calibration(
        db,
        device=result.device,
        gpu=result.gpu,
        achieved_flops=result.achieved_flops,
        peak_flops=result.peak_flops,
        mfu=result.mfu,
        detail=result.detail,
    )


def list_calibrations(db: Database) -> list[CalibrationView]:
    with db.session() as session:
        rows = session.scalars(select(CalibrationRow).order_by(CalibrationRow.id)).all()
        return [_calibration_view(row) for row in rows]
