"""The AWS adapter: EC2 GPU offers (public price list + spot history), Service Quotas,
and convergent, gang-safe launches through boto3.

boto3 is imported only when a provider is created, so importing this package stays cheap.
Credentials come from boto3's chain; ``AWS_ENDPOINT_URL`` points every call elsewhere.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from broker.config import Settings
    from providers.aws.provider import AwsProvider


def create(settings: Settings) -> AwsProvider:
    from providers.aws.provider import AwsProvider

    return AwsProvider(settings)
