"""Scheduled reports: cron expressions (UTC) stored in ``report_schedules``.

At each cron time a schedule is *due*; the report it makes covers the ``period`` that ends
at that time. A daemon that was down over several cron times makes only the newest one,
once, when it comes back. Each made report is a row in ``reports``, unique on
(schedule, due time), inserted in the same transaction that writes the file: when several
daemons race for one due time, exactly one inserts it and the others skip. Only that one
then posts the webhook and sends the email (the report file attached, through the SMTP
server of the ``smtp_*`` settings), so each goes out once.
"""

from __future__ import annotations

import json
import logging
import re
import urllib.request
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from sqlalchemy import select, update
from sqlalchemy.exc import IntegrityError

from broker import secrets
from broker.config import Settings
from broker.db.engine import Database
from broker.db.models import ReportRow, ReportScheduleRow
from broker.domain import as_utc, utcnow
from broker.errors import NotFound, UserError
from broker.services.reports.build import build_report
from broker.services.reports.render import render_text, write_atomic
from broker.services.reports.windows import DEFAULT_GROUP_BY, parse_group_by, since_start

log = logging.getLogger("gpubroker.schedules")
FILE_FORMATS = ("html", "csv", "json")
WEBHOOK_TIMEOUT_S = 10.0
SMTP_TIMEOUT_S = 20.0


@dataclass(frozen=True)
class ScheduleView:
    id: int
    cron: str
    period: str
    format: str
    out_dir: str
    webhook: str | None  # shown without path or query: a webhook URL is often a secret
    email: str | None  # comma-separated recipients
    group_by: str
    last_run_at: datetime | None
    next_due: datetime
    created_at: datetime


@dataclass(frozen=True)
class MadeReport:
    id: int
    schedule_id: int
    due_at: datetime
    period_from: datetime
    period_to: datetime
    path: str
    webhook: str | None  # "ok", "error: ..." or None when the schedule has none
    email: str | None = None  # "sent to N", "error: ..." or None when the schedule has none


def redact_webhook(url: str | None) -> str | None:
    if url is None:
        return None
    if url.startswith(secrets.PREFIX):  # the stored reference carries its redacted form
        return secrets.shown(url)
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.hostname or ''}/..."


def _croniter(cron: str, start: datetime) -> Any:
    from croniter import croniter

    return croniter(cron, start)


def _validate_cron(cron: str) -> str:
    from croniter import CroniterBadDateError, croniter

    cron = " ".join(cron.split())
    if len(cron.split()) != 5 or not croniter.is_valid(cron):
        raise UserError(
            f"cron: {cron!r} is not a cron expression; use five fields "
            "(minute hour day-of-month month day-of-week), e.g. '0 8 * * 1'"
        )
    try:  # a valid expression may still never fire (31 February)
        croniter(cron, datetime(2000, 1, 1, tzinfo=UTC)).get_next(datetime)
    except (CroniterBadDateError, ValueError, OverflowError):
        raise UserError(f"cron: {cron!r} never fires; pick a day that exists") from None
    return cron


def next_due(cron: str, after: datetime) -> datetime:
    """The first cron time strictly after ``after``."""
    return as_utc(_croniter(cron, as_utc(after)).get_next(datetime))


def latest_due(cron: str, anchor: datetime, now: datetime) -> datetime | None:
    """The newest cron time in ``(anchor, now]``, or None when none falls there."""
    now = as_utc(now)
    first = next_due(cron, anchor)
    if first > now:
        return None
    # ``get_prev`` from just past ``now`` lands on ``now`` itself when it is a cron time.
    latest = as_utc(_croniter(cron, now + timedelta(seconds=1)).get_prev(datetime))
    return max(latest, first)


def _view(row: ReportScheduleRow) -> ScheduleView:
    anchor = row.last_run_at or row.created_at
    return ScheduleView(
        id=row.id,
        cron=row.cron,
        period=row.period,
        format=row.format,
        out_dir=row.out_dir,
        webhook=redact_webhook(row.webhook),
        email=row.email,
        group_by=row.group_by,
        last_run_at=row.last_run_at,
        next_due=next_due(row.cron, anchor),
        created_at=row.created_at,
    )


