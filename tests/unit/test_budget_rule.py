"""The running-budget rule, decided apart from the database."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from decimal import Decimal

from broker.services.budgets import crossed, running_cost

T0 = datetime(2026, 11, 30, 12, 0, tzinfo=UTC)


def test_running_cost_counts_from_launch_or_period_start_whichever_is_later() -> None:
    hour = T0 + timedelta(hours=1)
    assert running_cost(Decimal("3.6"), T0, T0 - timedelta(days=1), hour) == Decimal("3.6")
    # launched before the period: only the part inside it counts
    assert running_cost(Decimal("3.6"), T0 - timedelta(hours=5), T0, hour) == Decimal("3.6")
    assert running_cost(Decimal("3.6"), hour, T0, T0) == 0  # clock skew: never negative


def test_crossed_at_the_budget_and_not_before() -> None:
    budget = Decimal("10")
    assert crossed(budget, Decimal("4"), [Decimal("2"), Decimal("3.99")]) is None
    assert crossed(budget, Decimal("4"), [Decimal("2"), Decimal("4")]) == Decimal("10")
    assert crossed(budget, Decimal("11"), []) == Decimal("11")  # metered alone is enough
    assert crossed(Decimal("0"), Decimal("0"), []) == 0  # a zero budget stops any run
