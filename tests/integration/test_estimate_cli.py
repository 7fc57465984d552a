"""``gpubroker estimate`` as a user runs it: a fresh home, the bundled catalog, exit codes."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
EXAMPLES = ROOT / "examples"


def gpubroker(home: Path, *args: str) -> subprocess.CompletedProcess[str]:
    """A real ``gpubroker`` process with a fresh home."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("GPUBROKER_")}
    env["GPUBROKER_HOME"] = str(home)
    return subprocess.run(
        [sys.executable, "-c", "from broker.cli.app import main; main()", *args],
        capture_output=True,
        text=True,
        env=env,
        cwd=ROOT,
        timeout=120,
    )


def in_process(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, *args: str
) -> tuple[int, str, str]:
    """``gpubroker ARGS`` through the same entry point, without a new interpreter."""
    from broker.cli.app import main

    monkeypatch.setattr(sys, "argv", ["gpubroker", *args])
    with pytest.raises(SystemExit) as info:
        main()
        raise SystemExit(0)
    out, err = capsys.readouterr()
    return int(info.value.code or 0), out, err


def test_llama_7b_finetune_per_gpu_type_from_current_offers(tmp_path: Path) -> None:
    done = gpubroker(
        tmp_path, "estimate", str(EXAMPLES / "llama-7b-finetune.yaml"), "--format", "json"
    )
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)
    assert report["job"] == "llama-7b-finetune" and report["kind"] == "training"
    options = report["options"]
    assert len({o["gpu"] for o in options}) == len(options) >= 3
    for option in options:
        assert option["feasible"] and option["gpus"] == option["gpus_per_node"] * option["nodes"]
        assert option["gpus"] >= report["min_gpus"][option["gpu"]]
        assert option["hours"] > 0 and option["cost"] > 0
        expected = option["price_per_hour"] * option["nodes"] * option["hours"]
        assert option["cost"] == pytest.approx(expected, rel=0.01, abs=0.02)
        assert option["cost"] <= 5000  # the spec's budget
    gpus = {o["gpu"] for o in options}
    assert "H100-80GB" in gpus
    # The spec's allow-list is honoured: nothing outside it is offered.
    assert gpus <= {"H100-80GB", "A100-80GB", "A100-40GB", "L40S", "H200-141GB", "A10G", "L4"}
    costs = [o["cost"] for o in options]
    assert costs == sorted(costs)


def test_bad_specs_get_one_line_and_exit_2(
    home: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    typo = tmp_path / "typo.yaml"
    typo.write_text("name: t\nmodel: {preset: gpt-tiny}\nsteps: 5\nglobal_bacth: 8\n")
    negative = tmp_path / "negative.yaml"
    negative.write_text(
        "name: t\nmodel: {preset: gpt-tiny}\nsteps: 5\nglobal_batch: -8\n"
        "constraints: {providers: [local]}\napi_token: hunter2-secret-value\n"
    )
    for path, field in ((typo, "global_bacth"), (negative, "global_batch")):
        code, out, err = in_process(capsys, monkeypatch, "estimate", str(path))
        assert code == 2
        lines = err.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith(f"error: {path}: ")
        assert field in lines[0] and "Traceback" not in err
        assert "hunter2" not in err + out
    code, _, err = in_process(capsys, monkeypatch, "estimate", str(tmp_path / "nope.yaml"))
    assert code == 2 and "no such spec file" in err
    code, _, err = in_process(
        capsys, monkeypatch, "estimate", str(EXAMPLES / "gpt-tiny-local.yaml"), "--gpu", "Z9"
    )
    assert code == 2 and err.startswith("error: --gpu: unknown GPU")
