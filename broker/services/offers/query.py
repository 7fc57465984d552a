"""Reading the catalog: filtered, sorted offers and the cheapest offer per GPU."""

from __future__ import annotations

import fnmatch
import re
from collections import defaultdict
from collections.abc import Iterable, Sequence
from decimal import Decimal
from typing import Any, TypeVarTuple

from sqlalchemy import (
    ColumnElement,
    Select,
    UnaryExpression,
    and_,
    case,
    func,
    literal,
    or_,
    select,
    true,
)
from sqlalchemy.orm import Session

from broker.db.engine import Database
from broker.db.models import OfferRow
from broker.domain import MICRO, Fabric, Pricing
from broker.errors import UserError
from broker.services.offers.values import SORTS, Cheapest, GpuSummary, OfferFilter, OfferView
from workloads.gpus import GPUS, canonical_names, resolve

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


def _region_clause(session: Session, globs: Sequence[str]) -> ColumnElement[bool]:
    clauses: list[ColumnElement[bool]] = []
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


_Columns = TypeVarTuple("_Columns")


def _ordered(query: Select[*_Columns], sort: str) -> Select[*_Columns]:
    keys: list[UnaryExpression[Any]]
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
            if gpu is None:  # never: `live` leaves out offers of no known GPU
                continue
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
