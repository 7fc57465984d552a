"""Pure parts of reports: windows, durations, grouping, cron due times, HTML escaping."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from decimal import Decimal

import pytest

from broker.errors import UserError
from broker.services.reports.html import render_html
from broker.services.reports.model import BudgetBurn, Group, Metrics, TimelinePoint
from broker.services.reports.render import Report
from broker.services.reports.schedules import latest_due, next_due, redact_webhook
from broker.services.reports.windows import parse_duration, parse_group_by, window

NOW = datetime(2026, 11, 20, 12, 30, tzinfo=UTC)


def test_durations() -> None:
    assert parse_duration("7d") == timedelta(days=7)
    assert parse_duration(" 12h ") == timedelta(hours=12)
    assert parse_duration("2w") == timedelta(days=14)
    assert parse_duration("30min") == timedelta(minutes=30)
    for bad in ("", "7", "0d", "7 days", "-1d", "1y", "1mo"):
        with pytest.raises(UserError, match=r"^since:"):
            parse_duration(bad)
    with pytest.raises(UserError, match=r"'1m' is ambiguous; write 1min .* or 1mo"):
        parse_duration("1m")


def test_calendar_windows() -> None:
    """Months and ytd follow the calendar; a date works as --since; --to takes them too."""
    end = datetime(2026, 3, 31, 12, 0, tzinfo=UTC)
    assert window(since="1mo", now=end) == (datetime(2026, 2, 28, 12, 0, tzinfo=UTC), end)
    assert window(since="13mo", now=end)[0] == datetime(2025, 2, 28, 12, 0, tzinfo=UTC)
    assert window(since="ytd", now=end)[0] == datetime(2026, 1, 1, tzinfo=UTC)
    assert window(since="2026-03-01", now=end)[0] == datetime(2026, 3, 1, tzinfo=UTC)
    assert window(since="30d", end="7d", now=end) == (
        end - timedelta(days=37),
        end - timedelta(days=7),
    )
    with pytest.raises(UserError, match=r"^since: '1m' is ambiguous"):
        window(since="1m", now=end)
    with pytest.raises(UserError, match=r"^since: 'soon' is not a duration or date; use .*ytd"):
        window(since="soon", now=end)


def test_windows() -> None:
    assert window(now=NOW) == (NOW - timedelta(days=7), NOW)
    assert window(since="1d", now=NOW) == (NOW - timedelta(days=1), NOW)
    # a bare --to date includes that day
    assert window(start="2026-11-01", end="2026-11-07", now=NOW) == (
        datetime(2026, 11, 1, tzinfo=UTC),
        datetime(2026, 11, 8, tzinfo=UTC),
    )
    assert window(start="2026-11-01T06:00", end="2026-11-01T07:30+01:00", now=NOW) == (
        datetime(2026, 11, 1, 6, tzinfo=UTC),
        datetime(2026, 11, 1, 6, 30, tzinfo=UTC),
    )
    with pytest.raises(UserError, match=r"^from:"):
        window(start="2026-11-09", end="2026-11-01", now=NOW)
    with pytest.raises(UserError, match=r"^from:"):
        window(start="yesterday", now=NOW)
    with pytest.raises(UserError, match=r"^since:"):
        window(since="7d", start="2026-11-01", now=NOW)


def test_group_by() -> None:
    assert parse_group_by(None) == ("team", "provider")
    assert parse_group_by("gpu, region,gpu") == ("gpu", "region")
    assert parse_group_by(["job"]) == ("job",)
    with pytest.raises(UserError, match=r"^group-by: 'zone'"):
        parse_group_by("team,zone")
    with pytest.raises(UserError, match=r"^group-by:"):
        parse_group_by(",")


def test_cron_due_times() -> None:
    monday_8 = "0 8 * * 1"
    created = datetime(2026, 11, 2, 9, 0, tzinfo=UTC)
    assert next_due(monday_8, created) == datetime(2026, 11, 9, 8, tzinfo=UTC)
    assert latest_due(monday_8, created, datetime(2026, 11, 9, 7, 59, tzinfo=UTC)) is None
    exact = datetime(2026, 11, 9, 8, tzinfo=UTC)
    assert latest_due(monday_8, created, exact) == exact
    # several missed: only the newest
    assert latest_due(monday_8, created, datetime(2026, 11, 25, tzinfo=UTC)) == datetime(
        2026, 11, 23, 8, tzinfo=UTC
    )
    # nothing new after the last run
    assert latest_due(monday_8, exact, exact + timedelta(hours=1)) is None


def test_webhook_is_shown_without_its_secret() -> None:
    assert redact_webhook("https://hooks.slack.com/services/T0/B0/xyz?token=1") == (
        "https://hooks.slack.com/..."
    )
    assert redact_webhook(None) is None


def _metrics(spend: str) -> Metrics:
    d = Decimal(spend)
    return Metrics(d, d, d, d, Decimal(0), d, Decimal(0), d, Decimal("0.5"), 1, 1)


def test_html_escapes_names_and_draws_every_chart() -> None:
    evil = '<script>alert("x")</script>'
    group = Group({"team": evil, "provider": "aws"}, _metrics("10"))
    report = Report(
        period_from=NOW - timedelta(days=1),
        period_to=NOW,
        group_by=("team", "provider"),
        totals=_metrics("10"),
        groups=[group],
        breakdowns={
            "provider": [Group({"provider": "aws"}, _metrics("10"))],
            "region": [Group({"region": "us-east-1"}, _metrics("10"))],
            "gpu": [Group({"gpu": "H100-80GB"}, _metrics("10"))],
            "team": [Group({"team": evil}, _metrics("10"))],
        },
        timeline=[TimelinePoint(NOW - timedelta(hours=1), NOW, Decimal(10), {"aws": Decimal(10)})],
        bucket="hour",
        budgets=[
            BudgetBurn(
                evil,
                Decimal(100),
                "week",
                NOW,
                NOW,
                Decimal(10),
                Decimal(5),
                Decimal(85),
                Decimal("0.15"),
                Decimal("0.5"),
            )
        ],
        top_jobs=[],
    )
    page = render_html(report)
    assert "<script" not in page
    assert "&lt;script&gt;" in page
    for chart in ("timeline", "provider", "region", "gpu", "team", "savings", "budgets"):
        assert f'id="chart-{chart}"' in page
    assert "default-src 'none'" in page  # no network loads allowed
