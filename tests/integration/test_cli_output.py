"""Every listing reads right when piped at 80 columns, and ``--format`` means one thing.

The broker home holds a seeded usage ledger (finished jobs on AWS,
GCP and local shapes), one job running now on one instance, a pending job, budgets and a
report schedule. Each listing runs as the console entry point with stdout captured (not a
terminal) and ``COLUMNS=80``: its table must show every value of its JSON whole.
"""

from __future__ import annotations

import csv
import io
import json
import os
import subprocess
import sys
from datetime import timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest

from broker.cli.output import money, percent, plain_table
from broker.domain import utcnow
from tests.integration.test_cli_offers import run_cli

ROOT = Path(__file__).resolve().parents[2]


def _seed_home(home: Path) -> dict[str, int]:
    from broker.db.models import AllocationRow, InstanceRow, JobRow, PlanRow
    from broker.domain import AllocationState, InstanceState, JobState
    from broker.sdk import Broker
    from tests.support.usage_ledger import seed

    with Broker() as broker:
        seed(broker.db, now=utcnow(), jobs=8)  # its offers stand in for the catalog
        broker.schedules.add("0 8 * * 1", out_dir=home / "reports")
        with broker.db.session() as s:
            job = JobRow(
                name="llama-finetune-long-name",
                kind="training",
                spec={},
                team="research",
                state=JobState.RUNNING.value,
            )
            pending = JobRow(
                name="waiting",
                kind="training",
                spec={},
                team="product",
                state=JobState.PENDING.value,
            )
            plan = PlanRow(solver="highs", status="optimal")
            s.add_all([job, pending, plan])
            s.flush()
            alloc = AllocationRow(
                plan_id=plan.id,
                job_id=job.id,
                provider="aws",
                region="us-east-1",
                zone="us-east-1a",
                instance_type="p5.48xlarge",
                pricing="on_demand",
                gpu="H100-80GB",
                gpus_per_node=8,
                nodes=1,
                price_at_plan=Decimal("98.32"),
                est_hours=3.0,
                est_cost=Decimal("294.96"),
                state=AllocationState.ACTIVE.value,
            )
            s.add(alloc)
            s.flush()
            s.add(
                InstanceRow(
                    allocation_id=alloc.id,
                    provider="aws",
                    region="us-east-1",
                    zone="us-east-1a",
                    instance_type="p5.48xlarge",
                    pricing="on_demand",
                    request_id="req-live",
                    provider_instance_id="i-0123456789abcdef0",
                    state=InstanceState.RUNNING.value,
                    address="10.0.0.12",
                    price_per_hour=Decimal("98.32"),
                    launched_at=utcnow() - timedelta(hours=1, minutes=30),
                )
            )
            return {"running": job.id, "pending": pending.id, "allocation": alloc.id}


@pytest.fixture
def seeded(home: Path, monkeypatch: pytest.MonkeyPatch) -> dict[str, int]:
    monkeypatch.setenv("COLUMNS", "80")
    return _seed_home(home)


def _strings(value: Any) -> list[str]:
    if isinstance(value, dict):
        return [s for v in value.values() for s in _strings(v)]
    if isinstance(value, list):
        return [s for v in value for s in _strings(v)]
    return [value] if isinstance(value, str) and value and "T" not in value[10:11] else []


# (table arguments, the JSON listing its table shows, keys whose values the table shows)
LISTINGS = [
    (["offers", "--limit", "0"], None, ["id", "provider", "region", "instance_type"]),
    (["offers", "--sort", "price-per-tflop", "--gpu", "H100"], None, ["id", "instance_type"]),
    (["offers", "summary"], None, ["gpu"]),
    (["jobs"], None, ["id", "name", "team", "state", "provider", "region", "gpu"]),
    (["status"], "allocations", ["job", "provider", "region", "instance_type", "gpu"]),
    (["budget", "list"], None, ["team", "period"]),
    (["report", "schedule", "list"], None, ["cron", "out_dir", "group_by"]),
    (["check"], None, ["provider", "credentials"]),
    (
        ["estimate", str(ROOT / "examples" / "llama-7b-finetune.yaml")],
        "options",
        ["offer_id", "gpu", "provider", "region", "instance_type", "price_per_hour"],
    ),
    (["report", "--since", "1mo", "--group-by", "team,region"], "groups", ["team", "region"]),
]


