"""The firewall rules of a request launched with ``ingress_cidr`` (network ``default``).

Its nodes carry the network tag ``gpb-<hash>`` (the stem of their names); two rules
target that tag: ``gpb-<hash>-ingress`` lets TCP ``ports`` in from the CIDR, and
``gpb-<hash>-internal`` lets everything in from the other nodes of the gang. Both are
named after the request, so a retried launch finds them (409) instead of doubling them,
and are deleted once the last node of the request is gone.
"""

from __future__ import annotations

import functools
from typing import Any

from providers.base import LaunchRequest
from providers.gcp import operations as ops
from providers.gcp.errors import call
from providers.gcp.session import Session

NETWORK = "global/networks/default"


def names(stem: str) -> tuple[str, str]:
    """The rules of the request whose resources are named ``stem``-something."""
    return f"{stem}-ingress", f"{stem}-internal"


def rules(req: LaunchRequest, stem: str) -> list[Any]:
    """The ``compute_v1.Firewall`` resources ``req`` needs (no ingress rule without ports)."""
    from google.cloud import compute_v1

    ingress, internal = names(stem)
    wanted = [
        compute_v1.Firewall(
            name=internal,
            network=NETWORK,
            direction="INGRESS",
            description="gpubroker: all traffic between the nodes of one gang",
            allowed=[compute_v1.Allowed(I_p_protocol="all")],
            source_tags=[stem],
            target_tags=[stem],
        )
    ]
    if req.ports and req.ingress_cidr:
        wanted.insert(
            0,
            compute_v1.Firewall(
                name=ingress,
                network=NETWORK,
                direction="INGRESS",
                description="gpubroker: the broker reaches the gang's ports",
                allowed=[
                    compute_v1.Allowed(
                        I_p_protocol="tcp", ports=[str(port) for port in sorted(set(req.ports))]
                    )
                ],
                source_ranges=[req.ingress_cidr],
                target_tags=[stem],
            ),
        )
    return wanted


def ensure(session: Session, req: LaunchRequest, stem: str, nonce: str) -> None:
    """Create the rules ``req`` needs; ones that exist already are kept."""
    from google.cloud import compute_v1

    client = session.compute("FirewallsClient")
    for rule in rules(req, stem):
        what = "create firewall rule"
        request = compute_v1.InsertFirewallRequest(
            project=session.project,
            firewall_resource=rule,
            request_id=ops.request_uuid(req.request_id, rule.name, nonce),
        )
        op = call(
            functools.partial(client.insert_unary, request=request, retry=None, timeout=60.0),
            what=what,
            policy=session.policy,
            if_conflict=None,
        )
        if op is not None:
            ops.finish(session, op, what=what)


def delete(session: Session, stem: str) -> None:
    """Delete the rules of the request named ``stem``; ones already gone are fine."""
    client = session.compute("FirewallsClient")
    for name in names(stem):
        what = "delete firewall rule"
        op = call(
            functools.partial(
                client.delete_unary,
                project=session.project,
                firewall=name,
                retry=None,
                timeout=60.0,
            ),
            what=what,
            policy=session.policy,
            if_missing=None,
        )
        if op is not None:
            ops.finish(session, op, what=what)
