"""A local node's processes: found by mark, stopped with their descendants, no others."""

from __future__ import annotations

import subprocess
import sys
import time
import uuid

from providers.local import processes

SLEEPER = (
    "import subprocess, sys, time; "
    "subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(60)']); time.sleep(60)"
)


def test_stop_takes_marked_processes_roots_and_their_children_only() -> None:
    mark = f"/tmp/gbr-test-{uuid.uuid4().hex[:8]}"
    marked = subprocess.Popen([sys.executable, "-c", SLEEPER, mark])
    root = subprocess.Popen([sys.executable, "-c", SLEEPER])
    bystander = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        deadline = time.monotonic() + 10
        while len(processes.marked([mark], [root.pid])) < 4:  # two parents, two children
            assert time.monotonic() < deadline
        found = processes.marked([mark], [root.pid])
        assert marked.pid in found and root.pid in found and bystander.pid not in found
        assert processes.stop([mark], [root.pid], grace_s=1.0) == []
        marked.wait(5)
        root.wait(5)
        assert all(not processes.alive(pid) for pid in found)
        assert processes.alive(bystander.pid)
        assert processes.marked([mark], [root.pid]) == []
    finally:
        for proc in (marked, root, bystander):
            proc.kill()
            proc.wait()
