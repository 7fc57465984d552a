"""One daemon tick: leader-only steps, the shared refresh timer, failing steps, lease expiry."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

from broker.config import load_settings
from broker.db import leases
from broker.domain import utcnow
from broker.errors import ProviderError
from broker.services.daemon import LEADER, Daemon, Steps


def _daemon(database, tmp_path: Path, holder: str, calls: list) -> Daemon:  # type: ignore[no-untyped-def]
    def refresh() -> None:
        calls.append((holder, "refresh"))
        raise ProviderError("aws", "throttled for too long", retryable=True)

    steps = Steps(
        refresh=refresh,
        schedule=lambda: calls.append((holder, "schedule")),
        run_allocation=lambda a: calls.append((holder, f"run {a}")),
        reconcile=lambda: calls.append((holder, "reconcile")),
        reports=lambda now: calls.append((holder, "reports")) or [],
    )
    settings = load_settings({"GPUBROKER_HOME": str(tmp_path)})
    return Daemon(database, settings, steps=steps, holder=holder, refresh_interval=600)


def test_leader_steps_timer_and_failures(database, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    calls: list = []
    one = _daemon(database, tmp_path, "one", calls)
    two = _daemon(database, tmp_path, "two", calls)
    first = one.tick()
    assert first.leader and first.refreshed
    assert first.errors == ["refresh: aws: throttled for too long"]  # logged, tick goes on
    assert calls == [
        ("one", "refresh"),
        ("one", "schedule"),
        ("one", "reconcile"),
        ("one", "reports"),
    ]
    calls.clear()
    second = two.tick()
    assert not second.leader and not second.refreshed
    assert calls == [("two", "reports")]  # only the shared steps
    calls.clear()
    again = one.tick()
    assert again.leader and not again.refreshed  # the refresh timer has not run out
    assert ("one", "schedule") in calls and ("one", "refresh") not in calls
    later = one.tick(now=utcnow() + timedelta(seconds=601))
    assert later.refreshed


def test_leases_expire_and_pass_on(database) -> None:  # type: ignore[no-untyped-def]
    now = utcnow()
    assert leases.acquire(database, LEADER, "a", 30, now=now)
    assert not leases.acquire(database, LEADER, "b", 30, now=now + timedelta(seconds=10))
    assert leases.acquire(database, LEADER, "a", 30, now=now + timedelta(seconds=10))  # renew
    assert leases.holder_of(database, LEADER, now=now + timedelta(seconds=20)) == "a"
    assert leases.acquire(database, LEADER, "b", 30, now=now + timedelta(seconds=41))
    assert not leases.release(database, LEADER, "a")  # not its lease any more
    assert leases.holder_of(database, LEADER, now=now + timedelta(seconds=42)) == "b"
    assert leases.release(database, LEADER, "b")
    assert leases.holder_of(database, LEADER) is None
