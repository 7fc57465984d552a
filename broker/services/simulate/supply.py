"""The supply of a replay: pools from the database's offers, and how they move over time.

Every pool keeps its list price and a node capacity (the offer's own figure, else the
scenario's). Spot pools also get, per refresh tick, an availability (the share of their
capacity that can be had) and a price, and for each node slot of the pool a list of the
instants the node in that slot is reclaimed (a gang loses its run when any of its nodes
goes, so its risk grows with its size, as the planner assumes). These come from the
measured traces of a trace folder when the scenario names one (``availability/``: how many
spot nodes could be had per tick; ``preemption/``: how many launched spot nodes were still
running, and for some, the spot price), each pool (and each node slot) reading one trace
from a seeded offset and looping it; without traces, from a seeded model: availability as
a two-state chain, reclaims as a Poisson process per node, prices as a mean-reverting walk.
"""

from __future__ import annotations

import json
import math
import random
from dataclasses import dataclass, field
from decimal import Decimal
from fnmatch import fnmatch
from pathlib import Path

from sqlalchemy import select

from broker.db.engine import Database
from broker.db.models import OfferRow
from broker.db.queries import POOL_ORDER, plannable_offer
from broker.domain import Fabric, Pricing
from broker.errors import SpecError, UserError
from broker.services.simulate.scenario import LoadedScenario
from providers.base import OfferRecord

PRICE_STEP = Decimal("0.0001")
MEAN_UP_HOURS = 6.0  # seeded model: mean spell of a spot pool with capacity
PRICE_MOVE_HOURS = 6.0  # seeded model: mean time between spot price moves


@dataclass
class SimPool:
    """One pool of the replay: ``record`` is the offer as the fake cloud sells it."""

    record: OfferRecord
    capacity: int
    availability: list[float] = field(default_factory=list)  # per tick, spot only
    price_factor: list[float] = field(default_factory=list)  # per tick, spot only
    # (hours from the start, node slot) of each reclaim, spot only
    preemptions: list[tuple[float, int]] = field(default_factory=list)

    @property
    def key(self) -> tuple[str, str, str, str, str]:
        r = self.record
        return (r.provider, r.region, str(r.zone), r.instance_type, str(r.pricing))

    @property
    def spot(self) -> bool:
        return self.record.pricing == Pricing.SPOT

    def capacity_at(self, tick: int) -> int:
        if not self.spot or not self.availability:
            return self.capacity
        return round(self.capacity * self.availability[tick % len(self.availability)])

    def price_at(self, tick: int) -> Decimal:
        base = self.record.price_per_hour
        assert base is not None
        if not self.spot or not self.price_factor:
            return base
        factor = self.price_factor[tick % len(self.price_factor)]
        return (base * Decimal(repr(factor))).quantize(PRICE_STEP)


def offers_from(db: Database, loaded: LoadedScenario) -> list[OfferRecord]:
    """The scenario's share of the database's fresh, priced offers (never ``local``), each
    given a zone (its own, else its region's name) so the fake cloud can place nodes."""
    cfg = loaded.scenario.supply
    with db.session() as session:
        rows = list(
            session.scalars(select(OfferRow).where(plannable_offer()).order_by(*POOL_ORDER))
        )
    out = []
    for row in rows:
        if row.provider in ("local", "fake") or not row.gpu or not row.gpus_per_node:
            continue
        if cfg.providers and row.provider not in cfg.providers:
            continue
        if cfg.gpus and not any(fnmatch(row.gpu, g) or row.gpu.startswith(g) for g in cfg.gpus):
            continue
        if cfg.regions and not any(fnmatch(row.region, g) for g in cfg.regions):
            continue
        out.append(
            OfferRecord(
                provider=row.provider,
                region=row.region,
                zone=row.zone or row.region,
                instance_type=row.instance_type,
                gpu=row.gpu,
                gpus_per_node=row.gpus_per_node,
                gpu_memory_gib=row.gpu_memory_gib,
                vcpus=row.vcpus,
                memory_gib=row.memory_gib,
                pricing=Pricing(row.pricing),
                price_per_hour=row.price_per_hour,
                interconnect_gbps=row.interconnect_gbps,
                rdma=Fabric(row.rdma or "none"),
                nvlink=bool(row.nvlink),
                capacity_nodes=row.capacity_nodes,
                source="simulation",
            )
        )
    if not out:
        wanted = ", ".join(
            f"{name}={values}"
            for name, values in (
                ("providers", cfg.providers),
                ("gpus", cfg.gpus),
                ("regions", cfg.regions),
            )
            if values
        )
        raise SpecError(
            "supply",
            "empty: no fresh, priced GPU offer in the database matches"
            + (f" {wanted}" if wanted else ""),
            source=str(loaded.path),
        )
    return out


