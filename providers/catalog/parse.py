"""What every catalog importer shares: issues with line numbers, and field parsing.

An importer turns a file into ``OfferRecord``s plus ``ImportIssue``s. A malformed line is
reported with its line number and the rest of the file still counts; whoever calls the
importer decides whether any issue aborts the import (``--strict``).
"""

from __future__ import annotations

import csv
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from decimal import Decimal, InvalidOperation
from pathlib import Path
from typing import TextIO

from broker.errors import UserError
from providers.base import OfferRecord


@dataclass(frozen=True)
class ImportIssue:
    line: int
    message: str
    skipped: bool = True  # False: the line was repaired and imported

    def __str__(self) -> str:
        return f"line {self.line}: {self.message}"


@dataclass
class ParseResult:
    records: list[OfferRecord] = field(default_factory=list)
    issues: list[ImportIssue] = field(default_factory=list)
    rows: int = 0  # data lines read
    skipped: dict[str, int] = field(default_factory=dict)  # reason -> lines (not errors)

    def skip(self, reason: str) -> None:
        self.skipped[reason] = self.skipped.get(reason, 0) + 1


MAX_IMPORT_BYTES = 64 * 2**20  # larger than any public catalog CSV by far


class RowError(ValueError):
    """A field of one line is wrong; the message names the column."""


def open_text(path: str | Path) -> TextIO:
    """Open a catalog file for reading, or raise a one-line ``UserError``."""
    import io

    from broker.files import read_bounded

    target = Path(path)
    raw = read_bounded(target, MAX_IMPORT_BYTES, "file")  # regular files only, bounded
    try:
        return io.StringIO(raw.decode("utf-8"), newline="")
    except UnicodeDecodeError as exc:
        raise UserError(f"{target}: not UTF-8 text (byte {exc.start})") from None


def read_rows(
    handle: TextIO,
    required: Sequence[str],
    source: str,
    result: ParseResult,
    optional: Sequence[str] = (),
) -> Iterator[tuple[int, dict[str, str]]]:
    """(line number, column -> value) for each data line.

    A line with more fields than the header is read only when every extra field lies past
    the columns the importer uses (as when a last free-text column holds an unquoted
    comma); it is then reported as repaired. Any other field-count mismatch is reported
    and skipped, never shifted into the wrong columns.
    """
    reader = csv.reader(handle)
    try:
        header = next(reader)
    except StopIteration:
        raise UserError(f"{source}: empty file, expected a CSV header") from None
    except (csv.Error, UnicodeDecodeError) as exc:
        raise UserError(f"{source}: not a CSV file ({exc})") from None
    header = [name.strip() for name in header]
    missing = [name for name in required if name not in header]
    if missing:
        raise UserError(
            f"{source}: missing column(s) {', '.join(missing)}; header is {','.join(header)}"
        )
    width = len(header)
    used = [*required, *(name for name in optional if name in header)]
    last_used = max(header.index(name) for name in used)
    line = 1
    while True:
        try:
            fields = next(reader)
        except StopIteration:
            return
        except (csv.Error, UnicodeDecodeError) as exc:
            line = reader.line_num
            result.issues.append(ImportIssue(line, f"unreadable CSV ({exc})"))
            continue
        line = reader.line_num
        if not fields or (len(fields) == 1 and not fields[0].strip()):
            continue
        result.rows += 1
        if len(fields) == width:
            yield line, dict(zip(header, fields, strict=True))
            continue
        if len(fields) > width and last_used < width - 1:
            tail = ",".join(fields[width - 1 :])
            result.issues.append(
                ImportIssue(
                    line,
                    f"{len(fields)} fields for {width} columns; read the extra ones as "
                    f"part of {header[-1]} ({tail!r})",
                    skipped=False,
                )
            )
            yield line, dict(zip(header, [*fields[: width - 1], tail], strict=True))
            continue
        result.issues.append(
            ImportIssue(line, f"{len(fields)} fields for {width} columns; line skipped")
        )


def price(raw: str, column: str) -> Decimal | None:
    """Dollars per hour; empty means unknown. Zero is treated as unknown too: catalogs
    write 0 where they have no price (vast.ai's spot column), and no cloud offer is free."""
    text = raw.strip()
    if not text:
        return None
    try:
        value = Decimal(text)
    except InvalidOperation:
        raise RowError(f"{column}: not a price ({text!r})") from None
    if not value.is_finite() or value < 0:
        raise RowError(f"{column}: not a price ({text!r})")
    return value if value > 0 else None


def number(raw: str, column: str) -> float | None:
    text = raw.strip()
    if not text:
        return None
    try:
        value = float(text)
    except ValueError:
        raise RowError(f"{column}: not a number ({text!r})") from None
    if value != value or value < 0:
        raise RowError(f"{column}: not a number ({text!r})")
    return value


def count(raw: str, column: str) -> int | None:
    value = number(raw, column)
    if value is None:
        return None
    if value != int(value):
        raise RowError(f"{column}: not a whole number ({raw.strip()!r})")
    return int(value)