@pytest.mark.parametrize(("args", "key", "shown"), LISTINGS, ids=lambda v: str(v))
def test_every_value_whole_at_80_columns(  # type: ignore[no-untyped-def]
    seeded, monkeypatch, capsys, args, key, shown
) -> None:
    code, table, err = run_cli(args, monkeypatch, capsys)
    assert code == 0, err
    code, out, err = run_cli([*args, "--format", "json"], monkeypatch, capsys)
    assert code == 0, err
    data = json.loads(out)
    rows = data[key] if key else data
    assert isinstance(rows, list) and rows, f"{args}: nothing listed"
    assert "…" not in table and "..." not in table
    for row in rows:
        for name in shown:
            value = row.get(name)
            if value is None:
                continue
            text = money(Decimal(str(value))) if "price" in name else str(value)
            assert text in table, f"{args}: {name}={text!r} not whole in:\n{table}"
    code, out, err = run_cli([*args, "--format", "csv"], monkeypatch, capsys)
    assert code == 0, err
    parsed = [r for r in csv.DictReader(io.StringIO(out)) if "TOTAL" not in r.values()]
    assert len(parsed) == len(rows), f"{args}: csv and json list different rows"


def test_money_and_shares_formatted_in_tables_exact_in_json(  # type: ignore[no-untyped-def]
    seeded, monkeypatch, capsys
) -> None:
    code, table, _ = run_cli(["report", "--since", "1mo"], monkeypatch, capsys)
    assert code == 0
    code, out, _ = run_cli(["report", "--since", "1mo", "--format", "json"], monkeypatch, capsys)
    totals = json.loads(out)["totals"]
    assert money(Decimal(str(totals["spend"]))) in table
    assert percent(totals["utilisation"]) in table  # 0.8 -> 80.0%
    assert "80.0%" in table
    # JSON keeps the ledger's six decimals; the table rounds to cents
    assert Decimal(str(totals["spend"])) == Decimal(str(totals["spend"])).quantize(
        Decimal("0.000001")
    )


def test_status_burn_rate_and_jobs_cost_so_far(seeded, monkeypatch, capsys) -> None:  # type: ignore[no-untyped-def]
    code, out, _ = run_cli(["status", "--format", "json"], monkeypatch, capsys)
    assert code == 0
    live = json.loads(out)
    assert live["burn_rate"] == 98.32
    [alloc] = live["allocations"]
    assert alloc["up"] == 1 and alloc["gpus"] == 8 and alloc["age_seconds"] >= 0
    # 1.5 h at $98.32/h, give or take the seconds the test takes
    assert 147.4 < alloc["cost_so_far"] < 148.5
    [instance] = live["instances"]
    assert instance["instance"] == "i-0123456789abcdef0" and instance["age_seconds"] >= 5399
    code, table, _ = run_cli(["status"], monkeypatch, capsys)
    assert "burn rate $98.32/h" in table and "1h30m" in table
    code, out, _ = run_cli(["jobs", "--format", "json"], monkeypatch, capsys)
    jobs = {j["id"]: j for j in json.loads(out)}
    running = jobs[seeded["running"]]
    assert (running["gpu"], running["nodes"], running["provider"]) == ("H100-80GB", 1, "aws")
    assert running["estimate"] == 294.96 and 147.4 < running["cost_so_far"] < 148.5
    assert jobs[seeded["pending"]]["provider"] is None


def test_empty_listings_say_why(home: Path, monkeypatch, capsys) -> None:  # type: ignore[no-untyped-def]
    for args, needle in [
        (["jobs"], "No jobs yet. Submit one"),
        (["jobs", "--state", "running"], "No jobs in state RUNNING"),
        (["budget", "list"], "No budgets"),
        (["report", "schedule", "list"], "No report schedules"),
        (["status"], "Nothing is live"),
        (["offers", "--gpu", "B200"], "No offer matches --gpu B200"),
        (["report", "--since", "7d"], "No metered usage"),
    ]:
        code, out, err = run_cli(args, monkeypatch, capsys)
        assert code == 0, (args, err)
        assert needle in out, (args, out)
    code, out, _ = run_cli(["jobs", "--format", "json"], monkeypatch, capsys)
    assert json.loads(out) == []


def test_logs_json_is_one_array(seeded, monkeypatch, capsys) -> None:  # type: ignore[no-untyped-def]
    from broker.sdk import Broker
    from broker.services.jobs import store as jobs

    with Broker() as broker, broker.db.session() as s:
        jobs.record_event(s, seeded["running"], "progress", {"step": 3, "loss": 2.5})
        jobs.record_event(s, seeded["running"], "metric", {"tokens_per_s": 1200.0})
    args = ["logs", str(seeded["running"]), "--events", "--format", "json"]
    code, out, _ = run_cli(args, monkeypatch, capsys)
    assert code == 0
    events = json.loads(out)
    assert [e["kind"] for e in events] == ["progress", "metric"]
    code, out, _ = run_cli(
        ["logs", str(seeded["pending"]), "--events", "--format", "json"], monkeypatch, capsys
    )
    assert json.loads(out) == []


