"""Refreshing offers from live providers, region by region.

Each region is isolated: one that fails is reported (with credential-free text) and its
old offers are kept, marked stale, while the others refresh. After the upserts, offers whose
per-GPU price is more than 2x off the median for their GPU and pricing are flagged.
"""

from __future__ import annotations

import statistics
from collections import defaultdict
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass, field
from decimal import Decimal
from typing import TYPE_CHECKING, Any

from sqlalchemy import (
    select,
)

from broker.db.engine import Database
from broker.db.models import OfferRow
from broker.domain import MICRO
from broker.errors import BrokerError, UserError
from broker.services.offers.upsert import mark_stale, upsert_in
from broker.services.offers.values import UpsertSummary
from providers.base import OfferRecord

if TYPE_CHECKING:
    from broker.config import Settings


@dataclass(frozen=True)
class RegionResult:
    provider: str
    region: str | None  # None: the provider as a whole
    ok: bool
    error: str | None = None
    offers: int = 0
    new: int = 0
    updated: int = 0
    stale: int = 0
    unchanged: int = 0
    skipped: str | None = None  # why a provider was not asked (``all`` and no credentials)


@dataclass(frozen=True)
class PriceFlag:
    """An offer whose per-GPU price is more than 2x off the median for its GPU and pricing."""

    provider: str
    region: str
    zone: str | None
    instance_type: str
    pricing: str
    gpu: str
    price_per_gpu_hour: Decimal
    median_per_gpu_hour: Decimal
    ratio: float


@dataclass(frozen=True)
class RefreshProgress:
    provider: str
    region: str | None
    done: int  # regions finished for this provider
    total: int
    result: RegionResult | None = None  # None: the region is starting


@dataclass
class RefreshReport:
    results: list[RegionResult] = field(default_factory=list)
    flags: list[PriceFlag] = field(default_factory=list)

    @property
    def new(self) -> int:
        return sum(r.new for r in self.results)

    @property
    def updated(self) -> int:
        return sum(r.updated for r in self.results)

    @property
    def stale(self) -> int:
        return sum(r.stale for r in self.results)

    @property
    def errors(self) -> int:
        return sum(not r.ok for r in self.results)

    @property
    def failed_providers(self) -> list[str]:
        return list(dict.fromkeys(r.provider for r in self.results if not r.ok))

    def to_dict(self) -> dict[str, Any]:
        return {
            "new": self.new,
            "updated": self.updated,
            "stale": self.stale,
            "errors": self.errors,
            "regions": [asdict(r) for r in self.results],
            "price_flags": [asdict(f) for f in self.flags],
        }


def _safe_message(exc: Exception) -> str:
    """Our errors carry credential-free text; anything else is named by type only, since
    an SDK's message may echo a request with a secret in it."""
    if isinstance(exc, BrokerError):
        return str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    if isinstance(exc, ImportError):
        return "not available: its adapter module could not be imported"
    return f"unexpected {type(exc).__name__} from the provider"


def _regions_for(
    name: str, provider: Any, settings: Settings, db: Database, regions: Sequence[str] | None
) -> list[str | None]:
    if regions:
        return list(dict.fromkeys(regions))
    configured = {"aws": settings.aws_regions, "gcp": settings.gcp_regions}.get(name)
    if configured:
        return list(configured)
    listed = getattr(provider, "regions", None)
    if callable(listed):
        listed = listed()
    if listed:
        return list(listed)
    with db.session() as session:
        known = session.scalars(
            select(OfferRow.region)
            .where(OfferRow.provider == name)
            .distinct()
            .order_by(OfferRow.region)
        ).all()
    return list(known) or [None]


