"""The offers an estimate looks at, each seen as the planner's ``Pool`` so that estimate and
plan judge it by the same rules (capacity included: ``default_pool_capacity`` where the
offer does not say, as ``plan`` assumes)."""

from __future__ import annotations

from dataclasses import dataclass
from decimal import Decimal
from typing import Any

from broker.config import Settings
from broker.db.engine import Database
from broker.db.models import OfferRow
from broker.errors import NotFound
from scheduler.problem import Pool
from workloads.gpus import GPUS
from workloads.spec import JobSpec

HYPOTHETICAL_CAPACITY = 100_000  # a GPU type with no offer: as many nodes as asked


@dataclass(frozen=True)
class EstimateOffer:
    """An offer as a planner pool, with its price as stored (None: unknown, and the pool's
    price is then 0)."""

    pool: Pool
    price: Decimal | None

    @property
    def rdma(self) -> bool:
        return self.pool.rdma not in ("", "none", "false")

    def placement(self, nodes: int) -> dict[str, Any]:
        """The fields of an estimate ``Option`` that say where it runs: ``nodes`` nodes of
        this offer (training and serving options share them)."""
        pool = self.pool
        return {
            "gpu": pool.gpu,
            "gpus_per_node": pool.gpus_per_node,
            "nodes": nodes,
            "gpus": nodes * pool.gpus_per_node,
            "provider": pool.provider or None,
            "region": pool.region or None,
            "zone": pool.zone or None,
            "instance_type": pool.instance_type or None,
            "pricing": pool.pricing if pool.instance_type else None,
            "offer_id": pool.offer_id,
            "price_per_hour": self.price,
            "interconnect_gbps": pool.interconnect_gbps,
            "rdma": self.rdma,
        }


def _from_row(row: Any, settings: Settings) -> EstimateOffer:
    price = row.price_per_hour
    capacity = row.capacity_nodes
    pool = Pool(
        provider=row.provider,
        region=row.region,
        zone=row.zone or "",
        instance_type=row.instance_type,
        pricing=str(row.pricing),
        gpu=row.gpu,
        gpus_per_node=row.gpus_per_node or 0,
        price_per_hour=float(price) if price is not None else 0.0,
        capacity=settings.default_pool_capacity if capacity is None else capacity,
        interconnect_gbps=row.interconnect_gbps,
        rdma=str(getattr(row, "rdma", "none") or "none"),
        offer_id=row.id,
        vcpus=row.vcpus,
        memory_gib=row.memory_gib,
    )
    return EstimateOffer(pool, price)


def current_offers(
    db: Database, settings: Settings, spec: JobSpec | None = None
) -> list[EstimateOffer]:
    """Fresh offers with a GPU we know (or CPU-only), narrowed by the spec's providers and
    GPU allow-list; the bundled catalog is loaded into an empty database. Region globs are
    matched later against region or zone (SkyPilot's ``zone`` lands there)."""
    from broker.services.offers.bootstrap import ensure_catalog
    from broker.services.offers.query import query_offers
    from broker.services.offers.values import OfferFilter

    ensure_catalog(db, settings)
    c = spec.constraints if spec is not None else None
    filters = OfferFilter(providers=tuple(c.providers) if c else (), include_stale=False)
    allowed = set(c.gpus) if c and c.gpus else None
    return [
        _from_row(view, settings)
        for view in query_offers(db, filters)
        if (view.gpu is None and allowed is None)
        or (view.gpu in GPUS and (allowed is None or view.gpu in allowed))
    ]


def offer_by_id(db: Database, settings: Settings, offer_id: int) -> EstimateOffer:
    with db.session() as session:
        row = session.get(OfferRow, offer_id)
        if row is None:
            raise NotFound(f"offer {offer_id}: no such offer (see gpubroker offers)")
        return _from_row(row, settings)


def hypothetical(spec: JobSpec, gpu: str) -> EstimateOffer:
    """A node of ``gpu`` with no price, for ``--gpu`` when no offer has that GPU."""
    per_node = getattr(spec, "gpus_per_node", None) or 8
    pool = Pool("", "", "", "", "on_demand", gpu, per_node, 0.0, HYPOTHETICAL_CAPACITY)
    return EstimateOffer(pool, None)
