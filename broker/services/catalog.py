"""The offer catalog: upserts from any source, queries, the per-GPU summary and imports.

Offers are keyed by (provider, region, zone, instance_type, pricing). Writing many offers
goes through executemany-style bulk statements (one INSERT executemany for new offers, one
UPDATE executemany for changed ones, chunked ``id IN`` UPDATEs for the unchanged and the
stale): row-at-a-time ORM writes cost ~100x more. A price change is recorded in
``price_observations`` (the price last seen, at its fetch time, and the new one); offers
of a provider missing from a full re-import or refresh are marked stale, never deleted,
since allocations may point at them.
"""

from __future__ import annotations

import fnmatch
import re
import time
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass
from datetime import datetime
from decimal import Decimal
from operator import itemgetter
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sqlalchemy import (
    Select,
    TypeDecorator,
    and_,
    case,
    func,
    literal,
    or_,
    select,
    true,
    update,
)
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from broker.db.engine import Database
from broker.db.models import OfferRow, PriceObservationRow
from broker.domain import MICRO, Fabric, Pricing, utcnow
from broker.errors import BrokerError, UserError
from providers.base import OfferRecord
from workloads.gpus import GPUS, canonical_names, resolve

if TYPE_CHECKING:
    from broker.config import Settings

SORTS = ("price", "price-per-gpu", "price-per-tflop", "gpu-memory")
IMPORT_FORMATS = ("skypilot", "gpuhunt")

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


# --- values -----------------------------------------------------------------------------


@dataclass(frozen=True)
class UpsertSummary:
    new: int = 0
    updated: int = 0
    stale: int = 0
    unchanged: int = 0

    def __add__(self, other: UpsertSummary) -> UpsertSummary:
        return UpsertSummary(
            self.new + other.new,
            self.updated + other.updated,
            self.stale + other.stale,
            self.unchanged + other.unchanged,
        )


@dataclass(frozen=True)
class OfferFilter:
    """What ``gpubroker offers`` filters on; every field optional."""

    gpus: tuple[str, ...] = ()  # names or aliases
    min_gpus: int | None = None  # per node
    max_gpus: int | None = None
    min_gpu_memory: float | None = None  # GiB per GPU
    providers: tuple[str, ...] = ()
    regions: tuple[str, ...] = ()  # globs such as "us-*"
    pricing: Pricing | None = None
    max_price: Decimal | None = None  # per node-hour
    min_interconnect: float | None = None  # Gbps between nodes
    rdma: bool = False  # only offers with an RDMA-class fabric
    include_stale: bool = True
    sort: str = "price"
    limit: int | None = None


# JSON keys of ``gpubroker offers --format json``, in order.
OFFER_KEYS = (
    "provider",
    "region",
    "zone",
    "instance_type",
    "gpu",
    "gpus_per_node",
    "gpu_memory_gib",
    "vcpus",
    "memory_gib",
    "pricing",
    "price_per_hour",
    "price_per_gpu_hour",
    "interconnect_gbps",
    "rdma",
    "source",
    "fetched_at",
    "stale",
    "as_of",
)


@dataclass(frozen=True)
class OfferView:
    """One offer as the CLI, the SDK and the planner see it.

    ``rdma`` is the fabric name (``efa``, ``tcpx``, ``tcpxo``, ``roce``, ``infiniband``) or
    ``none``; ``has_rdma`` says whether it is anything but ``none``. Prices are USD per
    hour; None means unknown, never free.
    """

    id: int
    provider: str
    region: str
    zone: str | None
    instance_type: str
    gpu: str | None
    gpus_per_node: int
    gpu_memory_gib: float | None
    vcpus: int | None
    memory_gib: float | None
    pricing: str
    price_per_hour: Decimal | None
    price_per_gpu_hour: Decimal | None
    interconnect_gbps: float | None
    rdma: str
    nvlink: bool
    capacity_nodes: int | None
    source: str
    as_of: datetime | None
    fetched_at: datetime
    stale: bool
    gpu_known: bool = True

    @property
    def has_rdma(self) -> bool:
        return self.rdma != Fabric.NONE.value

    def to_dict(self) -> dict[str, Any]:
        return {key: getattr(self, key) for key in OFFER_KEYS}


