"""Is AWS usable from here, with which credentials and endpoint? (``gpubroker check``)

Reports where boto3 found credentials (its ``method``: ``env``, ``shared-credentials-file``,
``iam-role``, ``sso`` ...) and which EC2 endpoint the calls go to. It never reads out a key.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any

from broker.errors import BrokerError
from providers.aws.errors import aws_call

if TYPE_CHECKING:
    from providers.aws.clients import Clients

PROVIDER = "aws"


@dataclass(frozen=True)
class AwsCheck:
    provider: str
    usable: bool
    credential_source: str | None  # boto3's name for where credentials came from
    endpoint: str | None  # the EC2 endpoint in ``region``
    region: str
    detail: str  # one line for the person at the terminal

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def check_credentials(clients: Clients, *, verify: bool = False) -> AwsCheck:
    """Without ``verify`` nothing is sent; with it, STS ``GetCallerIdentity`` proves the
    credentials work."""
    region = clients.default_region
    endpoint: str | None = None
    try:
        endpoint = str(clients.client("ec2", region).meta.endpoint_url)
        with aws_call("find credentials", region):
            credentials = clients.session.get_credentials()
    except BrokerError as exc:
        return AwsCheck(PROVIDER, False, None, endpoint, region, str(exc))
    if credentials is None:
        return AwsCheck(
            PROVIDER,
            False,
            None,
            endpoint,
            region,
            "no credentials: set AWS_PROFILE or AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY, "
            "or run on an instance with a role",
        )
    source = str(getattr(credentials, "method", None) or "unknown")
    profile = clients.session.profile_name
    if source in ("shared-credentials-file", "config-file", "sso") and profile:
        source = f"{source} (profile {profile})"
    if not verify:
        return AwsCheck(PROVIDER, True, source, endpoint, region, f"credentials from {source}")
    try:
        with aws_call("GetCallerIdentity", region):
            clients.client("sts", region).get_caller_identity()
    except BrokerError as exc:
        return AwsCheck(PROVIDER, False, source, endpoint, region, str(exc))
    return AwsCheck(PROVIDER, True, source, endpoint, region, f"credentials from {source} work")
