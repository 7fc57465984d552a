"""GCP offers, quotas and check through the real google-cloud clients and the fake GCE."""

from __future__ import annotations

from decimal import Decimal
from pathlib import Path

import pytest

from broker.domain import Fabric, Pricing
from broker.errors import AuthError, BrokerError, ProviderError, Throttled
from providers.base import LaunchRequest, OfferRecord
from providers.gcp import create
from providers.gcp.errors import RetryPolicy
from providers.gcp.provider import GcpProvider
from tests.support.gce_server import FakeGce

FAST = RetryPolicy(attempts=4, base_seconds=0.001, cap_seconds=0.005)


@pytest.fixture
def provider(gce: FakeGce, home: Path) -> GcpProvider:
    made = create(gce.settings(home))
    made.retry = FAST
    return made


@pytest.fixture(scope="module")
def central_offers(
    gce_server: FakeGce, tmp_path_factory: pytest.TempPathFactory
) -> list[OfferRecord]:
    gce_server.reset()
    made = create(gce_server.settings(tmp_path_factory.mktemp("home")))
    return list(made.list_offers(["us-central1"]))


def _find(
    offers: list[OfferRecord], zone: str, instance_type: str, pricing: Pricing
) -> OfferRecord:
    hits = [
        o
        for o in offers
        if o.zone == zone and o.instance_type == instance_type and o.pricing is pricing
    ]
    assert len(hits) == 1, (zone, instance_type, pricing, len(hits))
    return hits[0]


def test_a3_highgpu_8g_is_eight_h100_with_tcpx_priced_host_plus_gpu(central_offers):
    offer = _find(central_offers, "us-central1-a", "a3-highgpu-8g", Pricing.ON_DEMAND)
    assert (offer.provider, offer.region, offer.source) == ("gcp", "us-central1", "gcp-api")
    assert (offer.gpu, offer.gpus_per_node, offer.gpu_memory_gib) == ("nvidia-h100-80gb", 8, 80)
    assert (offer.vcpus, offer.memory_gib) == (208, 1872)
    assert offer.rdma is Fabric.TCPX and offer.interconnect_gbps == 1000 and offer.nvlink
    # 208 x A3 core (Iowa) + 1872 GiB x A3 RAM (Iowa) + 8 x H100 (Americas)
    assert offer.price_per_hour == Decimal("88.251781")
    spot = _find(central_offers, "us-central1-a", "a3-highgpu-8g", Pricing.SPOT)
    assert spot.price_per_hour == Decimal("21.235312")  # 208*.00715 + 1872*.000921 + 8*2.253
    assert offer.as_of is not None and offer.as_of.tzinfo is not None


def test_a2_and_g2_shapes_compose_from_their_family_skus(central_offers):
    a2 = _find(central_offers, "us-central1-b", "a2-highgpu-8g", Pricing.ON_DEMAND)
    assert a2.gpu == "nvidia-tesla-a100" and a2.gpus_per_node == 8 and a2.rdma is Fabric.NONE
    assert a2.price_per_hour == Decimal("29.387080")  # 96*.031611 + 680*.004237 + 8*2.933908
    g2 = _find(central_offers, "us-central1-a", "g2-standard-4", Pricing.ON_DEMAND)
    assert (g2.gpu, g2.gpus_per_node) == ("nvidia-l4", 1)
    assert g2.price_per_hour == Decimal("0.706784")  # 4*.024988 + 16*.002927 + .56
    small = _find(central_offers, "us-central1-a", "a3-highgpu-1g", Pricing.ON_DEMAND)
    assert small.rdma is Fabric.NONE  # GPUDirect-TCPX needs the 8-GPU shape


