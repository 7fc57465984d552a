"""Peak memory of the planner and the solver processes it forks, together.

The integer solves run in forked children (``scheduler.solver_process``), so the
planner's own peak RSS misses them, and adding a child's RSS to it would count the pages
they share twice. Proportional set size (PSS) splits each shared page among the
processes that map it, so the sum over the planner and its children is the memory they
hold together. A thread samples it while the solve runs.
"""

from __future__ import annotations

import os
import threading
from pathlib import Path
from types import TracebackType

SAMPLE_SECONDS = 0.1


def _pss_kib(pid: int) -> int:
    try:
        text = Path(f"/proc/{pid}/smaps_rollup").read_text()
    except OSError:  # the child has ended
        return 0
    for line in text.splitlines():
        if line.startswith("Pss:"):
            return int(line.split()[1])
    return 0


def children(pid: int) -> list[int]:
    """The processes ``pid`` (its main thread) has started and not yet reaped."""
    try:
        text = Path(f"/proc/{pid}/task/{pid}/children").read_text()
    except OSError:
        return []
    return [int(p) for p in text.split()]


def held_kib(pid: int) -> int:
    """PSS of ``pid`` and its direct children, in KiB."""
    return _pss_kib(pid) + sum(_pss_kib(child) for child in children(pid))


class PeakMemory:
    """``with PeakMemory() as peak: ...``, then ``peak.mib``: the largest PSS that this
    process and its children held together at any sample within the block."""

    def __init__(self) -> None:
        self._pid = os.getpid()
        self._peak_kib = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)

    @property
    def mib(self) -> float:
        return self._peak_kib / 1024.0

    def _sample(self) -> None:
        while True:
            self._peak_kib = max(self._peak_kib, held_kib(self._pid))
            if self._stop.wait(SAMPLE_SECONDS):
                return

    def __enter__(self) -> PeakMemory:
        self._thread.start()
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        trace: TracebackType | None,
    ) -> None:
        self._stop.set()
        self._thread.join()
        self._peak_kib = max(self._peak_kib, held_kib(self._pid))
