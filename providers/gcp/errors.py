"""GCE and Cloud Billing failures -> ``broker.errors``, and the retry loop around calls.

Messages are our own words: the text of a google-api-core exception carries the request
URL and the server's message, which may echo a project, a token or user data, so it never
crosses this boundary. Only fixed tokens are kept: an HTTP status, an operation error
code, a quota metric name (matched as ``[A-Z0-9_]+``).
"""

from __future__ import annotations

import random
import re
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any, TypeVar

from broker.errors import (
    AuthError,
    BrokerError,
    OutOfCapacity,
    ProviderError,
    QuotaExceeded,
    Throttled,
)

PROVIDER = "gcp"
T = TypeVar("T")

CAPACITY_CODES = frozenset(
    {
        "ZONE_RESOURCE_POOL_EXHAUSTED",
        "ZONE_RESOURCE_POOL_EXHAUSTED_WITH_DETAILS",
        "RESOURCE_POOL_EXHAUSTED",
        "resourcePoolExhausted",
    }
)
QUOTA_CODES = frozenset({"QUOTA_EXCEEDED", "quotaExceeded"})
RATE_CODES = frozenset({"rateLimitExceeded", "userRateLimitExceeded", "RATE_LIMIT_EXCEEDED"})
EXISTS_CODES = frozenset({"RESOURCE_ALREADY_EXISTS", "alreadyExists"})
_QUOTA_NAME = re.compile(r"Quota '([A-Z0-9_]+)'")
_TOKEN = re.compile(r"^[A-Za-z0-9_]{1,80}$")
_RETRYABLE_STATUS = frozenset({429, 500, 502, 503, 504})


class _Missing(Exception):
    """A 404: absence may be the answer the caller wanted (never leaves ``call``)."""


class _Conflict(Exception):
    """A 409: the resource already exists (never leaves ``call``)."""


class _Stale(Exception):
    """A 412: a fingerprint the write carried is out of date (never leaves ``call``)."""


class _Retryable(Exception):
    """A failure worth another try; ``detail`` is our words for it."""

    def __init__(self, detail: str, *, throttled: bool) -> None:
        super().__init__(detail)
        self.detail = detail
        self.throttled = throttled


_UNSET: Any = object()


def _token(value: object) -> str:
    text = str(value or "")
    return text if _TOKEN.match(text) else "UNKNOWN"


def _quota_name(texts: Iterable[str]) -> str:
    for text in texts:
        match = _QUOTA_NAME.search(text or "")
        if match:
            return match.group(1)
    return "unknown"


def operation_error(
    codes: list[str], messages: list[str], *, what: str, zone: str | None
) -> BrokerError | None:
    """The error for a finished operation's ``error.errors``; None when it is a duplicate."""
    if any(code in EXISTS_CODES for code in codes):
        return None
    capacity = [code for code in codes if code in CAPACITY_CODES]
    if capacity:
        return OutOfCapacity(PROVIDER, zone or "unknown zone", capacity[0])
    if any(code in QUOTA_CODES for code in codes):
        return QuotaExceeded(PROVIDER, _quota_name(messages), what)
    code = _token(codes[0]) if codes else "UNKNOWN"
    return ProviderError(PROVIDER, f"{what}: operation failed ({code})")


def _reasons(exc: Any) -> list[str]:
    reasons = [str(item.get("reason", "")) for item in (exc.errors or ()) if isinstance(item, dict)]
    if getattr(exc, "reason", None):
        reasons.append(str(exc.reason))
    return reasons


