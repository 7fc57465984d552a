"""The ``test_cloud`` pytest fixture: a running ``TestCloud`` for one test.

Import it into the test module (``from tests.support.testcloud.fixtures import
test_cloud  # noqa: F401``). Without root or ``ip netns`` it skips with the reason;
under CI (``CI`` set, as tests/conftest.py does for PostgreSQL) it fails instead, since
CI must run these tests. Leftovers of crashed earlier runs are removed first (by
``TestCloud.start``); the cloud is torn down after the test whatever its outcome. Host
logs are kept under the test's ``tmp_path / "testcloud"`` for a look after a failure.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.testcloud.cloud import TestCloud, default_env
from tests.support.testcloud.network import unavailable_reason


def require_test_cloud() -> None:
    """Skip (or, under CI, fail) the calling test where a test cloud cannot run."""
    reason = unavailable_reason()
    if reason is None:
        return
    if os.environ.get("CI"):
        pytest.fail(f"the test cloud is required under CI: {reason}")
    pytest.skip(reason)


@pytest.fixture
def test_cloud(tmp_path: Path) -> Iterator[TestCloud]:
    """A running test cloud with ``default_env()``; set ``test_cloud.env`` before booting.
    (A fixture object, so pytest does not collect it as a test where it is imported.)"""
    require_test_cloud()
    with TestCloud(env=default_env(), log_dir=tmp_path / "testcloud") as cloud:
        yield cloud
