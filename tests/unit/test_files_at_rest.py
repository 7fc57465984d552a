"""A new home and its SQLite database are private to their owner."""

from __future__ import annotations

import os
import stat
from pathlib import Path

from broker.sdk import Broker


def test_a_new_home_is_0700_and_its_database_0600(tmp_path: Path) -> None:
    home = tmp_path / "new" / "home"
    previous = os.umask(0o022)
    try:
        with Broker(home=str(home), env={}) as broker:
            broker.jobs()
    finally:
        os.umask(previous)
    assert stat.S_IMODE(home.stat().st_mode) == 0o700
    assert stat.S_IMODE((home / "broker.db").stat().st_mode) == 0o600


def test_an_existing_database_keeps_its_mode(tmp_path: Path) -> None:
    db = tmp_path / "broker.db"
    with Broker(home=str(tmp_path), env={}) as broker:
        broker.jobs()
    db.chmod(0o640)
    with Broker(home=str(tmp_path), env={}) as broker:
        broker.jobs()
    assert stat.S_IMODE(db.stat().st_mode) == 0o640
