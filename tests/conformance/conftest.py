"""One ``target`` fixture, parametrized over every provider the suite checks.

The AWS and GCP targets reuse one server per test session (moto's, the fake GCE one) and
get a fresh owner tag per test, so tests never see each other's instances.
"""

from __future__ import annotations

import importlib
import importlib.util
from collections.abc import Iterator

import pytest

from tests.conformance import harness
from tests.conformance.harness_aws import aws_cloud  # noqa: F401
from tests.conformance.harness_gcp import gcp_cloud  # noqa: F401

# provider -> (modules it needs, harness module)
_NEEDS: dict[str, tuple[tuple[str, ...], str]] = {
    "aws": (
        ("providers.aws", "tests.support.moto_server", "tests.support.aws_price_list"),
        "tests.conformance.harness_aws",
    ),
    "gcp": (("providers.gcp", "tests.support.gce_server"), "tests.conformance.harness_gcp"),
}


def _missing(modules: tuple[str, ...]) -> str | None:
    for name in modules:
        try:
            if importlib.util.find_spec(name) is None:
                return name
        except ModuleNotFoundError:
            return name
    return None


@pytest.fixture(autouse=True)
def _canary_credentials(monkeypatch: pytest.MonkeyPatch) -> None:
    for key, value in harness.CANARIES.items():
        monkeypatch.setenv(key, value)


@pytest.fixture(params=["fake", "local", "aws", "gcp"])
def target(request: pytest.FixtureRequest) -> Iterator[harness.Target]:
    name = request.param
    if name in ("fake", "local"):
        made = (
            harness.fake_target()
            if name == "fake"
            else harness.local_target(request.getfixturevalue("tmp_path"))
        )
        reason = made.skips.get(request.node.originalname)
        if reason is not None:
            pytest.skip(f"{name}: {reason}")
        yield made
        return
    modules, harness_module = _NEEDS[name]
    missing = _missing(modules)
    if missing is not None:
        pytest.skip(f"{name} conformance needs module {missing}, which is not present")
    module = importlib.import_module(harness_module)
    yield from module.target(request)
