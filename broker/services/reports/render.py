"""A report as text: CSV, JSON or the HTML page, written to a file safely."""

from __future__ import annotations

import csv
import io
import json
from dataclasses import asdict, dataclass
from datetime import datetime
from decimal import Decimal
from pathlib import Path

from broker.errors import UserError
from broker.services.reports.html import render_html
from broker.services.reports.model import ReportData

METRIC_COLUMNS = (
    "spend",
    "gpu_hours",
    "on_demand_cost",
    "savings_vs_on_demand",
    "cheapest_cost",
    "savings_vs_cheapest",
    "utilisation",
    "jobs",
    "runs",
)


def group_rows(report: ReportData) -> list[dict]:
    """The grouped rows with their metrics, and a final ``TOTAL`` row."""
    rows = [{**g.key, **asdict(g.metrics)} for g in report.groups]
    total = {dim: "TOTAL" if i == 0 else "" for i, dim in enumerate(report.group_by)}
    rows.append({**total, **asdict(report.totals)})
    return rows


def _json_default(value: object) -> object:
    if isinstance(value, Decimal):
        return float(value)
    if isinstance(value, datetime):
        return value.isoformat()
    raise TypeError(f"not JSON serialisable: {type(value).__name__}")


def render_text(report: ReportData, fmt: str) -> str:
    """The report as ``csv``, ``json`` or ``html`` text (``table`` is the CLI's rich view)."""
    if fmt == "json":
        return json.dumps(report.to_dict(), indent=2, default=_json_default) + "\n"
    if fmt == "csv":
        columns = [*report.group_by, *METRIC_COLUMNS]
        buffer = io.StringIO()
        writer = csv.writer(buffer, lineterminator="\n")
        writer.writerow(columns)
        for row in group_rows(report):
            writer.writerow(["" if row.get(c) is None else row.get(c) for c in columns])
        return buffer.getvalue()
    if fmt == "html":
        return render_html(report)
    raise UserError(f"format: must be one of csv, json, html for a file (got {fmt!r})")


def write_atomic(path: Path, text: str, *, make_parent: bool = False) -> None:
    """Write ``text`` to ``path`` with ``broker.files.write_atomic`` (a regular file or a
    new name only, exclusive temporary file, rename); ``make_parent``: create the folder
    (0700) first, as a scheduled report's folder may not exist yet."""
    from broker.files import write_atomic as write_safely

    if make_parent:
        path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    write_safely(path, text)


@dataclass(frozen=True)
class Report(ReportData):
    """A cost report: its figures, as text or saved to a file."""

    def render(self, fmt: str) -> str:
        """The report as ``html``, ``csv`` or ``json`` text."""
        return render_text(self, fmt)

    def save(self, path: str | Path, fmt: str | None = None) -> Path:
        """Write the report to ``path``; the format defaults to the file's suffix."""
        target = Path(path).expanduser()
        write_atomic(target, render_text(self, fmt or target.suffix.lstrip(".").lower()))
        return target
