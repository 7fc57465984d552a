"""Fake instance-metadata services, served at 169.254.169.254:80 inside a host's namespace.

The listening socket is made inside the host's network namespace by a short-lived thread
that ``setns``-es into it (the network namespace is per thread), then served by ordinary
threads of the test process in the root namespace: so one process serves every host,
and each answer is read live from the cloud backend on 127.0.0.1 (moto's EC2, the fake
GCE) at the moment of the request, which is how a tag the broker sets later becomes
visible to a booted node. The root namespace never has 169.254.169.254 itself, so nothing
here can reach a real metadata service.

- ``Ec2Metadata``: IMDSv2 only (as on Amazon Linux 2023 images): ``PUT /latest/api/token``
  with ``X-aws-ec2-metadata-token-ttl-seconds`` (1..21600) gives a token; every
  ``GET /latest/...`` needs ``X-aws-ec2-metadata-token`` (401 without a valid one).
  ``meta-data/{instance-id, instance-type, local-ipv4, local-hostname, placement/region,
  placement/availability-zone, tags/instance, tags/instance/KEY}`` and ``user-data``.
  As on EC2, tags are served only when the instance was launched (or modified) with
  ``MetadataOptions={"InstanceMetadataTags": "enabled"}``; otherwise 404.
- ``GceMetadata``: ``/computeMetadata/v1/instance/{attributes/, attributes/KEY, id, name,
  hostname, zone, network-interfaces/0/ip}`` and ``project/project-id``; needs the
  ``Metadata-Flavor: Google`` header (403 without), 404 for what is missing.
"""

from __future__ import annotations

import base64
import ctypes
import json
import os
import secrets
import socketserver
import threading
import time
import urllib.parse
import urllib.request
from collections.abc import Mapping
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Protocol

METADATA_ADDRESS = "169.254.169.254"
_CLONE_NEWNET = 0x40000000
_libc = ctypes.CDLL(None, use_errno=True)
_client_lock = threading.Lock()
_DIRECT = urllib.request.build_opener(urllib.request.ProxyHandler({}))  # no *_proxy detour

Reply = tuple[int, str, dict[str, str]]


class Metadata(Protocol):
    """What a metadata service answers for one instance."""

    flavour: str  # "ec2" or "gce"

    def hostname(self, private_ip: str) -> str:
        """The host name the machine gets (its UTS name)."""
        ...

    def respond(self, method: str, path: str, headers: Mapping[str, str]) -> Reply:
        """Status, body and extra headers for one request."""
        ...


def _text(status: int, body: str, **headers: str) -> Reply:
    return status, body, dict(headers)


# --- EC2 ---------------------------------------------------------------------------


def ec2_client(endpoint_url: str, region: str) -> Any:
    """A boto3 EC2 client for the backend at ``endpoint_url`` (moto), with explicit dummy
    credentials and region: botocore never walks its credential chain, which could
    otherwise ask the root namespace's (real) metadata address."""
    import boto3
    from botocore.config import Config

    with _client_lock:  # boto3 sessions are not thread-safe while clients are made
        return boto3.session.Session().client(
            "ec2",
            endpoint_url=endpoint_url,
            region_name=region,
            aws_access_key_id="testing",
            aws_secret_access_key="testing",
            config=Config(retries={"max_attempts": 2}, connect_timeout=5, read_timeout=10),
        )


