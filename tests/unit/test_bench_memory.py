"""The scheduler bench's memory figure counts the solver's child process, once."""

from __future__ import annotations

import os
import time

from bench.scheduler.memory import PeakMemory, held_kib
from scheduler.solver_process import run_in_child

CHILD_MIB = 300


def test_a_childs_memory_counts_and_shared_pages_count_once() -> None:
    before = held_kib(os.getpid()) / 1024.0

    def work() -> int:
        block = bytearray(CHILD_MIB << 20)  # zero pages; touch each so it is resident
        for i in range(0, len(block), 4096):
            block[i] = 1
        time.sleep(0.5)
        return len(block)

    with PeakMemory() as peak:
        assert run_in_child(work, seconds=30) == CHILD_MIB << 20
    # the child's own pages are counted; the planner's pages, which the fork shares
    # with it, are not counted a second time
    assert before + 0.9 * CHILD_MIB < peak.mib < 1.5 * before + 1.1 * CHILD_MIB
