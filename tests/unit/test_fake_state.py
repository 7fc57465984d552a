"""The fake cloud shared through a state file, and ``create(settings)`` from the environment."""

from __future__ import annotations

import json
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import pytest

from broker.config import load_settings
from broker.domain import InstanceState, Pricing
from broker.errors import ConfigError, OutOfCapacity
from providers import registry
from providers.base import LaunchRequest
from providers.fake import (
    FakeProvider,
    FaultPlan,
    LaunchFailure,
    Preemption,
    create,
    reset_process_cloud,
)

ROOT = Path(__file__).resolve().parents[2]


def request(request_id: str, nodes: int = 1) -> LaunchRequest:
    return LaunchRequest(request_id, "us-east-1", "us-east-1a", "fake-h100x8", nodes)


def test_two_providers_on_one_state_file_share_the_cloud(tmp_path: Path) -> None:
    path = tmp_path / "cloud.json"
    broker = FakeProvider(state_path=path)
    reconciler = FakeProvider(state_path=path)
    got = broker.launch(request("r", 3))
    assert [i.instance_id for i in reconciler.list_instances("gpubroker")] == [
        i.instance_id for i in got
    ]
    assert [i.instance_id for i in reconciler.launch(request("r", 3))] == [
        i.instance_id for i in got
    ]  # convergence holds across processes' views
    with pytest.raises(OutOfCapacity):
        reconciler.launch(request("other", 2))  # capacity is shared too
    reconciler.terminate([got[0].instance_id], "t")
    assert len(broker.list_instances("gpubroker")) == 2
    data = json.loads(path.read_text())
    assert data["format"] == 1
    states = sorted(item["state"] for item in data["instances"])
    assert states == ["RUNNING", "RUNNING", "TERMINATED", "TERMINATED"]  # one rolled back


def test_fault_counters_persist(tmp_path: Path) -> None:
    path = tmp_path / "cloud.json"
    plan = FaultPlan(launch_failures=(LaunchFailure("capacity"),), terminate_failures=1)
    with pytest.raises(OutOfCapacity):
        FakeProvider(state_path=path, faults=plan).launch(request("r"))
    restarted = FakeProvider(state_path=path, faults=plan)
    got = restarted.launch(request("r"))  # the one-shot fault already fired
    with pytest.raises(Exception, match="injected"):
        restarted.terminate([got[0].instance_id], "t")
    FakeProvider(state_path=path, faults=plan).terminate([got[0].instance_id], "t")
    assert restarted.list_instances("gpubroker") == []


def test_another_process_sees_the_same_cloud(tmp_path: Path) -> None:
    path = tmp_path / "cloud.json"
    script = (
        "from providers.base import LaunchRequest\n"
        "from providers.fake import FakeProvider\n"
        f"p = FakeProvider(state_path={str(path)!r})\n"
        "r = LaunchRequest('r', 'us-east-1', 'us-east-1a', 'fake-h100x8', 2)\n"
        "print(','.join(i.instance_id for i in p.launch(r)))\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True, check=True
    )
    ids = out.stdout.strip().split(",")
    here = FakeProvider(state_path=path)
    assert [i.instance_id for i in here.list_instances("gpubroker")] == ids
    assert [i.instance_id for i in here.launch(request("r", 2))] == ids


def test_create_reads_state_seed_and_faults_from_env(
    home: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "cloud.json"
    monkeypatch.setenv("GPUBROKER_FAKE_STATE", str(path))
    monkeypatch.setenv("GPUBROKER_FAKE_SEED", "5")
    faults = FaultPlan(
        throttle_rate=0.2,
        launch_failures=(LaunchFailure("auth", at_node=2, times=None),),
        preemptions=(Preemption(after_seconds=5.0, pricing=Pricing.SPOT),),
    )
    monkeypatch.setenv("GPUBROKER_FAKE_FAULTS", json.dumps(faults.to_dict()))
    provider = registry.launcher("fake", load_settings())
    assert isinstance(provider, FakeProvider)
    assert provider.seed == 5 and provider.faults == faults and provider.state_path == path
    provider.launch(request("r"))
    assert path.exists()


def test_create_uses_settings_extra_and_defaults(home: Path) -> None:
    settings = load_settings()
    plain = create(settings)
    assert plain.state_path is None and plain.seed == 0 and plain.faults == FaultPlan()
    extra = {"fake_seed": 9, "fake_faults": {"grant_at_most": 1}}
    tuned = create(replace(settings, extra=extra))
    assert tuned.seed == 9 and tuned.faults.grant_at_most == 1
    mine = FakeProvider(seed=4)
    assert create(replace(settings, extra={"fake_provider": mine})) is mine
    with pytest.raises(ConfigError, match="fake_provider"):
        create(replace(settings, extra={"fake_provider": object()}))


def test_providers_made_by_create_share_one_cloud_per_process(home: Path) -> None:
    reset_process_cloud()
    try:
        launched = create(load_settings()).launch(request("r", 2))
        other = registry.launcher("fake", load_settings())
        assert len(other.list_instances("gpubroker")) == 2
        other.terminate([i.instance_id for i in launched], "t")
        assert create(load_settings()).list_instances("gpubroker") == []
        assert FakeProvider().list_instances("gpubroker") == []  # a private cloud
    finally:
        reset_process_cloud()


@pytest.mark.parametrize(
    ("raw", "named"),
    [
        ("{not json", "GPUBROKER_FAKE_FAULTS: not valid JSON"),
        ('{"throttle": 0.3}', "unknown key 'throttle'"),
        ('{"throttle_rate": 2}', "throttle_rate must be in [0, 1)"),
        ('{"launch_failures": [{"kind": "boom"}]}', "launch_failures[0]: kind must be one of"),
        ('{"preemptions": [{"zone": "a"}]}', "preemptions[0]: give exactly one of"),
        ("[1]", "must be a JSON object"),
    ],
)
def test_bad_fault_json_names_the_key(
    home: Path, monkeypatch: pytest.MonkeyPatch, raw: str, named: str
) -> None:
    monkeypatch.setenv("GPUBROKER_FAKE_FAULTS", raw)
    with pytest.raises(ConfigError) as err:
        create(load_settings())
    assert named in str(err.value)


def test_bad_seed_and_state_file(
    home: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("GPUBROKER_FAKE_SEED", "abc")
    with pytest.raises(ConfigError, match="GPUBROKER_FAKE_SEED: must be an integer"):
        create(load_settings())
    broken = tmp_path / "cloud.json"
    broken.write_text("[]")
    with pytest.raises(ConfigError, match="not a fake cloud state file"):
        FakeProvider(state_path=broken).list_instances("gpubroker")


def test_preempted_state_round_trips(tmp_path: Path) -> None:
    path = tmp_path / "cloud.json"
    first = FakeProvider(state_path=path)
    ids = [i.instance_id for i in first.launch(request("r", 2))]
    assert first.preempt(ids[:1]) == ids[:1]
    states = {i.instance_id: i.state for i in FakeProvider(state_path=path).instances()}
    assert states == {ids[0]: InstanceState.PREEMPTED, ids[1]: InstanceState.RUNNING}