class Ec2Metadata:
    """EC2 IMDSv2 for ``instance_id``, read live from the EC2 API at ``endpoint_url``."""

    flavour = "ec2"
    MAX_TTL = 21600

    def __init__(self, endpoint_url: str, region: str, instance_id: str) -> None:
        self.endpoint_url, self.region, self.instance_id = endpoint_url, region, instance_id
        self._tokens: dict[str, float] = {}
        self._lock = threading.Lock()
        self._ec2 = ec2_client(endpoint_url, region)

    def hostname(self, private_ip: str) -> str:
        return "ip-" + private_ip.replace(".", "-")

    def _instance(self) -> dict[str, Any] | None:
        from botocore.exceptions import ClientError

        try:
            found = self._ec2.describe_instances(InstanceIds=[self.instance_id])
        except ClientError:
            return None
        for reservation in found.get("Reservations", []):
            for item in reservation.get("Instances", []):
                return dict(item)
        return None

    def _new_token(self, ttl_header: str | None) -> Reply:
        try:
            ttl = int(ttl_header or "")
        except ValueError:
            ttl = 0
        if not 1 <= ttl <= self.MAX_TTL:
            return _text(400, "Bad Request")
        token = secrets.token_urlsafe(32)
        with self._lock:
            self._tokens[token] = time.monotonic() + ttl
        return _text(200, token, **{"X-aws-ec2-metadata-token-ttl-seconds": str(ttl)})

    def _token_valid(self, token: str | None) -> bool:
        with self._lock:
            expiry = self._tokens.get(token or "")
        return expiry is not None and expiry > time.monotonic()

    def respond(self, method: str, path: str, headers: Mapping[str, str]) -> Reply:
        if path == "/latest/api/token":
            if method != "PUT":
                return _text(405, "Method Not Allowed")
            return self._new_token(headers.get("x-aws-ec2-metadata-token-ttl-seconds"))
        if method not in ("GET", "HEAD"):
            return _text(405, "Method Not Allowed")
        if not self._token_valid(headers.get("x-aws-ec2-metadata-token")):
            return _text(401, "Unauthorized")
        if path == "/latest/user-data":
            return self._user_data()
        if not path.startswith("/latest/meta-data/"):
            return _text(404, "Not Found")
        item = self._instance()
        if item is None:
            return _text(404, "Not Found")
        value = self._meta_value(item, path.removeprefix("/latest/meta-data/").rstrip("/"))
        return _text(404, "Not Found") if value is None else _text(200, value)

    def _meta_value(self, item: dict[str, Any], key: str) -> str | None:
        placement = item.get("Placement") or {}
        zone = str(placement.get("AvailabilityZone") or "")
        simple = {
            "instance-id": item.get("InstanceId"),
            "instance-type": item.get("InstanceType"),
            "local-ipv4": item.get("PrivateIpAddress"),
            "local-hostname": item.get("PrivateDnsName"),
            "placement/availability-zone": zone,
            "placement/region": self.region,
        }
        if key in simple:
            return str(simple[key]) if simple[key] else None
        if key == "tags/instance" or key.startswith("tags/instance/"):
            options = item.get("MetadataOptions") or {}
            if options.get("InstanceMetadataTags") != "enabled":
                return None
            tags = {tag["Key"]: tag["Value"] for tag in item.get("Tags") or []}
            if key == "tags/instance":
                return "\n".join(sorted(tags))
            return tags.get(key.removeprefix("tags/instance/"))
        return None

    def _user_data(self) -> Reply:
        from botocore.exceptions import ClientError

        try:
            found = self._ec2.describe_instance_attribute(
                InstanceId=self.instance_id, Attribute="userData"
            )
        except ClientError:
            return _text(404, "Not Found")
        encoded = (found.get("UserData") or {}).get("Value")
        if not encoded:
            return _text(404, "Not Found")
        return _text(200, base64.b64decode(encoded).decode("utf-8", "replace"))


# --- GCE ---------------------------------------------------------------------------


class GceSource(Protocol):
    """Where GCE instance JSON comes from: the fake's own state (``FakeGce`` has this
    method) or its REST API (``GceRest``)."""

    def instances(self) -> list[dict[str, Any]]: ...


class GceRest:
    """Instances through the compute REST API (``aggregated/instances``).

    Prefer passing the ``FakeGce`` itself where you have it: a metadata server is not the
    compute API, so it should not consume the API's injected faults, throttling or listing
    lag, nor show up in ``gce.requests``. This reads through the API, as any client would.
    """

    def __init__(self, endpoint: str, project: str) -> None:
        self.endpoint, self.project = endpoint.rstrip("/"), project

    def instances(self) -> list[dict[str, Any]]:
        found: list[dict[str, Any]] = []
        token = ""
        while True:
            query = urllib.parse.urlencode({"maxResults": 500, "pageToken": token})
            url = f"{self.endpoint}/compute/v1/projects/{self.project}/aggregated/instances"
            with _DIRECT.open(f"{url}?{query}", timeout=10) as response:
                page = json.load(response)
            for scoped in (page.get("items") or {}).values():
                found.extend(scoped.get("instances") or [])
            token = page.get("nextPageToken") or ""
            if not token:
                return found


def zone_of(instance: Mapping[str, Any]) -> str:
    return str(instance.get("zone", "")).rstrip("/").rsplit("/", 1)[-1]


