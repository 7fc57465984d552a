"""Rendering of listings as a table, JSON or CSV (``--format``), the same on every command.

- ``table``: for people. On a terminal wide enough for it, a boxed rich table; anywhere
  else (a narrower terminal, a pipe, a file, ``COLUMNS=80`` in a script) a plain layout:
  one line per row, columns padded with spaces and never shortened (a terminal wraps the
  long lines whole rather than a table chopping every cell). Money reads ``$1,234.56``,
  shares ``15.5%``.
- ``json``: one JSON document (an array for a listing, an object for a single result),
  numbers exact as stored (no rounding for display).
- ``csv``: a header line and one line per row, the raw values.
An empty listing prints, in the table format, why it is empty and what to try instead.
"""

from __future__ import annotations

import csv
import enum
import io
import json
import sys
from collections.abc import Mapping, Sequence
from datetime import datetime
from decimal import Decimal
from typing import Any


class Format(enum.StrEnum):
    table = "table"
    json = "json"
    csv = "csv"


FORMAT_HELP = "table, json (one document) or csv."

# Column names whose values are US dollars, and those that are shares of one (0.155 = 15.5%).
MONEY_COLUMNS = frozenset(
    {
        "price_per_hour",
        "price_per_gpu_hour",
        "price_per_tflop_hour",
        "median_per_gpu_hour",
        "on_demand",
        "spot",
        "cost",
        "est_cost",
        "cost_so_far",
        "estimate",
        "burn_rate",
        "spend",
        "amount",
        "spent",
        "committed",
        "remaining",
        "on_demand_cost",
        "savings_vs_on_demand",
        "cheapest_cost",
        "savings_vs_cheapest",
        "actual_total",
        "estimated_total",
        "price_at_plan",
        "objective",
        "lp_bound",
        "value_usd",
        "forecast",
        "cost_per_1k_requests",
        "cost_per_1m_tokens",
    }
)
PERCENT_COLUMNS = frozenset({"utilisation", "burn", "elapsed", "mfu", "share", "gap"})


def jsonable(value: Any) -> Any:
    """Decimals as numbers, datetimes as ISO 8601, enums as their value."""
    if isinstance(value, Decimal):
        return float(value)
    if isinstance(value, datetime):
        return value.isoformat()
    if isinstance(value, enum.Enum):
        return value.value
    if isinstance(value, Mapping):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [jsonable(v) for v in value]
    return value


def dump_json(data: Any) -> str:
    return json.dumps(jsonable(data), indent=2)


def print_json(data: Any) -> None:
    sys.stdout.write(dump_json(data) + "\n")


def money(value: Decimal | float | int | None) -> str:
    """``$1,234.56``; below one dollar four decimals (``$0.2836``), as hourly prices need."""
    if value is None:
        return "-"
    amount = Decimal(str(value))
    sign = "-" if amount < 0 else ""
    amount = abs(amount)
    if amount >= 1 or amount == 0:
        return f"{sign}${amount:,.2f}"
    if amount < Decimal("0.01"):  # per-TFLOP prices: four significant digits
        return f"{sign}${amount:.4g}" if amount >= Decimal("1e-4") else f"{sign}${amount:.2e}"
    text = f"{amount:.4f}".rstrip("0")
    if len(text.split(".")[1]) < 2:
        text = f"{amount:.2f}"
    return f"{sign}${text}"


def percent(value: Decimal | float | None) -> str:
    return "-" if value is None else f"{float(value) * 100:.1f}%"


def number(value: Decimal | float) -> str:
    """A plain number for a table: whole numbers whole, others to a readable precision."""
    amount = float(value)
    if amount == int(amount) and abs(amount) < 1e15:
        return f"{int(amount):,}" if abs(amount) >= 10_000 else str(int(amount))
    if abs(amount) >= 1:
        return f"{amount:,.2f}"
    return f"{amount:.3g}"


