"""A self-contained HTML page of a simulation: the figures per policy and bar charts side
by side (inline SVG, no script or stylesheet from elsewhere)."""

from __future__ import annotations

from html import escape

from broker.services.simulate.results import SUMMARY_FIGURES, PolicySummary

COLOURS = ("#2f6fb0", "#d9822b", "#5a9e4b", "#b04a4a", "#7b5ea7", "#8c8c8c")
CHARTS = (
    ("cost", "Total cost (USD)"),
    ("gpu_hours", "GPU-hours"),
    ("deadline_misses", "Deadline misses"),
    ("preemptions", "Preemptions"),
    ("mean_wait_hours", "Mean queue wait (h)"),
    ("p95_wait_hours", "p95 queue wait (h)"),
)


def _bars(title: str, values: list[tuple[str, float]]) -> str:
    width, row, label_w = 360, 26, 150
    top = max((v for _, v in values), default=0.0) or 1.0
    height = row * len(values) + 30
    parts = [
        f'<svg width="{width}" height="{height}" role="img" aria-label="{escape(title)}">',
        f'<text x="0" y="16" font-weight="bold">{escape(title)}</text>',
    ]
    for i, (name, value) in enumerate(values):
        y = 28 + i * row
        length = (width - label_w - 70) * value / top
        parts.append(f'<text x="0" y="{y + 14}">{escape(name)}</text>')
        parts.append(
            f'<rect x="{label_w}" y="{y}" width="{length:.1f}" height="{row - 8}" '
            f'fill="{COLOURS[i % len(COLOURS)]}"/>'
        )
        parts.append(f'<text x="{label_w + length + 4:.1f}" y="{y + 14}">{value:,.2f}</text>')
    parts.append("</svg>")
    return "".join(parts)


def _shares(summaries: list[PolicySummary]) -> str:
    providers = sorted({p for s in summaries for p in s.provider_shares})
    width, row, label_w = 360, 26, 150
    height = row * len(summaries) + 30 + 20
    parts = [
        f'<svg width="{width}" height="{height}" role="img" aria-label="provider shares">',
        '<text x="0" y="16" font-weight="bold">Spend by provider</text>',
    ]
    for i, s in enumerate(summaries):
        y, x = 28 + i * row, float(label_w)
        parts.append(f'<text x="0" y="{y + 14}">{escape(s.policy)}</text>')
        for j, provider in enumerate(providers):
            w = (width - label_w - 10) * s.provider_shares.get(provider, 0.0)
            parts.append(
                f'<rect x="{x:.1f}" y="{y}" width="{w:.1f}" height="{row - 8}" '
                f'fill="{COLOURS[j % len(COLOURS)]}"><title>{escape(provider)} '
                f"{s.provider_shares.get(provider, 0.0):.1%}</title></rect>"
            )
            x += w
    legend_y = 28 + len(summaries) * row + 12
    for j, provider in enumerate(providers):
        parts.append(
            f'<rect x="{j * 90}" y="{legend_y - 10}" width="10" height="10" '
            f'fill="{COLOURS[j % len(COLOURS)]}"/><text x="{j * 90 + 14}" '
            f'y="{legend_y}">{escape(provider)}</text>'
        )
    parts.append("</svg>")
    return "".join(parts)


def render_html(scenario: str, summaries: list[PolicySummary]) -> str:
    head = SUMMARY_FIGURES
    rows = "".join(
        "<tr>" + "".join(f"<td>{escape(_fmt(getattr(s, c)))}</td>" for c in head) + "</tr>"
        for s in summaries
    )
    charts = "".join(
        '<div class="chart">'
        + _bars(title, [(s.policy, float(getattr(s, key))) for s in summaries])
        + "</div>"
        for key, title in CHARTS
    )
    seeds = summaries[0].seeds if summaries else 0
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8">
<title>SIMULATED: {escape(scenario)}</title>
<style>
body {{ font-family: sans-serif; margin: 2em; color: #222; }}
table {{ border-collapse: collapse; margin-bottom: 1.5em; }}
td, th {{ border: 1px solid #ccc; padding: 4px 8px; text-align: right; }}
td:first-child, th:first-child {{ text-align: left; }}
.charts {{ display: flex; flex-wrap: wrap; gap: 24px; }}
.chart svg text {{ font-size: 12px; }}
.banner {{ background: #fff3cd; padding: 6px 10px; display: inline-block; }}
</style></head><body>
<h1>Simulated fleet: {escape(scenario)}</h1>
<p class="banner">SIMULATED: a replay on a virtual clock against fake clouds; means over
{seeds} seed(s). No money was spent.</p>
<table><tr>{"".join(f"<th>{escape(c)}</th>" for c in head)}</tr>{rows}</table>
<div class="charts">{charts}<div class="chart">{_shares(summaries)}</div></div>
</body></html>
"""


def _fmt(value: object) -> str:
    if isinstance(value, float):
        return f"{value:,.2f}"
    return str(value)
