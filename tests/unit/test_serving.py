"""Serving parts that need no cluster: the spec's rules, the CPU replica model, the
endpoint's request handling and batched generation, and how reports fold into endpoints."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

import pytest

from broker.db.engine import Database
from broker.db.models import AllocationRow, EndpointRow, JobRow, PlanRow
from broker.domain import AllocationState, EndpointState, utcnow
from broker.errors import SpecError
from broker.services.execution import endpoints as serving
from broker.services.planning.inputs import measured_rates
from workloads.estimate import estimate_inference_cpu
from workloads.spec import parse_spec

SERVE = {
    "kind": "inference",
    "model": "gpt-tiny",
    "precision": "fp32",
    "request_rate": 20,
    "input_tokens": 32,
    "output_tokens": 32,
    "slo": {"ttft_ms": 500, "tpot_ms": 50},
}


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"model": None}, "model"),
        ({"model_from": "job:0"}, "model_from"),
        ({"model_from": "run:3"}, "model_from"),
        ({"serve": "app.py"}, "serve"),
        ({"serve": "pkg.mod:app", "model_from": "job:3"}, "model_from"),
        ({"workdir": "."}, "workdir"),
        ({"envs": {"1BAD": "x"}}, "envs"),
        ({"max_batch_size": 0}, "max_batch_size"),
    ],
)
def test_a_serving_spec_names_the_field_it_refuses(change: dict, field: str) -> None:
    data = {k: v for k, v in {**SERVE, **change}.items() if v is not None}
    with pytest.raises(SpecError) as info:
        parse_spec(data)
    assert str(info.value).startswith(field)


def test_model_from_alone_is_accepted_and_names_its_job() -> None:
    spec = parse_spec({**{k: v for k, v in SERVE.items() if k != "model"}, "model_from": "job:7"})
    assert spec.kind == "inference" and spec.source_job == 7 and spec.model is None


def test_a_cpu_node_serves_a_small_fp32_model_and_refuses_bf16() -> None:
    fits = estimate_inference_cpu(parse_spec(SERVE), vcpus=2)
    assert fits.fits and fits.gpus_per_replica == 0 and fits.requests_per_second > 20
    assert fits.tpot_ms <= 50 and 1 <= fits.batch <= 8
    refused = estimate_inference_cpu(parse_spec({**SERVE, "precision": "bf16"}), vcpus=2)
    assert not refused.fits and "fp32" in (refused.reason or "")
    big = estimate_inference_cpu(parse_spec({**SERVE, "model": "llama-7b"}), vcpus=2)
    assert not big.fits


def test_requests_are_checked_field_by_field() -> None:
    from workloads.serve_gpt import BadRequest, parse_request

    assert parse_request({"prompt": "hi", "max_tokens": 3}) == ([104, 105], 3)
    for body, field in [
        ([], "body"),
        ({"max_tokens": 3}, "prompt"),
        ({"prompt": "hi", "max_tokens": True}, "max_tokens"),
        ({"prompt": "hi", "max_tokens": 0}, "max_tokens"),
        ({"prompt": "x" * 20_000}, "prompt"),
    ]:
        with pytest.raises(BadRequest, match=f"^{field}:"):
            parse_request(body)


def test_a_batch_generates_what_each_request_would_alone() -> None:
    import torch

    from workloads.gpt import GPTConfig, build_model, encode
    from workloads.serve_gpt import generate

    torch.manual_seed(3)
    config = GPTConfig(n_layer=2, n_head=2, d_model=32, seq_len=16)
    model = build_model(config).eval()
    batch = [(encode("abc"), 5), (encode("a longer prompt than the window"), 3), (encode("xy"), 7)]
    together = generate(model, config.seq_len, batch)
    alone = [generate(model, config.seq_len, [item])[0] for item in batch]
    assert together == alone
    assert [len(tokens) for tokens in together] == [5, 3, 7]


def _endpoint(db: Database, *, replicas: int = 4) -> int:
    with db.session() as session:
        job = JobRow(name="s", kind="inference", team="t", state="RUNNING", spec=SERVE)
        plan = PlanRow(solver="highs", status="optimal", validated=True, detail={})
        session.add_all([job, plan])
        session.flush()
        alloc = AllocationRow(
            plan_id=plan.id,
            job_id=job.id,
            provider="local",
            region="local",
            zone="",
            instance_type="n",
            pricing="on_demand",
            nodes=2,
            est_hours=1.0,
            est_cost=0,
            state=AllocationState.ACTIVE.value,
            area="us",
            replicas=replicas,
        )
        session.add(alloc)
        session.flush()
        return alloc.id


def test_an_endpoint_follows_its_reports_and_keeps_its_peak_rate(tmp_path: Path) -> None:
    db = Database(f"sqlite:///{tmp_path / 'b.db'}")
    alloc_id = _endpoint(db)
    assert serving.open_endpoint(db, alloc_id, "http://h:8000", 2) == (2, 4)
    with db.session() as session:
        assert serving.record(session, alloc_id, {"state": "DEPLOYING", "replicas": 0}) is None
        row = session.query(EndpointRow).one()
        row.updated_at = utcnow() - timedelta(seconds=10)
    with db.session() as session:
        report = {"state": "RUNNING", "replicas": 2, "requests": 50, "tokens": 400}
        assert serving.record(session, alloc_id, report) == EndpointState.READY
    with db.session() as session:
        session.query(EndpointRow).one().updated_at = utcnow() - timedelta(seconds=10)
    with db.session() as session:
        report = {"state": "UNHEALTHY", "replicas": 1, "requests": 60, "tokens": 480}
        assert serving.record(session, alloc_id, report) == EndpointState.DEGRADED
        rates = measured_rates(session, [session.query(EndpointRow).one().job_id])
    (view,) = serving.endpoints(db)
    assert (view.state, view.replicas, view.requests, view.tokens) == ("DEGRADED", 1, 60, 480)
    assert view.request_rate == pytest.approx(5.0, rel=0.05)  # the peak, not the last 1/s
    assert list(rates.values()) == [view.request_rate]
    serving.close(db, alloc_id, EndpointState.STOPPED)
    assert serving.endpoints(db, live=True) == []
    assert serving.endpoints(db, live=False)[0].state == "STOPPED"
    db.dispose()
