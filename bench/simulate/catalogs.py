"""The shared cloud catalogs, imported into a fresh database for a bench run."""

from __future__ import annotations

import tempfile
from collections.abc import Iterable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
CATALOGS = ROOT.parent / "shared" / "datasets" / "cloud-catalogs"


def catalog_database(providers: Iterable[str], prefix: str) -> tuple[Path, Any, Any]:
    """A fresh working folder, its settings and its database, with each provider's
    ``<provider>_vms.csv`` imported as SkyPilot rows."""
    from broker.config import load_settings
    from broker.db.engine import Database
    from broker.services.offers.imports import import_file

    work = Path(tempfile.mkdtemp(prefix=prefix))
    settings = load_settings({"GPUBROKER_HOME": str(work)})
    db = Database(settings.database_url)
    for name in providers:
        import_file(db, CATALOGS / f"{name}_vms.csv", "skypilot", provider=name)
    return work, settings, db
