"""Driver-level bulk writes: one executemany (COPY on PostgreSQL) instead of ORM rows.

Row-at-a-time ORM writes cost ~100x more than these when an import touches ~10^5 rows.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from operator import itemgetter
from typing import Any

from sqlalchemy import TypeDecorator, update
from sqlalchemy.orm import Session

CHUNK = 900  # ids per ``id IN (...)``: under SQLite's default limit of 999 parameters


def _driver_rows(
    dialect: Any, table: Any, names: Sequence[str], rows: Iterable[dict[str, Any]]
) -> list[tuple[Any, ...]]:
    """Parameter tuples for a driver-level executemany.

    Values go through each column type's own bind processor, exactly as SQLAlchemy would
    convert them, but without its per-row statement machinery, which costs tens of
    microseconds a row. Datetime conversion is slow and its values repeat (one fetch time
    per import), so each distinct value is converted once.
    """
    getter = itemgetter(*names)
    memoised: list[tuple[int, Any, dict[Any, Any]]] = []
    direct: list[tuple[int, Any]] = []
    for i, name in enumerate(names):
        column_type = table.c[name].type
        proc = column_type._cached_bind_processor(dialect)
        if proc is None:
            continue
        if isinstance(column_type, TypeDecorator):
            memoised.append((i, proc, {}))
        else:
            direct.append((i, proc))
    params: list[tuple[Any, ...]] = []
    for row in rows:
        values = list(getter(row))
        for i, proc in direct:
            if values[i] is not None:
                values[i] = proc(values[i])
        for i, proc, memo in memoised:
            value = values[i]
            if value is not None:
                hit = memo.get(value)
                if hit is None:
                    hit = memo[value] = proc(value)
                values[i] = hit
        params.append(tuple(values))
    return params


def _sqlite_cache(connection: Any) -> None:
    if connection.dialect.name == "sqlite":
        connection.exec_driver_sql("PRAGMA cache_size=-131072")  # 128 MiB for big imports


def insert_many(
    session: Session,
    table: Any,
    rows: list[dict[str, Any]],
    *,
    order: Callable[[dict[str, Any]], Any] | None = None,
) -> None:
    """One driver-level INSERT executemany (COPY on PostgreSQL) of ``rows``, which all
    carry the same keys; ``order`` sorts them first (by the table's unique key, it keeps
    the index pages warm)."""
    connection = session.connection()
    dialect = connection.dialect
    names = list(rows[0])
    marker = "?" if dialect.paramstyle == "qmark" else "%s"
    quote = dialect.identifier_preparer.quote
    sql = (
        f"INSERT INTO {quote(table.name)} ({', '.join(quote(n) for n in names)}) "
        f"VALUES ({', '.join([marker] * len(names))})"
    )
    ordered = sorted(rows, key=order) if order is not None else rows
    params = _driver_rows(dialect, table, names, ordered)
    if dialect.driver == "psycopg":  # COPY is several times faster than INSERTs there
        columns = ", ".join(quote(n) for n in names)
        raw: Any = connection.connection.dbapi_connection  # psycopg's, with COPY
        with (
            raw.cursor() as cursor,
            cursor.copy(f"COPY {quote(table.name)} ({columns}) FROM STDIN") as copy,
        ):
            for values in params:
                copy.write_row(values)
        return
    _sqlite_cache(connection)
    connection.exec_driver_sql(sql, params)


def update_many(session: Session, table: Any, rows: list[dict[str, Any]]) -> None:
    """One driver-level UPDATE ... WHERE id = ? executemany; ``id`` is each row's last key."""
    if not rows:
        return
    connection = session.connection()
    dialect = connection.dialect
    names = list(rows[0])
    assert names[-1] == "id"
    marker = "?" if dialect.paramstyle == "qmark" else "%s"
    quote = dialect.identifier_preparer.quote
    sets = ", ".join(f"{quote(n)} = {marker}" for n in names[:-1])
    sql = f"UPDATE {quote(table.name)} SET {sets} WHERE id = {marker}"
    _sqlite_cache(connection)
    connection.exec_driver_sql(sql, _driver_rows(dialect, table, names, rows))


def update_ids(session: Session, table: Any, ids: list[int], values: dict[str, Any]) -> None:
    """The same values for many rows, in chunks of ``id IN (...)``: far cheaper than one
    parameter set per row."""
    for start in range(0, len(ids), CHUNK):
        chunk = ids[start : start + CHUNK]
        session.execute(update(table).where(table.c.id.in_(chunk)).values(values))