def build_pools(
    offers: list[OfferRecord], loaded: LoadedScenario, seed: int, ticks: int
) -> list[SimPool]:
    """Pools with their timelines for ``ticks`` refresh ticks of one seed."""
    scenario = loaded.scenario
    cfg = scenario.supply
    tick_hours = cfg.refresh_minutes / 60.0
    horizon = ticks * tick_hours
    traces = load_traces(loaded.trace_dir) if loaded.trace_dir is not None else None
    pools = []
    for record in offers:
        rng = random.Random(f"supply:{scenario.seed}:{seed}:{'/'.join(_key(record))}")
        if record.pricing != Pricing.SPOT:
            pools.append(SimPool(record, record.capacity_nodes or cfg.capacity_nodes))
            continue
        pool = SimPool(record, record.capacity_nodes or cfg.spot_capacity_nodes)
        if traces is not None:
            pool.availability = traces.availability(rng, ticks, tick_hours)
            pool.price_factor = traces.prices(rng, ticks, tick_hours)
            slots = [traces.preemptions(rng, horizon) for _ in range(pool.capacity)]
            pool.preemptions = _per_slot(slots)
        else:
            pool.availability = _two_state(rng, ticks, tick_hours, cfg.spot_availability)
            pool.price_factor = _walk(rng, ticks, tick_hours, cfg.spot_price_volatility)
            rate = cfg.preemptions_per_hour
            slots = [_poisson_times(rng, rate, horizon) for _ in range(pool.capacity)]
            pool.preemptions = _per_slot(slots)
        pools.append(pool)
    return pools


def _per_slot(slots: list[list[float]]) -> list[tuple[float, int]]:
    """The reclaim instants of every node slot, as (hours, slot) in time order."""
    return sorted((at, slot) for slot, times in enumerate(slots) for at in times)


def _key(record: OfferRecord) -> tuple[str, ...]:
    return (
        record.provider,
        record.region,
        str(record.zone),
        record.instance_type,
        str(record.pricing),
    )


def _two_state(rng: random.Random, ticks: int, tick_hours: float, share: float) -> list[float]:
    if share >= 1.0:
        return [1.0] * ticks
    down_hours = MEAN_UP_HOURS * (1 - share) / share
    out, up = [], rng.random() < share
    left = rng.expovariate(1 / (MEAN_UP_HOURS if up else down_hours))
    for _ in range(ticks):
        out.append(1.0 if up else 0.0)
        left -= tick_hours
        while left <= 0:
            up = not up
            left += rng.expovariate(1 / (MEAN_UP_HOURS if up else down_hours))
    return out


def _walk(rng: random.Random, ticks: int, tick_hours: float, volatility: float) -> list[float]:
    """Spot price as a share of the list spot price: it moves now and then (on average
    every ``PRICE_MOVE_HOURS``), each move a step of a mean-reverting log walk."""
    out, level = [], 0.0
    chance = min(1.0, tick_hours / PRICE_MOVE_HOURS)
    for _ in range(ticks):
        out.append(round(min(1.6, max(0.6, math.exp(level))), 4))
        if rng.random() < chance:
            level = 0.7 * level + rng.gauss(0.0, volatility)
    return out