def add_schedule(
    db: Database,
    cron: str,
    *,
    period: str = "7d",
    fmt: str = "html",
    out_dir: str | Path,
    webhook: str | None = None,
    email: str | Sequence[str] | None = None,
    group_by: str = ",".join(DEFAULT_GROUP_BY),
    now: datetime | None = None,
    home: Path | None = None,
) -> ScheduleView:
    """Store a schedule; its first report is due at the first cron time after ``now``.
    The webhook URL goes to the secrets file of ``home``; the row keeps a reference."""
    cron = _validate_cron(cron)
    if re.match(r"^\s*\d{4}-", period or "") or (period or "").strip().lower() == "ytd":
        raise UserError(f"period: {period!r} is not a length; use e.g. 24h, 7d, 4w or 1mo")
    since_start(period, utcnow(), field="period")  # 12h, 7d, 4w, 1mo; "1m" refused
    if fmt not in FILE_FORMATS:
        raise UserError(f"format: must be one of {', '.join(FILE_FORMATS)}")
    folder = Path(out_dir).expanduser()
    if folder.exists() and not folder.is_dir():
        raise UserError(f"out: {folder} exists and is not a folder")
    if webhook is not None:
        parts = urlsplit(webhook)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise UserError("webhook: must be an http:// or https:// URL")
    recipients = parse_recipients(email)
    dims = ",".join(parse_group_by(group_by))
    with db.session() as session:
        row = ReportScheduleRow(
            cron=cron,
            period=period.strip(),
            format=fmt,
            out_dir=str(folder.resolve()),
            webhook=secrets.seal(webhook, redact_webhook(webhook) or "", home) if webhook else None,
            email=",".join(recipients) or None,
            group_by=dims,
            created_at=as_utc(now or utcnow()),
        )
        session.add(row)
        session.flush()
        return _view(row)


def list_schedules(db: Database) -> list[ScheduleView]:
    with db.session() as session:
        rows = session.scalars(select(ReportScheduleRow).order_by(ReportScheduleRow.id)).all()
        return [_view(row) for row in rows]


def remove_schedule(db: Database, schedule_id: int, home: Path | None = None) -> None:
    """Delete a schedule (and its webhook from the secrets file of ``home``); reports it
    made stay, no longer linked to it."""
    with db.session() as session:
        row = session.get(ReportScheduleRow, schedule_id)
        if row is None:
            raise NotFound(f"report schedule {schedule_id} does not exist")
        session.execute(
            update(ReportRow)
            .where(ReportRow.schedule_id == schedule_id)
            .values(schedule_id=None)
            .execution_options(synchronize_session=False)
        )
        webhook = row.webhook
        session.delete(row)
    secrets.forget(webhook, home)


def _post_webhook(url: str, payload: dict) -> str:
    request = urllib.request.Request(
        url,
        data=json.dumps(payload).encode(),
        headers={"Content-Type": "application/json"},
        method="POST",
    )
    try:
        with urllib.request.urlopen(request, timeout=WEBHOOK_TIMEOUT_S) as response:
            return f"ok ({response.status})"
    except OSError as exc:  # URLError, HTTPError and timeouts; never echo the URL
        reason = getattr(exc, "code", None) or type(exc).__name__
        return f"error: {reason}"


_ADDRESS = re.compile(r"^[^@\s,;<>\"]+@[^@\s,;<>\"]+\.[^@\s,;<>\"]+$")


def parse_recipients(value: str | Sequence[str] | None) -> list[str]:
    """Email addresses from a comma-separated string or a list; one bad one is refused."""
    if value is None:
        return []
    parts = value.split(",") if isinstance(value, str) else [p for v in value for p in v.split(",")]
    addresses = [p.strip() for p in parts if p.strip()]
    for address in addresses:
        if not _ADDRESS.match(address):
            raise UserError(f"email: {address!r} is not an email address (name@example.com)")
    return list(dict.fromkeys(addresses))


def send_email(
    settings: Settings, recipients: Sequence[str], subject: str, body: str, attachment: Path
) -> str:
    """Send ``body`` with ``attachment`` through the configured SMTP server; the outcome as
    ``sent to N`` or ``error: ...`` (never the password, never the server's own words)."""
    import mimetypes
    import smtplib
    import ssl
    from email.message import EmailMessage

    if not settings.smtp_host:
        return "error: smtp_host is not set (GPUBROKER_SMTP_HOST)"
    message = EmailMessage()
    message["From"] = settings.smtp_from or "gpubroker@localhost"
    message["To"] = ", ".join(recipients)
    message["Subject"] = subject
    message.set_content(body)
    kind = mimetypes.guess_type(attachment.name)[0] or "application/octet-stream"
    main, sub = kind.split("/", 1)
    message.add_attachment(
        attachment.read_bytes(), maintype=main, subtype=sub, filename=attachment.name
    )
    try:
        if settings.smtp_security == "ssl":
            client: smtplib.SMTP = smtplib.SMTP_SSL(
                settings.smtp_host,
                settings.smtp_port,
                timeout=SMTP_TIMEOUT_S,
                context=ssl.create_default_context(),
            )
        else:
            client = smtplib.SMTP(settings.smtp_host, settings.smtp_port, timeout=SMTP_TIMEOUT_S)
        with client:
            if settings.smtp_security == "starttls":
                client.starttls(context=ssl.create_default_context())
            if settings.smtp_user:
                client.login(settings.smtp_user, settings.smtp_password or "")
            refused = client.send_message(message)
    except (OSError, smtplib.SMTPException) as exc:
        return f"error: {type(exc).__name__}"
    return f"sent to {len(recipients) - len(refused)}"


