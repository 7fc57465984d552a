"""Startup scripts for cloud nodes: install the pinned Ray and torch, then form the cluster.

Every node of a gang boots the same script. It reads its node index from its own
instance tags (EC2 instance-metadata tags) or labels (GCE metadata), so node 0 starts
the Ray head and the others join it once the head's address is published under the
``gpubroker-head`` tag or metadata key. Ray runs with ``RAY_AUTH_MODE`` fixed, as on
the local cluster, and the custom resources ``<tag>`` / ``<tag>-<index>`` that pin one
training worker per node.
"""

from __future__ import annotations

import shlex
from importlib import metadata

from broker.config import Settings
from providers.base import TAG_NODE

HEAD_KEY = "gpubroker-head"
PYTHON = "python3"


def pinned_versions() -> dict[str, str]:
    """The Ray and torch versions of this broker; nodes must run the same ones."""
    versions = {}
    for package in ("ray", "torch"):
        try:
            versions[package] = metadata.version(package).split("+")[0]
        except metadata.PackageNotFoundError:
            versions[package] = ""
    return versions


def startup_script(settings: Settings, resource: str, *, port: int | None = None) -> str:
    """A bash script for cloud-init / GCE ``startup-script``; ``resource`` names the gang."""
    versions = pinned_versions()
    packages = " ".join(
        shlex.quote(f"{name}[train]=={v}" if name == "ray" else f"{name}=={v}")
        if v
        else shlex.quote(name)
        for name, v in versions.items()
    )
    ray_port = port or settings.ray_port
    return f"""#!/bin/bash
# gpubroker node bootstrap: pinned Ray and torch, then head (node 0) or join.
set -euo pipefail
export RAY_AUTH_MODE=disabled RAY_USAGE_STATS_ENABLED=0
{PYTHON} -m pip install --quiet --upgrade pip
{PYTHON} -m pip install --quiet {packages}

meta_tag() {{  # $1: key; EC2 instance tags, else GCE instance attributes/labels
  local token value
  token=$(curl -sf -X PUT -H 'X-aws-ec2-metadata-token-ttl-seconds: 60' \\
    http://169.254.169.254/latest/api/token || true)
  if [ -n "$token" ]; then
    value=$(curl -sf -H "X-aws-ec2-metadata-token: $token" \\
      "http://169.254.169.254/latest/meta-data/tags/instance/$1" || true)
  else
    value=$(curl -sf -H 'Metadata-Flavor: Google' \\
      "http://metadata.google.internal/computeMetadata/v1/instance/attributes/$1" || true)
  fi
  printf '%s' "$value"
}}

NODE_INDEX=$(meta_tag {TAG_NODE})
NODE_INDEX=${{NODE_INDEX:-0}}
RESOURCES="{{\\"{resource}\\": 1, \\"{resource}-$NODE_INDEX\\": 1}}"
if [ "$NODE_INDEX" = "0" ]; then
  ray start --head --port={ray_port} --resources="$RESOURCES" --disable-usage-stats
else
  until HEAD=$(meta_tag {HEAD_KEY}) && [ -n "$HEAD" ]; do sleep 5; done
  ray start --address="$HEAD:{ray_port}" --resources="$RESOURCES" --disable-usage-stats
fi
"""
