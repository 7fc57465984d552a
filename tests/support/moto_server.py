"""moto's EC2 (and STS, Service Quotas) on 127.0.0.1 for the real boto3 client.

One ``ThreadedMotoServer`` per test session, on a free port; every test that asks for
``moto_aws`` starts from a clean cloud (moto's reset API) and with an environment that
points boto3 at the server with dummy credentials and no stray profile or instance role.

Fixtures (import the ones you use, and the ones they need, into your test module; a
file-level ruff exemption for F811 lets test arguments share the fixtures' names)::

    from tests.support.aws_price_list import aws_price_list, aws_price_list_server  # noqa: F401
    from tests.support.moto_server import (  # noqa: F401
        aws_provider, aws_settings, moto_aws, moto_server,
    )

- ``moto_server`` (session): the running server, ``.url`` and ``.reset()``.
- ``moto_aws``: sets ``AWS_ENDPOINT_URL`` to the server, ``AWS_ACCESS_KEY_ID`` /
  ``AWS_SECRET_ACCESS_KEY`` to ``testing`` (override them after, e.g. with a canary),
  ``AWS_DEFAULT_REGION=us-east-1``, no config/credential files, no instance metadata;
  resets moto's state; returns the server.
- ``aws_settings``: ``Settings`` for a fresh ``GPUBROKER_HOME`` (the ``home`` fixture of
  tests/conftest.py) after setting ``GPUBROKER_AWS_PRICE_LIST_URL`` to the price-list
  fixture and ``GPUBROKER_AWS_REGIONS=us-east-1,us-west-2`` in the environment.
- ``aws_provider``: ``providers.aws.create(aws_settings)``.

Outside pytest: ``with moto_endpoint() as server: ...`` and set the variables yourself
(``aws_environment(server.url, a_missing_dir)`` gives them). moto implements neither ClientToken
idempotency nor placement groups nor EC2 Service Quotas; faults it cannot produce come
from ``tests.support.aws_faults``. Its first ``describe_instance_types`` costs ~1.5 s,
which is why the server lives for the whole session.
"""

from __future__ import annotations

import logging
import os
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

DUMMY_KEY_ID = "testing"
DUMMY_SECRET = "testing"
DEFAULT_REGION = "us-east-1"
TEST_REGIONS = ("us-east-1", "us-west-2")


@dataclass
class MotoServer:
    url: str

    def reset(self) -> None:
        """Forget every resource moto holds (instances, subnets made, ...)."""
        request = urllib.request.Request(f"{self.url}/moto-api/reset", method="POST")
        with urllib.request.urlopen(request, timeout=30) as response:
            response.read()


@contextmanager
def moto_endpoint() -> Iterator[MotoServer]:
    """Run moto's server on a free port of 127.0.0.1 until the block ends."""
    from moto.server import ThreadedMotoServer

    # moto answers what it does not implement with a 500 and a logged traceback: quiet.
    logging.getLogger("werkzeug").setLevel(logging.CRITICAL)
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    try:
        yield MotoServer(url=f"http://{host}:{port}")
    finally:
        server.stop()


def aws_environment(url: str, missing: Path) -> dict[str, str]:
    """The variables that point boto3 at ``url`` with dummy credentials.

    ``missing`` is a path that does not exist, used for the config and credential files
    so a developer's own ~/.aws never leaks into a test.
    """
    return {
        "AWS_ENDPOINT_URL": url,
        "AWS_ACCESS_KEY_ID": DUMMY_KEY_ID,
        "AWS_SECRET_ACCESS_KEY": DUMMY_SECRET,
        "AWS_DEFAULT_REGION": DEFAULT_REGION,
        "AWS_CONFIG_FILE": str(missing / "config"),
        "AWS_SHARED_CREDENTIALS_FILE": str(missing / "credentials"),
        "AWS_EC2_METADATA_DISABLED": "true",
    }


_CLEARED = ("AWS_SESSION_TOKEN", "AWS_SECURITY_TOKEN", "AWS_PROFILE", "AWS_DEFAULT_PROFILE")


@pytest.fixture(scope="session")
def moto_server() -> Iterator[MotoServer]:
    with moto_endpoint() as server:
        yield server


@pytest.fixture
def moto_aws(
    moto_server: MotoServer, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> MotoServer:
    for key in list(os.environ):
        if key in _CLEARED or key.startswith("AWS_ENDPOINT_URL_"):
            monkeypatch.delenv(key)
    for key, value in aws_environment(moto_server.url, tmp_path / "no-aws").items():
        monkeypatch.setenv(key, value)
    moto_server.reset()
    return moto_server


@pytest.fixture
def aws_settings(
    moto_aws: MotoServer, aws_price_list: Any, home: Path, monkeypatch: pytest.MonkeyPatch
) -> Any:
    """Settings for the test's home; the same variables are set in the environment, so a
    CLI run inside the test sees the same price list and regions."""
    from broker.config import load_settings

    monkeypatch.setenv("GPUBROKER_AWS_PRICE_LIST_URL", aws_price_list.url)
    monkeypatch.setenv("GPUBROKER_AWS_REGIONS", ",".join(TEST_REGIONS))
    return load_settings()


@pytest.fixture
def aws_provider(aws_settings: Any) -> Any:
    from providers.aws import create

    return create(aws_settings)
