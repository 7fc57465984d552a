"""Native writes to descriptor 1 land on stderr; the CLI's own output stays on stdout."""

from __future__ import annotations

import json
import subprocess
import sys

SNIPPET = """
import os, sys
from broker.cli.streams import native_output_to_stderr
native_output_to_stderr()
os.write(1, b"native solver chatter\\n")
print('{"result": 1}')
"""


def test_native_writes_go_to_stderr() -> None:
    done = subprocess.run(
        [sys.executable, "-c", SNIPPET], capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout) == {"result": 1}
    assert "native solver chatter" in done.stderr


CLI = """
import os
from broker.cli import app

@app.app.command("chatter")
def chatter() -> None:
    os.write(1, b"native solver chatter\\n")
    print('{"result": 2}')

app.main()
"""


def test_the_cli_keeps_native_writes_off_its_result() -> None:
    done = subprocess.run(
        [sys.executable, "-c", CLI, "chatter"], capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout) == {"result": 2}
    assert "native solver chatter" in done.stderr
