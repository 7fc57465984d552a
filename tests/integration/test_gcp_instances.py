"""GCP launch, list and terminate through the real google-cloud-compute client and the
fake GCE: convergence, gangs, idempotency, typed errors and no secret in any message."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest

from broker.domain import InstanceState, Pricing
from broker.errors import (
    AuthError,
    BrokerError,
    OutOfCapacity,
    ProviderError,
    QuotaExceeded,
    Throttled,
)
from providers.base import META_HEAD, TAG_NODE, TAG_OWNER, LaunchRequest, request_tags
from providers.gcp import create
from providers.gcp.errors import RetryPolicy
from providers.gcp.launch import TAGS_METADATA_KEY, instance_name, labels_for, request_stem
from providers.gcp.provider import GcpProvider
from tests.support.gce_server import FakeGce

FAST = RetryPolicy(attempts=4, base_seconds=0.001, cap_seconds=0.005)
CANARY = "CANARY-7f3e9d-gcp-secret"


@pytest.fixture
def provider(gce: FakeGce, home: Path) -> GcpProvider:
    made = create(gce.settings(home))
    made.retry = FAST
    return made


def _req(request_id: str = "alloc-1", **overrides: object) -> LaunchRequest:
    fields: dict[str, object] = {
        "request_id": request_id,
        "region": "us-central1",
        "zone": "us-central1-a",
        "instance_type": "a3-highgpu-8g",
        "nodes": 2,
        "owner": "team-a",
        "tags": {"gpubroker-job": "17", "gpubroker-allocation": "42"},
    }
    fields.update(overrides)
    return LaunchRequest(**fields)  # type: ignore[arg-type]


def _posts(gce: FakeGce, suffix: str = "/instances") -> int:
    return len([p for m, p, _ in gce.requests if m == "POST" and p.endswith(suffix)])


def stored_ip(gce: FakeGce, record: object) -> str:
    """The networkIP the fake GCE holds for the record's instance."""
    name = str(getattr(record, "instance_id", "")).split("/")[1]
    [stored] = [item for item in gce.instances() if item["name"] == name]
    return str(stored["networkInterfaces"][0]["networkIP"])


def test_gang_launch_makes_labelled_spot_nodes_in_a_compact_policy(gce, provider):
    records = provider.launch(_req(pricing=Pricing.SPOT, user_data="#!/bin/sh\ntrue"))
    assert [r.node_index for r in records] == [0, 1]
    assert all(r.state is InstanceState.RUNNING and r.pricing is Pricing.SPOT for r in records)
    assert records[0].request_id == "alloc-1" and records[0].tags[TAG_OWNER] == "team-a"
    assert records[0].zone == "us-central1-a" and records[0].instance_type == "a3-highgpu-8g"
    assert records[0].address and records[0].launched_at is not None
    assert records[0].private_address == stored_ip(gce, records[0])
    assert records[0].address != records[0].private_address  # the NAT address
    stored = sorted(gce.instances(), key=lambda item: item["name"])
    assert [item["name"] for item in stored] == [instance_name("alloc-1", n) for n in (0, 1)]
    first = stored[0]
    assert first["scheduling"]["provisioningModel"] == "SPOT"
    assert first["scheduling"]["onHostMaintenance"] == "TERMINATE"
    assert first["labels"]["gpubroker-owner"] == "team-a"
    assert first["labels"]["gpubroker-node"] == "0"
    items = {item["key"]: item["value"] for item in first["metadata"]["items"]}
    assert items["startup-script"] == "#!/bin/sh\ntrue"
    assert items[TAG_NODE] == "0"
    assert "tags" not in first and gce.firewalls() == []  # no ingress asked, none opened
    assert json.loads(items[TAGS_METADATA_KEY])["gpubroker-allocation"] == "42"
    [policy] = gce.policies()
    assert policy["groupPlacementPolicy"]["collocation"] == "COLLOCATED"
    assert all(item["resourcePolicies"][0].endswith("/" + policy["name"]) for item in stored)
    inserts = [q for m, p, q in gce.requests if m == "POST" and p.endswith("/instances")]
    assert len({q["requestId"] for q in inserts}) == 2  # one requestId per node


