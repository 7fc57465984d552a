"""The cost report as one self-contained HTML page with inline SVG charts.

No scripts, fonts, images or styles are fetched: the page carries a Content-Security-Policy
that forbids any network load, so it reads the same from a mail attachment, a file share
or a browser with no network. Every text from the database goes through ``html.escape``.

Reading rules the page keeps: each provider has one colour in every chart (other
breakdowns use one neutral colour, so a colour never means two things); groups that cost
nothing are left out of the bar charts and counted in a note; the y-axis has round ticks;
charts scale to the page width (no horizontal scroll at 600 px, wide tables scroll inside
their own box); an empty window says so instead of drawing empty charts; a print
stylesheet keeps sections whole on paper.
"""

from __future__ import annotations

import math
from collections.abc import Collection, Sequence
from datetime import datetime
from decimal import Decimal
from html import escape
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from broker.services.reports import BudgetBurn, Group, Metrics, Report, TimelinePoint

# Fixed colours for the providers we know; others take the next free palette colour.
PROVIDER_COLOURS = {
    "aws": "#e07b39",
    "gcp": "#2f6db5",
    "local": "#6b7b8c",
    "fake": "#8a63b8",
    "catalog": "#8c6d3f",
}
PALETTE = ("#3a9d5d", "#d45fa0", "#c9a227", "#1f9e9e", "#a0522d", "#5c6bc0")
NEUTRAL = "#5b7fa6"  # bars of breakdowns that are not providers
PRICING_COLOURS = {"on_demand": "#7a8793", "spot": "#2e8b57", "reserved": "#6a5acd"}
OVER = "#c94c4c"
WIDTH = 760
_CSS = """
*{box-sizing:border-box}
body{font-family:system-ui,-apple-system,Segoe UI,Helvetica,Arial,sans-serif;margin:16px auto;
padding:0 12px;color:#1d2733;background:#fff;max-width:1000px}
h1{font-size:22px;margin:0 0 4px}h2{font-size:17px;margin:28px 0 8px}
.sub{color:#5b6876;margin:0 0 16px}
.cards{display:flex;flex-wrap:wrap;gap:10px}
.card{border:1px solid #d8dee5;border-radius:6px;padding:8px 12px;flex:1 1 140px;min-width:0}
.card b{display:block;font-size:19px}.card span{color:#5b6876;font-size:12px}
.card small{display:block;color:#5b6876;font-size:12px}
.up{color:#b03a2e}.down{color:#2e7d4f}
.wrap{overflow-x:auto;max-width:100%}
table{border-collapse:collapse;font-size:13px;margin-top:6px}
th,td{border-bottom:1px solid #e3e7ec;padding:4px 10px;text-align:right;white-space:nowrap}
th:first-child,td:first-child{text-align:left}
tr.over td{color:#b03a2e;font-weight:600}
figure{margin:0;flex:1 1 340px;min-width:0;max-width:100%}
svg.chart{display:block;width:100%;height:auto}
svg text{font-size:11px;fill:#1d2733}.note{color:#5b6876;font-size:12px}
.charts{display:flex;flex-wrap:wrap;gap:18px}
.legend span{margin-right:12px;white-space:nowrap}
.empty{border:1px dashed #b8c2cc;border-radius:6px;padding:16px;background:#f7f9fb}
@media print{
body{margin:0;max-width:none;font-size:11pt}
.wrap{overflow:visible}
h2{break-after:avoid}
figure,table,.card,.empty{break-inside:avoid}
.card{border-color:#999}
}
@page{margin:12mm}
"""
_CSP = "default-src 'none'; style-src 'unsafe-inline'; img-src data:"


def _usd(value: Decimal | None) -> str:
    if value is None:
        return "-"
    sign = "-" if value < 0 else ""
    return f"{sign}${abs(value):,.2f}"


def _num(value: Decimal | float | None, digits: int = 1) -> str:
    return "-" if value is None else f"{float(value):,.{digits}f}"


def _pct(value: Decimal | float | None) -> str:
    return "-" if value is None else f"{float(value) * 100:.1f}%"


