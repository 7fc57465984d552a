"""The cost report as one self-contained HTML page with inline SVG charts.

No scripts, fonts, images or styles are fetched: the page carries a Content-Security-Policy
that forbids any network load, so it reads the same from a mail attachment, a file share
or a browser with no network. Every text from the database goes through ``html.escape``.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from decimal import Decimal
from html import escape
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from broker.services.reports import BudgetBurn, Group, Report, TimelinePoint

PALETTE = ("#2f6db5", "#e07b39", "#3a9d5d", "#c94c4c", "#8a63b8", "#8c6d3f", "#d45fa0", "#6b7b8c")
WIDTH = 760
_CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Helvetica,Arial,sans-serif;margin:24px;
color:#1d2733;background:#fff;max-width:1000px}
h1{font-size:22px;margin:0 0 4px}h2{font-size:17px;margin:28px 0 8px}
.sub{color:#5b6876;margin:0 0 16px}
.cards{display:flex;flex-wrap:wrap;gap:12px}
.card{border:1px solid #d8dee5;border-radius:6px;padding:10px 14px;min-width:150px}
.card b{display:block;font-size:20px}.card span{color:#5b6876;font-size:12px}
table{border-collapse:collapse;font-size:13px;margin-top:6px}
th,td{border-bottom:1px solid #e3e7ec;padding:4px 10px;text-align:right}
th:first-child,td:first-child{text-align:left}
svg text{font-size:11px;fill:#1d2733}.note{color:#5b6876;font-size:12px}
.charts{display:flex;flex-wrap:wrap;gap:18px}
"""
_CSP = "default-src 'none'; style-src 'unsafe-inline'; img-src data:"


def _usd(value: Decimal | None) -> str:
    if value is None:
        return "-"
    sign = "-" if value < 0 else ""
    return f"{sign}${abs(value):,.2f}"


def _num(value: Decimal | float | None, digits: int = 1) -> str:
    return "-" if value is None else f"{float(value):,.{digits}f}"


def _pct(value: Decimal | None) -> str:
    return "-" if value is None else f"{float(value) * 100:.1f}%"


def _color(name: str, names: Sequence[str]) -> str:
    return PALETTE[list(names).index(name) % len(PALETTE)]


def _bar_chart(title: str, groups: Sequence[Group], dim: str, chart_id: str) -> str:
    """Horizontal bars of spend, the ten largest groups."""
    groups = list(groups)[:10]
    if not groups:
        return ""
    row_h, label_w, width = 22, 150, 360
    height = row_h * len(groups) + 10
    peak = max((g.metrics.spend for g in groups), default=Decimal(0)) or Decimal(1)
    parts = [
        f'<svg id="{chart_id}" class="chart" role="img" width="{width}" height="{height}" '
        f'viewBox="0 0 {width} {height}" xmlns="http://www.w3.org/2000/svg">'
        f"<title>{escape(title)}</title>"
    ]
    bar_space = width - label_w - 80
    for i, group in enumerate(groups):
        y = 5 + i * row_h
        w = max(float(group.metrics.spend / peak) * bar_space, 1.0)
        label = escape(group.key[dim][:24])
        parts.append(
            f'<text x="{label_w - 6}" y="{y + 14}" text-anchor="end">{label}</text>'
            f'<rect x="{label_w}" y="{y + 3}" width="{w:.1f}" height="{row_h - 6}" '
            f'fill="{PALETTE[i % len(PALETTE)]}"><title>{label}: '
            f"{_usd(group.metrics.spend)}</title></rect>"
            f'<text x="{label_w + w + 4:.1f}" y="{y + 14}">{_usd(group.metrics.spend)}</text>'
        )
    parts.append("</svg>")
    return f"<figure><figcaption>{escape(title)}</figcaption>{''.join(parts)}</figure>"