def _email_body(
    schedule: ReportScheduleRow, totals: dict, period_from: datetime, due_at: datetime
) -> str:
    lines = [
        f"gpubroker cost report {period_from:%Y-%m-%d %H:%M} to {due_at:%Y-%m-%d %H:%M} UTC",
        f"(schedule {schedule.id}, cron {schedule.cron}); the full report is attached.",
        "",
        f"spend               ${float(totals.get('spend') or 0):,.2f}",
        f"GPU-hours           {float(totals.get('gpu_hours') or 0):,.1f}",
        f"saved vs on-demand  ${float(totals.get('savings_vs_on_demand') or 0):,.2f}",
        f"jobs                {totals.get('jobs', 0)}",
    ]
    return "\n".join(lines) + "\n"


def _make(
    db: Database,
    schedule: ReportScheduleRow,
    due_at: datetime,
    settings: Settings | None = None,
) -> MadeReport | None:
    """Make the report of ``schedule`` due at ``due_at``; None when another made it."""
    period_from = since_start(schedule.period, due_at, field="period")
    name = f"gpubroker-report-s{schedule.id}-{due_at:%Y%m%dT%H%MZ}.{schedule.format}"
    path = Path(schedule.out_dir) / name
    try:
        with db.session() as session:
            row = ReportRow(
                schedule_id=schedule.id,
                due_at=due_at,
                period_from=period_from,
                period_to=due_at,
                format=schedule.format,
                path=str(path),
            )
            session.add(row)
            session.flush()  # the unique (schedule_id, due_at) picks one maker
            report = build_report(db, period_from, due_at, group_by=schedule.group_by.split(","))
            write_atomic(path, render_text(report, schedule.format), make_parent=True)
            row.totals = json.loads(render_text(report, "json"))["totals"]
            session.execute(
                update(ReportScheduleRow)
                .where(ReportScheduleRow.id == schedule.id)
                .values(last_run_at=due_at)
                .execution_options(synchronize_session=False)
            )
            report_id = row.id
    except IntegrityError:
        return None
    outcome = None
    if schedule.webhook:
        outcome = _post_webhook(
            secrets.unseal(schedule.webhook, settings.home if settings else None),
            {
                "schedule_id": schedule.id,
                "report_id": report_id,
                "due_at": due_at.isoformat(),
                "period_from": period_from.isoformat(),
                "period_to": due_at.isoformat(),
                "path": str(path),
                "totals": row.totals,
            },
        )
        if outcome.startswith("error"):
            log.warning("report %s: webhook failed (%s)", report_id, outcome)
    mailed = None
    if schedule.email:
        from broker.config import load_settings

        mailed = send_email(
            settings or load_settings(),
            schedule.email.split(","),
            f"gpubroker report {period_from:%Y-%m-%d} to {due_at:%Y-%m-%d}",
            _email_body(schedule, row.totals or {}, period_from, due_at),
            path,
        )
        if mailed.startswith("error"):
            log.warning("report %s: email failed (%s)", report_id, mailed)
    return MadeReport(
        report_id, schedule.id, due_at, period_from, due_at, str(path), outcome, mailed
    )


def run_due(
    db: Database, *, now: datetime | None = None, settings: Settings | None = None
) -> list[MadeReport]:
    """Make every report that is due at ``now`` and not made yet (at most one per schedule);
    ``settings`` give the SMTP server for schedules that email (default: load them)."""
    now = as_utc(now or utcnow())
    with db.session() as session:
        schedules = session.scalars(select(ReportScheduleRow).order_by(ReportScheduleRow.id)).all()
    made = []
    for schedule in schedules:
        due_at = latest_due(schedule.cron, schedule.last_run_at or schedule.created_at, now)
        if due_at is None:
            continue
        result = _make(db, schedule, due_at, settings)
        if result is not None:
            made.append(result)
    return made
