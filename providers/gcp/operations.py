"""GCE operations: the ``requestId`` that makes a call idempotent, waiting for an
operation (zonal, regional or global) and reading how it ended.

Operations are polled with the scope's ``OperationsClient.wait``: the extended-operation
``result()`` ignores a custom endpoint.
"""

from __future__ import annotations

import time
import uuid
from typing import Any

from broker.errors import BrokerError, ProviderError
from providers.gcp.errors import PROVIDER, call, operation_error
from providers.gcp.session import Session

OPERATION_DEADLINE_S = 1800.0
_NAMESPACE = uuid.UUID("6c0b7f0e-3f38-4d5e-9a52-4b1e8e2a7c11")


def request_uuid(*parts: object) -> str:
    """A GCE ``requestId``: the same parts give the same UUID.

    Inserts derive it from (request, node, a nonce per ``launch`` call): every retry inside
    the call is then one request to GCE, while a later call gets a fresh one. Without the
    nonce GCE would replay the first call's operation for up to an hour, failure included,
    so a launch retried after capacity came back would fail again; across calls, the
    deterministic instance names (409 on a duplicate) are what prevent double nodes.
    """
    return str(uuid.uuid5(_NAMESPACE, "/".join(str(part) for part in parts)))


def _poll(session: Session, name: str, *, zone: str | None, region: str | None, what: str) -> Any:
    project = session.project
    if zone is not None:
        client = session.compute("ZoneOperationsClient")
        scope: dict[str, str] = {"zone": zone}
    elif region is not None:
        client = session.compute("RegionOperationsClient")
        scope = {"region": region}
    else:
        client = session.compute("GlobalOperationsClient")
        scope = {}
    return call(
        lambda: client.wait(project=project, operation=name, retry=None, timeout=150.0, **scope),
        what=what,
        policy=session.policy,
        zone=zone,
    )


def wait(
    session: Session, op: Any, *, zone: str | None = None, region: str | None = None, what: str
) -> Any:
    """Poll ``op`` until DONE: in ``zone``, else in ``region``, else a global operation."""
    from google.cloud import compute_v1

    done = compute_v1.Operation.Status.DONE
    deadline = time.monotonic() + OPERATION_DEADLINE_S
    while op.status != done:
        if time.monotonic() > deadline:
            raise ProviderError(
                PROVIDER, f"{what}: operation did not finish in time", retryable=True
            )
        op = _poll(session, op.name, zone=zone, region=region, what=what)
    return op


def failure(op: Any, *, what: str, zone: str | None) -> BrokerError | None:
    """The error a finished operation ended with; None when it succeeded."""
    errors = list(op.error.errors) if op.error else []
    if not errors:
        return None
    return operation_error(
        [error.code for error in errors],
        [error.message for error in errors],
        what=what,
        zone=zone,
    )


def finish(
    session: Session, op: Any, *, zone: str | None = None, region: str | None = None, what: str
) -> None:
    """Wait for ``op`` and raise the error it ended with, if any."""
    error = failure(wait(session, op, zone=zone, region=region, what=what), what=what, zone=zone)
    if error is not None:
        raise error