def translate(exc: BaseException, *, what: str, zone: str | None = None) -> Exception | None:
    """Our error for an SDK/transport exception; None when ``exc`` is not one of theirs.

    Retryable failures, 404, 409 and 412 come back as private markers that ``call`` resolves.
    """
    from google.api_core import exceptions as api
    from google.auth import exceptions as auth
    from google.protobuf import json_format
    from requests import exceptions as http

    if isinstance(exc, auth.DefaultCredentialsError):
        return AuthError(
            PROVIDER,
            "no application-default credentials: run `gcloud auth application-default "
            "login` or set GOOGLE_APPLICATION_CREDENTIALS",
        )
    if isinstance(exc, auth.GoogleAuthError):
        return AuthError(PROVIDER, f"{what}: credentials were rejected or could not be refreshed")
    if isinstance(exc, http.RequestException):
        return _Retryable("endpoint unreachable", throttled=False)
    if isinstance(exc, json_format.ParseError):
        return ProviderError(PROVIDER, f"{what}: the endpoint answered with malformed data")
    if isinstance(exc, api.RetryError):
        return _Retryable("timed out", throttled=False)
    if not isinstance(exc, api.GoogleAPICallError):
        return (
            ProviderError(PROVIDER, f"{what}: failed")
            if isinstance(exc, api.GoogleAPIError)
            else None
        )
    status = int(exc.code or 0)
    reasons = _reasons(exc)
    message = str(exc.message or "")
    if any(reason in CAPACITY_CODES for reason in reasons) or any(
        code in message for code in CAPACITY_CODES if code.isupper()
    ):
        return OutOfCapacity(PROVIDER, zone or "unknown zone", "ZONE_RESOURCE_POOL_EXHAUSTED")
    if any(reason in QUOTA_CODES for reason in reasons) or "QUOTA_EXCEEDED" in message:
        return QuotaExceeded(PROVIDER, _quota_name([message]), what)
    if status == 429 or any(reason in RATE_CODES for reason in reasons):
        return _Retryable(f"rate limited, HTTP {status}", throttled=True)
    if status == 401:
        return AuthError(PROVIDER, f"{what}: credentials were rejected (HTTP 401)")
    if status == 403:
        return AuthError(PROVIDER, f"{what}: permission denied (HTTP 403)")
    if status == 404:
        return _Missing()
    if status == 409:
        return _Conflict()
    if status == 412:
        return _Stale()
    if status in _RETRYABLE_STATUS:
        return _Retryable(f"server error, HTTP {status}", throttled=True)
    return ProviderError(PROVIDER, f"{what}: request rejected (HTTP {status or 'unknown'})")


@dataclass(frozen=True)
class RetryPolicy:
    """Bounded exponential backoff with full jitter: ``attempts`` calls at most."""

    attempts: int = 4
    base_seconds: float = 0.25
    cap_seconds: float = 4.0

    def delay(self, attempt: int) -> float:
        return random.uniform(0, min(self.cap_seconds, self.base_seconds * 2**attempt))


def call(
    fn: Callable[[], T],
    *,
    what: str,
    policy: RetryPolicy,
    zone: str | None = None,
    if_missing: Any = _UNSET,
    if_conflict: Any = _UNSET,
    if_stale: Any = _UNSET,
    sleep: Callable[[float], None] = time.sleep,
) -> T:
    """Run ``fn``, retrying rate limits, 5xx and unreachable endpoints; translate errors.

    ``if_missing`` / ``if_conflict`` / ``if_stale``, when given, are returned for a 404 /
    409 / 412 instead of an error. The error is raised outside the ``except`` block so it
    carries no link to the SDK exception, whose text may hold what we promise never to show.
    """
    for attempt in range(policy.attempts):
        error: Exception | None = None
        try:
            return fn()
        except BrokerError:
            raise
        except Exception as exc:
            error = translate(exc, what=what, zone=zone)
            if error is None:
                raise
        if isinstance(error, _Missing):
            if if_missing is not _UNSET:
                return if_missing
            error = ProviderError(PROVIDER, f"{what}: not found (HTTP 404)")
        elif isinstance(error, _Conflict):
            if if_conflict is not _UNSET:
                return if_conflict
            error = ProviderError(PROVIDER, f"{what}: conflict (HTTP 409)")
        elif isinstance(error, _Stale):
            if if_stale is not _UNSET:
                return if_stale
            error = ProviderError(PROVIDER, f"{what}: precondition failed (HTTP 412)")
        elif isinstance(error, _Retryable):
            if attempt + 1 < policy.attempts:
                sleep(policy.delay(attempt))
                continue
            detail = f"{what}: still failing after {policy.attempts} attempts ({error.detail})"
            error = (
                Throttled(PROVIDER, detail)
                if error.throttled
                else ProviderError(PROVIDER, detail, retryable=True)
            )
        raise error
    raise AssertionError("unreachable")  # pragma: no cover
