"""Provider names -> factories, imported only when a provider is asked for.

Keeping the import inside ``offer_source`` / ``launcher`` is what lets ``gpubroker --help``
start without boto3 or google.cloud. Each adapter module exposes
``create(settings) -> OfferSource`` (a ``Provider`` when it launches too).
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

from broker.errors import UserError
from providers.base import Launcher, OfferSource

if TYPE_CHECKING:
    from broker.config import Settings

_MODULES: dict[str, str] = {
    "catalog": "providers.catalog",
    "local": "providers.local",
    "aws": "providers.aws",
    "gcp": "providers.gcp",
    "fake": "providers.fake",
}

# Providers that own machines (``Launcher``s); the others only list offers.
LAUNCHERS: tuple[str, ...] = ("local", "aws", "gcp", "fake")

# Providers whose offers can be refreshed from a live API (``offers refresh``).
LIVE: tuple[str, ...] = ("aws", "gcp")


def names() -> list[str]:
    return list(_MODULES)


def _create(name: str, settings: Settings) -> object:
    """``settings.extra["provider_instances"]`` (name -> provider) stands in for any name,
    which is how a simulation puts fake clouds behind the offers of real ones."""
    given: object = settings.extra.get("provider_instances", {}).get(name)
    if given is not None:
        return given
    module_name = _MODULES.get(name)
    if module_name is None:
        raise UserError(f"provider {name!r} is unknown; known: {', '.join(_MODULES)}")
    created: object = importlib.import_module(module_name).create(settings)
    return created


def offer_source(name: str, settings: Settings) -> OfferSource:
    """The offers, quotas and check of the provider called ``name``."""
    source = _create(name, settings)
    if not isinstance(source, OfferSource):
        raise UserError(f"provider {name!r} lists no offers")
    return source


def launcher(name: str, settings: Settings) -> Launcher:
    """The provider called ``name``, to launch, list or terminate its machines."""
    found = _create(name, settings)
    if not isinstance(found, Launcher):
        raise UserError(
            f"provider {name!r} only lists offers and cannot launch; "
            f"launchers: {', '.join(LAUNCHERS)}"
        )
    return found
