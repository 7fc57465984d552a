"""The registry tells offer sources from launchers, and ``gpubroker check`` asks each
provider for its own ``ProviderCheck``."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import replace
from pathlib import Path

import pytest

from broker.config import Settings, load_settings
from broker.errors import AuthError, UserError
from providers import registry
from providers.base import (
    Capability,
    Launcher,
    OfferRecord,
    OfferSource,
    Provider,
    ProviderCheck,
    QuotaRecord,
)
from providers.catalog import CatalogProvider


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    return load_settings({"GPUBROKER_HOME": str(tmp_path)})


def _with(settings: Settings, **given: object) -> Settings:
    return replace(settings, extra={"provider_instances": given})


class PriceSheet:
    """An offer source that is not a launcher, answering ``check`` as told."""

    name = "sheet"
    capabilities = frozenset({Capability.LIST_OFFERS})

    def __init__(self, failure: Exception | None = None) -> None:
        self.failure = failure

    def list_offers(self, regions: Sequence[str] | None = None) -> Iterator[OfferRecord]:
        return iter(())

    def quotas(self, regions: Sequence[str] | None = None) -> Iterator[QuotaRecord]:
        return iter(())

    def check(self, probe: bool = False) -> ProviderCheck:
        if self.failure is not None:
            raise self.failure
        return ProviderCheck(self.name, True, "none needed", "a sheet", f"probe={probe}")


def test_every_provider_is_an_offer_source_and_the_launchers_are_the_listed_ones(
    settings: Settings,
) -> None:
    for name in registry.names():
        source = registry.offer_source(name, settings)
        assert isinstance(source, OfferSource) and source.name == name
        launches = name in registry.LAUNCHERS
        assert isinstance(source, Launcher) is launches, name
        assert isinstance(source, Provider) is launches, name
        assert (Capability.LAUNCH in source.capabilities) is launches, name
        if launches:
            assert registry.launcher(name, settings) is not None
    assert set(registry.LAUNCHERS) < set(registry.names())
    assert set(registry.LIVE) <= set(registry.LAUNCHERS)


def test_the_catalog_is_an_offer_source_only(settings: Settings) -> None:
    assert not any(hasattr(CatalogProvider, m) for m in ("launch", "terminate", "list_instances"))
    with pytest.raises(UserError) as caught:
        registry.launcher("catalog", settings)
    assert str(caught.value) == (
        "provider 'catalog' only lists offers and cannot launch; launchers: local, aws, gcp, fake"
    )
    assert caught.value.exit_code == 2


def test_unknown_names_and_stand_ins(settings: Settings) -> None:
    with pytest.raises(UserError, match=r"provider 'azure' is unknown; known: catalog, local"):
        registry.offer_source("azure", settings)
    sheet = PriceSheet()
    given = _with(settings, aws=sheet)
    assert registry.offer_source("aws", given) is sheet
    with pytest.raises(UserError, match="'aws' only lists offers and cannot launch"):
        registry.launcher("aws", given)
    with pytest.raises(UserError, match="'aws' lists no offers"):
        registry.offer_source("aws", _with(settings, aws=object()))


def test_check_asks_each_provider_and_never_raises(settings: Settings) -> None:
    from broker.services.offers.check import CHECKED, check, check_one

    rows = check(settings)
    assert [r.provider for r in rows] == list(CHECKED)
    by_name = {r.provider: r for r in rows}
    assert by_name["catalog"].usable and "offers as of" in by_name["catalog"].detail
    assert by_name["local"] == ProviderCheck(
        "local",
        True,
        "none needed",
        "this machine",
        f"{settings.local_nodes} nodes on loopback addresses",
    )
    told = check_one("catalog", _with(settings, catalog=PriceSheet()), probe=True)
    assert told == ProviderCheck("sheet", True, "none needed", "a sheet", "probe=True")

    failures = {
        AuthError("gcp", "no credentials\nsecond line"): "gcp: no credentials",
        ModuleNotFoundError("no module", name="boto3"): "its SDK is not installed (boto3)",
        RuntimeError("token=canary-check-secret"): "check failed (RuntimeError)",
    }
    for failure, detail in failures.items():
        found = check_one("aws", _with(settings, aws=PriceSheet(failure)))
        assert found == ProviderCheck("aws", False, None, None, detail)


def test_local_and_fake_probe_what_they_hold(settings: Settings) -> None:
    from providers.base import LaunchRequest
    from providers.fake import FakeProvider, FaultPlan, ManualClock
    from providers.local import LocalProvider

    local = LocalProvider(settings, nodes=2)
    assert local.check(probe=True).usable  # no node launched yet: no state file
    request = LaunchRequest("req-1", "local", "local", local.instance_type, 1, owner="o")
    local.launch(request)
    assert local.check(probe=True).detail == "2 nodes on loopback addresses, 1 in use"
    local.state_path.write_text("{")
    broken = local.check(probe=True)
    assert not broken.usable and "is damaged (not JSON)" in broken.detail
    assert local.check().usable  # without a probe the state file is not read

    throttled = FaultPlan(throttle_rate=0.999, max_attempts=2, backoff_base=0.0)
    fake = FakeProvider(seed=3, faults=throttled, clock=ManualClock())
    assert fake.check().usable and fake.stats.calls["check"] == 0
    found = fake.check(probe=True)
    assert not found.usable and "check: throttled, gave up after 2 attempts" in found.detail
