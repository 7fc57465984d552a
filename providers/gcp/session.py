"""The project, credentials and API clients of one GCP adapter.

Endpoints come from settings (``GPUBROKER_GCP_COMPUTE_ENDPOINT`` /
``GPUBROKER_GCP_BILLING_ENDPOINT``); a pointed-elsewhere endpoint (a test server, a
proxy) gets anonymous credentials, the real ones get application-default credentials.
The project comes from settings or, failing that, from application-default credentials.
Neither the credentials nor the project are ever put in a message.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from broker.config import Settings
from broker.errors import ConfigError
from providers.gcp.errors import PROVIDER, RetryPolicy, call

COMPUTE_DEFAULT = "https://compute.googleapis.com"


def display_url(url: str) -> str:
    """An endpoint without any ``user:password@`` part, fit to print."""
    parts = urlsplit(url)
    host = parts.hostname or ""
    if parts.port:
        host = f"{host}:{parts.port}"
    return urlunsplit((parts.scheme, host, parts.path, "", ""))


def last_segment(url: str) -> str:
    """The name at the end of a resource URL (``.../zones/us-east4-a`` -> ``us-east4-a``)."""
    return url.rstrip("/").rsplit("/", 1)[-1]


def _adc() -> tuple[Any, str | None]:
    import google.auth

    credentials, project = google.auth.default(
        scopes=["https://www.googleapis.com/auth/cloud-platform"]
    )
    return credentials, project


@dataclass
class Session:
    """Lazily built clients; ``project`` resolves on first use."""

    settings: Settings
    policy: RetryPolicy = field(default_factory=RetryPolicy)
    _project: str | None = None
    _adc_cache: tuple[Any, str | None] | None = None
    _clients: dict[str, Any] = field(default_factory=dict)

    @property
    def compute_endpoint(self) -> str | None:
        return self.settings.gcp_compute_endpoint

    @property
    def billing_endpoint(self) -> str | None:
        return self.settings.gcp_billing_endpoint

    def adc(self) -> tuple[Any, str | None]:
        if self._adc_cache is None:
            self._adc_cache = call(
                _adc, what="application-default credentials", policy=RetryPolicy(attempts=1)
            )
        return self._adc_cache

    @property
    def project(self) -> str:
        if self._project is None:
            if self.settings.gcp_project:
                self._project = self.settings.gcp_project
            else:
                _, project = self.adc()
                if not project:
                    raise ConfigError(
                        "GPUBROKER_GCP_PROJECT: not set, and application-default "
                        "credentials name no project; set gcp_project in config.toml"
                    )
                self._project = project
        return self._project

    def _options(self, endpoint: str | None) -> dict[str, Any]:
        from google.auth.credentials import AnonymousCredentials

        if endpoint:
            return {
                "credentials": AnonymousCredentials(),
                "client_options": {"api_endpoint": endpoint},
                "transport": "rest",
            }
        credentials, _ = self.adc()
        return {"credentials": credentials, "transport": "rest"}

    def compute(self, name: str) -> Any:
        """A ``google.cloud.compute_v1`` client by class name, e.g. ``"InstancesClient"``."""
        if name not in self._clients:
            from google.cloud import compute_v1

            self._clients[name] = getattr(compute_v1, name)(**self._options(self.compute_endpoint))
        return self._clients[name]

    def catalog(self) -> Any:
        if "catalog" not in self._clients:
            from google.cloud import billing_v1

            self._clients["catalog"] = billing_v1.CloudCatalogClient(
                **self._options(self.billing_endpoint)
            )
        return self._clients["catalog"]

    def credential_source(self, probe: bool = True) -> str | None:
        """Where the credentials of the calls come from, or None where there are none.

        Without ``probe`` application-default credentials are looked for as a file only:
        the metadata server of a GCE VM, which ``google.auth`` would ask next, is not.
        """
        overridden = [
            name
            for name, endpoint in (
                ("compute", self.compute_endpoint),
                ("billing", self.billing_endpoint),
            )
            if endpoint
        ]
        if len(overridden) == 2:
            return "anonymous (endpoints overridden)"
        where = adc_file_source()
        if where is None and not probe:
            return None
        credentials, _ = self.adc()
        kind = type(credentials).__module__.rsplit(".", 1)[-1].replace("_", " ")
        source = f"{where or 'GCE metadata server'} ({kind})"
        if overridden:
            source += f"; anonymous for the {overridden[0]} endpoint override"
        return source


def adc_file_source() -> str | None:
    """Which application-default credentials file ``google.auth`` would read, by the name
    of what points at it; None when there is none."""
    if os.environ.get("GOOGLE_APPLICATION_CREDENTIALS"):
        return "GOOGLE_APPLICATION_CREDENTIALS"
    config = os.environ.get("CLOUDSDK_CONFIG") or str(Path.home() / ".config" / "gcloud")
    if (Path(config) / "application_default_credentials.json").exists():
        return "gcloud application-default login"
    return None


def pages(
    method: Callable[..., Any], request: Any, *, what: str, session: Session
) -> Iterator[Any]:
    """Each response page of a list call, every page retried on its own."""
    token = ""
    while True:
        request.page_token = token
        pager = call(
            lambda: method(request=request, retry=None, timeout=60.0),
            what=what,
            policy=session.policy,
        )
        page = next(iter(pager.pages))
        yield page
        token = page.next_page_token
        if not token:
            return


__all__ = [
    "COMPUTE_DEFAULT",
    "PROVIDER",
    "Session",
    "adc_file_source",
    "display_url",
    "last_segment",
    "pages",
]
