"""``gpubroker calibrate`` measures this CPU for real; estimates then match a real run."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

from broker.config import load_settings
from broker.sdk import Broker
from broker.services.offers.upsert import upsert_offers
from workloads.calibrate import measure
from workloads.estimate import Hardware, estimate_training
from workloads.spec import TrainingJob, parse_spec

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"


def test_calibrated_estimate_is_within_30_percent_of_a_real_run(
    home: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    pytest.importorskip("torch")
    from broker.cli.app import main

    # One thread for both runs: other processes sharing the cores then slow them alike.
    argv = ["gpubroker", "calibrate", "--steps", "20", "--threads", "1", "--format", "json"]
    monkeypatch.setattr(sys, "argv", argv)
    with pytest.raises(SystemExit) as info:
        main()
        raise SystemExit(0)
    assert info.value.code in (0, None)
    stored = json.loads(capsys.readouterr().out)
    assert stored["device"].startswith("cpu:") and stored["achieved_flops"] > 1e8
    assert stored["detail"]["preset"] == "gpt-tiny" and stored["detail"]["steps"] == 20

    with Broker() as broker:
        [view] = broker.calibrations()
        assert view.id == stored["id"]
        # A different batch than the calibration's, trained for real.
        job = parse_spec(
            {
                "name": "check",
                "model": {"preset": "gpt-tiny"},
                "steps": 20,
                "global_batch": 32,
                "precision": "fp32",
                "parallelism": "ddp",
            }
        )
        assert isinstance(job, TrainingJob)
        estimated = estimate_training(job, Hardware(None, 0, 1), calibration=view.calibration)
        measured = measure(job.model, batch=32, steps=20, threads=1).median_step_seconds
        assert estimated.step_seconds == pytest.approx(measured, rel=0.30)

        # The estimate service applies this machine's calibration to the local offer.
        settings = load_settings()
        from providers.local import create

        records = list(create(settings).list_offers())
        upsert_offers(broker.db, records, provider="local", full=True)
        report = broker.estimate(EXAMPLES / "gpt-tiny-local.yaml")
        [local] = report.options
        assert local.provider == "local" and local.nodes == 2
        assert report.calibrations == [view.device]
        tiny = broker.load_spec(EXAMPLES / "gpt-tiny-local.yaml")
        assert isinstance(tiny, TrainingJob)
        per_node = estimate_training(tiny, Hardware(None, 0, 2), calibration=view.calibration)
        assert local.step_seconds == pytest.approx(per_node.step_seconds, rel=1e-3)
