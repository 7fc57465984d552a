"""Secrets never leak: canary values in the environment, in config.toml and inside a
provider's error message must not reach the database, the logs or the CLI's output.

The CLI runs in-process through ``broker.cli.app.main`` (the console entry point), so
its real error handling, exit codes and logging are what is checked. Provider errors come
from a small HTTP server that answers every AWS and GCP call with an authentication error
whose message carries a canary, as a misbehaving endpoint might echo a token back.
"""

from __future__ import annotations

import json
import logging
import sys
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

CANARY_ENV = {
    "AWS_ACCESS_KEY_ID": "AKIACANARYENV0000001",
    "AWS_SECRET_ACCESS_KEY": "canary-env-secret-9f3Kq2LmZx",
    "AWS_SESSION_TOKEN": "canary-env-token-7Hc4Pw1RtY",
}
CANARY_DB_PASSWORD = "canary-db-password-5Vn8Qe"
CANARY_CONFIG = "canary-config-value-2Jd6Ws"
CANARY_PROVIDER = "canary-provider-message-8Lr3Tb"
CANARIES = [*CANARY_ENV.values(), CANARY_DB_PASSWORD, CANARY_CONFIG, CANARY_PROVIDER]

# Commands other parts of the CLI add: (command path, full arguments). Each runs when
# registered; the last test names those that are not yet.
AWS_REFRESH = ["offers", "refresh", "--provider", "aws", "--regions", "us-east-1"]
GCP_REFRESH = ["offers", "refresh", "--provider", "gcp", "--regions", "us-central1"]
PROVIDER_COMMANDS: list[tuple[tuple[str, ...], list[str]]] = [
    (("check",), ["check"]),
    (("check",), ["check", "--format", "json"]),
    (("offers", "refresh"), AWS_REFRESH),
    (("offers", "refresh"), [*AWS_REFRESH, "--format", "json"]),
    (("offers", "refresh"), [*GCP_REFRESH, "--format", "json"]),
    (("offers",), ["offers", "--format", "json"]),
    (("reconcile",), ["reconcile"]),
    (("jobs",), ["jobs", "--format", "json"]),
    (("report",), ["report", "--format", "json"]),
]


class _LeakyCloud(BaseHTTPRequestHandler):
    """Every call fails with an auth error whose message echoes a canary."""

    served: list[str] = []  # "gcp" or "aws", one per answer

    def _answer(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        if length:
            self.rfile.read(length)
        text = f"request rejected for token {CANARY_PROVIDER}"
        if self.path.startswith(("/compute/", "/v1/", "/projects/")):
            body = json.dumps(
                {
                    "error": {
                        "code": 403,
                        "message": text,
                        "status": "PERMISSION_DENIED",
                        "errors": [{"message": text, "domain": "global", "reason": "forbidden"}],
                    }
                }
            ).encode()
            content_type = "application/json"
        else:
            body = (
                '<?xml version="1.0" encoding="UTF-8"?><Response><Errors><Error>'
                f"<Code>AuthFailure</Code><Message>{text}</Message></Error></Errors>"
                "<RequestID>canary-req</RequestID></Response>"
            ).encode()
            content_type = "text/xml"
        self.served.append("aws" if content_type == "text/xml" else "gcp")
        self.send_response(401 if content_type == "text/xml" else 403)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    do_GET = do_POST = do_PUT = do_DELETE = _answer

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture(scope="module")
def leaky_cloud() -> Iterator[str]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _LeakyCloud)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


@pytest.fixture
def pg_url_with_password(pg_server_url: str) -> str:
    """The session's PostgreSQL database, emptied, its URL carrying a canary password
    (the server trusts local connections, so the password is sent but not needed)."""
    from sqlalchemy import create_engine, text
    from sqlalchemy.engine import make_url

    engine = create_engine(pg_server_url, isolation_level="AUTOCOMMIT")
    with engine.connect() as conn:
        conn.execute(text("DROP SCHEMA public CASCADE"))
        conn.execute(text("CREATE SCHEMA public"))
    engine.dispose()
    url = make_url(pg_server_url).set(password=CANARY_DB_PASSWORD)
    return url.render_as_string(hide_password=False)


