"""The jobs CLI: submit, jobs, logs, cancel, reconcile; bad input is one line, exit 2."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
GPUBROKER = str(Path(sys.executable).with_name("gpubroker"))


def _run(home: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("GPUBROKER_")}
    env["GPUBROKER_HOME"] = str(home)
    return subprocess.run(
        [GPUBROKER, *args], env=env, capture_output=True, text=True, timeout=60, cwd=REPO
    )


def test_bad_input_is_one_line_and_exit_2(home: Path) -> None:
    for args, words in (
        (("jobs", "--state", "bogus"), "--state: 'BOGUS' is not a job state"),
        (("cancel", "42"), "job 42 does not exist"),
        (("logs", "42"), "job 42 does not exist"),
    ):
        result = _run(home, *args)
        assert result.returncode == 2, result.stderr
        assert result.stderr.count("\n") == 1 and words in result.stderr
        assert "Traceback" not in result.stderr


def test_submit_list_logs_cancel_reconcile(home: Path) -> None:
    submitted = _run(home, "submit", "examples/gpt-tiny-local.yaml", "--format", "json")
    assert submitted.returncode == 0, submitted.stderr
    (job,) = json.loads(submitted.stdout)
    assert job["state"] == "PENDING" and job["name"] == "gpt-tiny-local"

    cancelled = _run(home, "cancel", str(job["id"]))
    assert cancelled.returncode == 0 and "CANCELLED" in cancelled.stdout

    listed = _run(home, "jobs", "--state", "cancelled", "--format", "csv")
    lines = listed.stdout.strip().splitlines()
    assert lines[0].startswith("id,name,kind,team,state") and len(lines) == 2
    assert ",CANCELLED," in lines[1]

    logs = _run(home, "logs", str(job["id"]), "--events", "--format", "json")
    states = [event["payload"]["state"] for event in json.loads(logs.stdout)]
    assert states == ["PENDING", "CANCELLED"]

    report = _run(home, "reconcile", "--format", "json")
    assert report.returncode == 0
    assert json.loads(report.stdout)["terminated"] == []
