"""``gpubroker check``: which providers are usable, with which credentials and endpoint.

Each provider answers for itself (``OfferSource.check``); only the *source* of a
credential is ever named (``env``, ``GOOGLE_APPLICATION_CREDENTIALS`` ...), never a key,
token or file content. No cloud API is called unless ``probe`` asks for it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from broker.errors import BrokerError
from providers.base import ProviderCheck

if TYPE_CHECKING:
    from broker.config import Settings

CHECKED = ("catalog", "local", "aws", "gcp")

__all__ = ["CHECKED", "ProviderCheck", "check", "check_one"]


def check(settings: Settings, *, probe: bool = False) -> list[ProviderCheck]:
    return [check_one(name, settings, probe=probe) for name in CHECKED]


def check_one(name: str, settings: Settings, *, probe: bool = False) -> ProviderCheck:
    from providers import registry

    try:
        return registry.offer_source(name, settings).check(probe)
    except BrokerError as exc:
        return ProviderCheck(name, False, None, None, exc.message.splitlines()[0])
    except ImportError as exc:
        return ProviderCheck(name, False, None, None, f"its SDK is not installed ({exc.name})")
    except Exception as exc:  # an SDK's message may echo a request: name the type only
        return ProviderCheck(name, False, None, None, f"check failed ({type(exc).__name__})")
