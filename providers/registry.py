"""Provider names -> factories, imported only when a provider is asked for.

Keeping the import inside ``get`` is what lets ``gpubroker --help`` start without boto3
or google.cloud. Each adapter module exposes ``create(settings) -> Provider``.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

from broker.errors import UserError

if TYPE_CHECKING:
    from broker.config import Settings
    from providers.base import Provider

_MODULES: dict[str, str] = {
    "catalog": "providers.catalog",
    "local": "providers.local",
    "aws": "providers.aws",
    "gcp": "providers.gcp",
    "fake": "providers.fake",
}

# Providers whose offers can be refreshed from a live API (``offers refresh``).
LIVE: tuple[str, ...] = ("aws", "gcp")


def names() -> list[str]:
    return list(_MODULES)


def get(name: str, settings: Settings) -> Provider:
    """The provider called ``name``; ``settings.extra["provider_instances"]`` (name ->
    provider) stands in for any name, which is how a simulation puts fake clouds behind
    the offers of real ones."""
    given = settings.extra.get("provider_instances", {}).get(name)
    if given is not None:
        return given  # type: ignore[no-any-return]
    module_name = _MODULES.get(name)
    if module_name is None:
        raise UserError(f"provider {name!r} is unknown; known: {', '.join(_MODULES)}")
    module = importlib.import_module(module_name)
    provider: Provider = module.create(settings)
    return provider