def cell(value: Any, column: str = "") -> str:
    """One table cell: ``-`` for unknown, money and shares by column, dates to the minute."""
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, Decimal | float | int) and column in MONEY_COLUMNS:
        return money(value)
    if isinstance(value, Decimal | float) and column in PERCENT_COLUMNS:
        return percent(value)
    if isinstance(value, Decimal | float):
        return number(value)
    if isinstance(value, datetime):
        return value.strftime("%Y-%m-%d %H:%M")
    if isinstance(value, enum.Enum):
        return str(value.value)
    return str(value)


def stdout_is_terminal() -> bool:
    return sys.stdout.isatty()


def _numeric(value: Any) -> bool:
    return isinstance(value, Decimal | float | int) and not isinstance(value, bool)


def plain_table(
    rows: Sequence[Mapping[str, Any]], columns: Sequence[str], labels: Sequence[str]
) -> str:
    """Rows as space-padded columns, every value whole; numbers right-aligned."""
    cells = [[cell(row.get(c), c) for c in columns] for row in rows]
    widths = [
        max([len(label), *(len(line[i]) for line in cells)]) for i, label in enumerate(labels)
    ]
    right = [any(_numeric(row.get(c)) for row in rows) for c in columns]

    def line(values: Sequence[str]) -> str:
        parts = [
            v.rjust(w) if r else v.ljust(w) for v, w, r in zip(values, widths, right, strict=True)
        ]
        return "  ".join(parts).rstrip()

    return "\n".join([line(labels), *(line(values) for values in cells)]) + "\n"


def _rich_table(
    rows: Sequence[Mapping[str, Any]],
    columns: Sequence[str],
    labels: Sequence[str],
    title: str | None,
    plain: str,
) -> None:
    """A boxed table when every cell fits on its line, else the plain layout."""
    from rich.console import Console
    from rich.table import Table

    console = Console()
    natural = max(len(line) for line in plain.splitlines()) + len(columns) + 3
    if natural > console.width:
        if title:
            sys.stdout.write(f"{title}\n")
        sys.stdout.write(plain)
        return
    table = Table(title=title, header_style="bold")
    for column, label in zip(columns, labels, strict=True):
        right = any(_numeric(row.get(column)) for row in rows)
        table.add_column(label, overflow="fold", justify="right" if right else "left")
    for row in rows:
        table.add_row(*(cell(row.get(c), c) for c in columns))
    console.print(table)


def render(
    rows: Sequence[Mapping[str, Any]],
    columns: Sequence[str],
    fmt: Format,
    *,
    title: str | None = None,
    headers: Mapping[str, str] | None = None,
    empty: str | None = None,
) -> None:
    """Print ``rows`` in ``fmt``. JSON and CSV carry every key of ``columns``; ``empty`` is
    the line a table prints instead of an empty listing (why, and what to try)."""
    if fmt is Format.json:
        print_json([{c: row.get(c) for c in columns} for row in rows])
        return
    if fmt is Format.csv:
        buffer = io.StringIO()
        writer = csv.writer(buffer, lineterminator="\n")
        writer.writerow(columns)
        for row in rows:
            writer.writerow(["" if row.get(c) is None else jsonable(row.get(c)) for c in columns])
        sys.stdout.write(buffer.getvalue())
        return
    if not rows and empty:
        sys.stdout.write(f"{empty}\n")
        return
    labels = [(headers or {}).get(c, c) for c in columns]
    plain = plain_table(rows, columns, labels)
    if stdout_is_terminal():
        _rich_table(rows, columns, labels, title, plain)
        return
    if title:
        sys.stdout.write(f"{title}\n")
    sys.stdout.write(plain)


def duration(seconds: float | int | None) -> str:
    """An age as people say it: ``42s``, ``7m``, ``3h05m``, ``2d04h``."""
    if seconds is None:
        return "-"
    total = max(int(seconds), 0)
    days, rest = divmod(total, 86400)
    hours, rest = divmod(rest, 3600)
    minutes, secs = divmod(rest, 60)
    if days:
        return f"{days}d{hours:02d}h"
    if hours:
        return f"{hours}h{minutes:02d}m"
    if minutes:
        return f"{minutes}m{secs:02d}s"
    return f"{secs}s"
