"""``JobHandle``: what ``submit`` hands back; waiting on it plans and runs the job here."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from broker.config import Settings
from broker.db.engine import Database
from broker.domain import JobState
from broker.services.execution.cancel import cancel
from broker.services.execution.job_runs import run_job
from broker.services.jobs.store import EventView, JobView, events, get


@dataclass
class JobHandle:
    """A submitted job: wait for it (plans and runs it here), read its log, cancel it."""

    db: Database
    settings: Settings
    id: int
    runner: Any = None  # execution runner; None: Ray Train (tests pass the in-process one)

    def view(self) -> JobView:
        return get(self.db, self.id)

    @property
    def state(self) -> JobState:
        return self.view().state

    def wait(self, progress: Any = None) -> JobView:
        """Plan and run the job until it ends; returns its final view."""
        run_job(self.db, self.settings, self.id, progress=progress, runner=self.runner)
        return self.view()

    def logs(self, after_id: int = 0) -> list[EventView]:
        return events(self.db, self.id, after_id)

    def cancel(self) -> JobView:
        return cancel(self.db, self.settings, self.id)
