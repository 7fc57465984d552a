"""Keep the command's standard output for its result.

A native library (the MIP solver) may print to file descriptor 1 whatever its log settings
say, which would corrupt ``--format json`` or ``csv`` output. The CLI therefore points
descriptor 1 at standard error and gives Python's ``sys.stdout`` a descriptor of its own
that still reaches the original standard output.
"""

from __future__ import annotations

import io
import os
import sys


def native_output_to_stderr() -> None:
    """Route writes to descriptor 1 from native code to standard error; Python's own
    output keeps going to the original standard output. Does nothing when ``sys.stdout``
    is not descriptor 1 (an embedding program or a test has replaced it)."""
    try:
        if sys.stdout.fileno() != 1:
            return
    except (AttributeError, ValueError, io.UnsupportedOperation):
        return
    sys.stdout.flush()
    result = os.dup(1)
    os.dup2(2, 1)
    sys.stdout = open(  # noqa: SIM115 - replaces the process's stdout for its whole life
        result,
        "w",
        buffering=1,
        encoding=sys.stdout.encoding,
        errors=sys.stdout.errors,
        closefd=True,
    )
