"""``gpubroker daemon --once`` exits non-zero, in one line, when a step of its tick failed."""

from __future__ import annotations

import contextlib
import io
import sys
from pathlib import Path

import pytest

from broker.cli import app as app_module
from broker.db.engine import Database
from broker.db.models import AllocationRow, InstanceRow
from tests.support.execution import plan_allocation, submit


def _main(*args: str) -> tuple[int, str]:
    err = io.StringIO()
    saved, sys.argv = sys.argv, ["gpubroker", *args]
    try:
        with contextlib.redirect_stderr(err), pytest.raises(SystemExit) as ended:
            app_module.main()
    finally:
        sys.argv = saved
    code = ended.value.code
    return (code if isinstance(code, int) else 0), err.getvalue()


def test_a_failed_reconcile_makes_daemon_once_exit_1(home: Path) -> None:
    database = Database(f"sqlite:///{home / 'broker.db'}")
    alloc_id = plan_allocation(database, submit(database), nodes=1)
    with database.session() as session:  # the local provider was used: reconcile asks it
        allocation = session.get(AllocationRow, alloc_id)
        assert allocation is not None
        allocation.state = "RELEASED"  # nothing for the daemon to run
        session.add(
            InstanceRow(
                allocation_id=alloc_id,
                provider="local",
                region="local",
                zone="local",
                instance_type="local-node",
                pricing="on_demand",
                request_id="r",
                node_index=0,
                state="TERMINATED",
            )
        )
    database.dispose()
    state = home / "local" / "instances.json"
    state.parent.mkdir()
    state.write_text("not json")  # its state file is damaged: the listing fails

    code, err = _main("daemon", "--once")

    lines = err.strip().splitlines()
    assert code == 1 and "Traceback" not in err
    assert lines[-1].startswith("error: daemon --once: ") and "local" in lines[-1]
