"""Two installations (two databases) on one cloud account never touch each other's nodes.

The fake provider's shared state file stands in for the account: both installations see
every instance in it, under the same owner tag.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from broker.config import Settings, load_settings
from broker.db.engine import Database
from broker.domain import InstanceState, JobState
from broker.services.daemon import Daemon, TickReport
from broker.services.execution import provision
from broker.services.execution.executor import run_allocation
from broker.services.execution.monitor import Monitor
from broker.services.execution.provision import request_id_for
from broker.services.execution.reconcile import (
    Foreign,
    Listing,
    ReconcileReport,
    Terminate,
    decide,
    reconcile,
)
from broker.services.execution.run_context import Outcome, RunContext
from providers.base import TAG_INSTALLATION, TAG_REQUEST, InstanceRecord
from providers.fake import FakeProvider
from tests.support.execution import plan_allocation, submit

FAKE_POOL = {
    "provider": "fake",
    "region": "us-east-1",
    "zone": "us-east-1a",
    "instance_type": "fake-l4x1",
}


def _installation(root: Path, name: str) -> tuple[Database, Settings]:
    home = root / name
    settings = load_settings({"GPUBROKER_HOME": str(home)})
    return Database(settings.database_url), settings


def _live(state_file: Path) -> list[InstanceRecord]:
    cloud = FakeProvider(state_path=state_file)
    return [r for r in cloud.list_instances("gpubroker") if r.state is InstanceState.RUNNING]


class _Holding:
    """A runner that, while installation A's nodes run, lets installation B launch, run and
    reconcile on the same cloud; it records what B saw."""

    needs_cluster = False

    def __init__(self, during: object) -> None:
        self.during = during

    def __call__(self, ctx: RunContext, monitor: Monitor) -> Outcome:
        self.during()  # type: ignore[operator]
        return Outcome(ok=True)


def _quick(ctx: RunContext, monitor: Monitor) -> Outcome:
    return Outcome(ok=True)


_quick.needs_cluster = False  # type: ignore[attr-defined]


def test_two_installations_on_one_fake_cloud(
    home: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    state_file = tmp_path / "cloud.json"
    monkeypatch.setenv("GPUBROKER_FAKE_STATE", str(state_file))
    monkeypatch.setattr(provision, "POLL_S", 0.01)
    db_a, settings_a = _installation(tmp_path, "a")
    db_b, settings_b = _installation(tmp_path, "b")
    assert db_a.installation_id != db_b.installation_id
    assert len(db_a.installation_id) == 16 and db_a.installation_id == db_a.installation_id

    constraints = {"providers": ["fake"]}
    job_a = submit(db_a, nodes=2, constraints=constraints)
    alloc_a = plan_allocation(db_a, job_a, nodes=2, **FAKE_POOL)
    job_b = submit(db_b, nodes=2, constraints=constraints)
    alloc_b = plan_allocation(db_b, job_b, nodes=2, **FAKE_POOL)
    assert alloc_a == alloc_b  # fresh databases number their allocations alike
    seen: dict[str, object] = {}

    def while_a_runs() -> None:
        a_nodes = {r.instance_id for r in _live(state_file)}
        seen["a_nodes"] = a_nodes
        # B reconciles with no job of its own yet: A's running nodes are foreign to it.
        first = reconcile(db_b, settings_b, ["fake"])
        seen["b_first"] = first
        # B launches its allocation with the same number: it must create its own nodes.
        seen["b_state"] = run_allocation(db_b, settings_b, alloc_b, runner=_quick)
        seen["b_second"] = reconcile(db_b, settings_b, ["fake"])
        seen["b_tick"] = Daemon(db_b, settings_b, interval=1.0).tick()  # its leader reconciles
        seen["a_after"] = {r.instance_id for r in _live(state_file)}

    state_a = run_allocation(db_a, settings_a, alloc_a, runner=_Holding(while_a_runs))

    from broker.services.jobs import store as jobs

    assert state_a is JobState.SUCCEEDED, jobs.get(db_a, job_a).message
    assert seen["b_state"] is JobState.SUCCEEDED
    a_nodes = seen["a_nodes"]
    assert isinstance(a_nodes, set) and len(a_nodes) == 2
    first, second = seen["b_first"], seen["b_second"]
    assert isinstance(first, ReconcileReport) and isinstance(second, ReconcileReport)
    assert first.terminated == [] and first.errors == []  # 0 foreign terminated
    assert sorted(first.foreign) == sorted(f"fake:{i}" for i in a_nodes)
    assert second.terminated == [] and sorted(second.foreign) == sorted(first.foreign)
    tick = seen["b_tick"]
    assert isinstance(tick, TickReport) and tick.reconciled and tick.errors == []
    assert tick.foreign == 2 and "foreign=2" in tick.summary()
    assert seen["a_after"] == a_nodes  # B's launch adopted none of A's nodes, ended none

    cloud = FakeProvider(state_path=state_file)
    everything = cloud.instances()
    assert len(everything) == 4
    by_installation: dict[str | None, set[str]] = {}
    for record in everything:
        by_installation.setdefault(record.tags.get(TAG_INSTALLATION), set()).add(
            record.tags[TAG_REQUEST]
        )
    # Four nodes in all, two per installation, under request ids that differ.
    assert set(by_installation) == {db_a.installation_id, db_b.installation_id}
    assert by_installation[db_a.installation_id].isdisjoint(by_installation[db_b.installation_id])
    assert _live(state_file) == []  # each ended only its own nodes, and all of them
    db_a.dispose()
    db_b.dispose()


def test_an_instance_without_our_installation_id_is_foreign() -> None:
    def node(instance: str, installation: str | None) -> InstanceRecord:
        tags = {TAG_REQUEST: "r"} | ({TAG_INSTALLATION: installation} if installation else {})
        return InstanceRecord("fake", instance, "r", "z", "t", InstanceState.RUNNING, tags=tags)

    listed = Listing("fake", (node("i-1", "aaaa"), node("i-2", "bbbb"), node("i-3", None)))
    # i-1 is ours and nothing owns it: a stray; the other two are only counted.
    assert decide([], [listed], [], "aaaa") == [
        Terminate("fake", "r", ("i-1",)),
        Foreign("fake", ("i-2", "i-3")),
    ]


def test_two_installations_send_different_client_tokens_on_moto(
    aws_provider: object, aws_settings: Settings, tmp_path: Path
) -> None:
    from providers.base import LaunchRequest

    tokens: list[str] = []

    def observe(params: dict[str, object], **kwargs: object) -> None:
        tokens.append(str(params["ClientToken"]))

    aws_provider.register_event("provide-client-params.ec2.RunInstances", observe)  # type: ignore[attr-defined]
    launched: dict[str, set[str]] = {}
    for name in ("a", "b"):
        db, _ = _installation(tmp_path, name)
        request = LaunchRequest(
            request_id=request_id_for(db, aws_settings, 1),  # allocation 1 in both
            region="us-east-1",
            zone="us-east-1b",
            instance_type="g5.xlarge",
            nodes=2,
            owner=aws_settings.owner_tag,
            installation=db.installation_id,
        )
        records = aws_provider.launch(request)  # type: ignore[attr-defined]
        launched[db.installation_id] = {r.instance_id for r in records}
        db.dispose()
    assert len(tokens) == 4 and len(set(tokens)) == 4
    (a, ids_a), (_, ids_b) = launched.items()
    assert len(ids_a) == 2 and len(ids_b) == 2 and ids_a.isdisjoint(ids_b)  # none adopted
    listed = aws_provider.list_instances(aws_settings.owner_tag)  # type: ignore[attr-defined]
    actions = decide([], [Listing("aws", tuple(listed))], [], a)  # a knows no allocation now
    ours = {i for x in actions if isinstance(x, Terminate) for i in x.instance_ids}
    foreign = {i for x in actions if isinstance(x, Foreign) for i in x.instance_ids}
    assert ours == ids_a and foreign == ids_b
