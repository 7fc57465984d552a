"""``set_metadata``: items a node reads from its metadata service, at
``http://169.254.169.254/computeMetadata/v1/instance/attributes/<key>``.

GCE replaces an instance's metadata as a whole and guards the write with the fingerprint
of what it replaces: each instance is read, the items merged into what it has, and the
whole written back with the fingerprint read. A 412 means someone wrote in between: read
again and merge again. Items already in place cost no write.
"""

from __future__ import annotations

import functools
import json
from collections.abc import Mapping, Sequence
from typing import Any

from broker.errors import ProviderError
from providers.gcp import operations as ops
from providers.gcp.errors import PROVIDER, call
from providers.gcp.launch import split_instance_id
from providers.gcp.session import Session

STALE_TRIES = 4  # reads and writes of one instance while others keep changing it
_STALE: Any = object()


def set_metadata(session: Session, instance_ids: Sequence[str], items: Mapping[str, str]) -> None:
    for instance_id in dict.fromkeys(instance_ids):
        _set_one(session, instance_id, dict(items))


def _get(session: Session, instance_id: str) -> Any:
    zone, name, number = split_instance_id(instance_id)
    client = session.compute("InstancesClient")
    found = call(
        lambda: client.get(
            project=session.project, zone=zone, instance=name, retry=None, timeout=60.0
        ),
        what=f"get instance in {zone}",
        policy=session.policy,
        if_missing=None,
    )
    if found is None or (number is not None and str(found.id) != number):
        raise ProviderError(PROVIDER, f"set metadata: no instance {instance_id}")
    return found


def _set_one(session: Session, instance_id: str, items: dict[str, str]) -> None:
    from google.cloud import compute_v1

    zone, name, _ = split_instance_id(instance_id)
    client = session.compute("InstancesClient")
    what = f"set instance metadata in {zone}"
    for _ in range(STALE_TRIES):
        metadata = _get(session, instance_id).metadata
        current = {item.key: item.value for item in metadata.items}
        if all(current.get(key) == value for key, value in items.items()):
            return
        merged = {**current, **items}
        request = compute_v1.SetMetadataInstanceRequest(
            project=session.project,
            zone=zone,
            instance=name,
            metadata_resource=compute_v1.Metadata(
                fingerprint=metadata.fingerprint,
                items=[compute_v1.Items(key=key, value=value) for key, value in merged.items()],
            ),
            # The same write (instance, fingerprint, items) is the same request to GCE.
            request_id=ops.request_uuid(
                "metadata", instance_id, metadata.fingerprint, json.dumps(items, sort_keys=True)
            ),
        )
        op = call(
            functools.partial(client.set_metadata_unary, request=request, retry=None, timeout=60.0),
            what=what,
            policy=session.policy,
            zone=zone,
            if_stale=_STALE,
        )
        if op is not _STALE:
            ops.finish(session, op, zone=zone, what=what)
            return
    raise ProviderError(PROVIDER, f"{what}: the metadata kept changing", retryable=True)
