"""Engines, sessions and schema upgrades.

``Database`` owns one engine. On first use it brings an empty or older database to the
newest Alembic revision, so a newcomer never runs a migration by hand. SQLite gets WAL,
a busy timeout and foreign keys, so several processes (CLI, daemon, Ray callbacks) can
share one file.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from sqlalchemy import Engine, create_engine, event, inspect
from sqlalchemy.exc import ArgumentError, OperationalError
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
            path = url.split("///", 1)[1] if "///" in url else ""
            if path and path != ":memory:":
                Path(path).expanduser().parent.mkdir(parents=True, exist_ok=True)
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


def alembic_config(engine: Engine) -> Any:
    from alembic.config import Config

    cfg = Config()
    cfg.set_main_option("script_location", str(migrations_dir()))
    cfg.attributes["engine"] = engine
    return cfg


def head_revision() -> str:
    from alembic.script import ScriptDirectory

    cfg = alembic_config(None)  # type: ignore[arg-type]
    heads = ScriptDirectory.from_config(cfg).get_heads()
    return heads[0]


def current_revision(engine: Engine) -> str | None:
    from alembic.runtime.migration import MigrationContext

    with engine.connect() as conn:
        return MigrationContext.configure(conn).get_current_revision()


def upgrade(engine: Engine, revision: str = "head") -> None:
    from alembic import command

    command.upgrade(alembic_config(engine), revision)


def downgrade(engine: Engine, revision: str = "base") -> None:
    from alembic import command

    command.downgrade(alembic_config(engine), revision)


class Database:
    """One engine plus a session factory; upgrades the schema on first use."""

    def __init__(self, url: str, *, auto_upgrade: bool = True) -> None:
        self.url = url
        self.engine = make_engine(url)
        self._sessions = sessionmaker(self.engine, expire_on_commit=False)
        self._ready = not auto_upgrade

    def ensure_schema(self) -> None:
        if self._ready:
            return
        try:
            if current_revision(self.engine) != head_revision():
                upgrade(self.engine)
        except OperationalError as exc:
            raise ConfigError(
                f"database {redact_url(self.url)}: cannot connect ({first_line(exc)})"
            ) from None
        self._ready = True

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
