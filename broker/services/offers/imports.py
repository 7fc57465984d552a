"""Importing a SkyPilot or gpuhunt catalog file as a full re-import of its providers."""

from __future__ import annotations

import re
import time
from collections import defaultdict
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from broker.db.engine import Database
from broker.errors import UserError
from broker.services.offers.upsert import upsert_in
from broker.services.offers.values import IMPORT_FORMATS, UpsertSummary
from providers.base import OfferRecord


@dataclass
class ImportReport:
    path: str
    format: str
    rows: int
    offers: int
    issues: list[Any]  # providers.catalog.parse.ImportIssue
    skipped: dict[str, int]
    providers: dict[str, UpsertSummary]
    seconds: float

    @property
    def total(self) -> UpsertSummary:
        out = UpsertSummary()
        for part in self.providers.values():
            out += part
        return out

    def to_dict(self) -> dict[str, Any]:
        return {
            "path": self.path,
            "format": self.format,
            "rows": self.rows,
            "offers": self.offers,
            "skipped": self.skipped,
            "issues": [
                {"line": i.line, "message": i.message, "skipped": i.skipped} for i in self.issues
            ],
            "providers": {name: asdict(s) for name, s in self.providers.items()},
            "seconds": round(self.seconds, 3),
        }


def import_file(
    db: Database,
    path: str | Path,
    fmt: str,
    *,
    provider: str | None = None,
    strict: bool = False,
) -> ImportReport:
    """Import a SkyPilot or gpuhunt catalog file as a full re-import of its provider(s).

    Malformed lines are reported with their line numbers and the rest is imported; with
    ``strict`` any reported line aborts the import before anything is written.
    """
    started = time.perf_counter()
    if fmt not in IMPORT_FORMATS:
        raise UserError(f"--format: {fmt!r} is not one of {', '.join(IMPORT_FORMATS)}")
    if provider is not None and not re.fullmatch(r"[a-z][a-z0-9_-]{0,31}", provider):
        raise UserError(f"--provider: {provider!r} is not a provider name (lowercase letters)")
    if fmt == "skypilot":
        from providers.catalog.skypilot import parse_file
    else:
        from providers.catalog.gpuhunt import parse_file
    parsed = parse_file(path, provider)
    if strict and parsed.issues:
        first = parsed.issues[0]
        raise UserError(
            f"{path}: {len(parsed.issues)} malformed line(s), first {first}; "
            "nothing imported (--strict)"
        )
    by_provider: dict[str, list[OfferRecord]] = defaultdict(list)
    for record in parsed.records:
        by_provider[record.provider].append(record)
    done: dict[str, UpsertSummary] = {}
    with db.session() as session:
        for name, records in sorted(by_provider.items()):
            done[name], _ = upsert_in(session, records, provider=name, full=True, regions=None)
    return ImportReport(
        path=str(path),
        format=fmt,
        rows=parsed.rows,
        offers=len(parsed.records),
        issues=parsed.issues,
        skipped=parsed.skipped,
        providers=done,
        seconds=time.perf_counter() - started,
    )
