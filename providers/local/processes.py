"""The processes of a local node: found by their marks, stopped with everything below them.

A local node is a boot script and the Ray processes it starts. ``ray start`` daemonises
them, so they are not the script's descendants: each is found by a mark on its command
line (the node's own Ray temp dir, which every Ray process of that node names), then
everything below those roots (workers whose command line Ray rewrites, the job's driver).
Nothing here ever runs ``ray stop``: that would kill every Ray process of the user.
"""

from __future__ import annotations

import contextlib
import os
import signal
import time
from collections.abc import Iterable
from pathlib import Path


def cmdline(pid: int) -> list[str]:
    try:
        raw = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return []
    return [part.decode(errors="replace") for part in raw.split(b"\0") if part]


def _stat(pid: int) -> tuple[str, int] | None:
    """(state letter, parent pid) of a process, or None when it is gone."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = text[text.rindex(")") + 2 :].split()
    return fields[0], int(fields[1])


def _all_pids() -> list[int]:
    return [int(name) for name in os.listdir("/proc") if name.isdigit()]


def alive(pid: int) -> bool:
    stat = _stat(pid)
    return stat is not None and stat[0] not in ("Z", "X")


def _descendants(roots: set[int]) -> set[int]:
    children: dict[int, list[int]] = {}
    for pid in _all_pids():
        stat = _stat(pid)
        if stat is not None:
            children.setdefault(stat[1], []).append(pid)
    found, todo = set(roots), list(roots)
    while todo:
        for child in children.get(todo.pop(), []):
            if child not in found:
                found.add(child)
                todo.append(child)
    return found


def marked(marks: Iterable[str], roots: Iterable[int] = ()) -> list[int]:
    """Live processes whose command line holds one of ``marks``, ``roots``, and below."""
    own = os.getpid()
    wanted = tuple(marks)
    found = {pid for pid in roots if alive(pid)}
    for pid in _all_pids():
        if pid != own and any(mark in arg for arg in cmdline(pid) for mark in wanted):
            found.add(pid)
    return sorted(pid for pid in _descendants(found) if pid != own and alive(pid))


def stop(marks: Iterable[str], roots: Iterable[int] = (), *, grace_s: float = 3.0) -> list[int]:
    """SIGTERM, then SIGKILL, every process ``marked`` finds; returns those left alive."""
    wanted, first = tuple(marks), tuple(roots)
    pids = marked(wanted, first)
    for sig, wait in ((signal.SIGTERM, grace_s), (signal.SIGKILL, 5.0)):
        for pid in pids:
            if alive(pid):
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, sig)
        deadline = time.monotonic() + wait
        while time.monotonic() < deadline and any(alive(pid) for pid in pids):
            time.sleep(0.1)
        # Workers started while we were stopping the rest are caught by a second look.
        pids = sorted(set(pids) | set(marked(wanted, first)))
    return [pid for pid in pids if alive(pid)]
