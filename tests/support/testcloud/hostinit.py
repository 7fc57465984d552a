"""PID 1 of a test-cloud host: run the user data once, then reap orphans until killed.

Started by ``TestCloud.boot`` inside the host's namespaces (``python -I hostinit.py DIR``)
after its private mounts are in place. Like a machine's init it outlives the boot
script, so what the script leaves running (``ray start`` daemons) keeps running, and it
adopts and reaps every orphan of the host. Stdlib only: it runs with ``-I``.

``DIR/user-data`` is run as is: directly when it starts with ``#!`` (as cloud-init and
the GCE guest agent do), else with ``/bin/bash``. Its exit status goes to ``DIR/status``
and, with a ``[testcloud]`` line, to the host's log (this process's stdout).
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path


def main(host_dir: Path) -> None:
    (host_dir / "up").write_text(f"{os.getpid()}\n")  # mounts done, init running
    script = host_dir / "user-data"
    text = script.read_bytes()
    boot = None
    if text.strip():
        argv = [str(script)] if text.startswith(b"#!") else ["/bin/bash", str(script)]
        print(f"[testcloud] running user data: {' '.join(argv)}", flush=True)
        boot = subprocess.Popen(argv, cwd="/", stdin=subprocess.DEVNULL)
    else:
        _finished(host_dir, 0, "no user data")
    while True:  # an idle machine once the script is done; SIGKILL from outside ends it
        try:
            pid, status = os.waitpid(-1, 0)
        except ChildProcessError:
            # Nothing else runs now, but a command entered later (``Host.run``) may leave
            # orphans to this process: look again soon.
            time.sleep(0.5)
            continue
        if boot is not None and pid == boot.pid:
            code = os.waitstatus_to_exitcode(status)
            _finished(host_dir, code, f"user data exited with status {code}")


def _finished(host_dir: Path, code: int, line: str) -> None:
    (host_dir / "status").write_text(f"{code}\n")
    print(f"[testcloud] {line}", flush=True)


if __name__ == "__main__":
    main(Path(sys.argv[1]))
