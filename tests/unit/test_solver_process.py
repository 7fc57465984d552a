"""Solves in a child process: the answer comes back, the stop is hard, stdout stays clean,
and no child outlives its solve or its parent."""

from __future__ import annotations

import ctypes
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from broker.errors import SolverCrashed
from scheduler.solver_process import SOLVER_LOG_ENV, Child, run_in_child


def _written_pid(pid_file: Path) -> int:
    """The pid a child writes to ``pid_file`` once it runs (waited for, at most 30 s)."""
    deadline = time.monotonic() + 30
    while not (pid_file.exists() and pid_file.read_text()):
        assert time.monotonic() < deadline, "the child never started"
        time.sleep(0.01)
    return int(pid_file.read_text())


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return Path(f"/proc/{pid}/stat").read_text().split()[2] != "Z"


@pytest.mark.parametrize("log", [False, True])
def test_the_answer_comes_back_and_native_prints_stay_off_stdout(
    capfd: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, log: bool
) -> None:
    """The child's return value reaches the caller; C stdio output (buffered, as a
    solver's printf is) is dropped, or lands on standard error where the solver's log is
    asked for; the parent's standard output is untouched, before and after."""
    if log:
        monkeypatch.setenv(SOLVER_LOG_ENV, "1")
    else:
        monkeypatch.delenv(SOLVER_LOG_ENV, raising=False)

    def work() -> dict[tuple[int, int], int]:
        ctypes.CDLL(None).printf(b"native line\n")
        return {(1, 2): 3, (4, 5): os.getpid()}

    print("before", flush=True)
    answer = run_in_child(work, seconds=30)
    print("after", flush=True)
    assert answer is not None
    assert answer[(1, 2)] == 3
    assert answer[(4, 5)] != os.getpid()  # it ran in another process
    out, err = capfd.readouterr()
    assert out == "before\nafter\n"
    assert err == ("native line\n" if log else "")


def test_an_exception_in_the_child_is_raised_in_the_caller() -> None:
    def work() -> int:
        raise ValueError("bad column 7")

    with pytest.raises(ValueError, match="bad column 7"):
        run_in_child(work, seconds=30)


def test_a_solve_past_its_stop_is_killed(tmp_path: Path) -> None:
    """A child that ignores its limit (as HiGHS may, deep in presolve) is killed at the
    stop: the caller gets None in about that time, and the child is gone."""
    pid_file = tmp_path / "pid"

    def work() -> int:
        pid_file.write_text(str(os.getpid()))
        time.sleep(60)
        return 1

    started = time.monotonic()
    assert run_in_child(work, seconds=1.0) is None
    assert time.monotonic() - started < 5
    assert not _alive(int(pid_file.read_text()))


def test_a_child_that_dies_without_an_answer_is_an_error() -> None:
    def work() -> int:
        os.kill(os.getpid(), signal.SIGKILL)
        return 1

    with pytest.raises(SolverCrashed, match="killed by SIGKILL"):
        run_in_child(work, seconds=30)


def test_the_child_does_not_outlive_its_parent(tmp_path: Path) -> None:
    """A planner killed mid-solve (SIGKILL: no cleanup runs) takes its solve with it."""
    pid_file = tmp_path / "pid"
    script = textwrap.dedent(
        f"""
        import os, time
        from scheduler.solver_process import run_in_child

        def work():
            open({str(pid_file)!r}, "w").write(str(os.getpid()))
            time.sleep(60)

        run_in_child(work, seconds=60)
        """
    )
    root = Path(__file__).resolve().parents[2]
    planner = subprocess.Popen([sys.executable, "-c", script], cwd=root)
    try:
        child = _written_pid(pid_file)
        assert _alive(child)
        planner.kill()
        planner.wait()
        deadline = time.monotonic() + 5
        while _alive(child) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not _alive(child)
    finally:
        planner.kill()
        planner.wait()


def test_a_child_started_now_answers_later_while_the_caller_goes_on(tmp_path: Path) -> None:
    """The caller works while the child does; the answer waits for it in the pipe."""
    pid_file = tmp_path / "pid"

    def work() -> int:
        pid_file.write_text(str(os.getpid()))
        return os.getpid()

    child = Child(work)
    pid = _written_pid(pid_file)  # the caller goes on: here, it sees the child's side effect
    assert pid != os.getpid()
    assert child.result(seconds=30) == pid


@pytest.mark.parametrize("drop", ["cancel", "drop"])
def test_a_child_cancelled_or_dropped_before_it_answers_is_killed(
    tmp_path: Path, drop: str
) -> None:
    pid_file = tmp_path / "pid"

    def work() -> int:
        pid_file.write_text(str(os.getpid()))
        time.sleep(60)
        return 1

    child: Child[int] | None = Child(work)
    pid = _written_pid(pid_file)
    assert _alive(pid)
    if drop == "cancel":
        assert child is not None
        child.cancel()
    else:
        child = None  # the handle's last reference goes: the child goes with it
    assert not _alive(pid)
    assert child is None or child.result(seconds=0.1) is None