@pytest.fixture
def canary_env(home: Path, monkeypatch: pytest.MonkeyPatch, leaky_cloud: str) -> Path:
    for key, value in CANARY_ENV.items():
        monkeypatch.setenv(key, value)
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    monkeypatch.setenv("AWS_ENDPOINT_URL", leaky_cloud)
    monkeypatch.setenv("GPUBROKER_AWS_PRICE_LIST_URL", leaky_cloud)
    monkeypatch.setenv("GPUBROKER_AWS_MAX_ATTEMPTS", "1")
    monkeypatch.setenv("GPUBROKER_GCP_COMPUTE_ENDPOINT", leaky_cloud)
    monkeypatch.setenv("GPUBROKER_GCP_BILLING_ENDPOINT", leaky_cloud)
    monkeypatch.setenv("GPUBROKER_GCP_PROJECT", "gpubroker-canary")
    monkeypatch.delenv("GOOGLE_APPLICATION_CREDENTIALS", raising=False)
    monkeypatch.setenv("COLUMNS", "4000")  # tables never cut a cell short of a leak
    return home


_REGISTERED: list[bool] = []


def run_cli(
    args: list[str], monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> tuple[int, str]:
    """Run ``gpubroker ARGS`` through the console entry point; (exit code, stdout+stderr)."""
    from broker.cli import app as app_module

    if not _REGISTERED:  # main() adds the command groups; once per process is enough
        app_module._register()
        _REGISTERED.append(True)
    monkeypatch.setattr(app_module, "_register", lambda: None)
    monkeypatch.setattr(sys, "argv", ["gpubroker", *args])
    try:
        app_module.main()
        code = 0
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
    captured = capsys.readouterr()
    return code, captured.out + captured.err


def registered(path: tuple[str, ...]) -> bool:
    """Whether the CLI modules register this command path (checked on a scratch app)."""
    import importlib

    import typer
    import typer.main

    from broker.cli import app as app_module

    probe = typer.Typer()
    probe.command("probe")(lambda: None)  # two commands make a group to look into
    for name in app_module.CLI_MODULES:
        importlib.import_module(name).register(probe)
    command = typer.main.get_command(probe)
    for word in path:
        commands = getattr(command, "commands", {})
        if word not in commands:
            return False
        command = commands[word]
    return True


def dump_database(url: str) -> str:
    from sqlalchemy import create_engine, inspect, text

    engine = create_engine(url)
    rows: list[str] = []
    with engine.connect() as conn:
        for table in inspect(conn).get_table_names():
            for row in conn.execute(text(f'SELECT * FROM "{table}"')):
                rows.append(f"{table}: {tuple(row)!r}")
    engine.dispose()
    return "\n".join(rows)


def assert_clean(where: str, text: str) -> None:
    for canary in CANARIES:
        assert canary not in text, f"{canary} leaked into {where}"


OUR_LOGGERS = ("broker", "providers", "gpubroker", "scheduler", "workloads")


def _capture_logs(caplog: pytest.LogCaptureFixture) -> None:
    """Every record of our own loggers, and third-party records from INFO up.

    Third-party DEBUG stays off as in every mode of the CLI: botocore's DEBUG output dumps
    signed request headers (key id, session token) by design, which is the SDK's, not ours.
    """
    caplog.set_level(logging.INFO)
    for name in OUR_LOGGERS:
        caplog.set_level(logging.DEBUG, logger=name)


def _logs(caplog: pytest.LogCaptureFixture) -> str:
    parts = [caplog.text]
    for record in caplog.records:
        parts.append(f"{record.getMessage()} {record.args!r} {record.exc_text or ''}")
    return "\n".join(parts)


@pytest.mark.postgres
def test_env_secrets_and_provider_errors_stay_out(
    canary_env: Path,
    pg_url_with_password: str,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    caplog: pytest.LogCaptureFixture,
) -> None:
    _capture_logs(caplog)
    monkeypatch.setenv("GPUBROKER_DATABASE_URL", pg_url_with_password)
    outputs: list[str] = []
    code, out = run_cli(["db", "upgrade"], monkeypatch, capsys)
    assert code == 0 and "***" in out, out
    outputs.append(out)
    code, out = run_cli(["db", "current"], monkeypatch, capsys)
    assert code == 0 and "up to date" in out, out
    outputs.append(out)
    _LeakyCloud.served.clear()
    for path, args in PROVIDER_COMMANDS:
        if registered(path):
            code, out = run_cli(args, monkeypatch, capsys)
            assert "Traceback" not in out, (args, out)
            outputs.append(out)
    if registered(("offers", "refresh")):  # the canary messages were indeed sent
        assert {"aws", "gcp"} <= set(_LeakyCloud.served), _LeakyCloud.served
    for out in outputs:
        assert_clean("CLI output", out)
    assert_clean("logs", _logs(caplog))
    database = dump_database(pg_url_with_password)
    assert "alembic_version: (" in database  # the dump did read the tables
    assert_clean("database", database)


@pytest.mark.postgres
def test_config_file_password_stays_out(
    home: Path,
    pg_url_with_password: str,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    caplog: pytest.LogCaptureFixture,
) -> None:
    _capture_logs(caplog)
    config_url = pg_url_with_password.replace(CANARY_DB_PASSWORD, CANARY_CONFIG)
    (home / "config.toml").write_text(f'database_url = "{config_url}"\n')
    code, out = run_cli(["db", "upgrade"], monkeypatch, capsys)
    assert code == 0, out
    code, current = run_cli(["db", "current"], monkeypatch, capsys)
    assert code == 0 and "up to date" in current, current
    assert_clean("CLI output", out + current)
    assert_clean("logs", _logs(caplog))
    assert_clean("database", dump_database(config_url))


def test_failing_commands_never_echo_a_secret(
    canary_env: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    caplog: pytest.LogCaptureFixture,
) -> None:
    _capture_logs(caplog)
    # a database that cannot be reached, its URL carrying a password
    monkeypatch.setenv(
        "GPUBROKER_DATABASE_URL",
        f"postgresql://postgres:{CANARY_DB_PASSWORD}@127.0.0.1:1/nowhere?connect_timeout=2",
    )
    code, out = run_cli(["db", "current"], monkeypatch, capsys)
    assert code != 0 and out.startswith("error: ") and "Traceback" not in out, out
    assert_clean("CLI output (database down)", out)
    monkeypatch.delenv("GPUBROKER_DATABASE_URL")
    # a config.toml value that is wrong: the error names the key, never the value
    (canary_env / "config.toml").write_text(f'aws_max_attempts = "{CANARY_CONFIG}"\n')
    monkeypatch.delenv("GPUBROKER_AWS_MAX_ATTEMPTS")
    code, out = run_cli(["db", "current"], monkeypatch, capsys)
    assert code == 2 and "aws_max_attempts" in out, out
    assert_clean("CLI output (bad config)", out)
    assert_clean("logs", _logs(caplog))


def test_malformed_database_url_is_one_line_without_the_password(
    canary_env: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    # a typo in the port: SQLAlchemy's URL parser raises ValueError, not ArgumentError
    bad_port = f"postgresql://postgres:{CANARY_DB_PASSWORD}@localhost:54x2/db"
    monkeypatch.setenv("GPUBROKER_DATABASE_URL", bad_port)
    code, out = run_cli(["db", "current"], monkeypatch, capsys)
    assert code == 2 and out.startswith("error: GPUBROKER_DATABASE_URL"), out
    assert_clean("CLI output (bad URL)", out)


def test_provider_commands_are_all_covered() -> None:
    missing = sorted({" ".join(path) for path, _ in PROVIDER_COMMANDS if not registered(path)})
    if missing:
        pytest.skip("commands not registered yet, so not canary-checked: " + ", ".join(missing))
