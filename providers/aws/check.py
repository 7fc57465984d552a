"""Is AWS usable from here, with which credentials and endpoint? (``gpubroker check``)

Reports where boto3 found credentials (its ``method``: ``env``, ``shared-credentials-file``,
``iam-role``, ``sso`` ...) and which EC2 endpoint the calls go to. It never reads out a key.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from broker.errors import BrokerError
from providers.aws.errors import aws_call
from providers.base import ProviderCheck

if TYPE_CHECKING:
    from providers.aws.clients import Clients

PROVIDER = "aws"
_NO_CREDENTIALS = (
    "no credentials: set AWS_PROFILE or AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY, "
    "or run on an instance with a role"
)


def check_credentials(clients: Clients, *, probe: bool = False) -> ProviderCheck:
    """Without ``probe`` nothing is sent; with it, STS ``GetCallerIdentity`` proves the
    credentials work."""
    region = clients.default_region
    endpoint: str | None = None
    try:
        endpoint = str(clients.client("ec2", region).meta.endpoint_url)
        with aws_call("find credentials", region):
            credentials = clients.session.get_credentials()
    except BrokerError as exc:
        return ProviderCheck(PROVIDER, False, None, endpoint, exc.message)
    if credentials is None:
        return ProviderCheck(PROVIDER, False, None, endpoint, _NO_CREDENTIALS)
    source = str(getattr(credentials, "method", None) or "unknown")
    profile = clients.session.profile_name
    if source in ("shared-credentials-file", "config-file", "sso") and profile:
        source = f"{source} (profile {profile})"
    if not probe:
        return ProviderCheck(PROVIDER, True, source, endpoint, f"region {region}")
    try:
        with aws_call("GetCallerIdentity", region):
            clients.client("sts", region).get_caller_identity()
    except BrokerError as exc:
        return ProviderCheck(PROVIDER, False, source, endpoint, exc.message)
    return ProviderCheck(PROVIDER, True, source, endpoint, f"region {region}; the credentials work")
