"""AWS offers through the real boto3 client against moto, with the price-list fixture."""

from __future__ import annotations

from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest

from broker.domain import Fabric, Pricing
from broker.errors import ProviderError, UserError
from providers.aws.pricing import on_demand_prices
from tests.support.aws_faults import Throttle, inject
from tests.support.aws_price_list import PRICES, serve_price_list


@pytest.fixture
def backoff_delays(monkeypatch: pytest.MonkeyPatch) -> list[float]:
    """botocore computes its jittered backoff as usual; the test records it, skips the sleep."""
    from botocore.retries import standard

    computed: list[float] = []
    original = standard.ExponentialBackoff.delay_amount

    def record(self: Any, context: Any) -> float:
        computed.append(original(self, context))
        return 0.0

    monkeypatch.setattr(standard.ExponentialBackoff, "delay_amount", record)
    return computed


def test_offers_in_two_regions_carry_p5_with_h100_efa_and_fixture_price(
    aws_provider: Any,
) -> None:
    offers = list(aws_provider.list_offers())
    assert {o.region for o in offers} == {"us-east-1", "us-west-2"}
    for region in ("us-east-1", "us-west-2"):
        p5 = [
            o
            for o in offers
            if o.region == region
            and o.instance_type == "p5.48xlarge"
            and o.pricing is Pricing.ON_DEMAND
        ]
        assert p5, f"no on-demand p5.48xlarge in {region}"
        assert {o.zone for o in p5} >= {f"{region}a", f"{region}b"}
        for offer in p5:
            assert (offer.gpu, offer.gpus_per_node, offer.gpu_memory_gib) == ("H100", 8, 80.0)
            assert offer.rdma is Fabric.EFA and offer.interconnect_gbps == 3200.0
            assert offer.price_per_hour == Decimal(PRICES[region]["p5.48xlarge"])
            assert offer.provider == "aws" and offer.source == "aws-api"
            assert offer.as_of is not None and offer.as_of.tzinfo is not None
    spot = [o for o in offers if o.pricing is Pricing.SPOT]
    assert spot and all(o.zone and o.price_per_hour and o.price_per_hour > 0 for o in spot)
    assert any(o.instance_type == "p5.48xlarge" for o in spot)
    # Only GPU types, and a type the price list lacks keeps an unknown (None) price.
    assert all(o.gpus_per_node >= 1 and o.gpu for o in offers)
    unpriced = [
        o for o in offers if o.instance_type == "g4dn.xlarge" and o.pricing.value == "on_demand"
    ]
    assert unpriced and all(o.price_per_hour is None for o in unpriced)


def test_price_list_is_fetched_once_then_served_from_the_cache(
    aws_settings: Any, aws_price_list: Any
) -> None:
    from providers.aws import create

    list(create(aws_settings).list_offers(["us-east-1"]))
    list(create(aws_settings).list_offers(["us-east-1"]))
    fetched = [p for p in aws_price_list.requests if p.endswith("/us-east-1/index.json")]
    assert len(fetched) == 1
    cached = list((aws_settings.cache_dir / "aws-price-list").glob("us-east-1-*.json"))
    assert len(cached) == 1


def test_expired_cache_refetches_and_a_dead_server_falls_back_to_it(tmp_path: Path) -> None:
    from datetime import timedelta

    from broker.domain import utcnow

    with serve_price_list({"us-east-1": {"p5.48xlarge": "55.04"}}) as server:
        first = on_demand_prices(server.url, "us-east-1", tmp_path)
        later = utcnow() + timedelta(days=2)
        again = on_demand_prices(server.url, "us-east-1", tmp_path, now=later)
        assert len(server.requests) == 2 and again.fetched_at == later
        url = server.url
    # The server is gone: the expired table is better than none.
    stale = on_demand_prices(url, "us-east-1", tmp_path, now=later + timedelta(days=2))
    assert stale.prices == first.prices
    with pytest.raises(ProviderError, match="cannot reach"):
        on_demand_prices(url, "eu-west-1", tmp_path)


def test_a_region_without_price_list_fails_alone(aws_settings: Any, aws_price_list: Any) -> None:
    from providers.aws import create

    provider = create(aws_settings)
    with pytest.raises(ProviderError, match=r"ap-south-1.*HTTP 404"):
        list(provider.list_offers(["ap-south-1"]))
    assert list(provider.list_offers(["us-west-2"]))


def test_a_bad_region_name_is_refused(aws_provider: Any) -> None:
    with pytest.raises(UserError, match="us-east-1"):
        list(aws_provider.list_offers(["not a region"]))


def test_offers_complete_under_30_percent_throttling_with_at_most_3_retries(
    aws_provider: Any, backoff_delays: list[float]
) -> None:
    with inject(aws_provider, Throttle(rate=0.3, seed=7)) as throttle:
        offers = list(aws_provider.list_offers())
    assert any(o.instance_type == "p5.48xlarge" for o in offers)
    assert throttle.throttled >= 1
    assert throttle.most_attempts <= 4  # one call and at most three retries
    # botocore's standard mode computed a jittered exponential backoff for each retry.
    assert len(backoff_delays) == throttle.throttled
    assert all(0 <= d <= 4 for d in backoff_delays)
