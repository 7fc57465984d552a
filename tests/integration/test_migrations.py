"""The schema: one head, upgrade and downgrade, and models that match the migrations."""

from __future__ import annotations

from pathlib import Path

from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from alembic.script import ScriptDirectory

from broker.db.engine import (
    Database,
    alembic_config,
    current_revision,
    downgrade,
    head_revision,
    make_engine,
    upgrade,
)
from broker.db.models import Base


def test_one_head() -> None:
    heads = ScriptDirectory.from_config(alembic_config(None)).get_heads()
    assert len(heads) == 1


def test_upgrade_from_empty_and_downgrade_to_base(db_url: str) -> None:
    engine = make_engine(db_url)
    assert current_revision(engine) is None
    upgrade(engine)
    assert current_revision(engine) == head_revision()
    tables = set(Database(db_url, auto_upgrade=False).table_names())
    assert {"offers", "jobs", "allocations", "instances", "usage", "budgets"} <= tables
    downgrade(engine, "base")
    assert current_revision(engine) is None
    remaining = set(Database(db_url, auto_upgrade=False).table_names()) - {"alembic_version"}
    assert remaining == set()
    engine.dispose()


def test_models_match_migrations(db_url: str) -> None:
    engine = make_engine(db_url)
    upgrade(engine)
    with engine.connect() as conn:
        context = MigrationContext.configure(conn, opts={"compare_type": True})
        diff = compare_metadata(context, Base.metadata)
    engine.dispose()
    assert diff == []


def test_first_use_upgrades_an_empty_database(db_url: str) -> None:
    db = Database(db_url)
    with db.session() as session:
        assert session.query(Base.metadata.tables["offers"]).count() == 0
    assert current_revision(db.engine) == head_revision()
    db.dispose()


def test_processes_opening_one_new_sqlite_file_at_once_agree_on_it(tmp_path: Path) -> None:
    import subprocess
    import sys

    url = f"sqlite:///{tmp_path / 'new.db'}"
    code = (
        "import sys; from broker.db.engine import Database; "
        "db = Database(sys.argv[1]); db.ensure_schema(); print(db.installation_id)"
    )
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", code, url],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for _ in range(4)
    ]
    results = [proc.communicate(timeout=120) for proc in procs]
    assert [proc.returncode for proc in procs] == [0] * 4, [err for _, err in results]
    assert len({out.strip() for out, _ in results}) == 1
