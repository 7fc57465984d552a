"""The boot script every node of an allocation runs, and the cluster's secret token.

One script serves every provider; only where a node reads its metadata differs:
``ec2`` (IMDSv2: instance tags, launched with instance-metadata tags enabled), ``gce``
(instance attributes) and ``file`` (a folder the local provider writes for its loopback
nodes). A node reads its index (``gpubroker-node``) and its private address; node 0
starts the Ray head, the others wait until the broker publishes the head's private
address (``gpubroker-head``, see ``Launcher.set_metadata``) and join it.

The pinned Ray and torch are installed only when the image lacks those versions. Ray runs
with token authentication: the token is derived from a secret in ``$GPUBROKER_HOME``
(mode 0600) and the cluster's key, so it is never stored in the database; it does travel
in the node's user data, which only the account's own principals can read.

A host may add ``ray start`` options through ``GPUBROKER_RAY_ARGS`` in its environment
(the local provider and the test cloud pass ``--memory`` and friends, since several
nodes there share one machine); ``GPUBROKER_PYTHON`` names the interpreter to use.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import secrets
import shlex
from dataclasses import dataclass
from importlib import metadata

from broker.config import Settings
from broker.errors import ConfigError
from providers.base import META_HEAD, TAG_NODE

SECRET_FILE = "cluster-secret"
HEAD_WAIT_S = 1800  # how long a worker waits for the head's address before it gives up
STOP_WAIT_S = 30
RAY_EXTRAS = "ray[default,serve,train]"  # what a node runs: Ray Jobs, Train and Serve
SOURCES = {"aws": "ec2", "fake": "ec2", "gcp": "gce", "local": "file"}


@dataclass(frozen=True)
class ClusterSpec:
    """What the nodes of one allocation need to form their cluster."""

    key: str  # e.g. "a12": names the custom resources and the token
    token: str
    ray_port: int
    dashboard_port: int
    source: str  # where nodes read metadata: ec2, gce or file
    serve_port: int | None = None  # a serving allocation's HTTP endpoint on the head

    @property
    def resource(self) -> str:
        """The custom resource every node carries once; ``<resource>-<i>`` names node i."""
        return f"gpubroker-{self.key}"

    @property
    def ports(self) -> tuple[int, ...]:
        """Ports reached from outside: the head's GCS, its Jobs API and, when it serves,
        its HTTP endpoint."""
        serving = (self.serve_port,) if self.serve_port is not None else ()
        return (self.ray_port, self.dashboard_port, *serving)


def _secret(settings: Settings) -> bytes:
    """This installation's cluster secret, made on first use with mode 0600."""
    path = settings.home / SECRET_FILE
    try:
        return bytes.fromhex(path.read_text().strip())
    except FileNotFoundError:
        pass
    except ValueError:
        raise ConfigError(f"{path}: not a cluster secret; remove it to make a new one") from None
    path.parent.mkdir(parents=True, exist_ok=True)
    value = secrets.token_bytes(32)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:  # another process made it first
        return _secret(settings)
    with os.fdopen(fd, "w") as handle:
        handle.write(value.hex())
    return value


def cluster_token(settings: Settings, key: str) -> str:
    """The Ray token of cluster ``key``: an HMAC of the key under this home's secret."""
    return hmac.new(_secret(settings), key.encode(), hashlib.sha256).hexdigest()


def cluster_spec(
    settings: Settings, provider: str, key: str, *, serving: bool = False
) -> ClusterSpec:
    return ClusterSpec(
        key=key,
        token=cluster_token(settings, key),
        ray_port=settings.ray_port,
        dashboard_port=settings.ray_dashboard_port,
        source=SOURCES.get(provider, "ec2"),
        serve_port=settings.serve_port if serving else None,
    )


def pinned_versions() -> dict[str, str]:
    """The Ray and torch versions of this broker; nodes must run the same ones."""
    versions = {}
    for package in ("ray", "torch"):
        try:
            versions[package] = metadata.version(package).split("+")[0]
        except metadata.PackageNotFoundError:
            versions[package] = ""
    return versions