@dataclass(frozen=True)
class Cheapest:
    price_per_gpu_hour: Decimal
    price_per_hour: Decimal
    provider: str
    region: str
    zone: str | None
    instance_type: str
    gpus_per_node: int

    @property
    def where(self) -> str:
        place = f"{self.region}/{self.zone}" if self.zone else self.region
        return f"{self.provider} {place} {self.instance_type}"


@dataclass(frozen=True)
class GpuSummary:
    """One GPU: its cheapest on-demand and spot price per GPU-hour, and where."""

    gpu: str
    gpu_memory_gib: float | None
    offers: int
    on_demand: Cheapest | None
    spot: Cheapest | None

    def to_dict(self) -> dict[str, Any]:
        def part(c: Cheapest | None) -> dict[str, Any] | None:
            return None if c is None else {**asdict(c), "where": c.where}

        return {
            "gpu": self.gpu,
            "gpu_memory_gib": self.gpu_memory_gib,
            "offers": self.offers,
            "on_demand": part(self.on_demand),
            "spot": part(self.spot),
        }


# --- upsert -----------------------------------------------------------------------------


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


def _key(values: dict[str, Any]) -> _Key:
    return (
        values["provider"],
        values["region"],
        values["zone"],
        values["instance_type"],
        values["pricing"],
    )


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
            changed.append({**{n: values[n] for n in _FIELDS}, "fetched_at": now,
                            "as_of": values["as_of"], "id": row[0]})  # fmt: skip
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
        _insert_many(session, table, new_rows, by_key=True)
    _update_many(session, table, changed)
    for as_of, ids in touched.items():
        _update_ids(session, ids, {"fetched_at": now, "as_of": as_of})
    _update_ids(session, stale_ids, {"stale": True})
    if observations:
        _insert_many(session, PriceObservationRow.__table__, observations)
    unchanged = sum(len(ids) for ids in touched.values())
    summary = UpsertSummary(len(new_rows), len(changed), len(stale_ids), unchanged)
    return summary, list(incoming.values())


_KEY_ORDER = itemgetter("provider", "region", "zone", "instance_type", "pricing")


def _driver_rows(
    dialect: Any, table: Any, names: Sequence[str], rows: Iterable[dict[str, Any]]
) -> list[tuple[Any, ...]]:
    """Parameter tuples for a driver-level executemany.

    Values go through each column type's own bind processor, exactly as SQLAlchemy would
    convert them, but without its per-row statement machinery, which costs tens of
    microseconds a row. Datetime conversion is slow and its values repeat (one fetch time
    per import), so each distinct value is converted once.
    """
    getter = itemgetter(*names)
    memoised: list[tuple[int, Any, dict[Any, Any]]] = []
    direct: list[tuple[int, Any]] = []
    for i, name in enumerate(names):
        column_type = table.c[name].type
        proc = column_type._cached_bind_processor(dialect)
        if proc is None:
            continue
        if isinstance(column_type, TypeDecorator):
            memoised.append((i, proc, {}))
        else:
            direct.append((i, proc))
    params: list[tuple[Any, ...]] = []
    for row in rows:
        values = list(getter(row))
        for i, proc in direct:
            if values[i] is not None:
                values[i] = proc(values[i])
        for i, proc, memo in memoised:
            value = values[i]
            if value is not None:
                hit = memo.get(value)
                if hit is None:
                    hit = memo[value] = proc(value)
                values[i] = hit
        params.append(tuple(values))
    return params


_KEY_ORDER = itemgetter("provider", "region", "zone", "instance_type", "pricing")


def _sqlite_cache(connection: Any) -> None:
    if connection.dialect.name == "sqlite":
        connection.exec_driver_sql("PRAGMA cache_size=-131072")  # 128 MiB for big imports


