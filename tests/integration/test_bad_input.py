"""Generated bad input against the whole CLI: arguments, environments, config files and
database states. Every case must end with one ``error:`` line, its documented exit code,
no traceback, and the database exactly as it was.

The CLI runs in this process through ``broker.cli.app.main`` (what the console script
calls), so several hundred cases take seconds.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import os
import sqlite3
import sys
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import yaml

from broker.cli import app as app_module
from tests.support.execution import tiny_spec

BIG_INTS = ["9223372036854775808", "18446744073709551616", "-9223372036854775809", "1" + "0" * 40]
NOT_INTS = ["abc", "1.5", "", "0x10", "1e3", "nan", "inf", "\u0661\u0662", "--", "1_0_"]
NOT_FLOATS = ["abc", "", "0x1p3x", "1,5", "--", "nan", "inf", "-inf", "1e400"]


@dataclass(frozen=True)
class Case:
    args: tuple[str, ...]
    env: tuple[tuple[str, str], ...] = ()
    code: int = 2
    setup: str | None = None  # a named change to the home before the run (see _prepare)
    db_checked: bool = True  # False: the case itself replaces the database file

    @property
    def id(self) -> str:
        parts = [*self.args, *(f"{k}={v}" for k, v in self.env), self.setup or ""]
        return " ".join(p for p in parts if p)[:120]


@dataclass
class Home:
    path: Path
    spec: Path
    files: dict[str, Path] = field(default_factory=dict)


def _cases(home: Home) -> Iterator[Case]:
    f = home.files
    # ids past 64 bits, and things that are not ids at all
    for value in BIG_INTS + NOT_INTS:
        yield Case(("logs", value))
        yield Case(("cancel", value))
        yield Case(("report", "schedule", "remove", value))
        yield Case(("reports", "schedule", "remove", value))
    for value in BIG_INTS:
        yield Case(("endpoints", "--job", value))
        yield Case(("estimate", str(home.spec), "--offer", value))
    # numeric options
    int_options = [
        ("offers", "--limit"),
        ("offers", "--min-gpus"),
        ("offers", "--max-gpus"),
        ("report", "--top"),
        ("estimate", str(home.spec), "--nodes"),
        ("calibrate", "--steps"),
        ("calibrate", "--threads"),
    ]
    for option in int_options:
        for value in [*BIG_INTS, "abc", "", "1.5", "nan", "-1"]:
            yield Case((*option, value))
    float_options = [
        ("offers", "--max-price"),
        ("offers", "--min-gpu-memory"),
        ("offers", "--min-interconnect"),
        ("plan", "--time-limit"),
        ("plan", "--max-provider-share"),
        ("schedule", "--time-limit"),
        ("schedule", "--max-provider-share"),
        ("daemon", "--once", "--interval"),
        ("daemon", "--once", "--refresh-interval"),
    ]
    for option in float_options:
        for value in NOT_FLOATS:
            yield Case((*option, value))
    for option in float_options[3:]:
        for value in ["1e308", "-1", "0", "1e20"]:
            yield Case((*option, value))
    # report windows and targets
    for value in ["1000000w", "99999999y", "0d", "-1d", "abc", "12m", "1e3d", "10000000000mo", ""]:
        yield Case(("report", "--since", value))
    for option in ("--from", "--to"):
        for value in ["9999-12-31", "0000-01-01", "2026-13-01", "x", "2026-02-30", "99999-01-01"]:
            yield Case(("report", option, value))
    for value in ["bogus", "team,bogus", ",", "team;provider"]:
        yield Case(("report", "--group-by", value))
    for name in ("folder", "device", "symlink", "dangling", "fifo", "missing_dir", "proc"):
        for fmt in ("csv", "json", "html"):
            yield Case(("report", "--format", fmt, "--out", str(f[name])))
    yield Case(("report", "--format", "table", "--out", str(f["new"])))
    # budgets
    for value in [
        "1e400",
        "inf",
        "-inf",
        "nan",
        "-1",
        "x",
        "1e13",
        "",
        "0x10",
        "1e-400x",
        "\u0661",
    ]:
        yield Case(("budget", "set", "ml", value))
    for team in ["", "   ", "x" * 65]:
        yield Case(("budget", "set", team, "10"))
    yield Case(("budget", "set", "ml", "10", "--period", "decade"))
    yield Case(("budget", "remove", "nobody"))
    # report schedules
    for cron in ["0 0 31 2 *", "0 0 30 2 *", "* * *", "61 * * * *", "", "@reboot", "0 0 * * 8"]:
        yield Case(("report", "schedule", "add", cron, "--out", str(home.path)))
    for period in ["0d", "x", "1000000w", "12m"]:
        yield Case(("report", "schedule", "add", "0 8 * * 1", "--period", period, "--out", "."))
    for hook in ["ftp://x", "http://", "notaurl", "javascript:alert(1)"]:
        yield Case(("report", "schedule", "add", "0 8 * * 1", "--out", ".", "--webhook", hook))
    yield Case(("report", "schedule", "add", "0 8 * * 1", "--out", str(f["regular"])))
    yield Case(("report", "schedule", "add", "0 8 * * 1", "--out", ".", "--format", "table"))
    # spec and import files
    spec_files = ["zero", "fifo", "folder", "missing", "binary", "bad_yaml", "yaml_list"]
    spec_files += ["steps_true", "huge", "latin1", "deep", "unknown_key", "empty", "null"]
    for name in spec_files:
        yield Case(("submit", str(f[name])))
        yield Case(("estimate", str(f[name])))
    for name in ("zero", "fifo", "folder", "missing", "binary", "huge", "latin1"):
        for fmt in ("skypilot", "gpuhunt"):
            yield Case(("offers", "import", str(f[name]), "--format", fmt))
    yield Case(("offers", "import", str(f["regular"]), "--format", "bogus"))
    # unknown names
    yield Case(("reconcile", "--provider", "bogus"))
    yield Case(("offers", "refresh", "--provider", "bogus"))
    yield Case(("jobs", "--state", "bogus"))
    yield Case(("nosuchcommand",))
    yield Case(("offers", "--sort", "bogus"))
    yield Case(("plan", "--solver", "bogus"))
    yield Case(("db", "upgrade", "ffff"))
    # settings from the environment, each refused by every command that loads settings
    numeric = [
        "SOLVER_TIME_LIMIT",
        "SOLVER_RELATIVE_GAP",
        "DEFAULT_POOL_CAPACITY",
        "CAPACITY_COOLDOWN_MINUTES",
        "MAX_PROVIDER_SHARE",
        "HEAD_TIMEOUT_S",
        "WORKDIR_MAX_MIB",
        "AWS_MAX_ATTEMPTS",
    ]
    for name in numeric:
        for value in ["inf", "nan", "-1", "0", "x", "1e400", "18446744073709551616", "true", "1e9"]:
            yield Case(("jobs",), env=((f"GPUBROKER_{name}", value),))
    for name in ("RAY_PORT", "RAY_DASHBOARD_PORT"):
        for value in ["0", "70000", "x", "-1", "1e3", "80"]:
            yield Case(("jobs",), env=((f"GPUBROKER_{name}", value),))
    for value in ["x", "300.1.1.1/8", "1.2.3.4/99", "::g/64"]:
        yield Case(("jobs",), env=(("GPUBROKER_INGRESS_CIDR", value),))
    for name, value in [("SOLVER", "gurobi"), ("CLUSTER_NETWORK", "lan")]:
        yield Case(("offers",), env=((f"GPUBROKER_{name}", value),))
    for url in ["notaurl", "mysql+nodriver://x/y", "sqlite:///" + str(f["folder"])]:
        yield Case(("jobs",), env=(("GPUBROKER_DATABASE_URL", url),), db_checked=False)
    yield Case(("jobs",), env=(("GPUBROKER_HOME", str(f["regular"])),), db_checked=False)
    # config files
    for name in (
        "latin1_toml",
        "bad_toml",
        "unknown_toml",
        "folder_toml",
        "fifo_toml",
        "inf_toml",
        "list_toml",
        "huge_toml",
        "table_toml",
    ):
        for command in (("jobs",), ("offers",), ("budget", "list"), ("status",)):
            yield Case(command, setup=name)
    # database states
    for state in ("corrupt_db", "text_db", "newer_db", "folder_db", "foreign_db"):
        for command in (("jobs",), ("offers",), ("budget", "list"), ("logs", "1"), ("cancel", "1")):
            yield Case(command, setup=state, db_checked=False)
    # a run's files with garbage in them, and the local provider's state file
    for garbage in ("output_folder", "output_fifo"):
        yield Case(("logs", "1"), setup=garbage)
    for garbage in ("local_not_json", "local_bad_instance"):
        yield Case(("reconcile", "--provider", "local"), setup=garbage, code=1)


def _write_files(root: Path) -> dict[str, Path]:
    root.mkdir()
    files: dict[str, Path] = {}
    files["folder"] = root / "a-folder"
    files["folder"].mkdir()
    files["device"] = Path("/dev/full")
    files["zero"] = Path("/dev/zero")
    files["proc"] = Path("/proc/self/status")
    files["regular"] = root / "regular.txt"
    files["regular"].write_text("keep\n")
    files["symlink"] = root / "link"
    files["symlink"].symlink_to(files["regular"])
    files["dangling"] = root / "dangling"
    files["dangling"].symlink_to(root / "nowhere")
    files["fifo"] = root / "pipe"
    os.mkfifo(files["fifo"])
    files["missing"] = root / "missing.yaml"
    files["missing_dir"] = root / "no" / "such" / "out.csv"
    files["new"] = root / "new.csv"
    contents: dict[str, bytes] = {
        "binary": bytes(range(256)) * 4,
        "bad_yaml": b"kind: training\nname: [unclosed\n",
        "yaml_list": b"- 1\n- 2\n",
        "steps_true": yaml.safe_dump({**tiny_spec(), "steps": True}).encode(),
        "huge": b"#" * (2 * 2**20) + b"\n" + b"x" * (64 * 2**20),
        "latin1": "name: caf\xe9\n".encode("latin-1"),
        "deep": b"a: " + b"[" * 5000 + b"]" * 5000 + b"\n",
        "unknown_key": yaml.safe_dump({**tiny_spec(), "bogus": 1}).encode(),
        "empty": b"",
        "null": b"null\n",
    }
    for name, data in contents.items():
        files[name] = root / f"{name}.yaml"
        files[name].write_bytes(data)
    return files


TOML: dict[str, bytes] = {
    "latin1_toml": 'solver = "h\xe9ghs"\n'.encode("latin-1"),
    "bad_toml": b"solver = [unclosed\n",
    "unknown_toml": b"bogus = 1\n",
    "inf_toml": b"solver_time_limit = inf\n",
    "list_toml": b"ray_port = [1, 2]\n",
    "huge_toml": b"#" * (2 * 2**20),
    "table_toml": b"[solver]\nx = 1\n",
}


@contextlib.contextmanager
def _prepared(home: Home, setup: str | None) -> Iterator[None]:
    """Apply a named change to the home for one case, and undo it after."""
    config = home.path / "config.toml"
    db = home.path / "broker.db"
    saved = db.with_name("broker.db.saved")
    local_state = home.path / "local" / "instances.json"
    output = home.path / "runs" / "job-1" / "output.log"
    try:
        if setup in TOML:
            config.write_bytes(TOML[setup])
        elif setup == "folder_toml":
            config.mkdir()
        elif setup == "fifo_toml":
            os.mkfifo(config)
        elif setup is not None and setup.endswith("_db"):
            db.rename(saved)
            if setup == "corrupt_db":
                data = bytearray(saved.read_bytes())
                data[0:4096] = b"\xa5" * 4096
                db.write_bytes(bytes(data))
            elif setup == "text_db":
                db.write_text("this is not a database\n")
            elif setup == "folder_db":
                db.mkdir()
            elif setup == "newer_db":
                db.write_bytes(saved.read_bytes())
                with contextlib.closing(sqlite3.connect(db)) as conn:
                    conn.execute("UPDATE alembic_version SET version_num = '9999_future'")
                    conn.commit()
            elif setup == "foreign_db":
                with contextlib.closing(sqlite3.connect(db)) as conn:
                    conn.execute("CREATE TABLE customers (id INTEGER PRIMARY KEY, name TEXT)")
                    conn.commit()
        elif setup is not None and setup.startswith("output_"):
            output.parent.mkdir(parents=True, exist_ok=True)
            output.unlink(missing_ok=True)
            if setup == "output_folder":
                output.mkdir()
            else:
                os.mkfifo(output)
        elif setup == "local_not_json":
            local_state.parent.mkdir(exist_ok=True)
            local_state.write_bytes(b"\x00garbage{")
        elif setup == "local_bad_instance":
            local_state.parent.mkdir(exist_ok=True)
            local_state.write_text('{"next_id": 2, "instances": {"local-1": {"id": 7}}}')
        yield
    finally:
        if config.is_dir():
            config.rmdir()
        elif config.exists() or config.is_symlink():
            config.unlink()
        local_state.unlink(missing_ok=True)
        if output.is_dir():
            output.rmdir()
        else:
            output.unlink(missing_ok=True)
        if saved.exists():
            if db.is_dir():
                db.rmdir()
            else:
                db.unlink(missing_ok=True)
                for suffix in ("-wal", "-shm"):
                    Path(f"{db}{suffix}").unlink(missing_ok=True)
            saved.rename(db)


def _digest(db: Path) -> str:
    """Every row of every table (offers by count and ids: the catalog is large)."""
    digest = hashlib.sha256()
    with contextlib.closing(sqlite3.connect(f"file:{db}?mode=ro", uri=True)) as conn:
        tables = [r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type='table'")]
        for table in sorted(tables):
            digest.update(table.encode())
            if table == "offers":
                rows = conn.execute("SELECT count(*), sum(id), sum(stale) FROM offers")
            elif table == "price_observations":
                rows = conn.execute("SELECT count(*), sum(id) FROM price_observations")
            else:
                rows = conn.execute(f"SELECT * FROM {table} ORDER BY 1")
            for row in rows:
                digest.update(repr(row).encode())
    return digest.hexdigest()


def _run(args: tuple[str, ...], env: dict[str, str]) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    saved_env = dict(os.environ)
    saved_argv = sys.argv
    os.environ.update(env)
    sys.argv = ["gpubroker", *args]
    code = 0
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            try:
                app_module.main()
            except SystemExit as exc:
                code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
    finally:
        sys.argv = saved_argv
        os.environ.clear()
        os.environ.update(saved_env)
    return code, out.getvalue(), err.getvalue()


@pytest.fixture
def prepared_home(home: Path) -> Home:
    spec = home / "job.yaml"
    spec.write_text(yaml.safe_dump(tiny_spec()))
    files = _write_files(home / "files")
    for args in (("budget", "set", "ml", "100"), ("submit", str(spec)), ("offers",)):
        code, _, err = _run(args, {})
        assert code == 0, (args, err)
    return Home(home, spec, files)


def test_generated_bad_input_never_shows_a_traceback(
    prepared_home: Home, monkeypatch: pytest.MonkeyPatch
) -> None:
    home = prepared_home
    db = home.path / "broker.db"
    (home.path / "files" / "keep").mkdir()
    cases = list(_cases(home))
    assert len(cases) >= 500
    before = _digest(db)
    regular = home.files["regular"].read_text()
    failures: list[str] = []
    monkeypatch.chdir(home.path / "files" / "keep")
    for case in cases:
        with _prepared(home, case.setup):
            code, out, err = _run(case.args, dict(case.env))
        lines = [line for line in err.splitlines() if line.strip()]
        problems = []
        if code != case.code:
            problems.append(f"exit {code}")
        if len(lines) != 1 or not lines[0].startswith("error: "):
            problems.append(f"stderr {err[-300:]!r}")
        if "Traceback" in out + err:
            problems.append("traceback")
        if case.db_checked and _digest(db) != before:
            problems.append("database changed")
            before = _digest(db)
        if problems:
            failures.append(f"{case.id}: {', '.join(problems)}")
    assert home.files["regular"].read_text() == regular
    assert not home.files["new"].exists() and not (home.path / "files" / "no").exists()
    assert sorted(p.name for p in (home.path / "files" / "keep").iterdir()) == []
    assert not failures, f"{len(failures)} of {len(cases)} cases:\n" + "\n".join(failures)