def test_same_request_twice_never_doubles_nodes(gce, provider):
    first = provider.launch(_req())
    posts = _posts(gce)
    again = provider.launch(_req())
    assert [r.instance_id for r in again] == [r.instance_id for r in first]
    assert len(gce.instances()) == 2 and _posts(gce) == posts


def test_relaunch_creates_only_the_missing_node(gce, provider):
    records = provider.launch(_req(nodes=3, instance_type="a2-highgpu-1g"))
    provider.terminate([records[1].instance_id], "shrink")
    posts = _posts(gce)
    again = provider.launch(_req(nodes=3, instance_type="a2-highgpu-1g"))
    assert [r.node_index for r in again] == [0, 1, 2]
    assert _posts(gce) - posts >= 1 and len(gce.instances()) == 3
    assert again[0].instance_id == records[0].instance_id
    assert again[1].instance_id != records[1].instance_id  # a new instance, same name
    provider.terminate([records[1].instance_id], "stale")  # the old id: already gone
    assert len(gce.instances()) == 3


def test_lost_reply_is_retried_with_the_same_request_id(gce, provider):
    gce.fail_next(503, method="POST", path="/instances", after=True)
    records = provider.launch(_req(nodes=1))
    assert len(records) == 1 and len(gce.instances()) == 1
    inserts = [
        q["requestId"] for m, p, q in gce.requests if m == "POST" and p.endswith("/instances")
    ]
    assert len(inserts) == 2 and inserts[0] == inserts[1]


def test_conflict_on_an_unlisted_existing_node_counts_as_created(gce, provider):
    req = _req(nodes=1)
    tags = request_tags(req, 0)
    gce.add_instance(
        "us-central1-a",
        instance_name(req.request_id, 0),
        labels_for(tags),
        machine_type="a3-highgpu-8g",
        metadata={TAGS_METADATA_KEY: json.dumps(tags)},
    )
    gce.lag_listing(1)  # the first listing misses it, so the insert meets a 409
    records = provider.launch(req)
    assert len(records) == 1 and records[0].request_id == req.request_id
    assert len(gce.instances()) == 1 and _posts(gce) == 1


def test_gang_is_all_or_nothing_when_the_zone_runs_out(gce, provider):
    gce.set_capacity("us-central1-c", 2, machine_type="a2-highgpu-8g")
    with pytest.raises(OutOfCapacity) as caught:
        provider.launch(_req(zone="us-central1-c", instance_type="a2-highgpu-8g", nodes=3))
    assert caught.value.zone == "us-central1-c"
    assert gce.instances() == [] and gce.policies() == []
    assert provider.list_instances("team-a") == []
    gce.clear_capacity()  # the same request succeeds whole once capacity is back
    again = provider.launch(_req(zone="us-central1-c", instance_type="a2-highgpu-8g", nodes=3))
    assert [r.node_index for r in again] == [0, 1, 2] and len(gce.instances()) == 3


def test_capacity_refused_outright_is_out_of_capacity_too(gce, provider):
    gce.set_capacity("us-central1-a", 0, mode="http")
    with pytest.raises(OutOfCapacity) as caught:
        provider.launch(_req(nodes=1, instance_type="g2-standard-8"))
    assert caught.value.zone == "us-central1-a"
    assert _posts(gce) == 1  # not retried like a plain 503


def test_non_gang_keeps_a_partial_grant(gce, provider):
    gce.set_capacity("us-central1-a", 1, machine_type="g2-standard-8")
    records = provider.launch(_req(nodes=2, instance_type="g2-standard-8", gang=False))
    assert len(records) == 1 and len(gce.instances()) == 1


def test_quota_exceeded_names_the_quota_and_cleans_up(gce, provider):
    gce.set_quota("us-central1", "NVIDIA_H100_GPUS", 8)
    with pytest.raises(QuotaExceeded) as caught:
        provider.launch(_req(nodes=2))
    assert caught.value.quota == "NVIDIA_H100_GPUS"
    assert gce.instances() == []