def _insert_many(
    session: Session, table: Any, rows: list[dict[str, Any]], *, by_key: bool = False
) -> None:
    """One driver-level INSERT executemany (COPY on PostgreSQL) of ``rows``, which all
    carry the same keys."""
    connection = session.connection()
    dialect = connection.dialect
    names = list(rows[0])
    marker = "?" if dialect.paramstyle == "qmark" else "%s"
    quote = dialect.identifier_preparer.quote
    sql = (
        f"INSERT INTO {quote(table.name)} ({', '.join(quote(n) for n in names)}) "
        f"VALUES ({', '.join([marker] * len(names))})"
    )
    ordered = sorted(rows, key=_KEY_ORDER) if by_key else rows  # keeps index pages warm
    params = _driver_rows(dialect, table, names, ordered)
    if dialect.driver == "psycopg":  # COPY is several times faster than INSERTs there
        columns = ", ".join(quote(n) for n in names)
        raw = connection.connection.dbapi_connection
        with (
            raw.cursor() as cursor,
            cursor.copy(  # type: ignore[union-attr]
                f"COPY {quote(table.name)} ({columns}) FROM STDIN"
            ) as copy,
        ):
            for values in params:
                copy.write_row(values)
        return
    _sqlite_cache(connection)
    connection.exec_driver_sql(sql, params)


def _update_many(session: Session, table: Any, rows: list[dict[str, Any]]) -> None:
    """One driver-level UPDATE ... WHERE id = ? executemany; ``id`` is each row's last key."""
    if not rows:
        return
    connection = session.connection()
    dialect = connection.dialect
    names = list(rows[0])
    assert names[-1] == "id"
    marker = "?" if dialect.paramstyle == "qmark" else "%s"
    quote = dialect.identifier_preparer.quote
    sets = ", ".join(f"{quote(n)} = {marker}" for n in names[:-1])
    sql = f"UPDATE {quote(table.name)} SET {sets} WHERE id = {marker}"
    _sqlite_cache(connection)
    connection.exec_driver_sql(sql, _driver_rows(dialect, table, names, rows))


def _observations(
    session: Session, moved: dict[int, tuple[Decimal | None, Decimal]], now: datetime
) -> list[dict[str, Any]]:
    """Observation rows for offers whose price moved: the price last seen, at the time it
    was last fetched, and the new one now, so the series shows both sides of the change."""
    table = OfferRow.__table__
    rows: list[dict[str, Any]] = []
    ids = list(moved)
    for start in range(0, len(ids), 900):
        chunk = ids[start : start + 900]
        for offer_id, fetched_at in session.execute(
            select(table.c.id, table.c.fetched_at).where(table.c.id.in_(chunk))
        ):
            old, new = moved[offer_id]
            if old is not None:
                rows.append({"offer_id": offer_id, "price": old, "observed_at": fetched_at})
            rows.append({"offer_id": offer_id, "price": new, "observed_at": now})
    return rows


def _update_ids(session: Session, ids: list[int], values: dict[str, Any]) -> None:
    """The same values for many offers, in chunks of ``id IN (...)``: far cheaper than one
    parameter set per row."""
    table = OfferRow.__table__
    for start in range(0, len(ids), 900):
        chunk = ids[start : start + 900]
        session.execute(update(table).where(table.c.id.in_(chunk)).values(values))


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
    result = session.execute(query.values(stale=True).execution_options(synchronize_session=False))
    return int(result.rowcount or 0)  # type: ignore[attr-defined]


# --- queries ----------------------------------------------------------------------------

_VIEW_COLUMNS = (
    OfferRow.id,
    OfferRow.provider,
    OfferRow.region,
    OfferRow.zone,
    OfferRow.instance_type,
    OfferRow.gpu,
    OfferRow.gpus_per_node,
    OfferRow.gpu_memory_gib,
    OfferRow.vcpus,
    OfferRow.memory_gib,
    OfferRow.pricing,
    OfferRow.price_per_hour,
    OfferRow.interconnect_gbps,
    OfferRow.rdma,
    OfferRow.nvlink,
    OfferRow.capacity_nodes,
    OfferRow.source,
    OfferRow.as_of,
    OfferRow.fetched_at,
    OfferRow.stale,
    OfferRow.gpu_known,
)


