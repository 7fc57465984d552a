"""Writing offers from any source: upserts, price observations and stale marks.

Offers are keyed by (provider, region, zone, instance_type, pricing). Writing many offers
goes through executemany-style bulk statements (one INSERT executemany for new offers, one
UPDATE executemany for changed ones, chunked ``id IN`` UPDATEs for the unchanged and the
stale): row-at-a-time ORM writes cost ~100x more. A price change is recorded in
``price_observations`` (the price last seen, at its fetch time, and the new one); offers
of a provider missing from a full re-import or refresh are marked stale, never deleted,
since allocations may point at them.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable, Iterable, Sequence
from datetime import datetime
from decimal import Decimal
from operator import itemgetter
from typing import Any

from sqlalchemy import select, update
from sqlalchemy.orm import Session

from broker.db.bulk import CHUNK, insert_many, update_ids, update_many
from broker.db.engine import Database
from broker.db.models import OfferRow, PriceObservationRow
from broker.db.queries import rows_matched
from broker.domain import MICRO, utcnow
from broker.services.offers.values import UpsertSummary
from providers.base import OfferRecord
from workloads.gpus import resolve

# Offer fields compared on re-import; any difference makes the offer "updated". A new
# as-of date alone (a newer snapshot with the same figures) leaves it "unchanged".
_FIELDS = (
    "gpu",
    "gpu_known",
    "gpus_per_node",
    "gpu_memory_gib",
    "vcpus",
    "memory_gib",
    "price_per_hour",
    "interconnect_gbps",
    "rdma",
    "nvlink",
    "capacity_nodes",
    "source",
    "stale",
)
_Key = tuple[str, str, str, str, str]  # provider, region, zone ('' = any), type, pricing
# An offer's unique key; also the order new offers are inserted in (keeps index pages warm).
_key: Callable[[dict[str, Any]], _Key] = itemgetter(
    "provider", "region", "zone", "instance_type", "pricing"
)


class _Canon:
    """Memoised ``workloads.gpus.resolve``: imports repeat a handful of names many times."""

    def __init__(self) -> None:
        self._cache: dict[tuple[str, float | None], tuple[str, bool, float | None]] = {}

    def __call__(self, name: str, memory: float | None) -> tuple[str, bool, float | None]:
        key = (name, memory)
        hit = self._cache.get(key)
        if hit is None:
            resolved = resolve(name, memory)
            spec_memory = resolved.spec.memory_gib if resolved.spec else None
            hit = (resolved.name, resolved.known, memory if memory is not None else spec_memory)
            self._cache[key] = hit
        return hit


def _money(value: Decimal | None) -> Decimal | None:
    return None if value is None else Decimal(value).quantize(MICRO)


def _values(record: OfferRecord, canon: _Canon, now: datetime) -> dict[str, Any]:
    gpu: str | None = None
    known = True
    memory = record.gpu_memory_gib
    if record.gpu and record.gpus_per_node > 0:
        gpu, known, memory = canon(record.gpu, record.gpu_memory_gib)
    return {
        "provider": record.provider,
        "region": record.region,
        "zone": record.zone or "",
        "instance_type": record.instance_type,
        "pricing": str(record.pricing),
        "gpu": gpu,
        "gpu_known": known,
        "gpus_per_node": record.gpus_per_node if gpu else 0,
        "gpu_memory_gib": memory if gpu else None,
        "vcpus": record.vcpus,
        "memory_gib": record.memory_gib,
        "price_per_hour": _money(record.price_per_hour),
        "interconnect_gbps": record.interconnect_gbps,
        "rdma": str(record.rdma),
        "nvlink": bool(record.nvlink),
        "capacity_nodes": record.capacity_nodes,
        "source": record.source[:128],
        "as_of": record.as_of,
        "fetched_at": now,
        "stale": False,
    }


def upsert_offers(
    db: Database,
    records: Iterable[OfferRecord],
    *,
    provider: str,
    full: bool,
    regions: Sequence[str] | None = None,
) -> UpsertSummary:
    """Insert new offers of ``provider``, update changed ones, record price changes.

    With ``full`` the records are everything the provider offers (in ``regions``, when
    given): its other offers there are marked stale.
    """
    with db.session() as session:
        summary, _ = upsert_in(session, records, provider=provider, full=full, regions=regions)
    return summary


def upsert_in(
    session: Session,
    records: Iterable[OfferRecord],
    *,
    provider: str,
    full: bool,
    regions: Sequence[str] | None,
) -> tuple[UpsertSummary, list[dict[str, Any]]]:
    """``upsert_offers`` inside the caller's transaction; also returns the written rows."""
    now = utcnow()
    canon = _Canon()
    incoming: dict[_Key, dict[str, Any]] = {}
    for record in records:
        if record.provider != provider:
            raise ValueError(f"offer of {record.provider!r} given to an upsert of {provider!r}")
        values = _values(record, canon, now)
        incoming[_key(values)] = values  # a repeated key: the last line wins

    scope = None if regions is None else set(regions) | {k[1] for k in incoming}
    table = OfferRow.__table__
    query = select(
        table.c.id,
        table.c.region,
        table.c.zone,
        table.c.instance_type,
        table.c.pricing,
        *(table.c[name] for name in _FIELDS),
    ).where(table.c.provider == provider)
    if scope is not None:
        query = query.where(table.c.region.in_(sorted(scope)))
    existing: dict[_Key, tuple[Any, ...]] = {
        (provider, row[1], row[2], row[3], row[4]): (row[0], *row[5:])
        for row in session.execute(query)
    }

    compared = itemgetter(*_FIELDS)
    price_at = 1 + _FIELDS.index("price_per_hour")
    stale_at = 1 + _FIELDS.index("stale")
    new_rows: list[dict[str, Any]] = []
    changed: list[dict[str, Any]] = []
    touched: dict[datetime | None, list[int]] = defaultdict(list)
    moved: dict[int, tuple[Decimal | None, Decimal]] = {}  # id -> (old price, new price)
    for key, values in incoming.items():
        row = existing.get(key)
        if row is None:
            new_rows.append(values)
        elif row[1:] != compared(values):
            changed.append(
                {
                    **{n: values[n] for n in _FIELDS},
                    "fetched_at": now,
                    "as_of": values["as_of"],
                    "id": row[0],
                }
            )
            price = values["price_per_hour"]
            if price is not None and row[price_at] != price:
                moved[row[0]] = (row[price_at], price)
        else:
            touched[values["as_of"]].append(row[0])

    stale_ids: list[int] = []
    if full:
        wanted = None if regions is None else set(regions)
        stale_ids = [
            row[0]
            for key, row in existing.items()
            if key not in incoming and not row[stale_at] and (wanted is None or key[1] in wanted)
        ]

    observations = _observations(session, moved, now)
    if new_rows:
        insert_many(session, table, new_rows, order=_key)
    update_many(session, table, changed)
    for as_of, ids in touched.items():
        update_ids(session, table, ids, {"fetched_at": now, "as_of": as_of})
    update_ids(session, table, stale_ids, {"stale": True})
    if observations:
        insert_many(session, PriceObservationRow.__table__, observations)
    unchanged = sum(len(ids) for ids in touched.values())
    summary = UpsertSummary(len(new_rows), len(changed), len(stale_ids), unchanged)
    return summary, list(incoming.values())


