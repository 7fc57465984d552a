"""Native code's writes to standard output land on standard error during a solve."""

from __future__ import annotations

import ctypes

import pytest

from scheduler.native_output import stdout_to_stderr


def test_native_prints_within_the_block_go_to_stderr(capfd: pytest.CaptureFixture[str]) -> None:
    """C stdio output (buffered, as a solver's printf is) written inside the block reaches
    standard error, and standard output is back once the block ends."""
    libc = ctypes.CDLL(None)
    print("before", flush=True)
    with stdout_to_stderr():
        libc.printf(b"native line\n")
    libc.printf(b"after\n")
    libc.fflush(None)
    out, err = capfd.readouterr()
    assert out == "before\nafter\n"
    assert err == "native line\n"
