"""Serving on real local nodes: the nodes boot Ray from their script, the job deploys the
bundled GPT as a Ray Serve application on them, and its endpoint answers ``POST /generate``
with the weights of a finished training job; a lost worker node does not stop it, and a
cancel drains it, tears the nodes down and meters every node it ran on."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import pytest
import yaml
from sqlalchemy import select

from broker.config import load_settings
from broker.db.engine import Database
from broker.db.models import InstanceRow, JobRow, UsageRow
from broker.domain import InstanceState, JobState
from broker.services.execution.run_context import run_dir
from broker.services.jobs import store as jobs
from providers.base import TAG_NODE
from providers.local import LocalProvider, processes

pytestmark = pytest.mark.ray
REPO = Path(__file__).resolve().parents[2]
GPUBROKER = str(Path(sys.executable).with_name("gpubroker"))
SERVE_PORT = 8011
PROMPT = "The broker plans the fleet"


def _env(home: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("GPUBROKER_", "RAY_"))}
    env.update(
        GPUBROKER_HOME=str(home),
        GPUBROKER_RAY_PORT="6450",
        GPUBROKER_SERVE_PORT=str(SERVE_PORT),
        GPUBROKER_LOCAL_NODES="2",
    )
    return env


def _cli(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [GPUBROKER, *args], env=env, capture_output=True, text=True, timeout=120, check=False
    )


def _trained_job(db: Database, settings: Any) -> tuple[int, Any]:
    """A finished training job of the tiny GPT with a checkpoint of known weights."""
    import torch

    from workloads.gpt import build_model
    from workloads.spec import load_spec
    from workloads.train import CHECKPOINT_FILE, META_FILE

    spec = load_spec(REPO / "examples" / "gpt-tiny-local.yaml")
    job_id = jobs.submit(db, spec).id
    with db.session() as session:
        session.get(JobRow, job_id).state = JobState.SUCCEEDED.value  # as if it had trained
    torch.manual_seed(1234)
    model = build_model(spec.model.gpt_config())
    folder = run_dir(settings, job_id) / "run" / "checkpoint_000001"
    folder.mkdir(parents=True)
    torch.save({"model": model.state_dict(), "step": 300}, folder / CHECKPOINT_FILE)
    (folder / META_FILE).write_text(json.dumps({"step": 300, "tokens": 0}))
    return job_id, model.eval()


def _post(body: Any, timeout: float = 30.0) -> tuple[int, dict[str, Any]]:
    request = urllib.request.Request(
        f"http://127.0.0.2:{SERVE_PORT}/generate",
        data=json.dumps(body).encode(),
        headers={"content-type": "application/json"},
    )
    try:
        with urllib.request.urlopen(request, timeout=timeout) as answer:
            return answer.status, json.loads(answer.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


def _endpoint(env: dict[str, str]) -> dict[str, Any] | None:
    done = _cli(env, "endpoints", "--all", "--format", "json")
    assert done.returncode == 0, done.stderr
    rows = json.loads(done.stdout)
    return rows[0] if rows else None


def _wait_for(what: str, check: Any, timeout: float) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = check()
        if value:
            return value
        time.sleep(1.0)
    raise AssertionError(f"timed out waiting for {what}")


def test_a_trained_gpt_is_served_survives_a_lost_node_and_stops_cleanly(tmp_path: Path) -> None:
    from workloads.gpt import encode
    from workloads.serve_gpt import generate

    home = tmp_path / "home"
    env = _env(home)
    settings = load_settings(env)
    db = Database(settings.database_url)
    trained, model = _trained_job(db, settings)
    spec = yaml.safe_load((REPO / "examples" / "gpt-tiny-serve.yaml").read_text())
    spec.pop("model")
    spec["model_from"] = f"job:{trained}"
    spec_path = tmp_path / "serve.yaml"
    spec_path.write_text(yaml.safe_dump(spec))
    submit = subprocess.Popen(
        [GPUBROKER, "submit", str(spec_path), "--wait"],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        ready = _wait_for(
            "a READY endpoint",
            lambda: (e := _endpoint(env)) and e["state"] == "READY" and e,
            300,
        )
        assert ready["url"] == f"http://127.0.0.2:{SERVE_PORT}"
        assert ready["area"] == "anywhere" and ready["replicas"] == 2
        serving_job = ready["job_id"]

        # The answer is the trained weights' greedy continuation, token for token.
        status, body = _post({"prompt": PROMPT, "max_tokens": 12})
        assert status == 200, body
        expected = generate(model, model.config.seq_len, [(encode(PROMPT), 12)])[0]
        assert body["tokens"] == 12
        assert body["text"] == bytes(expected).decode("utf-8", errors="replace")
        status, body = _post({"prompt": PROMPT, "max_tokens": "many"})
        assert status == 400 and body["error"].startswith("max_tokens:")

        answers: list[int] = []

        def ask() -> None:
            answers.append(_post({"prompt": "x", "max_tokens": 4})[0])

        threads = [threading.Thread(target=ask) for _ in range(12)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        assert answers == [200] * 12

        # The worker node is taken away: the head keeps answering.
        local = LocalProvider(settings)
        listed = local.list_instances(settings.owner_tag)
        worker = next(r for r in listed if r.tags.get(TAG_NODE) == "1")
        local.preempt(worker.instance_id)
        _wait_for(
            "the lost node to be recorded",
            lambda: any(e.kind == "node_lost" for e in jobs.events(db, serving_job)),
            60,
        )
        answered = lambda: _post({"prompt": "y", "max_tokens": 4})[0] == 200  # noqa: E731
        _wait_for("an answer after the loss", answered, 60)
        assert jobs.get(db, serving_job).state is JobState.RUNNING

        cancelled = _cli(env, "cancel", str(serving_job))
        assert cancelled.returncode == 0, cancelled.stderr
        output, _ = submit.communicate(timeout=120)
        assert "CANCELLED" in output, output
    finally:
        if submit.poll() is None:
            submit.kill()
            submit.wait()
    endpoint = _endpoint(env)
    assert endpoint is not None and endpoint["state"] == "STOPPED" and endpoint["replicas"] == 0
    assert endpoint["requests"] >= 14 and endpoint["tokens"] >= 12 + 12 * 4
    with db.session() as session:
        nodes = list(session.scalars(select(InstanceRow)))
        usage = list(session.scalars(select(UsageRow).where(UsageRow.job_id == serving_job)))
    assert len(nodes) == 2 and {n.state for n in nodes} == {InstanceState.TERMINATED.value}
    assert sorted(u.instance_id for u in usage) == sorted(n.id for n in nodes)
    state = json.loads((home / "local" / "instances.json").read_text())
    marks = [raw["temp_dir"] for raw in state["instances"].values() if raw.get("temp_dir")]
    assert processes.marked(marks) == []
    assert local.list_instances(settings.owner_tag) == []
    db.dispose()
