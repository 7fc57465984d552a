"""The GCP target: the real google-cloud-compute client against the fake GCE server.

Faults are the server's own (capacity and quota as GCE reports them, HTTP errors whose
message echoes the canary secret); the server is reset before each test.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest

from providers.base import InstanceRecord
from tests.conformance.harness import CANARIES, Target

REGION = "us-central1"
ZONE = "us-central1-a"
INSTANCE_TYPE = "g2-standard-4"  # one L4
QUOTA_METRIC = "NVIDIA_L4_GPUS"
PLENTY = 10**6
ECHO = f"Request signed with {CANARIES['AWS_SECRET_ACCESS_KEY']} was refused."
HTTP_FAULTS = {"auth": 403, "throttle": 429, "server": 503}


@dataclass
class GcpCloud:
    server: Any
    provider: Any = None


@pytest.fixture(scope="session")
def gcp_cloud(tmp_path_factory: pytest.TempPathFactory) -> Iterator[GcpCloud]:
    from providers.gcp import create
    from providers.gcp.errors import RetryPolicy
    from tests.support.gce_server import serve_fake_gce

    with serve_fake_gce() as server:
        cloud = GcpCloud(server)
        cloud.provider = create(server.settings(tmp_path_factory.mktemp("gcp-conformance")))
        cloud.provider.retry = RetryPolicy(attempts=2, base_seconds=0.01, cap_seconds=0.02)
        yield cloud


def target(request: pytest.FixtureRequest) -> Iterator[Target]:
    cloud: GcpCloud = request.getfixturevalue("gcp_cloud")
    gce = cloud.server
    gce.reset()

    @contextlib.contextmanager
    def capacity(nodes: int) -> Iterator[None]:
        gce.set_capacity(ZONE, nodes, machine_type=INSTANCE_TYPE)
        try:
            yield
        finally:
            gce.set_capacity(ZONE, PLENTY, machine_type=INSTANCE_TYPE)

    @contextlib.contextmanager
    def no_quota() -> Iterator[None]:
        gce.set_quota(REGION, QUOTA_METRIC, 0)
        try:
            yield
        finally:
            gce.set_quota(REGION, QUOTA_METRIC, PLENTY)

    @contextlib.contextmanager
    def http_error(status: int, **where: Any) -> Iterator[None]:
        gce.fail_next(status, times=PLENTY, message=ECHO, **where)
        try:
            yield
        finally:
            with gce.lock:  # the server has no call to withdraw one fault: drop them all
                gce._faults.clear()

    def foreign() -> str:
        gce.add_instance(ZONE, "someone-elses-vm", labels={"team": "other"})
        return f"{ZONE}/someone-elses-vm"

    def metadata(record: InstanceRecord) -> dict[str, str]:
        zone, name, _ = record.instance_id.split("/")
        return dict(gce.metadata(zone, name))

    def ingress(request_id: str) -> list[str]:
        from providers.gcp.launch import request_stem

        stem = request_stem(request_id)
        rules = [rule for rule in gce.firewalls() if rule["name"].startswith(f"{stem}-")]
        return sorted(line for rule in rules for line in _rules(rule, stem))

    failures: dict[str, Any] = {
        "capacity": lambda: capacity(0),
        "quota": no_quota,
        **{kind: (lambda s=status: http_error(s)) for kind, status in HTTP_FAULTS.items()},
    }
    yield Target(
        name="gcp",
        provider=cloud.provider,
        region=REGION,
        zone=ZONE,
        instance_type=INSTANCE_TYPE,
        capacity_fault=lambda k: capacity(k - 1),
        failures=failures,
        lost_reply=lambda: http_error(503, method="POST", path="/instances", after=True),
        foreign=foreign,
        metadata=metadata,
        ingress=ingress,
    )


def _rules(rule: dict[str, Any], stem: str) -> list[str]:
    """A firewall rule in the words of ``Target.ingress``; one that reaches other instances
    than the request's (by network tag) says so."""
    if rule.get("targetTags") != [stem] or rule.get("direction") != "INGRESS":
        return [f"{rule['name']} reaches {rule.get('targetTags')}"]
    sources = [f"from {cidr}" for cidr in rule.get("sourceRanges", [])]
    sources += [f"from {'gang' if tag == stem else tag}" for tag in rule.get("sourceTags", [])]
    lines: list[str] = []
    for allowed in rule["allowed"]:
        protocol = allowed["IPProtocol"]
        opened = [f"{protocol}:{port}" for port in allowed.get("ports", [])] or [protocol]
        lines += [f"{what} {source}" for what in opened for source in sources]
    return lines
