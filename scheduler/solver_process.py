"""Native integer solves in a child process of their own.

Two things the MIP solver does that the planner cannot allow in its own process:

- **It does not always stop at its time limit.** HiGHS checks the clock between steps, and
  some steps of its presolve and root cuts run long: with the full-space step let loose
  on M synthetic's candidates under a 35 % spend cap, a plan asked for in 30 s came after
  253 s (see bench/RESULTS.md). A plan's wall-clock limit is a promise, so the solve runs
  in a forked child that is killed a little past the stop; the caller then has no result
  from it and says so.
- **It writes to standard output.** HiGHS prints a debug line
  ("HighsMipSolverData::transformNewIntegerFeasibleSolution tmpSolver.run();") to file
  descriptor 1 whatever its log options say: 51 lines in one solve of the L synthetic bench
  fleet, which would break a plan printed as JSON and reads as an error on a terminal.
  The child points descriptor 1 at the null device, or at standard error where the
  solver's log is asked for (``GPUBROKER_SOLVER_LOG``: HiGHS writes its log there too);
  the parent's own descriptors are left as they are.

The child is a fork: it has the model already built, and only the (small) result crosses
back, pickled through a pipe. Linux only, as is the rest of the broker's runtime.

A step whose input is already known can also start in a child now and be answered later
(``Child``), so that the planner goes on with the next step on the other core.
"""

from __future__ import annotations

import ctypes
import gc
import os
import pickle
import select
import signal
import sys
import time
import weakref
from collections.abc import Callable
from typing import Generic, NoReturn, TypeVar

from broker.errors import SolverCrashed

T = TypeVar("T")

SOLVER_LOG_ENV = "GPUBROKER_SOLVER_LOG"  # set: the solvers' own logs on standard error


def solver_log() -> bool:
    """Whether the solvers' own logs are asked for."""
    return bool(os.environ.get(SOLVER_LOG_ENV))


_PR_SET_PDEATHSIG = 1
_READ_CHUNK = 1 << 20
_WAIT_STEP = 60.0  # seconds per select(); a limit may be far off or infinite


def run_in_child(work: Callable[[], T], *, seconds: float) -> T | None:
    """``work()`` run in a forked child; its return value, or None where the child has not
    answered within ``seconds`` (it is then killed, and nothing of it is left running). An
    exception raised by ``work`` is raised here; a child that dies without an answer (the
    kernel's out-of-memory killer) raises :class:`SolverCrashed`."""
    return Child(work).result(seconds=seconds)


class Child(Generic[T]):
    """``work()`` started now in a forked child and answered later (``result``), so that
    the caller can go on meanwhile: two steps that depend on the same input run on two
    cores. A child whose handle is dropped or cancelled before it answered is killed."""

    def __init__(self, work: Callable[[], T]) -> None:
        _flush_streams()
        read_end, write_end = os.pipe()
        parent = os.getpid()
        pid = os.fork()
        if pid == 0:
            os.close(read_end)
            _child(work, write_end, parent)
        os.close(write_end)
        self._pid, self._fd = pid, read_end
        self._end = weakref.finalize(self, _end_child, pid, read_end)

    def result(self, *, seconds: float) -> T | None:
        """The child's return value, or None where it has not answered within ``seconds``
        (it is then killed, and so is a cancelled child); as :func:`run_in_child` for
        errors. One answer per child: None after it."""
        if not self._end.alive:
            return None
        try:
            payload = _read_until(self._fd, time.monotonic() + max(seconds, 0.0))
        except BaseException:
            self._end()
            raise
        if payload is None:
            self._end()
            return None
        self._end.detach()
        os.close(self._fd)
        _, status = os.waitpid(self._pid, 0)
        if not payload:
            raise SolverCrashed(_ended(status))
        ok, value = pickle.loads(payload)
        if not ok:
            raise value
        return value  # type: ignore[no-any-return]

    def cancel(self) -> None:
        """Kill the child if it has not answered yet; nothing of it is left running."""
        self._end()


def _end_child(pid: int, fd: int) -> None:
    os.close(fd)
    _kill(pid)


def _child(work: Callable[[], object], out: int, parent: int) -> NoReturn:
    """The child's whole life: solve, send the answer, exit without running the parent's
    exit handlers or flushing its buffers a second time."""
    code = 0
    try:
        # a collection would write to every tracked object's header, copying the parent's
        # heap page by page into the child; the child is short-lived, so it does without
        gc.disable()
        signal.signal(signal.SIGINT, signal.SIG_DFL)
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        ctypes.CDLL(None).prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)
        if os.getppid() != parent:  # the parent died before prctl took hold
            os._exit(1)
        if solver_log():
            os.dup2(2, 1)
        else:
            null = os.open(os.devnull, os.O_WRONLY)
            os.dup2(null, 1)
            os.close(null)
        try:
            answer = pickle.dumps((True, work()), protocol=pickle.HIGHEST_PROTOCOL)
        except BaseException as exc:
            answer = _pickled_error(exc)
        _flush_streams()
        view = memoryview(answer)
        while view:
            view = view[os.write(out, view) :]
    except BaseException:
        code = 1
    finally:
        os._exit(code)


def _pickled_error(exc: BaseException) -> bytes:
    try:
        return pickle.dumps((False, exc), protocol=pickle.HIGHEST_PROTOCOL)
    except Exception:
        error = RuntimeError(f"{type(exc).__name__}: {exc}")
        return pickle.dumps((False, error), protocol=pickle.HIGHEST_PROTOCOL)


def _read_until(fd: int, deadline: float) -> bytes | None:
    """Everything written to ``fd`` until its writer closes it; None at the deadline."""
    chunks: list[bytes] = []
    while True:
        left = deadline - time.monotonic()
        if left <= 0:
            return None
        ready, _, _ = select.select([fd], [], [], min(left, _WAIT_STEP))
        if not ready:
            continue
        chunk = os.read(fd, _READ_CHUNK)
        if not chunk:
            return b"".join(chunks)
        chunks.append(chunk)


def _kill(pid: int) -> None:
    """The child is not reaped before this, so the pid is still its own."""
    os.kill(pid, signal.SIGKILL)
    os.waitpid(pid, 0)


def _ended(status: int) -> str:
    if os.WIFSIGNALED(status):
        name = signal.Signals(os.WTERMSIG(status)).name
        hint = " (out of memory?)" if os.WTERMSIG(status) == signal.SIGKILL else ""
        return f"the solver process was killed by {name} before it answered{hint}"
    return f"the solver process exited with code {os.WEXITSTATUS(status)} before it answered"


def _flush_streams() -> None:
    """Python's and C stdio's buffers written out before a fork, so that the child does not
    write them a second time (C stdio flushes at its exit)."""
    for stream in (sys.stdout, sys.stderr):
        if stream is not None:
            stream.flush()
    ctypes.CDLL(None).fflush(None)
