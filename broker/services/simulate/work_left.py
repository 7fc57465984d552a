"""Work carried across a preemption: a preempted training job keeps what its last
checkpoint saved (``checkpoint_every`` steps), and its stored spec shrinks to the work
still left, so the planner prices only what remains."""

from __future__ import annotations

import math
from datetime import datetime

from broker.db.engine import Database
from broker.db.models import JobRow


def keep_checkpointed(
    db: Database, job_id: int, started: datetime, ends: datetime, now: datetime
) -> None:
    """Shrink the job's stored spec to the work its last checkpoint had not saved, for a
    run begun at ``started`` that would have ended at ``ends`` and was stopped at ``now``."""
    from workloads.spec import parse_spec

    total = (ends - started).total_seconds()
    elapsed = (now - started).total_seconds()
    with db.session() as session:
        job = session.get(JobRow, job_id)
        assert job is not None
        spec = parse_spec(job.spec)
        if total <= 0 or spec.kind != "training":
            return
        steps = spec.total_steps() if spec.model is not None else 0
        every = total * spec.checkpoint_every / steps if steps else total
        saved = math.floor(elapsed / every) * every if every > 0 else 0.0
        left = max(0.0, 1.0 - saved / total)
        if left >= 1.0:
            return
        data = dict(job.spec)
        for key in ("tokens", "steps"):
            if data.get(key):
                data[key] = max(1, math.ceil(data[key] * left))
        hours = data.get("estimated_hours")
        if isinstance(hours, int | float):
            data["estimated_hours"] = max(hours * left, 1e-3)
        elif isinstance(hours, dict):
            data["estimated_hours"] = {k: max(v * left, 1e-3) for k, v in hours.items()}
        job.spec = data
