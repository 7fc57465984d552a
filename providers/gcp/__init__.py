"""Google Cloud adapter: GCE offers, Cloud Billing prices, GPU quotas and instances.

Uses the real ``google-cloud-compute`` and ``google-cloud-billing`` clients over REST.
Nothing from ``google.*`` is imported at module level, so importing this package (and
``gpubroker --help``) stays fast; the SDKs load on the first call that needs them.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from typing import Any

from broker.config import Settings
from broker.errors import BrokerError
from providers.base import (
    Capability,
    InstanceRecord,
    LaunchRequest,
    OfferRecord,
    QuotaRecord,
)
from providers.gcp.errors import PROVIDER, RetryPolicy
from providers.gcp.session import BILLING_DEFAULT, COMPUTE_DEFAULT, Session, display_url


class GcpProvider:
    name = PROVIDER
    capabilities = frozenset(
        {
            Capability.LIST_OFFERS,
            Capability.QUOTAS,
            Capability.LAUNCH,
            Capability.SPOT,
            Capability.PLACEMENT_GROUPS,
        }
    )

    def __init__(self, settings: Settings, *, retry: RetryPolicy | None = None) -> None:
        self.settings = settings
        self.session = Session(settings, policy=retry or RetryPolicy())

    @property
    def retry(self) -> RetryPolicy:
        return self.session.policy

    @retry.setter
    def retry(self, policy: RetryPolicy) -> None:
        self.session.policy = policy

    def _regions(self, regions: Sequence[str] | None) -> Sequence[str] | None:
        return regions if regions else (self.settings.gcp_regions or None)

    def list_offers(self, regions: Sequence[str] | None = None) -> Iterator[OfferRecord]:
        from providers.gcp.offers import list_offers

        return list_offers(self.session, self._regions(regions))

    def quotas(self, regions: Sequence[str] | None = None) -> Iterator[QuotaRecord]:
        from providers.gcp.quotas import list_quotas

        return list_quotas(self.session, self._regions(regions))

    def _launcher(self):  # type: ignore[no-untyped-def]
        from providers.gcp.launch import Launcher

        return Launcher(self.session)

    def launch(self, req: LaunchRequest) -> list[InstanceRecord]:
        return self._launcher().launch(req)  # type: ignore[no-any-return]

    def list_instances(self, owner_tag: str) -> list[InstanceRecord]:
        return self._launcher().list_instances(owner_tag)  # type: ignore[no-any-return]

    def terminate(self, instance_ids: Sequence[str], request_id: str) -> None:
        self._launcher().terminate(instance_ids, request_id)

    def set_metadata(self, instance_ids: Sequence[str], items: Mapping[str, str]) -> None:
        """Instance metadata attributes, merged into what each instance has (see
        ``metadata``)."""
        from providers.gcp.metadata import set_metadata

        set_metadata(self.session, instance_ids, items)

    def check(self, *, probe: bool = True) -> dict[str, Any]:
        """Usable or not, with which credential source and endpoints; never a secret.

        ``probe`` makes one cheap call (a one-item zone list) to prove the credentials.
        """
        compute = self.settings.gcp_compute_endpoint
        billing = self.settings.gcp_billing_endpoint
        result: dict[str, Any] = {
            "provider": PROVIDER,
            "usable": False,
            "credential_source": None,
            "compute_endpoint": display_url(compute) if compute else COMPUTE_DEFAULT,
            "billing_endpoint": display_url(billing) if billing else BILLING_DEFAULT,
            "project_source": "config" if self.settings.gcp_project else None,
            "detail": "",
        }
        try:
            result["credential_source"] = self.session.credential_source()
            self.session.project  # noqa: B018 - resolves the project or raises ConfigError
            if result["project_source"] is None:
                result["project_source"] = "application-default credentials"
            if probe:
                self._probe()
            result["usable"] = True
            result["detail"] = "ok"
        except BrokerError as exc:
            result["detail"] = exc.message
        return result

    def _probe(self) -> None:
        from google.cloud import compute_v1

        from providers.gcp.errors import call

        client = self.session.compute("ZonesClient")
        request = compute_v1.ListZonesRequest(project=self.session.project, max_results=1)
        call(
            lambda: next(iter(client.list(request=request, retry=None, timeout=30.0).pages)),
            what="list zones",
            policy=RetryPolicy(attempts=2, base_seconds=0.2),
        )


def create(settings: Settings) -> GcpProvider:
    return GcpProvider(settings)


def check(settings: Settings, *, probe: bool = True) -> dict[str, Any]:
    """``gpubroker check`` for GCP: see :meth:`GcpProvider.check`."""
    return GcpProvider(settings).check(probe=probe)
