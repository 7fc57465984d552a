"""``gpubroker daemon``: ``--once`` makes a due report; SIGTERM stops it cleanly."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from datetime import timedelta
from pathlib import Path

from broker.db.engine import Database
from broker.db.models import LeaseRow, ReportRow
from broker.domain import utcnow
from broker.services.daemon import LEADER
from broker.services.reports import schedules

GPUBROKER = str(Path(sys.executable).with_name("gpubroker"))


def _db(home: Path) -> Database:
    return Database(f"sqlite:///{home / 'broker.db'}")


def test_once_makes_the_due_report(home: Path) -> None:
    db = _db(home)
    schedules.add_schedule(
        db,
        "0 * * * *",
        period="1d",
        fmt="html",
        out_dir=home / "out",
        now=utcnow() - timedelta(hours=3),
    )
    result = subprocess.run(
        [GPUBROKER, "daemon", "--once"], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stderr
    assert "daemon stopped after 1 tick(s)" in result.stdout
    assert "reports=1" in result.stderr
    files = list((home / "out").glob("gpubroker-report-s1-*.html"))
    assert len(files) == 1 and 'id="empty-state"' in files[0].read_text()  # nothing ran
    with db.session() as s:
        assert s.query(ReportRow).count() == 1
        assert s.get(LeaseRow, LEADER) is None  # given back on exit
    assert schedules.run_due(db) == []  # nothing more is due
    db.dispose()


def test_sigterm_stops_the_loop_and_gives_leases_back(home: Path) -> None:
    proc = subprocess.Popen(
        [GPUBROKER, "daemon", "--interval", "0.2"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    try:
        assert proc.stderr is not None
        deadline = time.monotonic() + 30
        ticks = 0
        while time.monotonic() < deadline and ticks < 2:
            line = proc.stderr.readline()
            ticks += "tick:" in line
        assert ticks == 2, "the daemon did not tick"
        proc.send_signal(signal.SIGTERM)
        out, _ = proc.communicate(timeout=20)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0
    assert "daemon stopped after" in out
    db = _db(home)
    with db.session() as s:
        assert s.get(LeaseRow, LEADER) is None
    db.dispose()
