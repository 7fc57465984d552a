"""``gpubroker offers`` and ``gpubroker check`` through the console entry point."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import shared_dataset

HEAVY = ("boto3", "google.cloud", "ortools", "ray", "torch")


def run_cli(args, monkeypatch, capsys) -> tuple[int, str, str]:  # type: ignore[no-untyped-def]
    from broker.cli import app as app_module

    monkeypatch.setattr(sys, "argv", ["gpubroker", *args])
    try:
        app_module.main()
        code = 0
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
    out = capsys.readouterr()
    return code, out.out, out.err


@pytest.mark.parametrize("args", [["--help"], ["offers", "--help"]])
def test_help_imports_no_heavy_module(args: list[str]) -> None:
    script = (
        "import sys\n"
        f"sys.argv = ['gpubroker', *{args!r}]\n"
        "from broker.cli.app import main\n"
        "try:\n    main()\nexcept SystemExit:\n    pass\n"
        f"print('LOADED', [m for m in {HEAVY!r} if m in sys.modules])\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=60, check=True
    )
    assert "LOADED []" in done.stdout, done.stdout[-300:]
    assert "offers" in done.stdout


def test_h100_json_lists_aws_and_gcp_sorted(home: Path, monkeypatch, capsys) -> None:  # type: ignore[no-untyped-def]
    code, out, _ = run_cli(
        ["offers", "--gpu", "H100", "--min-gpus", "8", "--format", "json", "--limit", "0"],
        monkeypatch,
        capsys,
    )
    assert code == 0
    rows = json.loads(out)
    assert {r["provider"] for r in rows} == {"aws", "gcp"}
    assert all(r["gpus_per_node"] == 8 and r["gpu"] == "H100-80GB" for r in rows)
    prices = [r["price_per_hour"] for r in rows]
    assert prices == sorted(prices)
    assert all(r["as_of"] and r["rdma"] in ("efa", "tcpx", "tcpxo") for r in rows)
    assert {"source", "fetched_at", "stale", "interconnect_gbps", "zone"} <= set(rows[0])


def test_summary_and_csv(home: Path, monkeypatch, capsys) -> None:  # type: ignore[no-untyped-def]
    code, out, _ = run_cli(["offers", "summary", "--format", "json"], monkeypatch, capsys)
    assert code == 0
    gpus = {r["gpu"]: r for r in json.loads(out)}
    assert gpus["H100-80GB"]["on_demand"]["price_per_gpu_hour"] == 6.88
    code, out, _ = run_cli(["offers", "--provider", "gcp", "--format", "csv"], monkeypatch, capsys)
    assert code == 0 and out.splitlines()[0].startswith("id,provider,region,zone,instance_type")


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (["offers", "--gpu", "H1000"], "--gpu: unknown GPU 'H1000'"),
        (["offers", "--region", "us-[east"], "--region"),
        (["offers", "--spot", "--on-demand"], "--spot and --on-demand"),
        (["offers", "import", "/no/such.csv", "--format", "skypilot"], "no such file"),
        (["offers", "refresh", "--provider", "nimbus"], "--provider: 'nimbus' is unknown"),
    ],
)
def test_bad_input_is_one_line_exit_2(home: Path, monkeypatch, capsys, args, needle) -> None:  # type: ignore[no-untyped-def]
    code, out, err = run_cli(args, monkeypatch, capsys)
    assert code == 2 and out == ""
    assert err.startswith("error: ") and needle in err and err.count("\n") == 1
    assert "Traceback" not in err


def test_import_reports_lines_and_strict_writes_nothing(home: Path, monkeypatch, capsys) -> None:  # type: ignore[no-untyped-def]
    path = home / "lambda_vms.csv"
    text = shared_dataset("cloud-catalogs", "lambda_vms.csv").read_text().splitlines()
    path.write_text("\n".join([*text[:20], "gpu_1x_a10,A10,1.0", *text[20:40]]) + "\n")
    code, _, err = run_cli(
        ["offers", "import", str(path), "--format", "skypilot", "--strict"], monkeypatch, capsys
    )
    assert code == 2 and "line 21" in err and "nothing imported" in err
    code, out, _ = run_cli(
        ["offers", "--provider", "lambda", "--format", "json"], monkeypatch, capsys
    )
    assert json.loads(out) == []
    code, out, err = run_cli(
        ["offers", "import", str(path), "--format", "skypilot"], monkeypatch, capsys
    )
    assert code == 0 and f"{path}:21:" in err and "lambda:" in out
    code, out, _ = run_cli(
        ["offers", "--provider", "lambda", "--format", "json"], monkeypatch, capsys
    )
    imported = json.loads(out)
    gpu_lines = [line for line in text[1:40] if line.split(",")[1]]
    assert imported and len(imported) == len(gpu_lines)


def test_check_names_sources_never_secrets(home: Path, monkeypatch, capsys) -> None:  # type: ignore[no-untyped-def]
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "AKIACANARY000000TEST")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "canary-secret-for-check-7Qz")
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    code, out, err = run_cli(["check", "--format", "json"], monkeypatch, capsys)
    assert code == 0
    rows = {r["provider"]: r for r in json.loads(out)}
    assert rows["catalog"]["usable"] and rows["aws"]["usable"]
    assert rows["aws"]["credentials"] == "env"
    assert "canary" not in out + err and "AKIACANARY" not in out + err


def test_refresh_with_the_fake_provider(home: Path, monkeypatch, capsys) -> None:  # type: ignore[no-untyped-def]
    pytest.importorskip("providers.fake", reason="the fake provider is not installed")
    args = ["offers", "refresh", "--provider", "fake", "--regions", "us-east-1,eu-west-1"]
    code, out, _ = run_cli([*args, "--format", "json"], monkeypatch, capsys)
    assert code == 0
    report = json.loads(out)
    assert [r["region"] for r in report["regions"]] == ["us-east-1", "eu-west-1"]
    assert all(r["ok"] for r in report["regions"]) and report["new"] > 0
    assert {"new", "updated", "stale", "errors", "price_flags"} <= set(report)
    code, out, _ = run_cli(
        ["offers", "--provider", "fake", "--format", "json"], monkeypatch, capsys
    )
    assert {r["region"] for r in json.loads(out)} == {"us-east-1", "eu-west-1"}
    code, out, _ = run_cli(args, monkeypatch, capsys)
    assert code == 0 and "new 0," in out and "errors 0" in out


def test_check_probe_proves_credentials(home: Path, moto_aws, monkeypatch, capsys) -> None:  # type: ignore[no-untyped-def]
    code, out, err = run_cli(["check", "--probe", "--format", "json"], monkeypatch, capsys)
    assert code == 0
    assert {r["provider"]: r for r in json.loads(out)}["aws"]["usable"]
    monkeypatch.setenv("AWS_ENDPOINT_URL", "http://127.0.0.1:9")  # nothing listens there
    code, out, err = run_cli(["check", "--format", "json"], monkeypatch, capsys)
    assert {r["provider"]: r for r in json.loads(out)}["aws"]["usable"]  # no call made
    code, out, err = run_cli(["check", "--probe", "--format", "json"], monkeypatch, capsys)
    aws = {r["provider"]: r for r in json.loads(out)}["aws"]
    assert code == 0 and not aws["usable"] and aws["detail"]
    assert os.environ["AWS_SECRET_ACCESS_KEY"] not in out + err and "\n" not in aws["detail"]
