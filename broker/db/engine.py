"""Engines, sessions and schema upgrades.

``Database`` owns one engine. On first use it brings an empty or older database to the
newest Alembic revision, so a newcomer never runs a migration by hand. SQLite gets WAL,
a busy timeout and foreign keys, so several processes (CLI, daemon, Ray callbacks) can
share one file.
"""

from __future__ import annotations

import fcntl
import os
import secrets
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from sqlalchemy import Engine, create_engine, event, inspect, select
from sqlalchemy.exc import ArgumentError, DatabaseError, IntegrityError, OperationalError
from sqlalchemy.orm import Session, sessionmaker

from broker.errors import ConfigError


def migrations_dir() -> Path:
    import migrations

    return Path(migrations.__file__).resolve().parent


def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.execute("PRAGMA busy_timeout=30000")
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA synchronous=NORMAL")
    cursor.close()


def redact_url(url: str) -> str:
    """The URL with any password replaced, safe to print."""
    try:
        from sqlalchemy.engine import make_url

        return make_url(url).render_as_string(hide_password=True)
    except (ArgumentError, ValueError):
        return "<unparseable database URL>"


def make_engine(url: str) -> Engine:
    try:
        if url.startswith("sqlite"):
            path = url.split("///", 1)[1].split("?", 1)[0] if "///" in url else ""
            if path and path != ":memory:" and not path.startswith("file:"):
                _private_file(Path(path).expanduser())
            engine = create_engine(url, connect_args={"timeout": 30})
            event.listen(engine, "connect", _sqlite_pragmas)
        else:
            if url.startswith("postgresql://"):
                url = "postgresql+psycopg://" + url.removeprefix("postgresql://")
            engine = create_engine(url, pool_pre_ping=True)
    except (ArgumentError, ValueError):
        raise ConfigError(
            f"GPUBROKER_DATABASE_URL: not a database URL ({redact_url(url)}); "
            "use sqlite:///PATH or postgresql://USER@HOST/DB"
        ) from None
    except ImportError as exc:
        raise ConfigError(f"GPUBROKER_DATABASE_URL: driver not installed ({exc.name})") from None
    return engine


def _private_file(path: Path) -> None:
    """Make the SQLite file's folder (0700 when new) and the file itself (0600 when new):
    it holds spend, job specs and report destinations."""
    try:
        path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        if not path.exists():
            os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_NOFOLLOW, 0o600))
    except OSError as exc:
        raise ConfigError(f"database file {path}: cannot create ({exc.strerror})") from None
    if not path.is_file():
        raise ConfigError(f"database file {path}: not a regular file")


def alembic_config(engine: Engine | None) -> Any:
    """Alembic's configuration; ``engine`` None: for reading the migration scripts only."""
    from alembic.config import Config

    cfg = Config()
    cfg.set_main_option("script_location", str(migrations_dir()))
    cfg.attributes["engine"] = engine
    return cfg


def head_revision() -> str:
    from alembic.script import ScriptDirectory

    cfg = alembic_config(None)
    heads = ScriptDirectory.from_config(cfg).get_heads()
    return heads[0]


def known_revisions() -> set[str]:
    from alembic.script import ScriptDirectory

    cfg = alembic_config(None)
    return {script.revision for script in ScriptDirectory.from_config(cfg).walk_revisions()}


def current_revision(engine: Engine) -> str | None:
    from alembic.runtime.migration import MigrationContext

    with engine.connect() as conn:
        return MigrationContext.configure(conn).get_current_revision()


def upgrade(engine: Engine, revision: str = "head") -> None:
    from alembic import command
    from alembic.util import CommandError

    if revision != "head" and revision not in known_revisions():
        known = ", ".join(sorted(known_revisions()))
        raise ConfigError(f"revision {revision!r} is unknown; known: head, {known}")
    try:
        command.upgrade(alembic_config(engine), revision)
    except CommandError as exc:  # e.g. the database is at a revision this version lacks
        raise ConfigError(f"database schema: {first_line(exc)}") from None


def downgrade(engine: Engine, revision: str = "base") -> None:
    from alembic import command

    command.downgrade(alembic_config(engine), revision)


@contextmanager
def _first_use_lock(engine: Engine) -> Iterator[None]:
    """Processes opening one new SQLite file at once migrate it one after the other (the
    second would otherwise find the first one's tables before its revision)."""
    database = engine.url.database if engine.url.get_backend_name() == "sqlite" else None
    if not database or database == ":memory:":
        yield
        return
    lock_path = Path(database).with_name(Path(database).name + ".lock")
    try:
        lock = open(lock_path, "a+")  # noqa: SIM115 (held for the block below)
    except OSError:  # a folder we cannot write to: the schema check says what is wrong
        yield
        return
    with lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        yield


class Database:
    """One engine plus a session factory; upgrades the schema on first use."""

    def __init__(self, url: str, *, auto_upgrade: bool = True) -> None:
        self.url = url
        self.engine = make_engine(url)
        self._sessions = sessionmaker(self.engine, expire_on_commit=False)
        self._ready = not auto_upgrade
        self._installation: str | None = None

    def ensure_schema(self) -> None:
        if self._ready:
            return
        with _first_use_lock(self.engine):
            self._check_and_upgrade()
        self._ready = True

    def _check_and_upgrade(self) -> None:
        try:
            current = current_revision(self.engine)
            if current is not None and current not in known_revisions():
                raise ConfigError(
                    f"database {redact_url(self.url)}: schema revision {current!r} is unknown "
                    "to this gpubroker (made by a newer version?); use a matching gpubroker"
                )
            if current is None and self._has_tables():
                raise ConfigError(
                    f"database {redact_url(self.url)}: has tables but no gpubroker schema "
                    "revision; point GPUBROKER_DATABASE_URL at a gpubroker database"
                )
            if current != head_revision():
                upgrade(self.engine)
        except OperationalError as exc:
            raise ConfigError(
                f"database {redact_url(self.url)}: cannot connect ({first_line(exc)})"
            ) from None
        except DatabaseError as exc:  # e.g. a file that is not an SQLite database
            raise ConfigError(
                f"database {redact_url(self.url)}: not usable ({first_line(exc)})"
            ) from None

    def _has_tables(self) -> bool:
        return bool(inspect(self.engine).get_table_names())

    @property
    def installation_id(self) -> str:
        """This database's installation id (see ``InstallationRow``); made if missing."""
        if self._installation is None:
            from broker.db.models import InstallationRow

            self.ensure_schema()
            for _ in range(2):  # a second pass reads what a concurrent first use made
                try:
                    with self._sessions() as session, session.begin():
                        found = session.scalar(select(InstallationRow.installation_id))
                        if found is None:
                            found = secrets.token_hex(8)
                            session.add(InstallationRow(id=1, installation_id=found))
                except IntegrityError:
                    continue
                self._installation = found
                break
            else:
                raise ConfigError(f"database {redact_url(self.url)}: no installation id")
        return self._installation

    @contextmanager
    def session(self) -> Iterator[Session]:
        """A transaction: committed when the block ends, rolled back on any error."""
        self.ensure_schema()
        with self._sessions() as session, session.begin():
            yield session

    def table_names(self) -> list[str]:
        return sorted(inspect(self.engine).get_table_names())

    def dispose(self) -> None:
        self.engine.dispose()


def first_line(exc: BaseException) -> str:
    text = str(getattr(exc, "orig", exc)) or type(exc).__name__
    return text.strip().splitlines()[0]
