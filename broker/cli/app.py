"""The root ``gpubroker`` app and the one table that turns errors into exit codes."""

from __future__ import annotations

import sys
from typing import Any

import typer

from broker.cli import db as db_cli
from broker.errors import BrokerError

app = typer.Typer(
    name="gpubroker",
    help="Multi-cloud GPU broker: aggregate offers, plan a fleet of LLM jobs, run and meter them.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)
app.add_typer(db_cli.app, name="db")


def _version(value: bool) -> None:
    if value:
        from importlib.metadata import version

        typer.echo(f"gpubroker {version('gpubroker')}")
        raise typer.Exit()


@app.callback()
def _root(
    version: bool = typer.Option(
        False, "--version", "-V", callback=_version, is_eager=True, help="Print the version."
    ),
) -> None:
    """Multi-cloud GPU broker: aggregate offers, plan a fleet of LLM jobs, run and meter them."""


_registered: list[str] = []


def _register() -> None:
    """Add the command groups of ``CLI_MODULES`` (once); each import stays light (no SDKs)."""
    import importlib

    from broker.cli import helpfmt

    helpfmt.install()
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
    "broker.cli.serving",
    "broker.cli.plan",
    "broker.cli.simulate",
    "broker.cli.status",
]


def _terminated(signum: int, frame: object) -> None:
    """SIGTERM ends a command as Ctrl-C does: a run in progress tears its nodes down first
    (the daemon installs its own handler)."""
    raise KeyboardInterrupt


def main() -> None:
    """Console entry point: every failure ends as one ``error:`` line on stderr and an exit
    code: a broker error's own (2 for bad input), 2 for a usage error or an out-of-range
    value, 1 for a database that cannot be reached, 70 for anything unforeseen (its
    traceback only with ``GPUBROKER_DEBUG=1``)."""
    import os
    import signal

    from broker.cli.streams import native_output_to_stderr

    native_output_to_stderr()
    _register()
    signal.signal(signal.SIGTERM, _terminated)
    try:
        code = _command()(standalone_mode=False)
    except BrokerError as exc:
        _fail(str(exc), exc.exit_code)
    except KeyboardInterrupt:
        _fail("interrupted", 130)
    except SystemExit:
        raise
    except typer.Exit as exc:
        sys.exit(exc.exit_code)
    except typer.Abort:
        _fail("aborted", 1)
    except typer.TyperException as exc:  # usage errors: unknown command, bad option value
        _usage_error(exc)
    except Exception as exc:
        if os.environ.get("GPUBROKER_DEBUG"):
            raise
        _unexpected(exc)
    else:
        if isinstance(code, int) and code:  # a command's ``typer.Exit(code)``
            sys.exit(code)


_built: list[object] = []


def _command() -> Any:
    """The click command of ``app``, built once per process (building it walks every
    command's signature: most of an in-process run's time)."""
    if not _built:
        _built.append(typer.main.get_command(app))
    return _built[0]


def _usage_error(exc: Exception) -> None:
    from typer._click.exceptions import NoArgsIsHelpError

    code = getattr(exc, "exit_code", 2)
    if isinstance(exc, NoArgsIsHelpError):
        exc.show()
        sys.exit(code)
    ctx = getattr(exc, "ctx", None)
    hint = f" (see '{ctx.command_path} --help')" if ctx is not None else ""
    message = exc.format_message() if hasattr(exc, "format_message") else str(exc)
    _fail(" ".join(str(message).split()) + hint, code)


def _unexpected(exc: Exception) -> None:
    """One line for what no handler foresaw: out-of-range values are bad input (2), a
    database failure is 1, anything else is a fault of ours (70)."""
    import decimal

    from sqlalchemy.exc import DBAPIError, OperationalError

    from broker.db.engine import first_line

    if isinstance(exc, OverflowError | decimal.InvalidOperation | RecursionError):
        _fail(f"a value is out of range ({type(exc).__name__}: {exc})", 2)
    if isinstance(exc, OperationalError):
        _fail(f"database: cannot connect or query ({first_line(exc)})", 1)
    if isinstance(exc, DBAPIError):
        _fail(f"database: {first_line(exc)}", 1)
    _fail(f"unexpected {type(exc).__name__}: {exc} (GPUBROKER_DEBUG=1 shows the traceback)", 70)


def _fail(message: str, code: int) -> None:
    first = message.strip().splitlines()[0] if message.strip() else "error"
    sys.stderr.write(f"error: {first}\n")
    sys.exit(code)