def _observations(
    session: Session, moved: dict[int, tuple[Decimal | None, Decimal]], now: datetime
) -> list[dict[str, Any]]:
    """Observation rows for offers whose price moved: the price last seen, at the time it
    was last fetched, and the new one now, so the series shows both sides of the change."""
    table = OfferRow.__table__
    rows: list[dict[str, Any]] = []
    ids = list(moved)
    for start in range(0, len(ids), CHUNK):
        chunk = ids[start : start + CHUNK]
        for offer_id, fetched_at in session.execute(
            select(table.c.id, table.c.fetched_at).where(table.c.id.in_(chunk))
        ):
            old, new = moved[offer_id]
            if old is not None:
                rows.append({"offer_id": offer_id, "price": old, "observed_at": fetched_at})
            rows.append({"offer_id": offer_id, "price": new, "observed_at": now})
    return rows


def mark_stale(session: Session, provider: str, region: str | None) -> int:
    """Mark every live offer of ``provider`` (in ``region``, if given) stale, except the
    bundled catalog's: a failed live refresh says nothing about the list prices."""
    query = update(OfferRow).where(
        OfferRow.provider == provider,
        OfferRow.stale.is_(False),
        OfferRow.source.not_like("catalog%"),
    )
    if region is not None:
        query = query.where(OfferRow.region == region)
    return rows_matched(
        session, query.values(stale=True).execution_options(synchronize_session=False)
    )
