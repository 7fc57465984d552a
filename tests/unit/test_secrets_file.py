"""Webhook URLs live in a 0600 secrets file; the database keeps a redacted reference."""

from __future__ import annotations

import stat
from pathlib import Path

import pytest
from sqlalchemy import select

from broker.db.models import ReportScheduleRow
from broker.errors import ConfigError
from broker.sdk import Broker
from broker.secrets import FILE, seal, shown, unseal

HOOK = "https://hooks.example.com/services/T000/B000/S3cr3tT0ken?key=abc"


def test_seal_and_unseal(tmp_path: Path) -> None:
    ref = seal(HOOK, "https://hooks.example.com/...", tmp_path)
    assert "S3cr3t" not in ref and shown(ref) == "https://hooks.example.com/..."
    assert unseal(ref, tmp_path) == HOOK
    assert stat.S_IMODE((tmp_path / FILE).stat().st_mode) == 0o600
    assert unseal("https://plain.example.com/x", tmp_path) == "https://plain.example.com/x"
    (tmp_path / FILE).write_text("{}")
    with pytest.raises(ConfigError, match="missing"):
        unseal(ref, tmp_path)


def test_a_schedule_keeps_its_webhook_out_of_the_database(tmp_path: Path) -> None:
    with Broker(home=str(tmp_path), env={}) as broker:
        view = broker.schedules.add("0 8 * * 1", out_dir=tmp_path / "reports", webhook=HOOK)
        assert view.webhook == "https://hooks.example.com/..."
        with broker.db.session() as session:
            stored = session.scalar(select(ReportScheduleRow.webhook))
        for part in tmp_path.glob("broker.db*"):  # the database and its write-ahead log
            assert b"S3cr3t" not in part.read_bytes()
    assert stored is not None and "S3cr3t" not in stored
    assert HOOK in (tmp_path / FILE).read_text()
    assert stat.S_IMODE((tmp_path / FILE).stat().st_mode) == 0o600
    assert unseal(stored, tmp_path) == HOOK
    with Broker(home=str(tmp_path), env={}) as broker:
        broker.schedules.remove(view.id)
    assert HOOK not in (tmp_path / FILE).read_text()  # the secret goes with its schedule