def _poisson_times(rng: random.Random, rate: float, horizon: float) -> list[float]:
    out: list[float] = []
    at = 0.0
    if rate <= 0:
        return out
    while True:
        at += rng.expovariate(rate)
        if at >= horizon:
            return out
        out.append(at)


@dataclass(frozen=True)
class Series:
    values: list[float]
    gap_hours: float

    @property
    def hours(self) -> float:
        return len(self.values) * self.gap_hours


@dataclass(frozen=True)
class Drops:
    """Where a preemption trace's running count fell: hours into the trace, and the share
    of the trace's nodes each fall took."""

    times: list[float]
    shares: list[float]
    hours: float  # the trace's length


@dataclass
class Traces:
    """The measured series of a trace folder, normalised: availability as a share of the
    most ever seen, reclaims as the instants the running count fell, prices as a share of
    their mean."""

    availability_series: list[Series]
    drops: list[Drops]
    price_series: list[Series]

    def availability(self, rng: random.Random, ticks: int, tick_hours: float) -> list[float]:
        if not self.availability_series:
            return []
        return _sample(rng.choice(self.availability_series), rng, ticks, tick_hours)

    def prices(self, rng: random.Random, ticks: int, tick_hours: float) -> list[float]:
        if not self.price_series:
            return []
        return _sample(rng.choice(self.price_series), rng, ticks, tick_hours)

    def preemptions(self, rng: random.Random, horizon: float) -> list[float]:
        """The reclaims of one node: a trace from a random offset, looped; a drop of a
        multi-node trace takes this node with the share of the nodes it took."""
        if not self.drops:
            return []
        trace = rng.choice(self.drops)
        period = trace.hours
        offset = rng.random() * period
        out: list[float] = []
        loop = 0
        while loop * period - offset < horizon:
            for at, share in zip(trace.times, trace.shares, strict=True):
                t = loop * period + at - offset
                if 0 <= t < horizon and (share >= 1.0 or rng.random() < share):
                    out.append(t)
            loop += 1
        return sorted(out)


def _sample(series: Series, rng: random.Random, ticks: int, tick_hours: float) -> list[float]:
    offset = rng.random() * series.hours
    n = len(series.values)
    return [
        series.values[int((offset + k * tick_hours) / series.gap_hours) % n] for k in range(ticks)
    ]


def load_traces(folder: Path) -> Traces:
    """Read every ``*.json`` trace under ``availability/`` and ``preemption/``."""
    availability: list[Series] = []
    drops: list[Drops] = []
    prices: list[Series] = []
    for path in sorted((folder / "availability").rglob("*.json")):
        values, gap, _ = _read(path)
        top = max(values, default=0)
        if top > 0:
            availability.append(Series([v / top for v in values], gap))
    for path in sorted((folder / "preemption").rglob("*.json")):
        values, gap, price = _read(path)
        top = max(values, default=0)
        falls = [i for i in range(1, len(values)) if values[i] < values[i - 1]]
        if top > 0:
            shares = [min(1.0, (values[i - 1] - values[i]) / top) for i in falls]
            drops.append(Drops([i * gap for i in falls], shares, len(values) * gap))
        if price:
            mean = sum(price) / len(price)
            if mean > 0:
                prices.append(Series([p / mean for p in price], gap))
    if not availability and not drops:
        raise UserError(f"traces: no availability/ or preemption/ JSON traces in {folder}")
    return Traces(availability, drops, prices)


def _read(path: Path) -> tuple[list[float], float, list[float]]:
    try:
        data = json.loads(path.read_text())
        gap = float(data["metadata"]["gap_seconds"]) / 3600.0
        values = [float(v) for v in data["data"]]
        price = [float(p) for p in data.get("prices") or []]
    except (OSError, ValueError, KeyError, TypeError):
        raise UserError(f"traces: {path} is not a trace (metadata.gap_seconds, data)") from None
    if gap <= 0:
        raise UserError(f"traces: {path}: metadata.gap_seconds must be > 0")
    return values, gap, price
