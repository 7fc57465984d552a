"""The fake provider: a deterministic cloud with fault injection, for tests and simulations.

``create(settings)`` builds one from settings and the environment:

- ``settings.extra["fake_provider"]``: a ready ``FakeProvider`` (with its clock and
  faults), returned as it is: how a test hands its fake to services that look providers
  up by name.
- ``GPUBROKER_FAKE_STATE`` (or ``extra["fake_state"]``): a JSON file holding the fake
  cloud's instances, so several processes (a broker that crashes and restarts, a
  reconciler) share one cloud. Unset: every provider ``create`` makes in this process
  shares one in-memory cloud (``reset_process_cloud`` empties it).
- ``GPUBROKER_FAKE_SEED`` (or ``extra["fake_seed"]``): the seed, default 0.
- ``GPUBROKER_FAKE_FAULTS`` (or ``extra["fake_faults"]``, a dict or a ``FaultPlan``): the
  faults as a JSON object with ``FaultPlan``'s field names, e.g.
  ``{"throttle_rate": 0.3, "launch_failures": [{"kind": "capacity", "at_node": 2}]}``.

Offers and quotas are configuration, not state: processes that share a state file should
build their providers the same way (the defaults do).
"""

from __future__ import annotations

import json
import os
from typing import TYPE_CHECKING, Any

from broker.errors import ConfigError
from providers.fake.clock import Clock, ManualClock, SystemClock
from providers.fake.faults import FaultPlan, LaunchFailure, Preemption
from providers.fake.offers import default_offers, default_quotas
from providers.fake.provider import CallStats, FakeProvider
from providers.fake.state import StateStore

if TYPE_CHECKING:
    from broker.config import Settings

__all__ = [
    "CallStats",
    "Clock",
    "FakeProvider",
    "FaultPlan",
    "LaunchFailure",
    "ManualClock",
    "Preemption",
    "SystemClock",
    "create",
    "default_offers",
    "default_quotas",
    "reset_process_cloud",
]

ENV_STATE = "GPUBROKER_FAKE_STATE"
ENV_SEED = "GPUBROKER_FAKE_SEED"
ENV_FAULTS = "GPUBROKER_FAKE_FAULTS"

_process_cloud = StateStore()


def create(settings: Settings) -> FakeProvider:
    extra = settings.extra
    given = extra.get("fake_provider")
    if given is not None:
        if not isinstance(given, FakeProvider):
            raise ConfigError("fake_provider: must be a FakeProvider")
        return given
    state_path = extra.get("fake_state") or os.environ.get(ENV_STATE) or None
    return FakeProvider(
        seed=_seed(extra),
        faults=_faults(extra),
        state_path=state_path,
        store=None if state_path else _process_cloud,
    )


def reset_process_cloud() -> None:
    """Forget every instance of the in-memory cloud that ``create`` shares."""
    global _process_cloud
    _process_cloud = StateStore()


def _seed(extra: Any) -> int:
    if "fake_seed" in extra:
        raw, where = extra["fake_seed"], "fake_seed"
    else:
        raw, where = os.environ.get(ENV_SEED, "0") or "0", ENV_SEED
    try:
        return int(raw)
    except (TypeError, ValueError):
        raise ConfigError(f"{where}: must be an integer") from None


def _faults(extra: Any) -> FaultPlan:
    raw = extra.get("fake_faults")
    if isinstance(raw, FaultPlan):
        return raw
    if raw is not None:
        return FaultPlan.from_dict(raw, source="fake_faults")
    text = os.environ.get(ENV_FAULTS)
    if not text:
        return FaultPlan()
    try:
        data = json.loads(text)
    except ValueError:
        raise ConfigError(f"{ENV_FAULTS}: not valid JSON") from None
    return FaultPlan.from_dict(data, source=ENV_FAULTS)
