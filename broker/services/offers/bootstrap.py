"""The bundled catalog and this machine's offer, loaded into an empty offers table."""

from __future__ import annotations

from collections import defaultdict
from typing import TYPE_CHECKING

from sqlalchemy import select
from sqlalchemy.exc import IntegrityError

from broker.db.engine import Database
from broker.db.models import OfferRow
from broker.errors import BrokerError
from broker.services.offers.upsert import upsert_in
from broker.services.offers.values import UpsertSummary
from providers.base import OfferRecord

if TYPE_CHECKING:
    from broker.config import Settings


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
    for record in registry.offer_source("catalog", settings).list_offers():
        by_provider[record.provider].append(record)
    local: list[OfferRecord] = []
    if _has_module("providers.local"):
        try:
            local = list(registry.offer_source("local", settings).list_offers())
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
