"""The report page's inline SVG charts, and the number formats they share with its tables.

Each provider has one colour in every chart (other breakdowns use one neutral colour, so a
colour never means two things); groups that cost nothing are left out of the bar charts;
the y-axis has round ticks; charts scale to the page width.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from decimal import Decimal
from html import escape

from broker.services.reports.model import BudgetBurn, Group, ReportData, TimelinePoint

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


def usd(value: Decimal | None) -> str:
    if value is None:
        return "-"
    sign = "-" if value < 0 else ""
    return f"{sign}${abs(value):,.2f}"


def num(value: Decimal | float | None, digits: int = 1) -> str:
    return "-" if value is None else f"{float(value):,.{digits}f}"


def pct(value: Decimal | float | None) -> str:
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


def bar_chart(
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
            f"{usd(group.metrics.spend)}</title></rect>"
            f'<text x="{label_w + w + 4:.1f}" y="{y + 14}">{usd(group.metrics.spend)}</text>'
        )
    parts.append("</svg>")
    return f"<figure><figcaption>{escape(title)}</figcaption>{''.join(parts)}{note}</figure>"


def timeline_chart(points: Sequence[TimelinePoint], bucket: str, colours: dict[str, str]) -> str:
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
                f"{escape(provider)} {point.start:%Y-%m-%d %H:%M}: {usd(value)}</title></rect>"
            )
        if i % label_every == 0:
            fmt = "%H:%M" if bucket == "hour" else "%m-%d"
            parts.append(
                f'<text x="{x + step / 2:.1f}" y="{height - 10}" text-anchor="middle">'
                f"{point.start.strftime(fmt)}</text>"
            )
    parts.append("</svg>")
    return f"<figure>{''.join(parts)}<figcaption>{legend(providers, colours)}</figcaption></figure>"


def legend(names: Sequence[str], colours: dict[str, str]) -> str:
    items = "".join(
        f'<span><b style="color:{colours.get(n, NEUTRAL)}">&#9632;</b> {escape(n)}</span>'
        for n in names
    )
    return f'<div class="legend">{items}</div>'


def savings_chart(report: ReportData) -> str:
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
            f'fill="{colour}"/><text x="{label_w + w + 4:.1f}" y="{y + 17}">{usd(value)}</text>'
        )
    parts.append("</svg>")
    return "".join(parts)


def budget_chart(burns: Sequence[BudgetBurn]) -> str:
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
            f'<text x="{label_w + bar_w + 6}" y="{y + 16}">{pct(burn.burn)} of '
            f"{usd(burn.amount)}/{burn.period}</text>"
        )
    parts.append("</svg>")
    caption = (
        '<p class="note">Dark: metered spend (red when the forecast passes the budget); '
        "light: live allocations not yet metered; dashed: the forecast at the period's end; "
        "the tick marks how much of the period has gone by.</p>"
    )
    return "".join(parts) + caption