def _view(row: Any) -> OfferView:
    price = row.price_per_hour
    per_gpu = None
    if price is not None and row.gpus_per_node:
        per_gpu = (Decimal(price) / row.gpus_per_node).quantize(MICRO)
    return OfferView(
        id=row.id,
        provider=row.provider,
        region=row.region,
        zone=row.zone or None,
        instance_type=row.instance_type,
        gpu=row.gpu,
        gpus_per_node=row.gpus_per_node,
        gpu_memory_gib=row.gpu_memory_gib,
        vcpus=row.vcpus,
        memory_gib=row.memory_gib,
        pricing=row.pricing,
        price_per_hour=None if price is None else Decimal(price).quantize(MICRO),
        price_per_gpu_hour=per_gpu,
        interconnect_gbps=row.interconnect_gbps,
        rdma=row.rdma,
        nvlink=row.nvlink,
        capacity_nodes=row.capacity_nodes,
        source=row.source,
        as_of=row.as_of,
        fetched_at=row.fetched_at,
        stale=row.stale,
        gpu_known=row.gpu_known,
    )


def canonical_gpus(session: Session, names: Iterable[str]) -> list[str]:
    """Canonical names for ``--gpu`` values; a name no table or offer knows is a UserError."""
    out: list[str] = []
    for name in names:
        resolved = resolve(name)
        if resolved.known:
            out.append(resolved.name)
            continue
        kept = session.scalar(select(OfferRow.id).where(OfferRow.gpu == name.strip()).limit(1))
        if kept is None:
            raise UserError(f"--gpu: unknown GPU {name!r}; known: {', '.join(canonical_names())}")
        out.append(name.strip())
    return out


_GLOB_OK = re.compile(r"^[^\[\]]*(\[!?[^\[\]]+\][^\[\]]*)*$")


def check_glob(pattern: str, option: str = "--region") -> str:
    text = pattern.strip()
    if not text or not _GLOB_OK.match(text):
        raise UserError(
            f"{option}: {pattern!r} is not a valid glob; use * ? and [abc], e.g. 'us-*'"
        )
    return text


def _like(pattern: str) -> str:
    escaped = pattern.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
    return escaped.replace("*", "%").replace("?", "_")


def _region_clause(session: Session, globs: Sequence[str]) -> Any:
    clauses = []
    for glob in (check_glob(g) for g in globs):
        if "[" in glob:  # character classes: match the known regions in Python
            regex = re.compile(fnmatch.translate(glob))
            regions = [
                r for r in session.scalars(select(OfferRow.region).distinct()) if regex.match(r)
            ]
            clauses.append(OfferRow.region.in_(regions))
        elif any(ch in glob for ch in "*?"):
            clauses.append(OfferRow.region.like(_like(glob), escape="\\"))
        else:
            clauses.append(OfferRow.region == glob)
    return or_(*clauses)


def _per_gpu_price() -> Any:
    return case(
        (OfferRow.gpus_per_node > 0, OfferRow.price_per_hour / OfferRow.gpus_per_node),
        else_=None,
    )


def _per_tflop_price() -> Any:
    tflops = case(
        {name: literal(spec.bf16_tflops) for name, spec in GPUS.items()},
        value=OfferRow.gpu,
        else_=None,
    )
    return case(
        (
            OfferRow.gpus_per_node > 0,
            OfferRow.price_per_hour / (OfferRow.gpus_per_node * tflops),
        ),
        else_=None,
    )


def _ordered(query: Select[Any], sort: str) -> Select[Any]:
    if sort == "price":
        keys = [OfferRow.price_per_hour.asc().nulls_last()]
    elif sort == "price-per-gpu":
        keys = [_per_gpu_price().asc().nulls_last()]
    elif sort == "price-per-tflop":
        keys = [_per_tflop_price().asc().nulls_last()]
    elif sort == "gpu-memory":
        keys = [
            OfferRow.gpu_memory_gib.desc().nulls_last(),
            OfferRow.price_per_hour.asc().nulls_last(),
        ]
    else:
        raise UserError(f"--sort: {sort!r} is not one of {', '.join(SORTS)}")
    return query.order_by(*keys, OfferRow.id)


def _pricing(value: object) -> str:
    try:
        return Pricing(str(value)).value
    except ValueError:
        allowed = ", ".join(p.value for p in Pricing)
        raise UserError(f"pricing: {value!r} is not one of {allowed}") from None


