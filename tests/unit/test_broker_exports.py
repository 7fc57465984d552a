"""``from broker import ...``: every exported name resolves, and importing the package
stays light (the names load on first use)."""

from __future__ import annotations

import importlib
import subprocess
import sys
import types

import pytest

import broker

NAMES = sorted(set(broker.__all__) - {"__version__"})
HEAVY = ("sqlalchemy", "ortools", "boto3", "google.cloud", "ray", "torch", "broker.services")


def test_all_names_the_exports_exactly() -> None:
    assert set(NAMES) == set(broker._EXPORTS)
    assert broker.__all__ == sorted(broker.__all__)
    assert set(broker.__all__) <= set(dir(broker))


@pytest.mark.parametrize("name", NAMES)
def test_every_exported_name_resolves_to_its_class(name: str) -> None:
    value = getattr(broker, name)
    assert isinstance(value, type | types.UnionType), name  # JobSpec is a union of two
    assert value is getattr(importlib.import_module(broker._EXPORTS[name]), name)
    namespace: dict[str, object] = {}
    exec(f"from broker import {name}", namespace)
    assert namespace[name] is value


def test_an_unknown_name_is_an_attribute_error() -> None:
    with pytest.raises(AttributeError, match="NoSuchThing"):
        broker.NoSuchThing  # noqa: B018
    with pytest.raises(ImportError):
        exec("from broker import NoSuchThing", {})


def test_importing_the_package_and_the_sdk_loads_no_heavy_module() -> None:
    script = (
        "import sys\n"
        "import broker\n"
        "from broker import Broker\n"
        f"print('LOADED', [m for m in {HEAVY!r} if m in sys.modules])\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=60, check=True
    )
    assert "LOADED []" in done.stdout, done.stdout[-300:]