def _timeline_chart(points: Sequence[TimelinePoint], bucket: str) -> str:
    """Spend per bucket, stacked by provider."""
    height, left, bottom = 240, 60, 30
    providers = sorted({p for point in points for p in point.by_provider})
    peak = max((point.spend for point in points), default=Decimal(0)) or Decimal(1)
    plot_w, plot_h = WIDTH - left - 10, height - bottom - 10
    step = plot_w / max(len(points), 1)
    parts = [
        f'<svg id="chart-timeline" class="chart" role="img" width="{WIDTH}" height="{height}" '
        f'viewBox="0 0 {WIDTH} {height}" xmlns="http://www.w3.org/2000/svg">'
        f"<title>Spend per {bucket}</title>"
        f'<line x1="{left}" y1="{10 + plot_h}" x2="{WIDTH - 10}" y2="{10 + plot_h}" '
        f'stroke="#8894a0"/>'
        f'<text x="{left - 6}" y="16" text-anchor="end">{_usd(peak)}</text>'
        f'<text x="{left - 6}" y="{10 + plot_h}" text-anchor="end">$0</text>'
    ]
    label_every = max(1, len(points) // 8)
    for i, point in enumerate(points):
        x = left + i * step
        y = 10 + plot_h
        for provider in providers:
            value = point.by_provider.get(provider, Decimal(0))
            if not value:
                continue
            h = float(value / peak) * plot_h
            y -= h
            parts.append(
                f'<rect x="{x + step * 0.1:.1f}" y="{y:.1f}" width="{step * 0.8:.1f}" '
                f'height="{h:.1f}" fill="{_color(provider, providers)}"><title>'
                f"{escape(provider)} {point.start:%Y-%m-%d %H:%M}: {_usd(value)}</title></rect>"
            )
        if i % label_every == 0:
            fmt = "%H:%M" if bucket == "hour" else "%m-%d"
            parts.append(
                f'<text x="{x + step / 2:.1f}" y="{height - 10}" text-anchor="middle">'
                f"{point.start.strftime(fmt)}</text>"
            )
    parts.append("</svg>")
    legend = " ".join(
        f'<span style="color:{_color(p, providers)}">&#9632;</span> {escape(p)}' for p in providers
    )
    return f"<figure>{''.join(parts)}<figcaption>{legend}</figcaption></figure>"


def _savings_chart(report: Report) -> str:
    totals = report.totals
    bars = [
        ("actual spend", totals.spend, PALETTE[0]),
        ("per-job cheapest", totals.cheapest_cost, PALETTE[2]),
        ("on-demand list price", totals.on_demand_cost, PALETTE[1]),
    ]
    peak = max(value for _, value, _ in bars) or Decimal(1)
    width, label_w, row_h = 520, 150, 28
    height = row_h * len(bars) + 10
    parts = [
        f'<svg id="chart-savings" class="chart" role="img" width="{width}" height="{height}" '
        f'viewBox="0 0 {width} {height}" xmlns="http://www.w3.org/2000/svg">'
        "<title>Spend against on-demand and per-job cheapest</title>"
    ]
    for i, (label, value, color) in enumerate(bars):
        y = 5 + i * row_h
        w = max(float(value / peak) * (width - label_w - 90), 1.0)
        parts.append(
            f'<text x="{label_w - 6}" y="{y + 17}" text-anchor="end">{label}</text>'
            f'<rect x="{label_w}" y="{y + 4}" width="{w:.1f}" height="{row_h - 8}" '
            f'fill="{color}"/><text x="{label_w + w + 4:.1f}" y="{y + 17}">{_usd(value)}</text>'
        )
    parts.append("</svg>")
    return "".join(parts)


def _budget_chart(burns: Sequence[BudgetBurn]) -> str:
    """Per team: spent and committed against the budget, with a tick where the period is."""
    if not burns:
        return '<p class="note">No team budgets are set.</p>'
    width, label_w, row_h = WIDTH, 150, 26
    bar_w = width - label_w - 170
    height = row_h * len(burns) + 10
    parts = [
        f'<svg id="chart-budgets" class="chart" role="img" width="{width}" height="{height}" '
        f'viewBox="0 0 {width} {height}" xmlns="http://www.w3.org/2000/svg">'
        "<title>Budget burn per team</title>"
    ]
    for i, burn in enumerate(burns):
        y = 5 + i * row_h
        scale = float(burn.amount) or 1.0
        spent_w = min(float(burn.spent) / scale, 1.0) * bar_w
        committed_w = min(float(burn.committed) / scale, 1.0) * bar_w
        committed_w = min(committed_w, bar_w - spent_w)
        tick = label_w + float(burn.elapsed) * bar_w
        over = burn.burn > burn.elapsed
        parts.append(
            f'<text x="{label_w - 6}" y="{y + 16}" text-anchor="end">{escape(burn.team)}</text>'
            f'<rect x="{label_w}" y="{y + 4}" width="{bar_w}" height="{row_h - 8}" '
            f'fill="#eef1f4"/>'
            f'<rect x="{label_w}" y="{y + 4}" width="{spent_w:.1f}" height="{row_h - 8}" '
            f'fill="{PALETTE[3] if over else PALETTE[0]}"/>'
            f'<rect x="{label_w + spent_w:.1f}" y="{y + 4}" width="{committed_w:.1f}" '
            f'height="{row_h - 8}" fill="#9db8d9"/>'
            f'<line x1="{tick:.1f}" y1="{y + 1}" x2="{tick:.1f}" y2="{y + row_h - 1}" '
            f'stroke="#1d2733" stroke-width="2"/>'
            f'<text x="{label_w + bar_w + 6}" y="{y + 16}">{_pct(burn.burn)} of '
            f"{_usd(burn.amount)}/{burn.period}</text>"
        )
    parts.append("</svg>")
    caption = (
        '<p class="note">Dark: metered spend; light: live allocations not yet metered; '
        "the tick marks how much of the period has gone by.</p>"
    )
    return "".join(parts) + caption


def _table(headers: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    head = "".join(f"<th>{escape(h)}</th>" for h in headers)
    body = "".join(
        "<tr>" + "".join(f"<td>{escape(cell)}</td>" for cell in row) + "</tr>" for row in rows
    )
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def _when(value: datetime) -> str:
    return value.strftime("%Y-%m-%d %H:%M UTC")


def render_html(report: Report) -> str:
    totals = report.totals
    cards = [
        ("spend", _usd(totals.spend)),
        ("GPU-hours", _num(totals.gpu_hours)),
        ("saved vs on-demand", _usd(totals.savings_vs_on_demand)),
        ("saved vs per-job cheapest", _usd(totals.savings_vs_cheapest)),
        ("utilisation", _pct(totals.utilisation)),
        ("jobs", str(totals.jobs)),
    ]
    card_html = "".join(
        f'<div class="card"><b>{escape(value)}</b><span>{escape(label)}</span></div>'
        for label, value in cards
    )
    breakdowns = "".join(
        _bar_chart(f"Spend by {dim}", report.breakdowns.get(dim, []), dim, f"chart-{dim}")
        for dim in ("provider", "region", "gpu", "team")
    )
    group_table = _table(
        [*report.group_by, "spend", "GPU-hours", "vs on-demand", "vs cheapest", "utilisation"],
        [
            [
                *(g.key[d] for d in report.group_by),
                _usd(g.metrics.spend),
                _num(g.metrics.gpu_hours),
                _usd(g.metrics.savings_vs_on_demand),
                _usd(g.metrics.savings_vs_cheapest),
                _pct(g.metrics.utilisation),
            ]
            for g in report.groups
        ],
    )
    top_table = _table(
        ["job", "team", "state", "spend", "GPU-hours", "lifetime actual", "estimated"],
        [
            [
                f"#{j.job_id} {j.name}",
                j.team,
                j.state,
                _usd(j.spend),
                _num(j.gpu_hours),
                _usd(j.actual_total),
                _usd(j.estimated_total),
            ]
            for j in report.top_jobs
        ],
    )
    notes = "".join(f'<p class="note">{escape(note)}</p>' for note in report.notes)
    title = f"GPU spend {report.period_from:%Y-%m-%d} to {report.period_to:%Y-%m-%d}"
    return (
        "<!DOCTYPE html>\n"
        '<html lang="en"><head><meta charset="utf-8">'
        f'<meta http-equiv="Content-Security-Policy" content="{_CSP}">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f"<title>{escape(title)}</title><style>{_CSS}</style></head><body>"
        f"<h1>{escape(title)}</h1>"
        f'<p class="sub">{_when(report.period_from)} to {_when(report.period_to)}; '
        f"generated {_when(report.generated_at)} by gpubroker from the usage ledger.</p>"
        f'<div class="cards">{card_html}</div>'
        f"<h2>Spend over time (per {report.bucket})</h2>"
        f"{_timeline_chart(report.timeline, report.bucket)}"
        f'<h2>Where the money went</h2><div class="charts">{breakdowns}</div>'
        f"<h2>Savings</h2>{_savings_chart(report)}"
        f'<p class="note">On-demand: the same node-hours at the on-demand list price. '
        f"Per-job cheapest: each job on the offer it would get if planned alone "
        f"(plan-time estimates, scaled to the metered spend).</p>"
        f"<h2>Budget burn</h2>{_budget_chart(report.budgets)}"
        f"<h2>By {escape(', '.join(report.group_by))}</h2>{group_table}"
        f"<h2>Top jobs</h2>{top_table}{notes}"
        "</body></html>\n"
    )
