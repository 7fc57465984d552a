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

from collections.abc import Collection, Sequence
from datetime import datetime
from decimal import Decimal
from html import escape

from broker.services.reports.charts import (
    NEUTRAL,
    PRICING_COLOURS,
    bar_chart,
    budget_chart,
    num,
    pct,
    provider_colours,
    savings_chart,
    timeline_chart,
    usd,
)
from broker.services.reports.model import OVERRUN, BudgetBurn, Group, Metrics, ReportData

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


def _change(report: ReportData) -> tuple[str, str]:
    """The spend change against the previous window, as card text and a CSS class."""
    previous: Metrics | None = report.previous
    if previous is None:
        return "", ""
    if previous.spend == 0:
        return ("no spend the period before" if report.totals.spend else "none before either"), ""
    change = (report.totals.spend - previous.spend) / previous.spend
    arrow = "up" if change > 0 else "down"
    return f"{'+' if change > 0 else ''}{float(change) * 100:.1f}% vs previous period", arrow


def _cards(report: ReportData) -> str:
    totals = report.totals
    change, arrow = _change(report)
    before = usd(report.previous.spend) if report.previous is not None else "-"
    idle_share = (
        f"{pct(totals.idle_cost / totals.spend)} of spend"
        if totals.idle_cost is not None and totals.spend
        else "no run reported its busy time"
    )
    cards = [
        (
            "spend",
            usd(totals.spend),
            f'<small id="previous-change" class="{arrow}">'
            f"{escape(change)} ({escape(before)})</small>",
        ),
        (
            "idle (paid, not busy)",
            usd(totals.idle_cost),
            f'<small id="idle-cost">{escape(idle_share)}</small>',
        ),
        ("GPU-hours", num(totals.gpu_hours), ""),
        ("saved vs on-demand", usd(totals.savings_vs_on_demand), ""),
        ("saved vs per-job cheapest", usd(totals.savings_vs_cheapest), ""),
        ("utilisation", pct(totals.utilisation), ""),
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
                usd(b.amount),
                usd(b.spent),
                usd(b.committed),
                usd(b.forecast),
                pct(share),
                "over budget" if b.forecast > b.amount else "within",
            ]
        )
    headers = ["team", "period", "budget", "spent", "committed", "forecast", "of budget", ""]
    return _table(headers, rows, table_id="budget-forecast", over=over)


def _share_table(groups: Sequence[Group], dim: str, total: Decimal, table_id: str) -> str:
    rows = [
        [
            g.key[dim],
            usd(g.metrics.spend),
            pct(g.metrics.spend / total if total else None),
            num(g.metrics.gpu_hours),
        ]
        for g in groups
        if g.metrics.spend > 0
    ]
    return _table([dim, "spend", "share", "GPU-hours"], rows, table_id=table_id)


def _gpu_hour_table(groups: Sequence[Group]) -> str:
    rows = [
        [
            g.key["gpu"],
            usd(g.metrics.spend),
            num(g.metrics.gpu_hours),
            usd((g.metrics.spend / g.metrics.gpu_hours).quantize(Decimal("0.01"))),
        ]
        for g in sorted(groups, key=lambda g: g.key["gpu"])
        if g.metrics.gpu_hours > 0 and g.metrics.spend > 0
    ]
    return _table(["GPU", "spend", "GPU-hours", "$ per GPU-hour"], rows, table_id="gpu-hour-cost")


def _overrun_table(report: ReportData) -> str:

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
            usd(j.actual_total),
            usd(j.estimated_total),
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


def render_html(report: ReportData) -> str:
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
            f"<h2>Budget burn</h2>{budget_chart(report.budgets)}"
            f"{_forecast_table(report.budgets)}"
            "</body></html>\n"
        )
    colours = provider_colours([g.key["provider"] for g in report.breakdowns.get("provider", [])])
    pricing_colours = {p: PRICING_COLOURS.get(p, NEUTRAL) for p in PRICING_COLOURS}
    breakdowns = "".join(
        bar_chart(
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
                usd(g.metrics.spend),
                num(g.metrics.gpu_hours),
                usd(g.metrics.savings_vs_on_demand),
                usd(g.metrics.savings_vs_cheapest),
                pct(g.metrics.utilisation),
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
                usd(j.spend),
                num(j.gpu_hours),
                usd(j.actual_total),
                usd(j.estimated_total),
            ]
            for j in report.top_jobs
        ],
    )
    notes = "".join(f'<p class="note">{escape(note)}</p>' for note in report.notes)
    total = report.totals.spend
    return (
        _head(title) + intro + f'<div class="cards">{_cards(report)}</div>'
        f"<h2>Spend over time (per {report.bucket})</h2>"
        f"{timeline_chart(report.timeline, report.bucket, colours)}"
        f'<h2>Where the money went</h2><div class="charts">{breakdowns}</div>'
        f"<h2>Spot and on-demand</h2>"
        f"{_share_table(report.breakdowns.get('pricing', []), 'pricing', total, 'pricing-split')}"
        f"<h2>Cost per GPU-hour by GPU</h2>{_gpu_hour_table(report.breakdowns.get('gpu', []))}"
        f"<h2>Team shares</h2>"
        f"{_share_table(report.breakdowns.get('team', []), 'team', total, 'team-shares')}"
        f"<h2>Savings</h2>{savings_chart(report)}"
        f'<p class="note">On-demand: the same node-hours at the on-demand list price. '
        f"Per-job cheapest: each job on the offer it would get if planned alone "
        f"(plan-time estimates, scaled to the metered spend).</p>"
        f"<h2>Budget burn and month-end forecast</h2>{budget_chart(report.budgets)}"
        f"{_forecast_table(report.budgets)}"
        f"<h2>Estimate overruns</h2>{_overrun_table(report)}"
        f"<h2>By {escape(', '.join(report.group_by))}</h2>{group_table}"
        f"<h2>Top jobs</h2>{top_table}{notes}"
        "</body></html>\n"
    )
