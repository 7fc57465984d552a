"""A report's window and grouping from what the user typed: ``7d``, ``1mo``, ``ytd``,
dates, ``team,provider``; a bad value is a one-line ``UserError`` naming the option."""

from __future__ import annotations

import re
from collections.abc import Sequence
from datetime import UTC, date, datetime, time, timedelta

from broker.domain import as_utc, utcnow
from broker.errors import UserError

DIMENSIONS = ("team", "provider", "region", "gpu", "pricing", "job")

DEFAULT_GROUP_BY = ("team", "provider")

_DURATION = re.compile(r"^\s*(\d+)\s*(min|h|d|w|mo|m|y)\s*$", re.IGNORECASE)

_UNIT_SECONDS = {"min": 60, "h": 3600, "d": 86400, "w": 7 * 86400}

MAX_WINDOW_YEARS = 200  # longest window a report may reach back

DURATION_HELP = "30min, 12h, 7d, 4w, 1mo (calendar months), ytd (since January 1st)"


def parse_duration(text: str, *, field: str = "since") -> timedelta:
    """``30min``, ``12h``, ``7d`` or ``2w`` as a timedelta (fixed lengths only: months and
    ``ytd`` depend on the calendar, see :func:`since_start`). ``m`` alone is refused: it
    could mean minutes or months."""
    match = _DURATION.match(text or "")
    unit = match.group(2).lower() if match else ""
    if match and unit == "m":
        raise UserError(
            f"{field}: {text!r} is ambiguous; write {match.group(1)}min for minutes or "
            f"{match.group(1)}mo for months"
        )
    if not match or int(match.group(1)) == 0 or unit not in _UNIT_SECONDS:
        raise UserError(f"{field}: {text!r} is not a duration; use e.g. 30min, 12h, 7d or 2w")
    seconds = int(match.group(1)) * _UNIT_SECONDS[unit]
    if seconds > MAX_WINDOW_YEARS * 366 * 86400:
        raise UserError(f"{field}: {text!r} is too long; at most {MAX_WINDOW_YEARS} years")
    return timedelta(seconds=seconds)


def months_before(moment: datetime, months: int) -> datetime:
    """The same day and time ``months`` calendar months earlier (the month's last day when
    that month is shorter: 31 March less one month is 28 or 29 February)."""
    import calendar

    index = moment.year * 12 + moment.month - 1 - months
    year, month = divmod(index, 12)
    day = min(moment.day, calendar.monthrange(year, month + 1)[1])
    return moment.replace(year=year, month=month + 1, day=day)


def since_start(text: str, end: datetime, *, field: str = "since") -> datetime:
    """The start of a window that ends at ``end`` and reaches back ``text``: a duration
    (``12h``, ``7d``, ``4w``), calendar months (``1mo``, ``3mo``), years (``1y``), ``ytd``
    (from January 1st of ``end``'s year, UTC) or a date (``2026-11-01``)."""
    value = (text or "").strip().lower()
    if value == "ytd":
        return datetime(end.year, 1, 1, tzinfo=UTC)
    match = _DURATION.match(value)
    if match and match.group(2).lower() in ("mo", "y") and int(match.group(1)) > 0:
        count = int(match.group(1)) * (12 if match.group(2).lower() == "y" else 1)
        if count > MAX_WINDOW_YEARS * 12:
            raise UserError(f"{field}: {text!r} is too long; at most {MAX_WINDOW_YEARS} years")
        return months_before(end, count)
    if re.match(r"^\d{4}-\d{2}-\d{2}", value):
        return parse_instant(text, field=field)
    try:
        return end - parse_duration(text, field=field)
    except UserError as exc:
        if "ambiguous" in str(exc) or "too long" in str(exc):
            raise
        raise UserError(
            f"{field}: {text!r} is not a duration or date; use {DURATION_HELP}, or YYYY-MM-DD"
        ) from None


def parse_instant(text: str, *, field: str, end_of_day: bool = False) -> datetime:
    """An ISO date or datetime (UTC unless it names a zone). A bare date means its start,
    or with ``end_of_day`` the start of the next day, so ``--to 2026-11-07`` includes the 7th."""
    try:
        if len(text.strip()) == 10:
            day = date.fromisoformat(text.strip())
            moment = datetime.combine(day, time(0), tzinfo=UTC)
            return moment + timedelta(days=1) if end_of_day else moment
        return as_utc(datetime.fromisoformat(text.strip()))
    except OverflowError:
        message = f"{field}: {text!r} is out of range; use a date before 9999-12-31"
        raise UserError(message) from None
    except ValueError:
        raise UserError(
            f"{field}: {text!r} is not a date; use YYYY-MM-DD or YYYY-MM-DDTHH:MM[:SS][+00:00]"
        ) from None


def parse_group_by(value: str | Sequence[str] | None) -> tuple[str, ...]:
    if value is None:
        return DEFAULT_GROUP_BY
    parts = value.split(",") if isinstance(value, str) else list(value)
    dims = tuple(dict.fromkeys(p.strip() for p in parts if p.strip()))
    bad = [d for d in dims if d not in DIMENSIONS]
    if bad or not dims:
        raise UserError(
            f"group-by: {bad[0] if bad else value!r} is not allowed; use a comma-separated "
            f"list of {', '.join(DIMENSIONS)}"
        )
    return dims


def window(
    *,
    since: str | timedelta | None = None,
    start: str | datetime | None = None,
    end: str | datetime | None = None,
    now: datetime | None = None,
) -> tuple[datetime, datetime]:
    """The report window from ``--since`` or ``--from``/``--to`` (default: the last 7 days)."""
    if since is not None and start is not None:
        raise UserError("since: give either --since or --from/--to, not both")
    now = as_utc(now or utcnow())
    if isinstance(end, str) and not re.match(r"^\s*\d{4}-\d{2}-\d{2}", end):
        stop = since_start(end, now, field="to")  # "--to 7d": seven days ago
    elif isinstance(end, str):
        stop = parse_instant(end, field="to", end_of_day=True)
    else:
        stop = as_utc(end or now)
    if start is not None:
        begin = parse_instant(start, field="from") if isinstance(start, str) else as_utc(start)
    elif isinstance(since, str):
        begin = since_start(since, stop)
    else:
        begin = stop - (since or timedelta(days=7))
    if begin >= stop:
        raise UserError("from: the window must start before it ends (--from < --to)")
    return begin, stop
