"""Native solver output kept off standard output.

HiGHS writes a debug line ("HighsMipSolverData::transformNewIntegerFeasibleSolution
tmpSolver.run();") straight to standard output from its MIP solver, whatever its log
options say, when it repairs a solution of its presolved model on the original one: 51
such lines in one solve of the L synthetic bench fleet. A plan printed as JSON on
standard output would then not parse, so integer solves run with file descriptor 1
pointed at standard error.
"""

from __future__ import annotations

import ctypes
import os
import sys
from collections.abc import Iterator
from contextlib import contextmanager


@contextmanager
def stdout_to_stderr() -> Iterator[None]:
    """Within the block, what native code writes to file descriptor 1 goes to 2. The
    descriptor is the process's, so other threads writing to standard output meanwhile
    are sent to standard error too."""
    if sys.stdout is not None:
        sys.stdout.flush()
    _flush_native_streams()
    try:
        saved = os.dup(1)
    except OSError:  # no standard output to protect
        yield
        return
    try:
        os.dup2(2, 1)
        yield
    finally:
        _flush_native_streams()
        os.dup2(saved, 1)
        os.close(saved)


def _flush_native_streams() -> None:
    """C stdio buffers what native code prints: flushed, it lands where the descriptor
    points now, not after the switch back."""
    ctypes.CDLL(None).fflush(None)
