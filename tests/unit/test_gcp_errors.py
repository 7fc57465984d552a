"""SDK exceptions -> our typed errors, and the bounded retry loop."""

from __future__ import annotations

import pytest
from google.api_core import exceptions as api

from broker.errors import AuthError, OutOfCapacity, ProviderError, QuotaExceeded, Throttled
from providers.gcp.errors import RetryPolicy, call, operation_error

CANARY = "CANARY-e1b2"
NO_WAIT = RetryPolicy(attempts=4, base_seconds=0.0)


def _raiser(errors):
    calls = []

    def fn():
        calls.append(1)
        if errors:
            raise errors.pop(0)
        return "ok"

    return fn, calls


def _http(status, reason="", message=f"boom {CANARY}"):
    return api.from_http_status(status, message, errors=[{"reason": reason, "message": message}])


def test_retries_rate_limits_and_5xx_then_succeeds():
    fn, calls = _raiser([_http(429, "rateLimitExceeded"), _http(503)])
    delays = []
    assert call(fn, what="list", policy=RetryPolicy(attempts=4), sleep=delays.append) == "ok"
    assert len(calls) == 3 and len(delays) == 2 and all(d >= 0 for d in delays)


def test_retries_are_bounded_and_end_as_throttled():
    fn, calls = _raiser([_http(429) for _ in range(6)])
    with pytest.raises(Throttled) as caught:
        call(fn, what="list", policy=NO_WAIT, sleep=lambda _: None)
    assert len(calls) == 4 and CANARY not in str(caught.value)
    assert caught.value.__context__ is None


@pytest.mark.parametrize(
    ("exc", "kind"),
    [
        (_http(401), AuthError),
        (_http(403, "forbidden"), AuthError),
        (_http(403, "quotaExceeded", f"Quota 'NVIDIA_H100_GPUS' exceeded {CANARY}"), QuotaExceeded),
        (_http(400, "invalid"), ProviderError),
        (_http(404, "notFound"), ProviderError),
        (
            _http(503, "resourcePoolExhausted", "ZONE_RESOURCE_POOL_EXHAUSTED " + CANARY),
            OutOfCapacity,
        ),
    ],
)
def test_failures_become_our_types_without_their_text(exc, kind):
    fn, _ = _raiser([exc])
    with pytest.raises(kind) as caught:
        call(fn, what="create instance", policy=NO_WAIT, zone="us-central1-a", sleep=lambda _: None)
    assert CANARY not in str(caught.value)
    if isinstance(caught.value, QuotaExceeded):
        assert caught.value.quota == "NVIDIA_H100_GPUS"
    if isinstance(caught.value, OutOfCapacity):
        assert caught.value.zone == "us-central1-a"


def test_missing_conflict_and_stale_can_be_answers():
    fn, _ = _raiser([_http(404, "notFound")])
    assert call(fn, what="get", policy=NO_WAIT, if_missing=None) is None
    fn, _ = _raiser([_http(409, "alreadyExists")])
    assert call(fn, what="insert", policy=NO_WAIT, if_conflict="exists") == "exists"
    fn, _ = _raiser([_http(412, "conditionNotMet")])
    assert call(fn, what="set metadata", policy=NO_WAIT, if_stale="stale") == "stale"
    fn, calls = _raiser([_http(412, "conditionNotMet")])
    with pytest.raises(ProviderError) as caught:
        call(fn, what="set metadata", policy=NO_WAIT)
    assert "412" in str(caught.value) and not caught.value.retryable and len(calls) == 1


def test_programming_errors_are_not_swallowed():
    fn, _ = _raiser([KeyError("x")])
    with pytest.raises(KeyError):
        call(fn, what="x", policy=NO_WAIT)


def test_operation_errors():
    capacity = operation_error(["ZONE_RESOURCE_POOL_EXHAUSTED"], [CANARY], what="w", zone="z-a")
    assert isinstance(capacity, OutOfCapacity) and capacity.zone == "z-a"
    quota = operation_error(
        ["QUOTA_EXCEEDED"], ["Quota 'GPUS_ALL_REGIONS' exceeded."], what="w", zone=None
    )
    assert isinstance(quota, QuotaExceeded) and quota.quota == "GPUS_ALL_REGIONS"
    assert operation_error(["RESOURCE_ALREADY_EXISTS"], [""], what="w", zone=None) is None
    other = operation_error([f"weird {CANARY}"], [CANARY], what="w", zone=None)
    assert isinstance(other, ProviderError) and CANARY not in str(other)