def query_offers(db: Database, filters: OfferFilter) -> list[OfferView]:
    """Offers matching ``filters``, sorted and limited as asked."""
    if filters.sort not in SORTS:
        raise UserError(f"--sort: {filters.sort!r} is not one of {', '.join(SORTS)}")
    for name, value in (("--min-gpus", filters.min_gpus), ("--max-gpus", filters.max_gpus)):
        if value is not None and value < 0:
            raise UserError(f"{name}: must be >= 0")
    if filters.limit is not None and filters.limit < 0:
        raise UserError("--limit: must be >= 0")
    with db.session() as session:
        conditions: list[Any] = []
        if filters.gpus:
            conditions.append(OfferRow.gpu.in_(canonical_gpus(session, filters.gpus)))
        if filters.min_gpus is not None:
            conditions.append(OfferRow.gpus_per_node >= filters.min_gpus)
        if filters.max_gpus is not None:
            conditions.append(OfferRow.gpus_per_node <= filters.max_gpus)
        if filters.min_gpu_memory is not None:
            conditions.append(OfferRow.gpu_memory_gib >= filters.min_gpu_memory)
        if filters.providers:
            conditions.append(OfferRow.provider.in_([p.strip().lower() for p in filters.providers]))
        if filters.regions:
            conditions.append(_region_clause(session, filters.regions))
        if filters.pricing is not None:
            conditions.append(OfferRow.pricing == _pricing(filters.pricing))
        if filters.max_price is not None:
            conditions.append(OfferRow.price_per_hour <= filters.max_price)
        if filters.min_interconnect is not None:
            conditions.append(OfferRow.interconnect_gbps >= filters.min_interconnect)
        if filters.rdma:
            conditions.append(OfferRow.rdma != Fabric.NONE.value)
        if not filters.include_stale:
            conditions.append(OfferRow.stale.is_(False))
        query = _ordered(select(*_VIEW_COLUMNS).where(and_(true(), *conditions)), filters.sort)
        if filters.limit:
            query = query.limit(filters.limit)
        return [_view(row) for row in session.execute(query)]


def summary(db: Database) -> list[GpuSummary]:
    """One row per GPU: the cheapest live on-demand and spot offer per GPU-hour."""
    per_gpu = (OfferRow.price_per_hour / OfferRow.gpus_per_node).label("per_gpu")
    live = and_(
        OfferRow.gpu.is_not(None),
        OfferRow.gpus_per_node > 0,
        OfferRow.stale.is_(False),
    )
    rank = (
        func.row_number()
        .over(partition_by=(OfferRow.gpu, OfferRow.pricing), order_by=(per_gpu, OfferRow.id))
        .label("rank")
    )
    ranked = (
        select(
            OfferRow.gpu,
            OfferRow.pricing,
            OfferRow.provider,
            OfferRow.region,
            OfferRow.zone,
            OfferRow.instance_type,
            OfferRow.gpus_per_node,
            OfferRow.price_per_hour,
            rank,
        )
        .where(live, OfferRow.price_per_hour.is_not(None))
        .subquery()
    )
    with db.session() as session:
        by_gpu = (
            select(OfferRow.gpu, func.count(), func.max(OfferRow.gpu_memory_gib))
            .where(live)
            .group_by(OfferRow.gpu)
        )
        counts: dict[str, int] = {}
        memory: dict[str, float | None] = {}
        for gpu, offers, gpu_memory in session.execute(by_gpu):
            counts[gpu] = offers
            memory[gpu] = gpu_memory
        best: dict[str, dict[str, Cheapest]] = defaultdict(dict)
        for row in session.execute(select(ranked).where(ranked.c.rank == 1)):
            price = Decimal(row.price_per_hour).quantize(MICRO)
            best[row.gpu][row.pricing] = Cheapest(
                price_per_gpu_hour=(price / row.gpus_per_node).quantize(MICRO),
                price_per_hour=price,
                provider=row.provider,
                region=row.region,
                zone=row.zone or None,
                instance_type=row.instance_type,
                gpus_per_node=row.gpus_per_node,
            )
    return [
        GpuSummary(
            gpu=gpu,
            gpu_memory_gib=memory.get(gpu),
            offers=counts[gpu],
            on_demand=best[gpu].get(Pricing.ON_DEMAND.value),
            spot=best[gpu].get(Pricing.SPOT.value),
        )
        for gpu in sorted(counts)
    ]


