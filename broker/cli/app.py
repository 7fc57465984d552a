"""The root ``gpubroker`` app and the one table that turns errors into exit codes."""

from __future__ import annotations

import sys

import typer

from broker.cli import db as db_cli
from broker.errors import BrokerError

app = typer.Typer(
    name="gpubroker",
    help="Multi-cloud GPU broker: aggregate offers, plan a fleet of LLM jobs, run and meter them.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)
app.add_typer(db_cli.app, name="db")


_registered: list[str] = []


def _register() -> None:
    """Add the command groups of ``CLI_MODULES`` (once); each import stays light (no SDKs)."""
    import importlib

    for module_name in CLI_MODULES:
        if module_name not in _registered:
            importlib.import_module(module_name).register(app)
            _registered.append(module_name)


# Each module has ``register(app)``; order is the order in ``--help``.
CLI_MODULES: list[str] = [
    "broker.cli.offers",
    "broker.cli.check",
    "broker.cli.estimate",
    "broker.cli.reports",
    "broker.cli.budget",
    "broker.cli.daemon",
    "broker.cli.jobs",
    "broker.cli.plan",
]


def main() -> None:
    """Console entry point: run the app, print broker errors as one line with their code."""
    _register()
    try:
        app(standalone_mode=False)
    except BrokerError as exc:
        _fail(str(exc), exc.exit_code)
    except KeyboardInterrupt:
        _fail("interrupted", 130)
    except SystemExit as exc:
        raise exc
    except typer.Abort:
        _fail("aborted", 1)
    except typer.TyperException as exc:  # usage errors: unknown command, bad option value
        exc.show()  # type: ignore[attr-defined]
        sys.exit(exc.exit_code)  # type: ignore[attr-defined]
    except Exception as exc:  # database outages
        from sqlalchemy.exc import OperationalError

        if isinstance(exc, OperationalError):
            from broker.db.engine import first_line

            _fail(f"database: cannot connect or query ({first_line(exc)})", 1)
        raise


def _fail(message: str, code: int) -> None:
    first = message.strip().splitlines()[0] if message.strip() else "error"
    sys.stderr.write(f"error: {first}\n")
    sys.exit(code)
