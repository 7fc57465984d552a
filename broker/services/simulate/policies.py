"""What each policy gives the planner: its offers, its view of a job and its settings.

The policies differ only in these inputs; the planning, execution and metering are the
same code for all. ``gpubroker`` plans every pending job at once over all offers, knowing
each pool's capacity, with deadlines, team budgets and the scenario's provider cap. The
per-job rules give each job its own cheapest offer: no deadlines or budgets (SkyPilot and
dstack know none), every pool assumed to have room until a launch fails there (the
executor's cool-down is the failover): ``per-job-cheapest`` over all offers, spot as the
job allows; ``single-cloud-on-demand`` over one provider's on-demand offers;
``spot-greedy`` over spot offers only, every job forced to spot.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import replace
from typing import Any

from broker.config import Settings
from broker.domain import Pricing
from broker.errors import SpecError
from broker.services.simulate.scenario import Scenario

BROKER = "gpubroker"
UNKNOWN_ROOM = 1000  # nodes the per-job rules assume a pool has


def policy_offers(offers: list[Any], policy: str, single_cloud: str | None) -> list[Any]:
    """The offers a policy may use: every one, one provider's on-demand, or spot only."""
    if policy == "single-cloud-on-demand":
        counts: dict[str, int] = defaultdict(int)
        for offer in offers:
            counts[offer.provider] += 1
        name = single_cloud or max(sorted(counts), key=lambda n: counts[n])
        kept = [o for o in offers if o.provider == name and o.pricing == Pricing.ON_DEMAND]
        if not kept:
            raise SpecError(
                "single_cloud", f"no on-demand offer of provider {name!r} in the supply"
            )
        return kept
    if policy == "spot-greedy":
        kept = [o for o in offers if o.pricing == Pricing.SPOT]
        if not kept:
            raise SpecError("supply", "no spot offer for the spot-greedy policy")
        return kept
    return list(offers)


def policy_spec(spec: dict[str, Any], policy: str) -> dict[str, Any]:
    """A job spec as the policy submits it."""
    spec = dict(spec)
    if policy != BROKER:
        spec.pop("deadline", None)  # the per-job rules know no deadlines
    if policy == "spot-greedy":
        spec["constraints"] = {**spec.get("constraints", {}), "spot": True}
    elif policy == "single-cloud-on-demand":
        spec["constraints"] = {**spec.get("constraints", {}), "spot": False}
    return spec


def policy_settings(
    settings: Settings, policy: str, scenario: Scenario, database_url: str, providers: Any
) -> Settings:
    """The broker settings of one replay: its own ledger, the fake clouds, and the
    planner as the policy sees it."""
    broker = policy == BROKER
    return replace(
        settings,
        database_url=database_url,
        solver_time_limit=scenario.planner.time_limit,
        # the per-job rules assume a pool has room until a launch says otherwise
        default_pool_capacity=settings.default_pool_capacity if broker else UNKNOWN_ROOM,
        max_provider_share=scenario.planner.max_provider_share if broker else 1.0,
        extra={**dict(settings.extra), "provider_instances": providers},
    )


def offers_seen(offers: list[Any], policy: str) -> list[Any]:
    """What the offers table learns from a cloud: the broker learns each pool's capacity;
    the per-job rules never look at it (their planner sees it unknown)."""
    if policy == BROKER:
        return offers
    return [replace(offer, capacity_nodes=None) for offer in offers]