def test_n1_shape_attaches_guest_accelerators(gce, provider):
    [record] = provider.launch(
        _req(nodes=1, zone=None, instance_type="n1-standard-16+2xnvidia-tesla-t4")
    )
    assert record.instance_type == "n1-standard-16+2xnvidia-tesla-t4"
    [stored] = gce.instances()
    assert stored["machineType"].endswith("/machineTypes/n1-standard-16")
    assert stored["guestAccelerators"][0]["acceleratorCount"] == 2
    assert stored["guestAccelerators"][0]["acceleratorType"].endswith("/nvidia-tesla-t4")
    assert gce.policies() == []  # single node: no placement policy


def test_slow_operations_are_polled_until_done(gce, provider):
    gce.op_polls = 4
    records = provider.launch(_req(nodes=1))
    assert records[0].state is InstanceState.RUNNING
    waits = [p for m, p, _ in gce.requests if p.endswith("/wait")]
    assert len(waits) >= 4


def test_list_instances_sees_exactly_ours(gce, provider):
    provider.launch(_req(nodes=1))
    provider.launch(_req("other", nodes=1, owner="team-b"))
    gce.add_instance("us-central1-b", "someone-else", {"env": "prod"})
    mine = provider.list_instances("team-a")
    assert [r.request_id for r in mine] == ["alloc-1"]
    assert [r.request_id for r in provider.list_instances("team-b")] == ["other"]


def test_odd_tag_values_survive_as_labels_and_come_back_exactly(gce, provider):
    req = _req("Alloc:42/Retry.2", nodes=1, owner="Team A", tags={"Cost Center": "R&D/9"})
    [record] = provider.launch(req)
    assert record.tags["Cost Center"] == "R&D/9" and record.request_id == "Alloc:42/Retry.2"
    assert [r.instance_id for r in provider.list_instances("Team A")] == [record.instance_id]
    again = provider.launch(req)
    assert [r.instance_id for r in again] == [record.instance_id]


def test_terminate_is_idempotent_and_removes_the_policy(gce, provider):
    records = provider.launch(_req())
    ids = [r.instance_id for r in records]
    provider.terminate(ids, "end-1")
    assert gce.instances() == [] and gce.policies() == []
    provider.terminate(ids, "end-1")
    provider.terminate(["us-central1-a/never-was"], "end-2")
    assert provider.list_instances("team-a") == []


def test_throttled_insert_is_retried_then_succeeds(gce, provider):
    gce.fail_next(429, times=2, method="POST", path="/instances")
    records = provider.launch(_req(nodes=1))
    assert len(records) == 1 and _posts(gce) == 3


def test_persistent_throttling_becomes_throttled(gce, provider):
    gce.fail_next(429, times=10, method="POST", path="/instances")
    with pytest.raises(Throttled):
        provider.launch(_req(nodes=1))
    assert _posts(gce) == 4 and gce.instances() == []


@pytest.mark.parametrize(("status", "kind"), [(401, AuthError), (403, AuthError), (500, Throttled)])
def test_failures_arrive_typed_and_without_secrets(gce, provider, caplog, status, kind):
    caplog.set_level(logging.DEBUG)
    gce.fail_next(
        status,
        times=10,
        method="POST",
        path="/instances",
        message=f"denied: token {CANARY} for project {gce.project}",
    )
    with pytest.raises(BrokerError) as caught:
        provider.launch(
            _req(nodes=1, user_data=f"export KEY={CANARY}", tags={"note": CANARY.lower()})
        )
    error = caught.value
    assert isinstance(error, kind)
    assert CANARY not in str(error) and CANARY.lower() not in str(error)
    assert gce.project not in str(error)  # server text never crosses over
    assert error.__cause__ is None and error.__context__ is None
    assert CANARY not in caplog.text


def test_bad_request_is_a_provider_error(gce, provider):
    with pytest.raises(ProviderError) as caught:
        provider.launch(_req(nodes=1, zone="us-central1-b", instance_type="a3-highgpu-8g"))
    assert "HTTP 400" in str(caught.value)
    with pytest.raises(ProviderError):
        provider.launch(_req(nodes=1, zone=None, region="us-east4", instance_type="a2-highgpu-8g"))