class GceMetadata:
    """The GCE metadata server for instance ``name`` in ``zone``, read live from ``source``."""

    flavour = "gce"

    def __init__(self, source: GceSource, zone: str, name: str, project: str = "") -> None:
        self.source, self.zone, self.name = source, zone, name
        self.project = project or str(getattr(source, "project", "") or "")

    def hostname(self, private_ip: str) -> str:
        return self.name

    def _instance(self) -> dict[str, Any] | None:
        for instance in self.source.instances():
            if instance.get("name") == self.name and zone_of(instance) == self.zone:
                return instance
        return None

    def respond(self, method: str, path: str, headers: Mapping[str, str]) -> Reply:
        flavour = {"Metadata-Flavor": "Google"}
        if headers.get("metadata-flavor", "").lower() != "google":
            return 403, "Missing Metadata-Flavor:Google header.", flavour
        if method not in ("GET", "HEAD"):
            return 405, "Method Not Allowed", flavour
        value = self._value(path.removeprefix("/computeMetadata/v1/"))
        if value is None:
            return 404, "Not Found", flavour
        return 200, value, flavour

    def _value(self, key: str) -> str | None:
        if key == "project/project-id":
            return self.project or None
        instance = self._instance()
        if instance is None or not key.startswith("instance/"):
            return None
        key = key.removeprefix("instance/")
        items = {
            str(item.get("key")): str(item.get("value", ""))
            for item in (instance.get("metadata") or {}).get("items") or []
        }
        if key == "attributes/":
            return "".join(f"{name}\n" for name in sorted(items))
        if key.startswith("attributes/"):
            return items.get(key.removeprefix("attributes/"))
        interfaces = instance.get("networkInterfaces") or [{}]
        simple = {
            "id": instance.get("id"),
            "name": self.name,
            "hostname": f"{self.name}.{self.zone}.c.{self.project}.internal",
            "zone": f"projects/{self.project}/zones/{self.zone}",
            "network-interfaces/0/ip": interfaces[0].get("networkIP"),
        }
        value = simple.get(key)
        return str(value) if value else None


# --- the server inside a namespace ---------------------------------------------------


class _Handler(BaseHTTPRequestHandler):
    server: _MetadataHttpServer

    def _answer(self) -> None:
        path = urllib.parse.urlsplit(self.path).path
        headers = {key.lower(): value for key, value in self.headers.items()}
        try:
            status, body, extra = self.server.metadata.respond(self.command, path, headers)
        except Exception as exc:  # a backend failure is a 500, as a broken service gives
            status, body, extra = 500, f"Internal Server Error: {type(exc).__name__}", {}
        data = body.encode()
        self.send_response(status)
        self.send_header("Content-Type", "text/plain")
        self.send_header("Content-Length", str(len(data)))
        for key, value in extra.items():
            self.send_header(key, value)
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(data)

    do_GET = do_PUT = do_HEAD = do_POST = do_DELETE = _answer

    def log_message(self, format: str, *args: Any) -> None:
        return


class _MetadataHttpServer(ThreadingHTTPServer):
    daemon_threads = True
    metadata: Metadata

    def server_bind(self) -> None:
        # HTTPServer.server_bind would resolve the address's name (a DNS query from inside
        # the namespace, and a wait): bind only.
        socketserver.TCPServer.server_bind(self)
        self.server_name, self.server_port = METADATA_ADDRESS, 80


def _enter_netns(netns_path: str) -> None:
    fd = os.open(netns_path, os.O_RDONLY)
    try:
        if _libc.setns(fd, _CLONE_NEWNET) != 0:
            errno = ctypes.get_errno()
            raise OSError(errno, f"setns({netns_path}): {os.strerror(errno)}")
    finally:
        os.close(fd)


class MetadataServer:
    """``metadata`` served on 169.254.169.254:80 inside network namespace ``netns``."""

    def __init__(self, netns: str, metadata: Metadata) -> None:
        made: list[_MetadataHttpServer | BaseException] = []

        def bind_inside() -> None:
            # This thread alone enters the namespace and ends right after binding; the
            # socket stays in that namespace, the threads serving it stay in ours.
            try:
                _enter_netns(f"/var/run/netns/{netns}")
                made.append(_MetadataHttpServer((METADATA_ADDRESS, 80), _Handler))
            except BaseException as exc:
                made.append(exc)

        binder = threading.Thread(target=bind_inside, name=f"imds-bind-{netns}")
        binder.start()
        binder.join()
        if isinstance(made[0], BaseException):
            raise made[0]
        self._http = made[0]
        self._http.metadata = metadata
        self._thread = threading.Thread(
            target=self._http.serve_forever, name=f"imds-{netns}", daemon=True
        )
        self._thread.start()

    def close(self) -> None:
        self._http.shutdown()
        self._http.server_close()
        self._thread.join(timeout=5)
