"""botocore exceptions become our typed errors, written without the SDK's text."""

from __future__ import annotations

import traceback

import pytest
from botocore.exceptions import ClientError, EndpointConnectionError, NoCredentialsError

from broker.errors import (
    AuthError,
    OutOfCapacity,
    ProviderError,
    QuotaExceeded,
    Throttled,
)
from providers.aws.errors import aws_call, translate

CANARY = "CANARY-s3cr3t-Zq9"


def _client_error(code: str, status: int = 400) -> ClientError:
    response = {
        "Error": {"Code": code, "Message": f"request signed with {CANARY} failed"},
        "ResponseMetadata": {"HTTPStatusCode": status},
    }
    return ClientError(response, "RunInstances")  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("code", "kind"),
    [
        ("InsufficientInstanceCapacity", OutOfCapacity),
        ("Unsupported", OutOfCapacity),
        ("VcpuLimitExceeded", QuotaExceeded),
        ("MaxSpotInstanceCountExceeded", QuotaExceeded),
        ("AuthFailure", AuthError),
        ("UnauthorizedOperation", AuthError),
        ("RequestLimitExceeded", Throttled),
        ("InternalError", ProviderError),
        ("InvalidParameterValue", ProviderError),
    ],
)
def test_codes_map_to_types_and_never_carry_the_message(code: str, kind: type) -> None:
    error = translate(
        _client_error(code), action="RunInstances", region="us-east-1", zone="us-east-1b"
    )
    assert type(error) is kind
    assert CANARY not in str(error) and CANARY not in repr(error)
    assert str(error).startswith("aws: ")


def test_capacity_names_the_zone_and_quota_names_the_code() -> None:
    capacity = translate(
        _client_error("InsufficientInstanceCapacity"),
        action="RunInstances",
        region="us-east-1",
        zone="us-east-1c",
    )
    assert isinstance(capacity, OutOfCapacity) and capacity.zone == "us-east-1c"
    quota = translate(
        _client_error("VcpuLimitExceeded"), action="RunInstances", region="us-east-1", quota="L-1"
    )
    assert isinstance(quota, QuotaExceeded) and quota.quota == "L-1"


def test_server_errors_are_retryable_others_not() -> None:
    server = translate(_client_error("InternalError", 500), action="X", region="us-east-1")
    other = translate(_client_error("InvalidAMIID.NotFound"), action="X", region="us-east-1")
    assert isinstance(server, ProviderError) and server.retryable
    assert isinstance(other, ProviderError) and not other.retryable


def test_missing_credentials_and_network_errors() -> None:
    auth = translate(NoCredentialsError(), action="DescribeRegions", region="us-east-1")
    assert isinstance(auth, AuthError)
    network = translate(
        EndpointConnectionError(endpoint_url=f"https://{CANARY}.example"),
        action="DescribeRegions",
        region="us-east-1",
    )
    assert isinstance(network, ProviderError) and network.retryable
    assert CANARY not in str(network)


def test_aws_call_hides_the_sdk_exception_from_tracebacks() -> None:
    with (
        pytest.raises(OutOfCapacity) as caught,
        aws_call("RunInstances", "us-east-1", zone="us-east-1a"),
    ):
        raise _client_error("InsufficientInstanceCapacity")
    printed = "".join(traceback.format_exception(caught.value))
    assert CANARY not in printed
    assert caught.value.__suppress_context__


def test_aws_call_lets_other_exceptions_through() -> None:
    with pytest.raises(KeyError), aws_call("RunInstances", "us-east-1"):
        raise KeyError("ours")
