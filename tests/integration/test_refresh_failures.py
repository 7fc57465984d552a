"""A live refresh never marks the bundled catalog stale, skips providers without
credentials when asked for ``all``, and names the provider that failed."""

from __future__ import annotations

import contextlib
import io
import sys
from pathlib import Path

import pytest
from sqlalchemy import func, select

from broker.cli import app as app_module
from broker.config import load_settings
from broker.db.engine import Database
from broker.db.models import OfferRow
from broker.services.offers import refresh
from broker.services.offers.bootstrap import ensure_catalog
from broker.services.offers.upsert import mark_stale

NO_CLOUD = {
    "AWS_EC2_METADATA_DISABLED": "true",
    "AWS_SHARED_CREDENTIALS_FILE": "/nonexistent/credentials",
    "AWS_CONFIG_FILE": "/nonexistent/config",
    "GOOGLE_APPLICATION_CREDENTIALS": "/nonexistent/adc.json",
    "CLOUDSDK_CONFIG": "/nonexistent/gcloud",
}


@pytest.fixture
def no_cloud(monkeypatch: pytest.MonkeyPatch) -> None:
    for key in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_PROFILE"):
        monkeypatch.delenv(key, raising=False)
    for key, value in NO_CLOUD.items():
        monkeypatch.setenv(key, value)


def _stale(database: Database) -> int:
    with database.session() as session:
        return int(session.scalar(select(func.count()).where(OfferRow.stale.is_(True))) or 0)


def test_refresh_all_without_credentials_skips_and_keeps_the_catalog_fresh(
    home: Path, no_cloud: None
) -> None:
    settings = load_settings({"GPUBROKER_HOME": str(home)})
    database = Database(settings.database_url)
    ensure_catalog(database, settings)
    report = refresh.refresh(database, settings, ["all"], None)
    assert report.errors == 0 and {r.provider for r in report.results} == {"aws", "gcp"}
    assert all(r.skipped for r in report.results)
    assert _stale(database) == 0
    database.dispose()


def test_a_failed_refresh_marks_its_own_offers_stale_but_never_the_catalogs(
    home: Path,
) -> None:
    settings = load_settings({"GPUBROKER_HOME": str(home)})
    database = Database(settings.database_url)
    ensure_catalog(database, settings)
    with database.session() as session:
        bundled = session.scalar(select(func.count()).where(OfferRow.provider == "aws"))
        session.add(
            OfferRow(
                provider="aws",
                region="us-east-1",
                zone="",
                instance_type="p9.live",
                gpu="H100-80GB",
                gpus_per_node=8,
                pricing="on_demand",
                source="aws-api",
            )
        )
    with database.session() as session:
        marked = mark_stale(session, "aws", None)
    assert bundled and marked == 1 and _stale(database) == 1
    database.dispose()


def test_offers_refresh_names_the_provider_that_failed(home: Path, no_cloud: None) -> None:
    err = io.StringIO()
    saved, sys.argv = sys.argv, ["gpubroker", "offers", "refresh", "--provider", "gcp"]
    try:
        with contextlib.redirect_stderr(err), pytest.raises(SystemExit) as ended:
            app_module.main()
    finally:
        sys.argv = saved
    lines = err.getvalue().strip().splitlines()
    assert ended.value.code == 1 and len(lines) == 1
    assert lines[0].startswith("error: gcp: refresh failed")