def test_n1_takes_attachable_gpus_up_to_the_zone_card_limit(central_offers):
    t4 = sorted(
        o.gpus_per_node
        for o in central_offers
        if o.zone == "us-central1-a"
        and o.gpu == "nvidia-tesla-t4"
        and o.pricing is Pricing.ON_DEMAND
    )
    assert t4 == [1, 2, 4]  # maximumCardsPerInstance is 4 for T4
    v100 = _find(
        central_offers, "us-central1-a", "n1-standard-64+8xnvidia-tesla-v100", Pricing.ON_DEMAND
    )
    assert v100.vcpus == 64 and v100.nvlink
    t4x1 = _find(
        central_offers, "us-central1-a", "n1-standard-8+1xnvidia-tesla-t4", Pricing.ON_DEMAND
    )
    assert t4x1.price_per_hour == Decimal("0.729998")  # 8*.031611 + 30*.004237 + .35
    # plain CPU machine types and GPUs the zone lacks give no offer
    assert not [o for o in central_offers if o.instance_type.startswith(("e2-", "n2-"))]
    assert not [
        o for o in central_offers if o.zone == "us-central1-b" and o.gpu == "nvidia-h100-80gb"
    ]


def test_region_filter_and_paging(gce: FakeGce, provider: GcpProvider):
    gce.page_size = 4
    offers = list(provider.list_offers(["us-east4"]))
    assert {o.region for o in offers} == {"us-east4"}
    assert {o.zone for o in offers} == {"us-east4-a", "us-east4-b", "us-east4-c"}
    tokens = [q for m, p, q in gce.requests if p.endswith("/skus") and q.get("pageToken")]
    assert tokens, "SKUs should have been paged"
    machine_calls = [q for m, p, q in gce.requests if p.endswith("/aggregated/machineTypes")]
    assert len(machine_calls) > 1 and all("filter" in q for q in machine_calls)
    # the Virginia H100 SKU is narrower than the Americas one, so it prices us-east4
    a3 = _find(offers, "us-east4-a", "a3-highgpu-8g", Pricing.ON_DEMAND)
    assert a3.price_per_hour == Decimal("44.730288")  # 208*.024783 + 1872*.003192 + 8*4.20
    a2 = _find(offers, "us-east4-c", "a2-ultragpu-8g", Pricing.ON_DEMAND)
    assert a2.price_per_hour == Decimal("41.336800")  # 96*.03562 + 1360*.004774 + 8*3.92808


def test_settings_regions_and_fabrics_in_europe(gce: FakeGce, home: Path):
    provider = create(gce.settings(home, GPUBROKER_GCP_REGIONS="europe-west4"))
    offers = list(provider.list_offers())
    assert {o.region for o in offers} == {"europe-west4"}
    ultra = _find(offers, "europe-west4-b", "a3-ultragpu-8g", Pricing.ON_DEMAND)
    assert ultra.rdma is Fabric.ROCE and ultra.gpu == "nvidia-h200-141gb"
    assert ultra.interconnect_gbps == 3600
    assert ultra.price_per_hour == Decimal("101.460584")  # 224*.024266 + 2952*.003125 + 8*10.85


def test_unknown_region_is_reported_not_silently_empty(provider: GcpProvider):
    with pytest.raises(ProviderError) as caught:
        list(provider.list_offers(["mars-north1"]))
    assert "mars-north1" in str(caught.value)


def test_offers_retry_throttling_then_complete(gce: FakeGce, provider: GcpProvider):
    gce.throttle(0.3, seed=11)
    offers = list(provider.list_offers(["us-central1"]))
    assert any(o.instance_type == "a3-highgpu-8g" for o in offers)
    assert gce.faults_served > 0  # some calls were throttled and retried


def test_offers_give_up_as_throttled_after_bounded_retries(gce: FakeGce, provider: GcpProvider):
    gce.fail_next(503, times=10, path="/zones")
    with pytest.raises(Throttled) as caught:
        list(provider.list_offers(["us-central1"]))
    assert "4 attempts" in str(caught.value)
    assert len([p for _, p, _ in gce.requests if p.endswith("/zones")]) == 4