_READERS = {
    "ec2": """meta() {  # $1: an instance tag (IMDSv2, instance-metadata tags enabled)
  local token
  token=$(curl -sf --max-time 5 -X PUT -H 'X-aws-ec2-metadata-token-ttl-seconds: 300' \\
    http://169.254.169.254/latest/api/token) || return 0
  curl -sf --max-time 5 -H "X-aws-ec2-metadata-token: $token" \\
    "http://169.254.169.254/latest/meta-data/tags/instance/$1" || true
}
own_ip() {
  local token
  token=$(curl -sf --max-time 5 -X PUT -H 'X-aws-ec2-metadata-token-ttl-seconds: 300' \\
    http://169.254.169.254/latest/api/token) || return 0
  curl -sf --max-time 5 -H "X-aws-ec2-metadata-token: $token" \\
    http://169.254.169.254/latest/meta-data/local-ipv4 || true
}""",
    "gce": """meta() {  # $1: an instance metadata attribute
  curl -sf --max-time 5 -H 'Metadata-Flavor: Google' \\
    "http://169.254.169.254/computeMetadata/v1/instance/attributes/$1" || true
}
own_ip() {
  curl -sf --max-time 5 -H 'Metadata-Flavor: Google' \\
    http://169.254.169.254/computeMetadata/v1/instance/network-interfaces/0/ip || true
}""",
    "file": """meta() {  # $1: a file the local provider writes for this node
  cat "$GPUBROKER_METADATA_DIR/$1" 2>/dev/null || true
}
own_ip() { meta local-ipv4; }""",
}


def boot_script(cluster: ClusterSpec) -> str:
    """The bash script a node runs at boot (EC2 user data, GCE ``startup-script``)."""
    if cluster.source not in _READERS:
        raise ValueError(f"unknown metadata source {cluster.source!r}")
    versions = pinned_versions()
    check = (
        "import sys, ray, torch; "
        f"sys.exit(0 if (ray.__version__, torch.__version__.split('+')[0]) == "
        f"({versions['ray']!r}, {versions['torch']!r}) else 1)"
    )
    packages = " ".join(
        shlex.quote(f"{RAY_EXTRAS}=={versions['ray']}" if name == "ray" else f"{name}=={v}")
        for name, v in versions.items()
    )
    resource = cluster.resource
    return f"""#!/bin/bash
# gpubroker node boot, cluster {cluster.key}: metadata -> pinned Ray and torch -> head or join.
set -euo pipefail
export RAY_AUTH_MODE=token RAY_AUTH_TOKEN={cluster.token} RAY_USAGE_STATS_ENABLED=0
# A stopped run gets this long after SIGTERM to finish (an endpoint drains its requests).
export RAY_JOB_STOP_WAIT_TIME_S={STOP_WAIT_S}
# An endpoint's one HTTP proxy (on the head) spreads requests over every node's replicas.
export RAY_SERVE_PROXY_PREFER_LOCAL_NODE_ROUTING=0
PY=${{GPUBROKER_PYTHON:-python3}}
{_READERS[cluster.source]}

NODE_INDEX=$(meta {TAG_NODE})
NODE_IP=$(own_ip)
if [ -z "$NODE_INDEX" ] || [ -z "$NODE_IP" ]; then
  echo "gpubroker: no node index or address in the instance metadata" >&2
  exit 1
fi
if ! "$PY" -c {shlex.quote(check)} 2>/dev/null; then
  "$PY" -m pip install --quiet {packages}
fi
# The job's driver runs with this environment: the interpreter that has Ray comes first.
PATH="$(dirname "$("$PY" -c 'import sys; print(sys.executable)')"):$PATH"
export PATH
RESOURCES="{{\\"{resource}\\": 1, \\"{resource}-$NODE_INDEX\\": 1}}"
read -r -a EXTRA <<< "${{GPUBROKER_RAY_ARGS:-}}"
COMMON=(--node-ip-address="$NODE_IP" --resources="$RESOURCES" --disable-usage-stats "${{EXTRA[@]}}")
if [ "$NODE_INDEX" = "0" ]; then
  "$PY" -m ray.scripts.scripts start --head --port={cluster.ray_port} \\
    --dashboard-host="$NODE_IP" --dashboard-port={cluster.dashboard_port} \\
    --include-dashboard=true --ray-client-server-port={cluster.ray_port + 1} "${{COMMON[@]}}"
  exit 0
fi
waited=0
until HEAD=$(meta {META_HEAD}) && [ -n "$HEAD" ]; do
  [ "$waited" -ge {HEAD_WAIT_S} ] && {{ echo "gpubroker: no head address" >&2; exit 1; }}
  sleep 2; waited=$((waited + 2))
done
# The head may still be starting: try again until it answers.
until "$PY" -m ray.scripts.scripts start --address="$HEAD:{cluster.ray_port}" "${{COMMON[@]}}"; do
  [ "$waited" -ge {HEAD_WAIT_S} ] && {{ echo "gpubroker: the head did not answer" >&2; exit 1; }}
  sleep 5; waited=$((waited + 5))
done
"""