def test_down_stops_named_and_all_jobs(seeded, monkeypatch, capsys) -> None:  # type: ignore[no-untyped-def]
    code, _, err = run_cli(["down"], monkeypatch, capsys)
    assert code == 2 and "give job ids or --all" in err
    code, _, err = run_cli(["down", "--all"], monkeypatch, capsys)  # stdin is not a terminal
    assert code == 2 and "--yes" in err
    code, _, err = run_cli(["down", "999999", "--yes"], monkeypatch, capsys)
    assert code == 2 and "999999" in err
    code, out, err = run_cli(["down", "--all", "--yes", "--format", "json"], monkeypatch, capsys)
    assert code == 0, err
    stopped = {r["job"]: r for r in json.loads(out)}
    assert set(stopped) == {seeded["running"], seeded["pending"]}
    assert all(r["state"] == "CANCELLED" for r in stopped.values())
    assert stopped[seeded["running"]]["instances"] == 1
    code, out, _ = run_cli(["status", "--format", "json"], monkeypatch, capsys)
    assert json.loads(out)["allocations"] == []
    code, out, _ = run_cli(["down", "--all", "--yes"], monkeypatch, capsys)
    assert "Nothing to stop" in out


def test_estimate_nothing_feasible_exits_3_with_a_hint(
    home: Path, monkeypatch, capsys, tmp_path
) -> None:  # type: ignore[no-untyped-def]
    spec = tmp_path / "big.yaml"
    spec.write_text(
        "kind: training\nname: too-big\nmodel:\n  preset: llama-70b\ntokens: 1000000\n"
        "parallelism: fsdp\nconstraints:\n  gpus: [L4]\n  max_nodes: 1\n"
    )
    code, out, err = run_cli(["estimate", str(spec)], monkeypatch, capsys)
    assert code == 3, (out, err)
    assert "infeasible" in err and "loosen" in err
    code, out, err = run_cli(["estimate", str(spec), "--format", "csv"], monkeypatch, capsys)
    assert code == 3 and out.strip()  # the header line still comes


def test_version_short_help_and_metavars(monkeypatch, capsys) -> None:  # type: ignore[no-untyped-def]
    from importlib.metadata import version

    code, out, _ = run_cli(["--version"], monkeypatch, capsys)
    assert code == 0 and out.strip() == f"gpubroker {version('gpubroker')}"
    for args in (
        ["-h"],
        ["offers", "-h"],
        ["report", "schedule", "add", "-h"],
        ["down", "-h"],
        ["estimate", "-h"],
        ["jobs", "-h"],
    ):
        code, out, _ = run_cli(args, monkeypatch, capsys)
        assert code == 0 and "Usage" in out, args
        for bad in ("<bool>", "<list[str]>", "{spec}", "<str>", "<int"):
            assert bad not in out, (args, bad)
    for former in (["schedule", "-h"], ["reports", "schedule", "list", "-h"]):
        code, out, _ = run_cli(former, monkeypatch, capsys)
        assert code == 0 and "Usage" in out, former  # hidden, still there
    code, out, _ = run_cli(["-h"], monkeypatch, capsys)
    assert "--install-completion" in out
    assert " reports " not in out and " schedule " not in out  # hidden former names


def test_piped_through_cat_at_80_columns(home: Path) -> None:
    """The real thing: a pipe, not a captured stream."""
    env = {**os.environ, "COLUMNS": "80"}
    cli = [sys.executable, "-c", "from broker.cli.app import main; main()"]
    done = subprocess.run(
        f"{' '.join(cli[:2])} '{cli[2]}' offers --limit 8 --provider aws | cat",
        shell=True,
        capture_output=True,
        text=True,
        env=env,
        cwd=ROOT,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert "…" not in done.stdout and len(lines) == 10  # title, header, 8 rows
    assert all("p5.48xlarge" in line or "p4d" in line or "g" in line for line in lines[2:])
    assert max(len(line) for line in lines) > 80  # wider than the terminal, nothing cut


def test_plain_table_never_cuts() -> None:
    rows = [{"name": "x" * 120, "cost": Decimal("15559.5902"), "share": Decimal("0.1552")}]
    text = plain_table(rows, ["name", "cost", "share"], ["name", "cost", "share"])
    assert "x" * 120 in text and "$15,559.59" in text and "15.5%" in text


def test_a_narrow_terminal_gets_whole_values(monkeypatch, capsys) -> None:  # type: ignore[no-untyped-def]
    """On a terminal the boxed table is used only when it fits; else the plain layout."""
    from broker.cli import output

    monkeypatch.setattr(output, "stdout_is_terminal", lambda: True)
    row = {"name": "llama-finetune-with-a-long-name", "region": "europe-west4", "cost": 1.5}
    monkeypatch.setenv("COLUMNS", "50")
    output.render([row], ["name", "region", "cost"], output.Format.table)
    narrow = capsys.readouterr().out
    assert "llama-finetune-with-a-long-name  europe-west4  $1.50" in narrow
    monkeypatch.setenv("COLUMNS", "120")
    output.render([row], ["name", "region", "cost"], output.Format.table)
    wide = capsys.readouterr().out
    assert "┃" in wide and "llama-finetune-with-a-long-name" in wide
