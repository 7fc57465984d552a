"""gpubroker: a multi-cloud GPU broker and cost-aware fleet scheduler for LLM work."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"
__all__ = ["Broker", "__version__"]

if TYPE_CHECKING:
    from broker.sdk import Broker


def __getattr__(name: str) -> Any:
    # Lazy, so that ``import broker.errors`` (and the CLI's --help) stays light.
    if name == "Broker":
        from broker.sdk import Broker

        return Broker
    raise AttributeError(name)
