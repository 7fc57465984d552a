"""botocore failures -> ``broker.errors`` types, with messages written from our own words.

An SDK exception's text can echo parts of a request, so nothing here ever formats one:
messages name the action, the region (and zone) and AWS's error *code*, never its message.
``aws_call`` is the one place adapter code meets botocore exceptions.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from broker.errors import (
    AuthError,
    BrokerError,
    OutOfCapacity,
    ProviderError,
    QuotaExceeded,
    Throttled,
)

PROVIDER = "aws"

# No room for the request in the zone right now: the scheduler cools the pool down.
CAPACITY_CODES = frozenset(
    {
        "InsufficientInstanceCapacity",
        "InsufficientHostCapacity",
        "InsufficientReservedInstanceCapacity",
        "InsufficientCapacity",
        "InsufficientCapacityOnOutpost",
        "InsufficientFreeAddressesInSubnet",
        "SpotMaxPriceTooLow",
        "Unsupported",  # the type is not offered in the requested zone
    }
)
QUOTA_CODES = frozenset(
    {
        "VcpuLimitExceeded",
        "MaxSpotInstanceCountExceeded",
        "InstanceLimitExceeded",
        "PlacementGroupLimitExceeded",
        "ServiceQuotaExceededException",
    }
)
AUTH_CODES = frozenset(
    {
        "AuthFailure",
        "UnauthorizedOperation",
        "InvalidClientTokenId",
        "SignatureDoesNotMatch",
        "ExpiredToken",
        "ExpiredTokenException",
        "RequestExpired",
        "AccessDenied",
        "AccessDeniedException",
        "UnrecognizedClientException",
        "OptInRequired",
        "Blocked",
        "PendingVerification",
    }
)
THROTTLE_CODES = frozenset(
    {
        "RequestLimitExceeded",
        "Throttling",
        "ThrottlingException",
        "ThrottledException",
        "RequestThrottled",
        "RequestThrottledException",
        "TooManyRequestsException",
        "SlowDown",
        "EC2ThrottledException",
    }
)
SERVER_CODES = frozenset({"InternalError", "InternalFailure", "ServiceUnavailable", "Unavailable"})
NOT_FOUND_CODES = frozenset({"InvalidInstanceID.NotFound", "InvalidInstanceID.Malformed"})

_CREDENTIAL_ERRORS = frozenset(
    {
        "NoCredentialsError",
        "PartialCredentialsError",
        "CredentialRetrievalError",
        "NoAuthTokenError",
        "SSOTokenLoadError",
        "UnauthorizedSSOTokenError",
        "TokenRetrievalError",
        "InvalidConfigError",
        "ProfileNotFound",
    }
)
_NETWORK_ERRORS = frozenset(
    {
        "EndpointConnectionError",
        "ConnectionClosedError",
        "ConnectTimeoutError",
        "ReadTimeoutError",
        "ConnectionError",
        "HTTPClientError",
        "ProxyConnectionError",
        "SSLError",
    }
)


def error_code(exc: BaseException) -> str | None:
    """AWS's error code of a botocore ``ClientError`` (None for anything else)."""
    response = getattr(exc, "response", None)
    if not isinstance(response, dict):
        return None
    code = response.get("Error", {}).get("Code")
    return str(code) if code else None


def _where(region: str, zone: str | None) -> str:
    return f"{zone}" if zone else region


def translate(
    exc: BaseException,
    *,
    action: str,
    region: str,
    zone: str | None = None,
    quota: str | None = None,
) -> BrokerError:
    """Our error for a botocore exception raised by ``action`` in ``region`` (and ``zone``).

    ``quota`` names the Service Quotas code a quota error is about, when the caller knows it.
    """
    if isinstance(exc, BrokerError):
        return exc
    where = _where(region, zone)
    code = error_code(exc)
    if code is not None:
        if code in CAPACITY_CODES:
            return OutOfCapacity(PROVIDER, zone or region, f"{action} answered {code}")
        if code in QUOTA_CODES:
            return QuotaExceeded(PROVIDER, quota or code, f"{action} in {where} answered {code}")
        if code in AUTH_CODES:
            return AuthError(PROVIDER, f"{action} in {where} refused: {code}")
        if code in THROTTLE_CODES:
            return Throttled(PROVIDER, f"{action} in {where} still throttled after retries")
        if code in SERVER_CODES or (code.isdigit() and code.startswith("5")):
            return ProviderError(
                PROVIDER, f"{action} in {where} failed on the AWS side ({code})", retryable=True
            )
        return ProviderError(PROVIDER, f"{action} in {where} failed: {code}")
    name = type(exc).__name__
    if name in _CREDENTIAL_ERRORS:
        return AuthError(
            PROVIDER,
            "no usable credentials (environment, shared credentials file, profile or "
            f"instance role) for {action} in {where}",
        )
    if name in _NETWORK_ERRORS:
        return ProviderError(
            PROVIDER, f"cannot reach the AWS endpoint for {action} in {where}", retryable=True
        )
    if name == "ResponseParserError":
        return ProviderError(
            PROVIDER, f"{action} in {where}: the endpoint sent an unreadable answer", retryable=True
        )
    if name == "ParamValidationError":
        return ProviderError(PROVIDER, f"{action} in {where}: the request was not valid")
    return ProviderError(PROVIDER, f"{action} in {where} failed ({name})")


def is_botocore_error(exc: BaseException) -> bool:
    module = type(exc).__module__
    return module.startswith("botocore") or module.startswith("boto3")


@contextmanager
def aws_call(
    action: str, region: str, *, zone: str | None = None, quota: str | None = None
) -> Iterator[None]:
    """Run SDK calls, turning any botocore exception into our type (its text left behind)."""
    try:
        yield
    except BrokerError:
        raise
    except Exception as exc:
        if not is_botocore_error(exc):
            raise
        raise translate(exc, action=action, region=region, zone=zone, quota=quota) from None
