"""``gpubroker db``: schema upgrades and the current revision."""

from __future__ import annotations

import typer

app = typer.Typer(
    help="Database schema: upgrade and show the current revision.", no_args_is_help=True
)


@app.command("upgrade")
def upgrade(revision: str = typer.Argument("head", help="Alembic revision to upgrade to.")) -> None:
    """Upgrade the database schema (it is also upgraded on first use)."""
    from broker.config import load_settings
    from broker.db.engine import Database, current_revision, redact_url, upgrade

    settings = load_settings()
    database = Database(settings.database_url, auto_upgrade=False)
    upgrade(database.engine, revision)
    typer.echo(f"{redact_url(settings.database_url)}: at {current_revision(database.engine)}")


@app.command("current")
def current() -> None:
    """Show the database's revision and the newest one this version ships."""
    from broker.config import load_settings
    from broker.db.engine import Database, current_revision, head_revision, redact_url

    settings = load_settings()
    database = Database(settings.database_url, auto_upgrade=False)
    rev = current_revision(database.engine)
    head = head_revision()
    status = "up to date" if rev == head else f"behind (head is {head})"
    typer.echo(f"{redact_url(settings.database_url)}: {rev or 'empty'} {status}")