def provider_colours(names: Sequence[str]) -> dict[str, str]:
    """One colour per provider: fixed for known ones, then the palette in name order."""
    colours = {}
    spare = iter(PALETTE * (1 + len(names) // len(PALETTE)))
    for name in sorted(set(names)):
        colours[name] = PROVIDER_COLOURS.get(name) or next(spare)
    return colours


def nice_ticks(peak: float, count: int = 4) -> list[float]:
    """Round axis ticks from 0 to at least ``peak``: steps of 1, 2, 2.5 or 5 x 10^n."""
    if peak <= 0:
        return [0.0, 1.0]
    raw = peak / count
    power = 10 ** math.floor(math.log10(raw))
    step = next(m * power for m in (1, 2, 2.5, 5, 10) if m * power >= raw)
    ticks = [0.0]
    while ticks[-1] < peak:
        ticks.append(round(ticks[-1] + step, 10))
    return ticks


def _tick_label(value: float) -> str:
    if value >= 1000:
        return f"${value / 1000:,.1f}k".replace(".0k", "k")
    return f"${value:,.0f}" if value == int(value) else f"${value:,.2f}"


def _svg_open(chart_id: str, width: int, height: int, title: str) -> str:
    return (
        f'<svg id="{chart_id}" class="chart" role="img" viewBox="0 0 {width} {height}" '
        f'style="max-width:{width}px" preserveAspectRatio="xMinYMin meet" '
        f'xmlns="http://www.w3.org/2000/svg"><title>{escape(title)}</title>'
    )


def _bar_chart(
    title: str, groups: Sequence[Group], dim: str, chart_id: str, colours: dict[str, str]
) -> str:
    """Horizontal bars of spend, the ten largest groups that cost anything."""
    paid = [g for g in groups if g.metrics.spend > 0]
    free = len(groups) - len(paid)
    paid = paid[:10]
    note = (
        f'<p class="note">{free} {escape(dim)} group(s) cost nothing and are not shown.</p>'
        if free
        else ""
    )
    if not paid:
        return (
            f"<figure><figcaption>{escape(title)}</figcaption>"
            f'<p class="note">Nothing was spent.</p>{note}</figure>'
        )
    row_h, label_w, width = 22, 130, 360
    height = row_h * len(paid) + 10
    peak = max(g.metrics.spend for g in paid)
    parts = [_svg_open(chart_id, width, height, title)]
    bar_space = width - label_w - 80
    for i, group in enumerate(paid):
        y = 5 + i * row_h
        w = max(float(group.metrics.spend / peak) * bar_space, 1.0)
        name = group.key[dim]
        label = escape(name[:22])
        colour = colours.get(name, NEUTRAL)
        parts.append(
            f'<text x="{label_w - 6}" y="{y + 14}" text-anchor="end">{label}</text>'
            f'<rect x="{label_w}" y="{y + 3}" width="{w:.1f}" height="{row_h - 6}" '
            f'fill="{colour}"><title>{escape(name)}: '
            f"{_usd(group.metrics.spend)}</title></rect>"
            f'<text x="{label_w + w + 4:.1f}" y="{y + 14}">{_usd(group.metrics.spend)}</text>'
        )
    parts.append("</svg>")
    return f"<figure><figcaption>{escape(title)}</figcaption>{''.join(parts)}{note}</figure>"


def _timeline_chart(points: Sequence[TimelinePoint], bucket: str, colours: dict[str, str]) -> str:
    """Spend per bucket, stacked by provider, on an axis with round ticks."""
    height, left, bottom, top = 240, 64, 30, 10
    providers = sorted({p for point in points for p, v in point.by_provider.items() if v})
    peak = float(max((point.spend for point in points), default=Decimal(0)))
    ticks = nice_ticks(peak)
    scale_top = ticks[-1] or 1.0
    plot_w, plot_h = WIDTH - left - 10, height - bottom - top
    step = plot_w / max(len(points), 1)
    parts = [_svg_open("chart-timeline", WIDTH, height, f"Spend per {bucket}")]
    for tick in ticks:
        y = top + plot_h - tick / scale_top * plot_h
        parts.append(
            f'<line x1="{left}" y1="{y:.1f}" x2="{WIDTH - 10}" y2="{y:.1f}" '
            f'stroke="{"#8894a0" if tick == 0 else "#e3e7ec"}"/>'
            f'<text class="tick" x="{left - 6}" y="{y + 4:.1f}" text-anchor="end">'
            f"{_tick_label(tick)}</text>"
        )
    label_every = max(1, math.ceil(len(points) / 8))
    for i, point in enumerate(points):
        x = left + i * step
        y = top + plot_h
        for provider in providers:
            value = point.by_provider.get(provider, Decimal(0))
            if not value:
                continue
            h = float(value) / scale_top * plot_h
            y -= h
            parts.append(
                f'<rect x="{x + step * 0.1:.1f}" y="{y:.1f}" width="{step * 0.8:.1f}" '
                f'height="{h:.1f}" fill="{colours[provider]}"><title>'
                f"{escape(provider)} {point.start:%Y-%m-%d %H:%M}: {_usd(value)}</title></rect>"
            )
        if i % label_every == 0:
            fmt = "%H:%M" if bucket == "hour" else "%m-%d"
            parts.append(
                f'<text x="{x + step / 2:.1f}" y="{height - 10}" text-anchor="middle">'
                f"{point.start.strftime(fmt)}</text>"
            )
    parts.append("</svg>")
    return (
        f"<figure>{''.join(parts)}<figcaption>{_legend(providers, colours)}</figcaption></figure>"
    )


def _legend(names: Sequence[str], colours: dict[str, str]) -> str:
    items = "".join(
        f'<span><b style="color:{colours.get(n, NEUTRAL)}">&#9632;</b> {escape(n)}</span>'
        for n in names
    )
    return f'<div class="legend">{items}</div>'


def _savings_chart(report: Report) -> str:
    totals = report.totals
    bars = [
        ("actual spend", totals.spend, "#1d2733"),
        ("per-job cheapest", totals.cheapest_cost, "#8894a0"),
        ("on-demand list price", totals.on_demand_cost, "#b8c2cc"),
    ]
    peak = max(value for _, value, _ in bars) or Decimal(1)
    width, label_w, row_h = 520, 150, 28
    height = row_h * len(bars) + 10
    parts = [
        _svg_open("chart-savings", width, height, "Spend against on-demand and per-job cheapest")
    ]
    for i, (label, value, colour) in enumerate(bars):
        y = 5 + i * row_h
        w = max(float(value / peak) * (width - label_w - 90), 1.0)
        parts.append(
            f'<text x="{label_w - 6}" y="{y + 17}" text-anchor="end">{label}</text>'
            f'<rect x="{label_w}" y="{y + 4}" width="{w:.1f}" height="{row_h - 8}" '
            f'fill="{colour}"/><text x="{label_w + w + 4:.1f}" y="{y + 17}">{_usd(value)}</text>'
        )
    parts.append("</svg>")
    return "".join(parts)


def _budget_chart(burns: Sequence[BudgetBurn]) -> str:
    """Per team: spent and committed against the budget, a tick where the period is, and a
    hollow bar to the forecast at the period's end."""
    if not burns:
        return '<p class="note">No team budgets are set.</p>'
    width, label_w, row_h = WIDTH, 130, 26
    bar_w = width - label_w - 190
    height = row_h * len(burns) + 10
    parts = [_svg_open("chart-budgets", width, height, "Budget burn per team")]
    for i, burn in enumerate(burns):
        y = 5 + i * row_h
        scale = float(burn.amount) or 1.0
        spent_w = min(float(burn.spent) / scale, 1.0) * bar_w
        committed_w = min(float(burn.committed) / scale, 1.0) * bar_w
        committed_w = min(committed_w, bar_w - spent_w)
        forecast_w = min(float(burn.forecast) / scale, 1.0) * bar_w
        tick = label_w + float(burn.elapsed) * bar_w
        over = burn.forecast > burn.amount
        parts.append(
            f'<text x="{label_w - 6}" y="{y + 16}" text-anchor="end">{escape(burn.team)}</text>'
            f'<rect x="{label_w}" y="{y + 4}" width="{bar_w}" height="{row_h - 8}" '
            f'fill="#eef1f4"/>'
            f'<rect x="{label_w}" y="{y + 4}" width="{forecast_w:.1f}" height="{row_h - 8}" '
            f'fill="none" stroke="{OVER if over else "#8894a0"}" stroke-dasharray="3 2"/>'
            f'<rect x="{label_w}" y="{y + 4}" width="{spent_w:.1f}" height="{row_h - 8}" '
            f'fill="{OVER if over else "#1d2733"}"/>'
            f'<rect x="{label_w + spent_w:.1f}" y="{y + 4}" width="{committed_w:.1f}" '
            f'height="{row_h - 8}" fill="#9db8d9"/>'
            f'<line x1="{tick:.1f}" y1="{y + 1}" x2="{tick:.1f}" y2="{y + row_h - 1}" '
            f'stroke="#1d2733" stroke-width="2"/>'
            f'<text x="{label_w + bar_w + 6}" y="{y + 16}">{_pct(burn.burn)} of '
            f"{_usd(burn.amount)}/{burn.period}</text>"
        )
    parts.append("</svg>")
    caption = (
        '<p class="note">Dark: metered spend (red when the forecast passes the budget); '
        "light: live allocations not yet metered; dashed: the forecast at the period's end; "
        "the tick marks how much of the period has gone by.</p>"
    )
    return "".join(parts) + caption


def _table(
    headers: Sequence[str],
    rows: Sequence[Sequence[str]],
    *,
    table_id: str = "",
    over: Collection[int] = (),
) -> str:
    """A table in a box that scrolls sideways on its own; rows in ``over`` are flagged."""
    head = "".join(f"<th>{escape(h)}</th>" for h in headers)
    flagged = ' class="over"'
    body = "".join(
        f"<tr{flagged if i in over else ''}>"
        + "".join(f"<td>{escape(cell)}</td>" for cell in row)
        + "</tr>"
        for i, row in enumerate(rows)
    )
    ident = f' id="{table_id}"' if table_id else ""
    return (
        f'<div class="wrap"><table{ident}><thead><tr>{head}</tr></thead>'
        f"<tbody>{body}</tbody></table></div>"
    )


def _when(value: datetime) -> str:
    return value.strftime("%Y-%m-%d %H:%M UTC")


def _change(report: Report) -> tuple[str, str]:
    """The spend change against the previous window, as card text and a CSS class."""
    previous: Metrics | None = report.previous
    if previous is None:
        return "", ""
    if previous.spend == 0:
        return ("no spend the period before" if report.totals.spend else "none before either"), ""
    change = (report.totals.spend - previous.spend) / previous.spend
    arrow = "up" if change > 0 else "down"
    return f"{'+' if change > 0 else ''}{float(change) * 100:.1f}% vs previous period", arrow


def _cards(report: Report) -> str:
    totals = report.totals
    change, arrow = _change(report)
    before = _usd(report.previous.spend) if report.previous is not None else "-"
    idle_share = (
        f"{_pct(totals.idle_cost / totals.spend)} of spend"
        if totals.idle_cost is not None and totals.spend
        else "no run reported its busy time"
    )
    cards = [
        (
            "spend",
            _usd(totals.spend),
            f'<small id="previous-change" class="{arrow}">'
            f"{escape(change)} ({escape(before)})</small>",
        ),
        (
            "idle (paid, not busy)",
            _usd(totals.idle_cost),
            f'<small id="idle-cost">{escape(idle_share)}</small>',
        ),
        ("GPU-hours", _num(totals.gpu_hours), ""),
        ("saved vs on-demand", _usd(totals.savings_vs_on_demand), ""),
        ("saved vs per-job cheapest", _usd(totals.savings_vs_cheapest), ""),
        ("utilisation", _pct(totals.utilisation), ""),
        ("jobs", str(totals.jobs), ""),
    ]
    return "".join(
        f'<div class="card"><b>{escape(value)}</b><span>{escape(label)}</span>{extra}</div>'
        for label, value, extra in cards
    )


def _forecast_table(burns: Sequence[BudgetBurn]) -> str:
    if not burns:
        return ""
    rows, over = [], set()
    for i, b in enumerate(burns):
        share = b.forecast / b.amount if b.amount else None
        if b.forecast > b.amount:
            over.add(i)
        rows.append(
            [
                b.team,
                b.period,
                _usd(b.amount),
                _usd(b.spent),
                _usd(b.committed),
                _usd(b.forecast),
                _pct(share),
                "over budget" if b.forecast > b.amount else "within",
            ]
        )
    headers = ["team", "period", "budget", "spent", "committed", "forecast", "of budget", ""]
    return _table(headers, rows, table_id="budget-forecast", over=over)


def _share_table(groups: Sequence[Group], dim: str, total: Decimal, table_id: str) -> str:
    rows = [
        [
            g.key[dim],
            _usd(g.metrics.spend),
            _pct(g.metrics.spend / total if total else None),
            _num(g.metrics.gpu_hours),
        ]
        for g in groups
        if g.metrics.spend > 0
    ]
    return _table([dim, "spend", "share", "GPU-hours"], rows, table_id=table_id)


def _gpu_hour_table(groups: Sequence[Group]) -> str:
    rows = [
        [
            g.key["gpu"],
            _usd(g.metrics.spend),
            _num(g.metrics.gpu_hours),
            _usd((g.metrics.spend / g.metrics.gpu_hours).quantize(Decimal("0.01"))),
        ]
        for g in sorted(groups, key=lambda g: g.key["gpu"])
        if g.metrics.gpu_hours > 0 and g.metrics.spend > 0
    ]
    return _table(["GPU", "spend", "GPU-hours", "$ per GPU-hour"], rows, table_id="gpu-hour-cost")


def _overrun_table(report: Report) -> str:
    from broker.services.reports import OVERRUN

    if not report.overruns:
        return (
            f'<p class="note" id="overruns">No job in this window cost more than '
            f"{float(OVERRUN):g}x its estimate.</p>"
        )
    rows = [
        [
            f"#{j.job_id} {j.name}",
            j.team,
            j.state,
            _usd(j.actual_total),
            _usd(j.estimated_total),
            f"{float(j.actual_total / j.estimated_total):.2f}x" if j.estimated_total else "-",
        ]
        for j in report.overruns
    ]
    headers = ["job", "team", "state", "lifetime cost", "estimate", "ratio"]
    return (
        _table(headers, rows, table_id="overruns", over=set(range(len(rows))))
        + f'<p class="note">Jobs whose lifetime cost passed {float(OVERRUN):g}x the '
        "estimate their plan made.</p>"
    )


def _head(title: str) -> str:
    return (
        "<!DOCTYPE html>\n"
        '<html lang="en"><head><meta charset="utf-8">'
        f'<meta http-equiv="Content-Security-Policy" content="{_CSP}">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f"<title>{escape(title)}</title><style>{_CSS}</style></head><body>"
    )


def render_html(report: Report) -> str:
    title = f"GPU spend {report.period_from:%Y-%m-%d} to {report.period_to:%Y-%m-%d}"
    intro = (
        f"<h1>{escape(title)}</h1>"
        f'<p class="sub">{_when(report.period_from)} to {_when(report.period_to)}; '
        f"generated {_when(report.generated_at)} by gpubroker from the usage ledger.</p>"
    )
    if report.totals.runs == 0:
        return (
            _head(title)
            + intro
            + '<div class="empty" id="empty-state"><b>No metered usage in this window.</b> '
            "No node ran between these times, so there is nothing to chart. A longer window "
            "(<code>gpubroker report --since 30d</code>) or <code>gpubroker jobs</code> shows "
            "what has run.</div>"
            f"<h2>Budget burn</h2>{_budget_chart(report.budgets)}"
            f"{_forecast_table(report.budgets)}"
            "</body></html>\n"
        )
    colours = provider_colours([g.key["provider"] for g in report.breakdowns.get("provider", [])])
    pricing_colours = {p: PRICING_COLOURS.get(p, NEUTRAL) for p in PRICING_COLOURS}
    breakdowns = "".join(
        _bar_chart(
            f"Spend by {dim}",
            report.breakdowns.get(dim, []),
            dim,
            f"chart-{dim}",
            colours if dim == "provider" else pricing_colours if dim == "pricing" else {},
        )
        for dim in ("provider", "region", "gpu", "team", "pricing")
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
    total = report.totals.spend
    return (
        _head(title) + intro + f'<div class="cards">{_cards(report)}</div>'
        f"<h2>Spend over time (per {report.bucket})</h2>"
        f"{_timeline_chart(report.timeline, report.bucket, colours)}"
        f'<h2>Where the money went</h2><div class="charts">{breakdowns}</div>'
        f"<h2>Spot and on-demand</h2>"
        f"{_share_table(report.breakdowns.get('pricing', []), 'pricing', total, 'pricing-split')}"
        f"<h2>Cost per GPU-hour by GPU</h2>{_gpu_hour_table(report.breakdowns.get('gpu', []))}"
        f"<h2>Team shares</h2>"
        f"{_share_table(report.breakdowns.get('team', []), 'team', total, 'team-shares')}"
        f"<h2>Savings</h2>{_savings_chart(report)}"
        f'<p class="note">On-demand: the same node-hours at the on-demand list price. '
        f"Per-job cheapest: each job on the offer it would get if planned alone "
        f"(plan-time estimates, scaled to the metered spend).</p>"
        f"<h2>Budget burn and month-end forecast</h2>{_budget_chart(report.budgets)}"
        f"{_forecast_table(report.budgets)}"
        f"<h2>Estimate overruns</h2>{_overrun_table(report)}"
        f"<h2>By {escape(', '.join(report.group_by))}</h2>{group_table}"
        f"<h2>Top jobs</h2>{top_table}{notes}"
        "</body></html>\n"
    )
