"""SKU descriptions -> price keys, and the narrowest SKU winning a region."""

from __future__ import annotations

from decimal import Decimal

import pytest

from providers.gcp.billing import PriceBook, SkuKey, classify, money_of


@pytest.mark.parametrize(
    ("description", "usage", "expected"),
    [
        ("A2 Instance Core running in Americas", "OnDemand", SkuKey("core", "A2", False)),
        (
            "Spot Preemptible A2 Instance Ram running in Americas",
            "Preemptible",
            SkuKey("ram", "A2", True),
        ),
        ("A3Plus Instance Core running in Americas", "OnDemand", SkuKey("core", "A3Plus", False)),
        (
            "N1 Predefined Instance Ram running in EMEA",
            "OnDemand",
            SkuKey("ram", "N1 Predefined", False),
        ),
        (
            "Nvidia Tesla A100 GPU attached to Spot Preemptible VMs running in Americas",
            "Preemptible",
            SkuKey("gpu", "nvidia-tesla-a100", True),
        ),
        (
            "Nvidia H100 80GB Gpu running in Virginia",
            "OnDemand",
            SkuKey("gpu", "nvidia-h100-80gb", False),
        ),
        (
            "Nvidia H100 80GB Mega GPU running in Americas",
            "OnDemand",
            SkuKey("gpu", "nvidia-h100-mega-80gb", False),
        ),
        (
            "H200 141GB GPU running in Belgium",
            "OnDemand",
            SkuKey("gpu", "nvidia-h200-141gb", False),
        ),
        (
            "Nvidia Tesla A100 80GB GPU running in EMEA",
            "OnDemand",
            SkuKey("gpu", "nvidia-a100-80gb", False),
        ),
    ],
)
def test_classify_takes_list_prices(description, usage, expected):
    assert classify(description, usage) == expected


@pytest.mark.parametrize(
    ("description", "usage"),
    [
        ("Commitment v1: A2 Cpu in Americas for 1 Year", "Commit1Yr"),
        ("Custom Instance Core running in Americas", "OnDemand"),
        ("N1 Custom Instance Core running in Americas", "OnDemand"),
        ("DWS Defined Duration A3 Core running in Americas", "OnDemand"),
        ("Reserved Nvidia H100 80GB Mega GPU in Americas", "OnDemand"),
        ("C3 Sole Tenancy Instance Core running in Americas", "OnDemand"),
        ("E2 Instance Core running in Americas", "OnDemand"),
        ("SSD backed Local Storage running in Americas", "OnDemand"),
    ],
)
def test_classify_skips_what_our_shapes_do_not_use(description, usage):
    assert classify(description, usage) is None


def test_narrower_sku_wins_its_region_whatever_the_order():
    key = SkuKey("gpu", "nvidia-h100-80gb", False)
    for order in (0, 1):
        book = PriceBook()
        rows = [(("us-central1", "us-east4"), Decimal("9.80")), (("us-east4",), Decimal("4.20"))]
        for regions, price in rows[order:] + rows[:order]:
            book.add(key, regions, price)
        assert book.rate("gpu", "nvidia-h100-80gb", False, "us-east4") == Decimal("4.20")
        assert book.rate("gpu", "nvidia-h100-80gb", False, "us-central1") == Decimal("9.80")
        assert book.rate("gpu", "nvidia-h100-80gb", True, "us-east4") is None


def test_money_units_and_nanos_are_exact():
    assert money_of("9", 796550569) == Decimal("9.796550569")
    assert money_of(0, 2_253_000) == Decimal("0.002253")
