"""The Google Cloud adapter: GCE offers, Cloud Billing prices, GPU quotas and convergent,
gang-safe launches through the real ``google-cloud-compute`` and ``google-cloud-billing``
clients over REST.

Nothing from ``google.*`` is imported when this package is, so ``gpubroker --help`` stays
fast; the SDKs load on the first call that needs them. Credentials come from
application-default credentials; ``GPUBROKER_GCP_COMPUTE_ENDPOINT`` and
``GPUBROKER_GCP_BILLING_ENDPOINT`` point the calls elsewhere.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from broker.config import Settings
    from providers.gcp.provider import GcpProvider


def create(settings: Settings) -> GcpProvider:
    from providers.gcp.provider import GcpProvider

    return GcpProvider(settings)
