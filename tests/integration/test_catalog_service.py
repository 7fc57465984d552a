"""The offer catalog on SQLite and PostgreSQL: imports, upserts, queries, refresh."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from decimal import Decimal
from pathlib import Path

import pytest
from sqlalchemy import func, select

from broker.config import load_settings
from broker.db.models import OfferRow, PriceObservationRow
from broker.domain import Fabric, Pricing
from broker.errors import ProviderError, UserError
from broker.services.offers import refresh
from broker.services.offers.bootstrap import ensure_catalog
from broker.services.offers.imports import import_file
from broker.services.offers.query import query_offers, summary
from broker.services.offers.values import OfferFilter, UpsertSummary
from providers.base import Capability, OfferRecord
from tests.conftest import shared_dataset

HEADER = (
    "InstanceType,AcceleratorName,AcceleratorCount,vCPUs,MemoryGiB,GpuInfo,Price,SpotPrice,"
    "Region,AvailabilityZone\n"
)
LINES = [
    "p5.48xlarge,H100,8,192,2048,,55.04,20.10,us-east-1,use1-az1\n",
    "p5.48xlarge,H100,8,192,2048,,55.04,,us-west-2,usw2-az1\n",
    "g6.xlarge,L4,1,4,16,,0.8048,0.31,us-east-1,use1-az2\n",
]


def _write(tmp_path: Path, lines: Sequence[str], name: str = "aws_vms.csv") -> Path:
    path = tmp_path / name
    path.write_text(HEADER + "".join(lines))
    return path


def _count(db, model) -> int:  # type: ignore[no-untyped-def]
    with db.session() as session:
        return int(session.scalar(select(func.count()).select_from(model)) or 0)


def test_reimport_updates_prices_records_observations_and_marks_stale(database, tmp_path) -> None:  # type: ignore[no-untyped-def]
    first = import_file(database, _write(tmp_path, LINES), "skypilot")
    assert first.providers["aws"] == UpsertSummary(new=5)
    assert _count(database, PriceObservationRow) == 0  # the offers hold their first prices
    [before] = query_offers(database, OfferFilter(gpus=("L4",), pricing=Pricing.SPOT))
    changed = [LINES[0], LINES[1].replace("55.04", "49.00")]  # g6 gone, p5 west cheaper
    second = import_file(database, _write(tmp_path, changed), "skypilot")
    assert second.providers["aws"] == UpsertSummary(new=0, updated=1, stale=2, unchanged=2)
    offers = query_offers(database, OfferFilter(providers=("aws",)))
    by_key = {(o.region, o.instance_type, o.pricing): o for o in offers}
    west = by_key[("us-west-2", "p5.48xlarge", "on_demand")]
    assert west.price_per_hour == Decimal("49.00") and west.price_per_gpu_hour == Decimal("6.125")
    assert west.fetched_at > before.fetched_at and not west.stale
    assert by_key[("us-east-1", "g6.xlarge", "spot")].stale  # kept, marked stale
    assert _count(database, PriceObservationRow) == 2
    with database.session() as session:
        prices = session.scalars(
            select(PriceObservationRow.price).where(PriceObservationRow.offer_id == west.id)
        ).all()
    assert sorted(prices) == [Decimal("49"), Decimal("55.04")]
    fresh = query_offers(database, OfferFilter(include_stale=False))
    assert all(not o.stale for o in fresh) and len(fresh) == 3


def test_strict_import_writes_nothing(database, tmp_path) -> None:  # type: ignore[no-untyped-def]
    path = _write(tmp_path, [*LINES, "g6.xlarge,L4,1\n"])
    with pytest.raises(UserError, match=r"line 5.*--strict"):
        import_file(database, path, "skypilot", strict=True)
    assert _count(database, OfferRow) == 0
    report = import_file(database, path, "skypilot")
    assert [i.line for i in report.issues] == [5] and report.offers == 5


def test_shared_catalogs_import_every_gpu_offer(database) -> None:  # type: ignore[no-untyped-def]
    aws = import_file(database, shared_dataset("cloud-catalogs", "aws_vms.csv"), "skypilot")
    gcp = import_file(database, shared_dataset("cloud-catalogs", "gcp_vms.csv"), "skypilot")
    assert aws.providers["aws"].new == aws.offers and gcp.providers["gcp"].new == gcp.offers
    assert _count(database, OfferRow) == aws.offers + gcp.offers
    h100 = query_offers(database, OfferFilter(gpus=("nvidia-h100-80gb",), min_gpus=8, limit=500))
    assert {o.provider for o in h100} == {"aws", "gcp"}
    prices = [o.price_per_hour for o in h100 if o.price_per_hour is not None]
    assert prices == sorted(prices)


@pytest.fixture
def loaded(database) -> Iterator:  # type: ignore[no-untyped-def]
    settings = load_settings({"GPUBROKER_HOME": "/nonexistent-home"})
    done = ensure_catalog(database, settings)
    assert done is not None and done.new > 150
    assert ensure_catalog(database, settings) is None  # only into an empty table
    yield database


def test_filters_sorts_and_errors(loaded) -> None:  # type: ignore[no-untyped-def]
    q = lambda **kw: query_offers(loaded, OfferFilter(**kw))  # noqa: E731
    eight = q(gpus=("H100",), min_gpus=8, pricing=Pricing.ON_DEMAND)
    assert {o.provider for o in eight} == {"aws", "gcp"} and eight[0].instance_type == "p5.48xlarge"
    assert all(o.as_of is not None and o.rdma != "none" for o in eight)
    assert {o.rdma for o in q(gpus=("H100",), rdma=True, min_interconnect=1500)} == {
        Fabric.EFA.value,
        Fabric.TCPXO.value,
    }
    us = q(regions=("us-*",), providers=("gcp",))
    assert us and all(o.region.startswith("us-") for o in us)
    assert {o.region for o in q(regions=("europe-west[14]",))} == {"europe-west1", "europe-west4"}
    big = q(min_gpu_memory=100, max_price=Decimal("40"), pricing=Pricing.SPOT)
    assert big and all(o.gpu == "H200-141GB" and o.price_per_hour <= 40 for o in big)
    per_tflop = q(gpus=("L4", "H100"), sort="price-per-tflop", pricing=Pricing.ON_DEMAND, limit=3)
    assert len(per_tflop) == 3
    by_memory = q(sort="gpu-memory", limit=1)
    assert by_memory[0].gpu == "H200-141GB"
    local = q(providers=("local",))
    assert len(local) <= 1 and all(o.price_per_hour == 0 and o.gpu is None for o in local)
    with pytest.raises(UserError, match="--gpu: unknown GPU 'H1000'"):
        q(gpus=("H1000",))
    with pytest.raises(UserError, match="--region"):
        q(regions=("us-[east",))


def test_summary_names_the_cheapest_per_gpu_hour(loaded) -> None:  # type: ignore[no-untyped-def]
    rows = {r.gpu: r for r in summary(loaded)}
    h100 = rows["H100-80GB"]
    assert h100.on_demand.price_per_gpu_hour == Decimal("6.88")  # 55.04 / 8
    assert h100.spot.price_per_gpu_hour == Decimal("2.3625")
    assert h100.spot.where == "aws us-west-2 p5.48xlarge"
    assert rows["L4"].on_demand.provider == "gcp"


class TinyProvider:
    """A provider with one region that always fails and one whose price moves."""

    name = "tiny"
    capabilities = frozenset({Capability.LIST_OFFERS})

    def __init__(self, price: str, broken: str) -> None:
        self.price, self.broken = price, broken

    def regions(self) -> list[str]:
        return ["r-good", "r-bad"]

    def list_offers(self, regions: Sequence[str] | None = None) -> Iterator[OfferRecord]:
        for region in regions or self.regions():
            if region == self.broken:
                raise ProviderError("tiny", f"{region} is down", retryable=True)
            for gpus, price in ((8, Decimal(self.price)), (1, Decimal("1"))):
                yield OfferRecord(
                    "tiny",
                    region,
                    f"{region}-a",
                    f"h100x{gpus}",
                    "H100",
                    gpus,
                    80.0,
                    8,
                    64.0,
                    Pricing.ON_DEMAND,
                    price,
                    source="test",
                )


def test_refresh_isolates_a_failing_region_and_flags_prices(loaded, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    from providers import registry

    state = {"provider": TinyProvider("80", broken="none")}
    monkeypatch.setitem(registry._MODULES, "tiny", "tests.unused")
    monkeypatch.setattr(registry, "offer_source", lambda name, settings: state["provider"])
    settings = load_settings({"GPUBROKER_HOME": "/nonexistent-home"})
    events: list[refresh.RefreshProgress] = []
    first = refresh.refresh(loaded, settings, ["tiny"], None, events.append)
    assert (first.new, first.errors) == (4, 0)
    assert [(e.region, e.done, e.total) for e in events if e.result] == [
        ("r-good", 1, 2),
        ("r-bad", 2, 2),
    ]
    # 1 GPU at $1/h is far below the H100 median per GPU-hour
    assert {(f.instance_type, f.region) for f in first.flags} == {
        ("h100x1", "r-good"),
        ("h100x1", "r-bad"),
    }
    assert "price_flags" in first.to_dict()

    state["provider"] = TinyProvider("88", broken="r-bad")
    second = refresh.refresh(loaded, settings, ["tiny"], None)
    results = {r.region: r for r in second.results}
    assert results["r-good"].ok and results["r-good"].updated == 1
    assert not results["r-bad"].ok and results["r-bad"].error == "tiny: r-bad is down"
    assert results["r-bad"].stale == 2 and second.errors == 1
    offers = {
        (o.region, o.instance_type): o
        for o in query_offers(loaded, OfferFilter(providers=("tiny",)))
    }
    assert offers[("r-bad", "h100x8")].stale and offers[("r-bad", "h100x8")].price_per_hour == 80
    assert not offers[("r-good", "h100x8")].stale
    assert offers[("r-good", "h100x8")].price_per_hour == 88


def test_refresh_never_echoes_an_unexpected_error_text(loaded, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    from providers import registry

    class Leaky(TinyProvider):
        def list_offers(self, regions=None):  # type: ignore[no-untyped-def]
            raise RuntimeError("token=canary-catalog-secret-123")

    monkeypatch.setitem(registry._MODULES, "tiny", "tests.unused")
    monkeypatch.setattr(registry, "offer_source", lambda name, settings: Leaky("1", "none"))
    report = refresh.refresh(loaded, load_settings({"GPUBROKER_HOME": "/x"}), ["tiny"], ["r1"])
    assert report.errors == 1
    assert "canary" not in str(report.to_dict()) and "RuntimeError" in report.results[0].error


def test_sdk_offers_summary_and_import(home: Path, tmp_path: Path) -> None:
    from broker import Broker

    with Broker() as broker:
        offers = broker.offers(gpus="H200", pricing="spot", sort="price-per-gpu", limit=3)
        assert len(offers) == 3 and all(o.gpu == "H200-141GB" for o in offers)
        per_gpu = [o.price_per_gpu_hour for o in offers]
        assert per_gpu == sorted(per_gpu)
        assert {s.gpu for s in broker.offers_summary()} >= {"H100-80GB", "L4", "A10G"}
        report = broker.import_offers(str(_write(tmp_path, LINES, "vms.csv")), "skypilot", "aws")
        assert report.providers["aws"].new == 5 and report.providers["aws"].stale > 0
        assert {c.provider for c in broker.check()} >= {"catalog", "aws", "gcp"}
