"""Faults moto cannot produce, injected into an ``AwsProvider``'s boto3 clients.

Each fault hooks botocore's ``before-send`` event and answers in place of the server with
the HTTP response AWS would send, so botocore's retry policy, its error parsing and the
adapter's translation all run for real. Use::

    from tests.support.aws_faults import FailCalls, Throttle, inject

    with inject(provider, FailCalls("RunInstances", code="InsufficientInstanceCapacity",
                                    on_calls={2})):
        provider.launch(req)            # the 2nd RunInstances request fails

    with inject(provider, LoseResponse("RunInstances", on_calls={1})):
        provider.launch(req)            # the node is made, the call fails as a timeout

    with inject(provider, Throttle(rate=0.3, seed=1)) as throttle:
        list(provider.list_offers())    # 30 % of requests throttled, at most 3 in a row
    throttle.most_attempts              # attempts of the most-retried call

Requests are counted as sent, retries included.
"""

from __future__ import annotations

import json
import random
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any, Protocol
from urllib.parse import parse_qs

QUERY_SERVICES = ("ec2", "sts")  # XML error bodies; the others speak JSON


class _Raw:
    def __init__(self, body: bytes) -> None:
        self._body = body

    def stream(self, **_: Any) -> Iterator[bytes]:
        yield self._body


def error_response(
    service: str, code: str, message: str = "Injected fault.", status: int = 400
) -> Any:
    """The HTTP response AWS sends for error ``code`` of ``service``."""
    from botocore.awsrequest import AWSResponse

    if service == "ec2":
        body = (
            '<?xml version="1.0" encoding="UTF-8"?>\n<Response><Errors><Error>'
            f"<Code>{code}</Code><Message>{message}</Message></Error></Errors>"
            "<RequestID>00000000-0000-0000-0000-000000000000</RequestID></Response>"
        ).encode()
        headers = {"Content-Type": "text/xml;charset=UTF-8"}
    elif service in QUERY_SERVICES:
        body = (
            f"<ErrorResponse><Error><Type>Sender</Type><Code>{code}</Code>"
            f"<Message>{message}</Message></Error><RequestId>0</RequestId></ErrorResponse>"
        ).encode()
        headers = {"Content-Type": "text/xml"}
    else:
        body = json.dumps({"__type": code, "message": message}).encode()
        headers = {"Content-Type": "application/x-amz-json-1.1", "x-amzn-ErrorType": code}
    return AWSResponse("https://injected.invalid/", status, headers, _Raw(body))


def _header(request: Any, name: str) -> str:
    value = request.headers.get(name, "")
    return value.decode() if isinstance(value, bytes) else str(value or "")


class Fault(Protocol):
    event: str

    def __call__(self, request: Any, **kwargs: Any) -> Any: ...


class FailCalls:
    """Answer the ``on_calls``-th requests (1-based) of ``service.operation`` with ``code``."""

    def __init__(
        self,
        operation: str,
        *,
        code: str = "InsufficientInstanceCapacity",
        on_calls: set[int] | frozenset[int] | None = None,
        service: str = "ec2",
        status: int = 400,
        message: str = "Injected fault.",
    ) -> None:
        self.event = f"before-send.{service}.{operation}"
        self.service = service
        self.code = code
        self.on_calls = frozenset(on_calls) if on_calls is not None else None
        self.status = status
        self.message = message
        self.calls = 0
        self.failed = 0

    def __call__(self, request: Any, **kwargs: Any) -> Any:
        self.calls += 1
        if self.on_calls is None or self.calls in self.on_calls:
            self.failed += 1
            return error_response(self.service, self.code, self.message, self.status)
        return None


class Throttle:
    """Throttle each request of ``service`` with probability ``rate`` (seeded), never more
    than ``max_in_a_row`` attempts of one call (None: no limit)."""

    def __init__(
        self,
        rate: float = 0.3,
        *,
        seed: int = 0,
        max_in_a_row: int | None = 3,
        service: str = "ec2",
        code: str = "RequestLimitExceeded",
    ) -> None:
        self.event = f"before-send.{service}"
        self.service = service
        self.rate = rate
        self.max_in_a_row = max_in_a_row
        self.code = code
        self._random = random.Random(seed)
        self.attempts: Counter[str] = Counter()  # invocation id -> requests sent
        self.throttled = 0

    @property
    def calls(self) -> int:
        return len(self.attempts)

    @property
    def most_attempts(self) -> int:
        return max(self.attempts.values(), default=0)

    def __call__(self, request: Any, **kwargs: Any) -> Any:
        invocation = _header(request, "amz-sdk-invocation-id") or str(id(request))
        self.attempts[invocation] += 1
        if self.max_in_a_row is not None and self.attempts[invocation] > self.max_in_a_row:
            return None
        if self._random.random() < self.rate:
            self.throttled += 1
            return error_response(self.service, self.code, "Request limit exceeded.")
        return None


class LoseResponse:
    """Let the ``on_calls``-th ``service.operation`` reach the server, then lose its answer
    (a read timeout): the cloud did the work but the caller never heard."""

    def __init__(
        self, operation: str, *, on_calls: set[int] | frozenset[int], service: str = "ec2"
    ) -> None:
        self.event = f"after-call.{service}.{operation}"
        self.on_calls = frozenset(on_calls)
        self.calls = 0
        self.lost = 0

    def __call__(self, **kwargs: Any) -> None:
        from botocore.exceptions import ReadTimeoutError

        self.calls += 1
        if self.calls in self.on_calls:
            self.lost += 1
            raise ReadTimeoutError(endpoint_url="https://injected.invalid/")


class Answer:
    """Answer ``service.operation`` in place of the server, for APIs moto lacks (placement
    groups, EC2 Service Quotas). ``respond`` gets the request's parameters (query or JSON)
    and returns the XML text (query services) or the JSON document (the others)."""

    def __init__(
        self,
        operation: str,
        respond: Callable[[dict[str, Any]], str | dict[str, Any]],
        *,
        service: str = "ec2",
    ) -> None:
        self.event = f"before-send.{service}.{operation}"
        self.service = service
        self.respond = respond
        self.calls: list[dict[str, Any]] = []

    def __call__(self, request: Any, **kwargs: Any) -> Any:
        from botocore.awsrequest import AWSResponse

        raw = request.body or b""
        text = raw.decode() if isinstance(raw, bytes) else str(raw)
        if self.service in QUERY_SERVICES:
            params: dict[str, Any] = {k: v[0] for k, v in parse_qs(text).items()}
            answer = self.respond(params)
            body = str(answer).encode()
            content_type = "text/xml;charset=UTF-8"
        else:
            params = json.loads(text or "{}")
            body = json.dumps(self.respond(params)).encode()
            content_type = "application/x-amz-json-1.1"
        self.calls.append(params)
        return AWSResponse(
            "https://injected.invalid/", 200, {"Content-Type": content_type}, _Raw(body)
        )


@contextmanager
def inject(provider: Any, fault: Fault) -> Iterator[Any]:
    """Hook ``fault`` into every client of ``provider`` for the block."""
    provider.register_event(fault.event, fault)
    try:
        yield fault
    finally:
        provider.unregister_event(fault.event, fault)