def refresh(
    db: Database,
    settings: Settings,
    providers: list[str],
    regions: list[str] | None,
    progress: Callable[[RefreshProgress], None] | None = None,
) -> RefreshReport:
    """Re-read offers from live providers, one region at a time.

    A failing region is reported, its old offers kept and marked stale, and the other
    regions still refresh. Offers whose per-GPU price is more than 2x off the median for
    their GPU are flagged in the report.
    """
    from providers import registry

    names = list(dict.fromkeys(registry.LIVE if "all" in providers else providers))
    for name in names:
        if name not in registry.names():
            raise UserError(
                f"--provider: {name!r} is unknown; known: all, {', '.join(registry.names())}"
            )
    report = RefreshReport()
    seen: list[dict[str, Any]] = []
    for name in names:
        reason = _no_credentials(name, settings) if "all" in providers else None
        if reason is not None:
            result = RegionResult(name, None, True, skipped=reason)
            report.results.append(result)
            if progress:
                progress(RefreshProgress(name, None, 1, 1, result))
            continue
        try:
            provider = registry.offer_source(name, settings)
            todo = _regions_for(name, provider, settings, db, regions)
        except Exception as exc:  # a provider that cannot even start: all of it is stale
            with db.session() as session:
                stale = mark_stale(session, name, None)
            result = RegionResult(name, None, False, _safe_message(exc), stale=stale)
            report.results.append(result)
            if progress:
                progress(RefreshProgress(name, None, 1, 1, result))
            continue
        for index, region in enumerate(todo):
            if progress:
                progress(RefreshProgress(name, region, index, len(todo)))
            result = _refresh_region(db, name, provider, region, seen)
            report.results.append(result)
            if progress:
                progress(RefreshProgress(name, region, index + 1, len(todo), result))
    report.flags = price_flags(db, seen)
    return report


def _no_credentials(name: str, settings: Settings) -> str | None:
    """Why ``name`` cannot be asked at all (no credentials, no SDK), or None when it can.
    A refresh of ``all`` skips such a provider instead of failing it: an installation
    that only plans from the bundled catalog refreshes cleanly."""
    from broker.services.offers.check import CHECKED, check_one

    if name not in CHECKED:
        return None
    found = check_one(name, settings)
    return None if found.usable else found.detail or "not usable"


def _refresh_region(
    db: Database, name: str, provider: Any, region: str | None, seen: list[dict[str, Any]]
) -> RegionResult:
    try:
        records = list(provider.list_offers([region] if region else None))
    except Exception as exc:
        with db.session() as session:
            stale = mark_stale(session, name, region)
        return RegionResult(name, region, False, _safe_message(exc), stale=stale)
    groups: dict[str, list[OfferRecord]] = defaultdict(list)
    for record in records:
        groups[record.provider].append(record)
    total = UpsertSummary()
    with db.session() as session:
        for owner, group in groups.items():
            own = owner == name
            done, rows = upsert_in(
                session,
                group,
                provider=owner,
                full=own,
                regions=([region] if region else None) if own else None,
            )
            total += done
            seen.extend(rows)
        if name not in groups:  # the region answered with nothing: its old offers are gone
            done, _ = upsert_in(
                session, [], provider=name, full=True, regions=[region] if region else None
            )
            total += done
    return RegionResult(
        name,
        region,
        True,
        None,
        len(records),
        total.new,
        total.updated,
        total.stale,
        total.unchanged,
    )


def price_flags(db: Database, rows: Iterable[dict[str, Any]]) -> list[PriceFlag]:
    """Flags for ``rows`` whose per-GPU price is more than 2x off the median of the live
    offers of the same GPU and pricing."""
    rows = [r for r in rows if r["gpu"] and r["gpus_per_node"] and r["price_per_hour"] is not None]
    if not rows:
        return []
    wanted = {r["gpu"] for r in rows}
    per_gpu: dict[tuple[str, str], list[Decimal]] = defaultdict(list)
    with db.session() as session:
        query = select(
            OfferRow.gpu, OfferRow.pricing, OfferRow.price_per_hour, OfferRow.gpus_per_node
        ).where(
            OfferRow.gpu.in_(sorted(wanted)),
            OfferRow.gpus_per_node > 0,
            OfferRow.price_per_hour.is_not(None),
            OfferRow.stale.is_(False),
        )
        for gpu, pricing, price, gpus in session.execute(query):
            if gpu is not None and price is not None:  # always: the query asks for both
                per_gpu[(gpu, pricing)].append(Decimal(price) / gpus)
    medians = {key: Decimal(statistics.median(values)) for key, values in per_gpu.items()}
    flags: list[PriceFlag] = []
    for r in rows:
        median = medians.get((r["gpu"], r["pricing"]))
        if not median:
            continue
        price = Decimal(r["price_per_hour"]) / r["gpus_per_node"]
        ratio = float(price / median)
        if ratio > 2 or ratio < 0.5:
            flags.append(
                PriceFlag(
                    provider=r["provider"],
                    region=r["region"],
                    zone=r["zone"] or None,
                    instance_type=r["instance_type"],
                    pricing=r["pricing"],
                    gpu=r["gpu"],
                    price_per_gpu_hour=price.quantize(MICRO),
                    median_per_gpu_hour=median.quantize(MICRO),
                    ratio=round(ratio, 3),
                )
            )
    return flags
