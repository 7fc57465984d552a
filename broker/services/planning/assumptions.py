"""What the planner and ``estimate`` assume where offers are silent, built once for both:
the spot reclaim rate this installation has measured, and the fabric between nodes of an
offer that states none (a setting; every gang placed on it is flagged)."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy.orm import Session

from broker.config import Settings
from broker.services.planning.spot_rates import preemption_rate
from scheduler.candidate_rules import PREEMPTIONS_PER_HOUR, CandidateSettings


def candidate_settings(session: Session, settings: Settings, now: datetime) -> CandidateSettings:
    rate = preemption_rate(session, now, PREEMPTIONS_PER_HOUR)
    if settings.unknown_interconnect_gbps is None:
        return CandidateSettings(preemptions_per_hour=rate)
    return CandidateSettings(
        preemptions_per_hour=rate, unknown_interconnect_gbps=settings.unknown_interconnect_gbps
    )