def test_quotas_regional_spot_and_project_wide(gce: FakeGce, provider: GcpProvider):
    gce.set_quota("us-central1", "NVIDIA_H100_GPUS", 16)
    provider.launch(
        LaunchRequest(
            request_id="q1",
            region="us-central1",
            zone="us-central1-a",
            instance_type="a3-highgpu-8g",
            nodes=1,
        )
    )
    quotas = {(q.region, q.name): q for q in provider.quotas(["us-central1"])}
    h100 = quotas[("us-central1", "NVIDIA_H100_GPUS")]
    assert (h100.limit, h100.used, h100.unit, h100.scope) == (16.0, 8.0, "gpus", "H100-80GB")
    assert h100.pricing is Pricing.ON_DEMAND
    spot = quotas[("us-central1", "PREEMPTIBLE_NVIDIA_H100_GPUS")]
    assert spot.pricing is Pricing.SPOT and spot.used == 0
    assert quotas[("us-central1", "NVIDIA_L4_GPUS")].scope == "L4"
    overall = quotas[("global", "GPUS_ALL_REGIONS")]
    assert (overall.scope, overall.used, overall.pricing) == ("all", 8.0, None)
    assert ("us-central1", "CPUS") not in quotas


def test_check_reports_source_and_endpoints_without_secrets(gce: FakeGce, home: Path):
    result = create(gce.settings(home)).check(probe=True)
    assert result.usable and result.credentials and result.credentials.startswith("anonymous")
    assert result.endpoint == gce.url
    assert result.detail == f"project {gce.project} (from config)"
    down = create(
        gce.settings(home, GPUBROKER_GCP_COMPUTE_ENDPOINT="http://user:CANARY@127.0.0.1:9")
    )
    down.retry = FAST
    assert down.check().usable  # no call made: nothing says the endpoint is down
    result = down.check(probe=True)
    assert not result.usable and "unreachable" in result.detail
    assert result.endpoint == "http://127.0.0.1:9"
    assert "CANARY" not in repr(result)


def test_project_and_credentials_from_adc(
    gce: FakeGce, home: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
):
    adc = tmp_path / "adc.json"
    adc.write_text(
        '{"type": "authorized_user", "client_id": "id", '
        '"client_secret": "CANARY-SECRET", "refresh_token": "CANARY-REFRESH"}'
    )
    monkeypatch.setenv("GOOGLE_APPLICATION_CREDENTIALS", str(adc))
    monkeypatch.setenv("GOOGLE_CLOUD_PROJECT", gce.project)
    settings = gce.settings(home)
    from dataclasses import replace

    provider = create(replace(settings, gcp_project=None))
    result = provider.check()
    assert result.usable
    assert result.detail == f"project {gce.project} (from application-default credentials)"
    assert "CANARY" not in repr(result)
    assert list(provider.quotas(["us-east4"]))


def test_missing_adc_is_an_auth_error_naming_the_fix(
    home: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
):
    monkeypatch.delenv("GOOGLE_APPLICATION_CREDENTIALS", raising=False)
    monkeypatch.delenv("GOOGLE_CLOUD_PROJECT", raising=False)
    monkeypatch.setenv("CLOUDSDK_CONFIG", str(tmp_path / "gcloud"))
    from google.auth.compute_engine import _metadata

    monkeypatch.setattr(_metadata, "_NO_GCE_CHECK", True)  # no metadata-server probe here
    from broker.config import load_settings

    provider = create(load_settings({"GPUBROKER_HOME": str(home)}))
    with pytest.raises(AuthError) as caught:
        list(provider.list_offers(["us-central1"]))
    assert "application-default" in str(caught.value)
    result = provider.check()
    assert not result.usable and result.credentials is None
    assert "application-default" in result.detail
    assert provider.check(probe=True).credentials is None
    assert isinstance(caught.value, BrokerError)
