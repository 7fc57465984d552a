"""Named leases in the ``leases`` table: how several daemons on one database coordinate.

A lease is held by one holder until it expires; the holder renews it, anyone may take an
expired one. Acquiring is one conditional ``UPDATE`` (or, for a new name, one ``INSERT``
that the primary key lets only one writer win), so it is atomic on SQLite and PostgreSQL
alike without relying on ``SELECT ... FOR UPDATE``.
"""

from __future__ import annotations

import hashlib
from datetime import datetime, timedelta

from sqlalchemy import delete, or_, select, text, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from broker.db.engine import Database
from broker.db.models import LeaseRow
from broker.db.queries import rows_matched
from broker.domain import as_utc, utcnow


def acquire(
    db: Database,
    name: str,
    holder: str,
    ttl: float,
    *,
    now: datetime | None = None,
    renew: bool = True,
) -> bool:
    """Take or renew lease ``name`` for ``ttl`` seconds; False when someone else holds it.

    With ``renew=False`` even the holder gets it only once it has expired: a lease used
    as a timer ("refresh at most once an hour, whoever does it").
    """
    now = as_utc(now or utcnow())
    expires = now + timedelta(seconds=ttl)
    free = LeaseRow.expires_at <= now
    with db.session() as session:
        taken = rows_matched(
            session,
            update(LeaseRow)
            .where(LeaseRow.name == name, or_(LeaseRow.holder == holder, free) if renew else free)
            .values(holder=holder, expires_at=expires)
            .execution_options(synchronize_session=False),
        )
        if taken:
            return True
        if session.scalar(select(LeaseRow.name).where(LeaseRow.name == name)) is not None:
            return False
    try:
        with db.session() as session:
            session.add(LeaseRow(name=name, holder=holder, expires_at=expires))
        return True
    except IntegrityError:
        return False


def release(db: Database, name: str, holder: str) -> bool:
    """Give lease ``name`` up if ``holder`` holds it; True when it did."""
    with db.session() as session:
        released = rows_matched(
            session,
            delete(LeaseRow)
            .where(LeaseRow.name == name, LeaseRow.holder == holder)
            .execution_options(synchronize_session=False),
        )
        return bool(released)


def holder_of(db: Database, name: str, *, now: datetime | None = None) -> str | None:
    """Who holds lease ``name`` now, or None when nobody does."""
    now = as_utc(now or utcnow())
    with db.session() as session:
        row = session.get(LeaseRow, name)
        if row is None or row.expires_at <= now:
            return None
        return row.holder


def serialize(session: Session, name: str) -> None:
    """Hold the write lock ``name`` until ``session``'s transaction ends, so transactions
    that read, decide and write (the planner reserving capacity, quota and budget) run one
    after another and each reads what the one before committed.

    PostgreSQL: a transaction-scoped advisory lock. SQLite: ``BEGIN IMMEDIATE``, the whole
    database's write lock, which must be the transaction's first statement (waits up to
    the busy timeout). A wait that runs out raises the driver's ``OperationalError``.
    """
    connection = session.connection()
    dialect = connection.dialect.name
    if dialect == "sqlite":
        driver = connection.connection.dbapi_connection
        if driver is None:  # only an invalidated connection has lost its driver connection
            raise RuntimeError("serialize(): the session's connection has been invalidated")
        if driver.in_transaction:
            raise RuntimeError("serialize() must come first in its SQLite transaction")
        connection.exec_driver_sql("BEGIN IMMEDIATE")
    elif dialect == "postgresql":
        key = int.from_bytes(hashlib.sha256(name.encode()).digest()[:8], "big", signed=True)
        connection.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": key})