OPEN = {"ingress_cidr": "203.0.113.0/24", "ports": (8265, 6390)}


def test_ingress_rules_reach_only_the_request_nodes_and_go_with_the_last(gce, provider):
    records = provider.launch(_req("open-1", instance_type="g2-standard-4", **OPEN))
    stem = request_stem("open-1")
    rules = {rule["name"]: rule for rule in gce.firewalls()}
    assert set(rules) == {f"{stem}-ingress", f"{stem}-internal"}
    ingress, internal = rules[f"{stem}-ingress"], rules[f"{stem}-internal"]
    assert ingress["allowed"] == [{"IPProtocol": "tcp", "ports": ["6390", "8265"]}]
    assert ingress["sourceRanges"] == ["203.0.113.0/24"] and ingress["targetTags"] == [stem]
    assert internal["allowed"] == [{"IPProtocol": "all"}]
    assert internal["sourceTags"] == internal["targetTags"] == [stem]
    assert all(rule["network"].endswith("/global/networks/default") for rule in rules.values())
    assert all(item["tags"]["items"] == [stem] for item in gce.instances())
    assert any("/global/operations/" in p for m, p, _ in gce.requests if m == "POST")
    provider.terminate([records[0].instance_id], "open-1")
    assert len(gce.firewalls()) == 2  # node 1 still runs behind them
    provider.terminate([records[1].instance_id], "open-1")
    assert gce.firewalls() == []


def test_a_launch_that_makes_no_node_leaves_no_rules(gce, provider):
    gce.set_capacity("us-central1-a", 0, machine_type="g2-standard-4")
    with pytest.raises(OutOfCapacity):
        provider.launch(_req("open-2", instance_type="g2-standard-4", nodes=1, **OPEN))
    assert gce.instances() == [] and gce.firewalls() == []


def test_set_metadata_merges_under_the_fingerprint_and_reads_again_when_stale(gce, provider):
    from google.api_core import exceptions as api
    from google.cloud import compute_v1

    records = provider.launch(_req("meta-1", instance_type="g2-standard-4", user_data="true"))
    ids = [r.instance_id for r in records]
    head = {META_HEAD: str(records[0].private_address)}
    gce.fail_next(412, method="POST", path="/setMetadata")  # someone wrote in between
    provider.set_metadata(ids, head)
    assert _posts(gce, "/setMetadata") == 3
    for record in records:
        zone, name, _ = record.instance_id.split("/")
        items = gce.metadata(zone, name)
        assert items[META_HEAD] == head[META_HEAD] and items[TAG_NODE] == str(record.node_index)
        assert items["startup-script"] == "true" and TAGS_METADATA_KEY in items
    provider.set_metadata(ids, head)  # in place already: no write
    assert _posts(gce, "/setMetadata") == 3
    zone, name, _ = ids[0].split("/")
    with pytest.raises(api.PreconditionFailed):  # the server itself refuses a stale write
        provider.session.compute("InstancesClient").set_metadata_unary(
            project=gce.project,
            zone=zone,
            instance=name,
            metadata_resource=compute_v1.Metadata(fingerprint="stale=", items=[]),
        )
    provider.terminate(ids[:1], "meta-1")
    with pytest.raises(ProviderError):
        provider.set_metadata(ids[:1], head)


def test_network_ips_come_from_the_subnet_in_order_and_are_never_shared(gce, provider):
    gce.set_subnet("10.77.0.0/29")  # .2 to .5
    req = _req("ip-1", instance_type="g2-standard-4", nodes=3)
    first = provider.launch(req)
    assert [r.private_address for r in first] == ["10.77.0.2", "10.77.0.3", "10.77.0.4"]
    provider.terminate([first[1].instance_id], "ip-1")
    assert provider.launch(req)[1].private_address == "10.77.0.5"
    provider.terminate([first[2].instance_id], "ip-1")
    # The next address wraps around past .2, which node 0 still holds.
    assert provider.launch(req)[2].private_address == "10.77.0.3"
