"""Shared fixtures: a broker home per test, and databases on SQLite and PostgreSQL.

PostgreSQL tests use a database of their own, created for the session and dropped after.
Locally they skip with a reason when the server is down; under CI (``CI=true``) a missing
server is a failure, since CI must run the database suite on both backends.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

# Session-wide servers shared by every area's tests (moto, the price list, fake GCE).
pytest_plugins = [
    "tests.support.moto_server",
    "tests.support.aws_price_list",
    "tests.support.gce_server",
]

PG_ADMIN_URL = os.environ.get(
    "GPUBROKER_TEST_PG_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/postgres"
)
SHARED_DATASETS = Path(__file__).resolve().parents[2] / "shared" / "datasets"


def _pg_admin_engine():  # type: ignore[no-untyped-def]
    from sqlalchemy import create_engine

    return create_engine(PG_ADMIN_URL, isolation_level="AUTOCOMMIT")


@pytest.fixture(scope="session")
def pg_server_url() -> Iterator[str]:
    """URL of a fresh PostgreSQL database for this test session (dropped afterwards)."""
    from sqlalchemy import text
    from sqlalchemy.exc import OperationalError

    admin = _pg_admin_engine()
    name = f"gpubroker_test_{uuid.uuid4().hex[:10]}"
    try:
        with admin.connect() as conn:
            conn.execute(text(f'CREATE DATABASE "{name}"'))
    except OperationalError as exc:
        admin.dispose()
        if os.environ.get("CI"):
            pytest.fail(f"PostgreSQL at {PG_ADMIN_URL} is required under CI: {exc}")
        pytest.skip(f"PostgreSQL not reachable at {PG_ADMIN_URL}")
    url = PG_ADMIN_URL.rsplit("/", 1)[0] + f"/{name}"
    try:
        yield url
    finally:
        with admin.connect() as conn:
            conn.execute(
                text(
                    "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                    "WHERE datname = :n AND pid <> pg_backend_pid()"
                ),
                {"n": name},
            )
            conn.execute(text(f'DROP DATABASE IF EXISTS "{name}"'))
        admin.dispose()


def _reset_pg(url: str) -> None:
    from sqlalchemy import create_engine, text

    engine = create_engine(url, isolation_level="AUTOCOMMIT")
    with engine.connect() as conn:
        conn.execute(text("DROP SCHEMA public CASCADE"))
        conn.execute(text("CREATE SCHEMA public"))
    engine.dispose()


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def db_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """An empty database URL, once on SQLite and once on PostgreSQL."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'broker.db'}"
    url: str = request.getfixturevalue("pg_server_url")
    _reset_pg(url)
    return url


@pytest.fixture
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A fresh GPUBROKER_HOME (SQLite database inside) for the test, with no stray config."""
    path = tmp_path / "home"
    path.mkdir()
    monkeypatch.setenv("GPUBROKER_HOME", str(path))
    for key in list(os.environ):
        if key.startswith("GPUBROKER_") and key != "GPUBROKER_HOME":
            monkeypatch.delenv(key)
    return path


@pytest.fixture
def database(db_url: str):  # type: ignore[no-untyped-def]
    """A migrated ``Database`` on each backend."""
    from broker.db.engine import Database

    db = Database(db_url)
    db.ensure_schema()
    yield db
    db.dispose()


def shared_dataset(*parts: str) -> Path:
    """Path under ../shared/datasets, or skip naming the path when it is missing."""
    path = SHARED_DATASETS.joinpath(*parts)
    if not path.exists():
        pytest.skip(f"dataset not present: {path}")
    return path