# --- the bundled catalog and the local machine -------------------------------------------


def _has_module(name: str) -> bool:
    import importlib.util

    try:
        return importlib.util.find_spec(name) is not None
    except ModuleNotFoundError:
        return False


def ensure_catalog(db: Database, settings: Settings) -> UpsertSummary | None:
    """Load the bundled snapshot and this machine's offer into an empty offers table.

    Returns what was loaded, or None when the table already held offers.
    """
    from providers import registry

    with db.session() as session:
        if session.scalar(select(OfferRow.id).limit(1)) is not None:
            return None
    by_provider: dict[str, list[OfferRecord]] = defaultdict(list)
    for record in registry.get("catalog", settings).list_offers():
        by_provider[record.provider].append(record)
    local: list[OfferRecord] = []
    if _has_module("providers.local"):
        try:
            local = list(registry.get("local", settings).list_offers())
        except BrokerError:
            local = []  # the catalog is still useful without this machine's offer
    total = UpsertSummary()
    try:
        with db.session() as session:
            for name, records in sorted(by_provider.items()):
                done, _ = upsert_in(session, records, provider=name, full=False, regions=None)
                total += done
            if local:
                done, _ = upsert_in(session, local, provider="local", full=True, regions=None)
                total += done
    except IntegrityError:
        return None  # another process loaded the catalog at the same moment
    return total


# --- imports ----------------------------------------------------------------------------


@dataclass
class ImportReport:
    path: str
    format: str
    rows: int
    offers: int
    issues: list[Any]  # providers.catalog.parse.ImportIssue
    skipped: dict[str, int]
    providers: dict[str, UpsertSummary]
    seconds: float

    @property
    def total(self) -> UpsertSummary:
        out = UpsertSummary()
        for part in self.providers.values():
            out += part
        return out

    def to_dict(self) -> dict[str, Any]:
        return {
            "path": self.path,
            "format": self.format,
            "rows": self.rows,
            "offers": self.offers,
            "skipped": self.skipped,
            "issues": [
                {"line": i.line, "message": i.message, "skipped": i.skipped} for i in self.issues
            ],
            "providers": {name: asdict(s) for name, s in self.providers.items()},
            "seconds": round(self.seconds, 3),
        }


def import_file(
    db: Database,
    path: str | Path,
    fmt: str,
    *,
    provider: str | None = None,
    strict: bool = False,
) -> ImportReport:
    """Import a SkyPilot or gpuhunt catalog file as a full re-import of its provider(s).

    Malformed lines are reported with their line numbers and the rest is imported; with
    ``strict`` any reported line aborts the import before anything is written.
    """
    started = time.perf_counter()
    if fmt not in IMPORT_FORMATS:
        raise UserError(f"--format: {fmt!r} is not one of {', '.join(IMPORT_FORMATS)}")
    if provider is not None and not re.fullmatch(r"[a-z][a-z0-9_-]{0,31}", provider):
        raise UserError(f"--provider: {provider!r} is not a provider name (lowercase letters)")
    if fmt == "skypilot":
        from providers.catalog import skypilot as importer
    else:
        from providers.catalog import gpuhunt as importer  # type: ignore[no-redef]
    parsed = importer.parse_file(path, provider)
    if strict and parsed.issues:
        first = parsed.issues[0]
        raise UserError(
            f"{path}: {len(parsed.issues)} malformed line(s), first {first}; "
            "nothing imported (--strict)"
        )
    by_provider: dict[str, list[OfferRecord]] = defaultdict(list)
    for record in parsed.records:
        by_provider[record.provider].append(record)
    done: dict[str, UpsertSummary] = {}
    with db.session() as session:
        for name, records in sorted(by_provider.items()):
            done[name], _ = upsert_in(session, records, provider=name, full=True, regions=None)
    return ImportReport(
        path=str(path),
        format=fmt,
        rows=parsed.rows,
        offers=len(parsed.records),
        issues=parsed.issues,
        skipped=parsed.skipped,
        providers=done,
        seconds=time.perf_counter() - started,
    )
