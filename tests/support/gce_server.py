"""A small fake of the GCE (compute v1) and Cloud Billing Catalog REST APIs, for tests.

The real ``google-cloud-compute`` / ``google-cloud-billing`` clients talk to it over
``http://127.0.0.1:<free port>`` (REST transport, anonymous credentials). It speaks the
real JSON shapes: ``items`` / ``nextPageToken`` paging with ``maxResults`` (and
``pageSize`` for SKUs), aggregated lists keyed ``zones/ZONE`` with ``NO_RESULTS_ON_PAGE``
warnings, operations that insert/delete return (``RUNNING`` until ``wait`` polls them to
``DONE``), ``requestId`` idempotency, 409 ``alreadyExists`` on a duplicate name, 404
``notFound``, label filters (``(labels.KEY = "VALUE")``) and regex filters
(``name eq "RE"``), regional GPU quotas enforced on insert (403 ``quotaExceeded``), and
capacity exhaustion as GCE reports it: the insert is accepted and its operation ends with
``ZONE_RESOURCE_POOL_EXHAUSTED`` (or, on request, an HTTP 503 naming it).

Instances keep ``tags.items`` (network tags) and get a metadata ``fingerprint``, which
``setMetadata`` checks (412 ``conditionNotMet`` when stale) before it replaces the items
and returns a zone operation; interface 0's ``networkIP`` comes from the subnet (default
``10.128.0.0/20``), handed out in order from ``.2`` and never held by two instances at
once. Firewall rules (``global/firewalls``: insert, get, list, delete) answer with
global operations, polled at ``global/operations/NAME/wait``.

Catalog: us-central1 (a, b, c, f), us-east4 (a, b, c), europe-west4 (a, b, c) with
a2/a3/g2/n1 machine types and A100/H100/H200/L4/T4/V100/P100/P4 accelerators. SKU prices
are test fixtures approximating public list prices (not authoritative), e.g. in
us-central1 ``A3 Instance Core`` $0.022/vCPU-h, ``A3 Instance Ram`` $0.002833/GiB-h and
``Nvidia H100 80GB GPU`` $9.796550569/GPU-h, so a3-highgpu-8g (208 vCPU, 1872 GiB, 8 GPUs)
composes to $88.251781/h.

Usage: this module is a pytest plugin (``tests/conftest.py``): ``gce_server`` is one
server per test session and ``gce`` the same server with its state reset for the test
(instances, operations, faults, quotas, capacity)::

    def test_x(gce, home):
        from providers.gcp import create
        provider = create(gce.settings(home))   # or monkeypatch.setenv(k, v) for gce.env()
        provider = gce.provider(home)           # the same, with millisecond retry backoff
        gce.fail_next(429, times=2, method="POST", path="/instances")
        gce.set_capacity("us-central1-a", 1, machine_type="a3-highgpu-8g")
        gce.set_quota("us-central1", "NVIDIA_H100_GPUS", 8)
        gce.clear_faults(); gce.clear_capacity(); gce.clear_quotas()   # undo one kind
        gce.fail_next(503, method="POST", path="/instances", after=True)  # reply lost
        gce.throttle(0.3, seed=7)        # 429s on that share of requests, <= 3 in a row
        gce.lag_listing(1)               # the next instance listing sees nothing
        gce.add_instance(zone, name, labels)   # an instance made outside the adapter
        gce.set_subnet("10.77.0.0/24")   # networkIPs of instances made from now on
        gce.instances()                  # stored instance JSON dicts
        gce.metadata(zone, name)         # an instance's metadata items as a dict
        gce.firewalls()                  # stored firewall rule JSON dicts
        gce.requests                     # [(method, path, query dict)] seen so far

``gce.env()`` gives ``GPUBROKER_GCP_PROJECT``, ``GPUBROKER_GCP_COMPUTE_ENDPOINT``,
``GPUBROKER_GCP_BILLING_ENDPOINT`` (one server answers both APIs).
"""

from __future__ import annotations

import base64
import hashlib
import ipaddress
import itertools
import json
import random
import re
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from werkzeug.exceptions import HTTPException
from werkzeug.routing import Map, Rule
from werkzeug.serving import WSGIRequestHandler, make_server
from werkzeug.wrappers import Request, Response

PROJECT = "gpubroker-test"
DEFAULT_SUBNET = "10.128.0.0/20"
BILLING_SERVICE = "6F81-5844-456A"

# --- catalog ------------------------------------------------------------------------

# zone -> accelerator type -> maximumCardsPerInstance
ZONES: dict[str, dict[str, int]] = {
    "us-central1-a": {
        "nvidia-h100-80gb": 8,
        "nvidia-tesla-a100": 16,
        "nvidia-a100-80gb": 8,
        "nvidia-l4": 8,
        "nvidia-tesla-t4": 4,
        "nvidia-tesla-v100": 8,
    },
    "us-central1-b": {"nvidia-tesla-a100": 16, "nvidia-l4": 8, "nvidia-tesla-t4": 4},
    "us-central1-c": {
        "nvidia-h100-80gb": 8,
        "nvidia-h100-mega-80gb": 8,
        "nvidia-tesla-a100": 16,
        "nvidia-tesla-t4": 4,
        "nvidia-tesla-p4": 4,
    },
    "us-central1-f": {
        "nvidia-tesla-a100": 16,
        "nvidia-tesla-t4": 4,
        "nvidia-tesla-v100": 8,
        "nvidia-tesla-p100": 4,
    },
    "us-east4-a": {"nvidia-h100-80gb": 8, "nvidia-l4": 8, "nvidia-tesla-t4": 4},
    "us-east4-b": {"nvidia-h100-mega-80gb": 8, "nvidia-tesla-t4": 4, "nvidia-tesla-p4": 4},
    "us-east4-c": {"nvidia-h100-80gb": 8, "nvidia-a100-80gb": 8, "nvidia-l4": 8},
    "europe-west4-a": {
        "nvidia-h100-80gb": 8,
        "nvidia-tesla-a100": 16,
        "nvidia-l4": 8,
        "nvidia-tesla-t4": 4,
        "nvidia-tesla-v100": 8,
    },
    "europe-west4-b": {"nvidia-h200-141gb": 8, "nvidia-tesla-a100": 16, "nvidia-tesla-t4": 4},
    "europe-west4-c": {"nvidia-l4": 8, "nvidia-tesla-t4": 4},
}

ACCELERATOR_DESCRIPTIONS = {
    "nvidia-h100-80gb": "NVIDIA H100 80GB",
    "nvidia-h100-mega-80gb": "NVIDIA H100 80GB MEGA",
    "nvidia-h200-141gb": "NVIDIA H200 141GB",
    "nvidia-tesla-a100": "NVIDIA A100 40GB",
    "nvidia-a100-80gb": "NVIDIA A100 80GB",
    "nvidia-l4": "NVIDIA L4",
    "nvidia-tesla-t4": "NVIDIA T4",
    "nvidia-tesla-v100": "NVIDIA V100",
    "nvidia-tesla-p100": "NVIDIA P100",
    "nvidia-tesla-p4": "NVIDIA P4",
}

QUOTA_METRICS = {
    "nvidia-h100-80gb": "NVIDIA_H100_GPUS",
    "nvidia-h100-mega-80gb": "NVIDIA_H100_MEGA_GPUS",
    "nvidia-h200-141gb": "NVIDIA_H200_GPUS",
    "nvidia-tesla-a100": "NVIDIA_A100_GPUS",
    "nvidia-a100-80gb": "NVIDIA_A100_80GB_GPUS",
    "nvidia-l4": "NVIDIA_L4_GPUS",
    "nvidia-tesla-t4": "NVIDIA_T4_GPUS",
    "nvidia-tesla-v100": "NVIDIA_V100_GPUS",
    "nvidia-tesla-p100": "NVIDIA_P100_GPUS",
    "nvidia-tesla-p4": "NVIDIA_P4_GPUS",
}

# machine type -> (vCPUs, memory GB, fixed accelerator or None, its count)
_FIXED: dict[str, tuple[int, int, str, int]] = {
    "a2-highgpu-1g": (12, 85, "nvidia-tesla-a100", 1),
    "a2-highgpu-2g": (24, 170, "nvidia-tesla-a100", 2),
    "a2-highgpu-4g": (48, 340, "nvidia-tesla-a100", 4),
    "a2-highgpu-8g": (96, 680, "nvidia-tesla-a100", 8),
    "a2-megagpu-16g": (96, 1360, "nvidia-tesla-a100", 16),
    "a2-ultragpu-1g": (12, 170, "nvidia-a100-80gb", 1),
    "a2-ultragpu-2g": (24, 340, "nvidia-a100-80gb", 2),
    "a2-ultragpu-4g": (48, 680, "nvidia-a100-80gb", 4),
    "a2-ultragpu-8g": (96, 1360, "nvidia-a100-80gb", 8),
    "a3-highgpu-1g": (26, 234, "nvidia-h100-80gb", 1),
    "a3-highgpu-2g": (52, 468, "nvidia-h100-80gb", 2),
    "a3-highgpu-4g": (104, 936, "nvidia-h100-80gb", 4),
    "a3-highgpu-8g": (208, 1872, "nvidia-h100-80gb", 8),
    "a3-megagpu-8g": (208, 1872, "nvidia-h100-mega-80gb", 8),
    "a3-ultragpu-8g": (224, 2952, "nvidia-h200-141gb", 8),
    "g2-standard-4": (4, 16, "nvidia-l4", 1),
    "g2-standard-8": (8, 32, "nvidia-l4", 1),
    "g2-standard-12": (12, 48, "nvidia-l4", 1),
    "g2-standard-16": (16, 64, "nvidia-l4", 1),
    "g2-standard-24": (24, 96, "nvidia-l4", 2),
    "g2-standard-32": (32, 128, "nvidia-l4", 1),
    "g2-standard-48": (48, 192, "nvidia-l4", 4),
    "g2-standard-96": (96, 384, "nvidia-l4", 8),
}
# general-purpose types every zone has: name -> (vCPUs, memory MiB)
_PLAIN: dict[str, tuple[int, int]] = {
    **{f"n1-standard-{n}": (n, 3840 * n) for n in (1, 2, 4, 8, 16, 32, 64, 96)},
    "e2-standard-4": (4, 16384),
    "n2-standard-8": (8, 32768),
}


def machine_types_in(zone: str) -> dict[str, dict[str, Any]]:
    """The machine-type resources of one zone (accelerator-optimised where it has the GPU)."""
    found: dict[str, dict[str, Any]] = {}
    accelerators = ZONES[zone]
    for name, (vcpus, gb, accelerator, count) in _FIXED.items():
        if accelerator in accelerators:
            found[name] = {
                "guestCpus": vcpus,
                "memoryMb": gb * 1024,
                "accelerators": [
                    {"guestAcceleratorType": accelerator, "guestAcceleratorCount": count}
                ],
            }
    for name, (vcpus, mib) in _PLAIN.items():
        found[name] = {"guestCpus": vcpus, "memoryMb": mib}
    return found


AMERICAS = (
    "us-central1",
    "us-east1",
    "us-east4",
    "us-west1",
    "us-west4",
    "northamerica-northeast1",
    "southamerica-east1",
)
EMEA = ("europe-west1", "europe-west2", "europe-west4", "europe-north1")

# (description, usageType, resourceGroup, regions, USD per unit, usage unit)
_SKU_ROWS: list[tuple[str, str, str, tuple[str, ...], str, str]] = []


def _host(
    stem: str, where: str, regions: tuple[str, ...], core: tuple[str, str], ram: tuple[str, str]
) -> None:
    _SKU_ROWS.extend(
        [
            (f"{stem} Instance Core running in {where}", "OnDemand", "CPU", regions, core[0], "h"),
            (
                f"{stem} Instance Ram running in {where}",
                "OnDemand",
                "RAM",
                regions,
                ram[0],
                "GiBy.h",
            ),
            (
                f"Spot Preemptible {stem} Instance Core running in {where}",
                "Preemptible",
                "CPU",
                regions,
                core[1],
                "h",
            ),
            (
                f"Spot Preemptible {stem} Instance Ram running in {where}",
                "Preemptible",
                "RAM",
                regions,
                ram[1],
                "GiBy.h",
            ),
        ]
    )


def _gpu(stem: str, where: str, regions: tuple[str, ...], on_demand: str, spot: str) -> None:
    _SKU_ROWS.extend(
        [
            (f"{stem} running in {where}", "OnDemand", "GPU", regions, on_demand, "h"),
            (
                f"{stem} attached to Spot Preemptible VMs running in {where}",
                "Preemptible",
                "GPU",
                regions,
                spot,
                "h",
            ),
        ]
    )


_host("A2", "Americas", AMERICAS, ("0.031611", "0.011065"), ("0.004237", "0.001483"))
_host("A2", "Virginia", ("us-east4",), ("0.035620", "0.012467"), ("0.004774", "0.001671"))
_host("A2", "EMEA", EMEA, ("0.034773", "0.012171"), ("0.004661", "0.001631"))
_host("A3", "Iowa", ("us-central1",), ("0.022", "0.00715"), ("0.002833", "0.000921"))
_host("A3", "Virginia", ("us-east4",), ("0.024783", "0.008056"), ("0.003192", "0.001037"))
_host("A3", "Netherlands", ("europe-west4",), ("0.024266", "0.007886"), ("0.003125", "0.001016"))
_host("A3Plus", "Americas", AMERICAS, ("0.022", "0.00715"), ("0.002833", "0.000921"))
_host(
    "A3Ultra", "Netherlands", ("europe-west4",), ("0.024266", "0.009706"), ("0.003125", "0.00125")
)
_host("G2", "Americas", AMERICAS, ("0.024988", "0.009995"), ("0.002927", "0.001171"))
_host("G2", "EMEA", EMEA, ("0.027510", "0.011004"), ("0.003222", "0.001289"))
_host("N1 Predefined", "Americas", AMERICAS, ("0.031611", "0.00668"), ("0.004237", "0.000895"))
_host("N1 Predefined", "EMEA", EMEA, ("0.034773", "0.00735"), ("0.004661", "0.000985"))
_gpu("Nvidia Tesla T4 GPU", "Americas", AMERICAS, "0.35", "0.14")
_gpu("Nvidia Tesla T4 GPU", "EMEA", EMEA, "0.41", "0.164")
_gpu("Nvidia Tesla V100 GPU", "Americas", AMERICAS, "2.48", "0.992")
_gpu("Nvidia Tesla V100 GPU", "EMEA", EMEA, "2.55", "1.02")
_gpu("Nvidia Tesla P100 GPU", "Americas", AMERICAS, "1.46", "0.584")
_gpu("Nvidia Tesla P4 GPU", "Americas", AMERICAS, "0.60", "0.24")
_gpu("Nvidia Tesla A100 GPU", "Americas", AMERICAS, "2.933908", "1.173563")
_gpu("Nvidia Tesla A100 GPU", "EMEA", EMEA, "3.227299", "1.29092")
_gpu("Nvidia Tesla A100 80GB GPU", "Americas", AMERICAS, "3.92808", "1.571232")
_gpu("Nvidia H100 80GB GPU", "Americas", AMERICAS, "9.796550569", "2.253")
_gpu("Nvidia H100 80GB GPU", "Virginia", ("us-east4",), "4.20", "1.68")
_gpu("Nvidia H100 80GB GPU", "Netherlands", ("europe-west4",), "10.775", "2.4784")
_gpu("Nvidia H100 80GB Mega GPU", "Americas", AMERICAS, "11.06", "2.544")
_gpu("Nvidia L4 GPU", "Americas", AMERICAS, "0.56", "0.224")
_gpu("Nvidia L4 GPU", "EMEA", EMEA, "0.6165", "0.2466")
_gpu("H200 141GB GPU", "Netherlands", ("europe-west4",), "10.85", "3.72")
# SKUs a GPU shape must not be priced from
_SKU_ROWS.extend(
    [
        (
            "Commitment v1: A2 Cpu in Americas for 1 Year",
            "Commit1Yr",
            "CPU",
            AMERICAS,
            "0.019915",
            "h",
        ),
        (
            "Commitment v1: Nvidia H100 80GB GPU running in Americas for 3 Years",
            "Commit3Yr",
            "GPU",
            AMERICAS,
            "4.408448",
            "h",
        ),
        ("Custom Instance Core running in Americas", "OnDemand", "CPU", AMERICAS, "0.033174", "h"),
        (
            "DWS Defined Duration A3 Core running in Americas",
            "OnDemand",
            "CPU",
            AMERICAS,
            "0.011",
            "h",
        ),
        (
            "Reserved Nvidia H100 80GB Mega GPU in Americas",
            "OnDemand",
            "GPU",
            AMERICAS,
            "5.53",
            "h",
        ),
        ("E2 Instance Core running in Americas", "OnDemand", "CPU", AMERICAS, "0.021811", "h"),
        (
            "SSD backed Local Storage running in Americas",
            "OnDemand",
            "LocalSSD",
            AMERICAS,
            "0.08",
            "GiBy.mo",
        ),
        ("Balanced PD Capacity", "OnDemand", "SSD", ("global",), "0.1", "GiBy.mo"),
    ]
)


def _money(text: str) -> dict[str, Any]:
    units, _, frac = text.partition(".")
    nanos = int((frac + "000000000")[:9])
    return {"currencyCode": "USD", "units": units, "nanos": nanos}


def _sku_json(index: int, row: tuple[str, str, str, tuple[str, ...], str, str]) -> dict[str, Any]:
    description, usage_type, group, regions, price, unit = row
    sku_id = f"{index:04X}-{(index * 7919) % 65536:04X}-{(index * 104729) % 65536:04X}"
    return {
        "name": f"services/{BILLING_SERVICE}/skus/{sku_id}",
        "skuId": sku_id,
        "description": description,
        "category": {
            "serviceDisplayName": "Compute Engine",
            "resourceFamily": "Storage" if unit == "GiBy.mo" else "Compute",
            "resourceGroup": group,
            "usageType": usage_type,
        },
        "serviceRegions": list(regions),
        "pricingInfo": [
            {
                "summary": "",
                "pricingExpression": {
                    "usageUnit": unit,
                    "displayQuantity": 1,
                    "tieredRates": [{"startUsageAmount": 0, "unitPrice": _money(price)}],
                    "usageUnitDescription": "hour" if unit == "h" else "gibibyte hour",
                    "baseUnit": "s" if unit == "h" else "By.s",
                    "baseUnitConversionFactor": 3600,
                },
                "currencyConversionRate": 1,
                "effectiveTime": "2026-11-01T00:00:00Z",
            }
        ],
        "serviceProviderName": "Google",
        "geoTaxonomy": {
            "type": "REGIONAL" if len(regions) == 1 else "MULTI_REGIONAL",
            "regions": list(regions),
        },
    }


SKUS: list[dict[str, Any]] = [_sku_json(i + 1, row) for i, row in enumerate(_SKU_ROWS)]

# --- state ----------------------------------------------------------------------------

_NAME = re.compile(r"^[a-z]([-a-z0-9]{0,61}[a-z0-9])?$")
_LABEL_KEY = re.compile(r"^[a-z][a-z0-9_-]{0,62}$")
_LABEL_VALUE = re.compile(r"^[a-z0-9_-]{0,63}$")
_AIP = re.compile(r'\(?\s*([A-Za-z][\w.-]*)\s*(=|!=|:)\s*("([^"]*)"|[^\s)]+)\s*\)?')
_REGEX = re.compile(r"""^\s*([A-Za-z][\w.]*)\s+(eq|ne)\s+(?:"(.*)"|'(.*)'|(\S+))\s*$""")


class ApiError(Exception):
    def __init__(
        self,
        status: int,
        message: str,
        reason: str,
        domain: str = "global",
        extra: dict[str, Any] | None = None,
    ) -> None:
        super().__init__(message)
        self.status, self.message, self.reason, self.domain = status, message, reason, domain
        self.extra = extra or {}
        self.injected = False

    def body(self) -> dict[str, Any]:
        error = {
            "code": self.status,
            "message": self.message,
            "errors": [{"message": self.message, "domain": self.domain, "reason": self.reason}],
        }
        error.update(self.extra)
        return {"error": error}


_FAULTS: dict[int, tuple[str, str, str, dict[str, Any]]] = {
    401: (
        "Request is missing required authentication credential.",
        "required",
        "global",
        {"status": "UNAUTHENTICATED"},
    ),
    403: (
        "Required 'compute.instances.create' permission",
        "forbidden",
        "global",
        {"status": "PERMISSION_DENIED"},
    ),
    429: (
        "Rate Limit Exceeded",
        "rateLimitExceeded",
        "usageLimits",
        {"status": "RESOURCE_EXHAUSTED"},
    ),
    500: ("Internal error. Please try again.", "backendError", "global", {}),
    502: ("Bad gateway", "backendError", "global", {}),
    412: (
        "Supplied fingerprint does not match current metadata fingerprint.",
        "conditionNotMet",
        "global",
        {"status": "FAILED_PRECONDITION"},
    ),
    503: (
        "The service is currently unavailable.",
        "backendError",
        "global",
        {"status": "UNAVAILABLE"},
    ),
}


@dataclass
class _Fault:
    status: int
    times: int
    method: str | None
    path: str | None
    message: str | None
    after: bool = False


@dataclass
class _Operation:
    body: dict[str, Any]
    scope: str  # "zones/Z", "regions/R" or "global"
    polls_left: int
    created: float
    on_done: Any = None  # callable run once at completion; returns an error dict or None

    def finish(self) -> None:
        if self.body["status"] == "DONE":
            return
        error = self.on_done() if self.on_done else None
        self.body["status"] = "DONE"
        self.body["progress"] = 100
        self.body["endTime"] = _now()
        if error:
            self.body["error"] = {"errors": [error]}
            self.body["httpErrorStatusCode"] = 503
            self.body["httpErrorMessage"] = "SERVICE UNAVAILABLE"


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _fingerprint(value: Any) -> str:
    """GCE-style fingerprint: a short base64 digest of the content it guards."""
    digest = hashlib.sha256(json.dumps(value, sort_keys=True).encode()).digest()
    return base64.b64encode(digest[:8]).decode()


@dataclass
class FakeGce:
    """State, fault injection and inspection of the fake; the server reads it under a lock."""

    url: str = ""
    project: str = PROJECT
    page_size: int = 50  # the largest page the server sends (small, so paging is exercised)
    op_polls: int = 1  # ``wait`` calls an operation answers RUNNING before DONE
    op_autocomplete_s: float = 2.0  # an operation nobody polls finishes after this long
    requests: list[tuple[str, str, dict[str, str]]] = field(default_factory=list)
    lock: threading.RLock = field(default_factory=threading.RLock)
    _instances: dict[tuple[str, str], dict[str, Any]] = field(default_factory=dict)
    _policies: dict[tuple[str, str], dict[str, Any]] = field(default_factory=dict)
    _firewalls: dict[str, dict[str, Any]] = field(default_factory=dict)
    _subnet: ipaddress.IPv4Network = field(
        default_factory=lambda: ipaddress.IPv4Network(DEFAULT_SUBNET)
    )
    _next_host: int = 2  # offset in the subnet of the next networkIP to try
    _operations: dict[tuple[str, str], _Operation] = field(default_factory=dict)
    _request_ids: dict[str, tuple[str, str]] = field(default_factory=dict)
    _faults: list[_Fault] = field(default_factory=list)
    _capacity: dict[tuple[str, str | None], int] = field(default_factory=dict)
    _capacity_mode: str = "operation"
    _quotas: dict[tuple[str, str], float] = field(default_factory=dict)
    _throttle: tuple[float, random.Random, int] | None = None
    _streak: int = 0
    _listing_lag: int = 0
    faults_served: int = 0  # injected error replies sent so far
    _ids: Iterator[int] = field(default_factory=lambda: itertools.count(1000))

    # --- configuration ------------------------------------------------------------

    def env(self) -> dict[str, str]:
        return {
            "GPUBROKER_GCP_PROJECT": self.project,
            "GPUBROKER_GCP_COMPUTE_ENDPOINT": self.url,
            "GPUBROKER_GCP_BILLING_ENDPOINT": self.url,
        }

    def settings(self, home: Path, **env: str):  # type: ignore[no-untyped-def]
        """``broker.config.Settings`` pointing at this server (extra ``GPUBROKER_*`` allowed)."""
        from broker.config import load_settings

        return load_settings({"GPUBROKER_HOME": str(home), **self.env(), **env})

    def provider(self, home: Path):  # type: ignore[no-untyped-def]
        """The GCP adapter pointed here, retrying with millisecond backoff (fast tests)."""
        from providers.gcp import create
        from providers.gcp.errors import RetryPolicy

        made = create(self.settings(home))
        made.retry = RetryPolicy(attempts=4, base_seconds=0.001, cap_seconds=0.005)
        return made

    def reset(self) -> None:
        with self.lock:
            self._instances.clear()
            self._policies.clear()
            self._firewalls.clear()
            self._subnet = ipaddress.IPv4Network(DEFAULT_SUBNET)
            self._next_host = 2
            self._operations.clear()
            self._request_ids.clear()
            self._faults.clear()
            self._capacity.clear()
            self._capacity_mode = "operation"
            self._quotas.clear()
            self._throttle = None
            self._listing_lag = 0
            self.faults_served = 0
            self.requests.clear()
            self.page_size = 50
            self.op_polls = 1

    def fail_next(
        self,
        status: int,
        *,
        times: int = 1,
        method: str | None = None,
        path: str | None = None,
        message: str | None = None,
        after: bool = False,
    ) -> None:
        """Answer the next ``times`` matching requests with HTTP ``status`` (401, 403, 412,
        429, 5xx); ``path`` is a substring of the URL path, ``message`` the error text. With
        ``after=True`` the request is carried out first and only its reply is lost."""
        with self.lock:
            self._faults.append(_Fault(status, times, method, path, message, after))

    def clear_faults(self) -> None:
        """Drop pending ``fail_next`` faults and throttling."""
        with self.lock:
            self._faults.clear()
            self._throttle = None

    def clear_capacity(self) -> None:
        """Capacity is unlimited again in every zone."""
        with self.lock:
            self._capacity.clear()
            self._capacity_mode = "operation"

    def clear_quotas(self) -> None:
        """Every GPU quota back to its default limit."""
        with self.lock:
            self._quotas.clear()

    def lag_listing(self, times: int = 1) -> None:
        """The next ``times`` instance listings miss every instance (eventual consistency)."""
        with self.lock:
            self._listing_lag = times

    def throttle(self, rate: float, *, seed: int = 0, max_streak: int = 3) -> None:
        """Answer a random ``rate`` share of requests with 429 (seeded), never more than
        ``max_streak`` in a row, so a client that retries that often always gets through."""
        with self.lock:
            self._throttle = (rate, random.Random(seed), max_streak) if rate > 0 else None
            self._streak = 0

    def set_capacity(
        self, zone: str, nodes: int, *, machine_type: str | None = None, mode: str = "operation"
    ) -> None:
        """Only ``nodes`` more instances (of ``machine_type``, or any) fit in ``zone``.

        ``mode="operation"``: the insert is accepted and its operation ends in
        ``ZONE_RESOURCE_POOL_EXHAUSTED`` (what GCE does); ``"http"``: the insert itself
        fails with HTTP 503 naming it.
        """
        with self.lock:
            self._capacity[(zone, machine_type)] = nodes
            self._capacity_mode = mode

    def set_quota(self, region: str, metric: str, limit: float) -> None:
        """Limit of a regional GPU metric (``NVIDIA_H100_GPUS``, ``PREEMPTIBLE_...``) or,
        with region ``"global"``, of ``GPUS_ALL_REGIONS``."""
        with self.lock:
            self._quotas[(region, metric)] = limit

    def set_subnet(self, cidr: str) -> None:
        """Instances made from now on take their networkIP from ``cidr`` (from ``.2``)."""
        with self.lock:
            self._subnet = ipaddress.IPv4Network(cidr)
            self._next_host = 2

    def instances(self) -> list[dict[str, Any]]:
        with self.lock:
            return [json.loads(json.dumps(item)) for item in self._instances.values()]

    def metadata(self, zone: str, name: str) -> dict[str, str]:
        """The metadata items of one instance (what its metadata service serves)."""
        with self.lock:
            items = self._instances[(zone, name)].get("metadata", {}).get("items", [])
            return {item["key"]: item.get("value", "") for item in items}

    def policies(self) -> list[dict[str, Any]]:
        with self.lock:
            return [dict(item) for item in self._policies.values()]

    def firewalls(self) -> list[dict[str, Any]]:
        with self.lock:
            return [json.loads(json.dumps(item)) for item in self._firewalls.values()]

    def add_instance(
        self,
        zone: str,
        name: str,
        labels: dict[str, str],
        machine_type: str = "n1-standard-8",
        metadata: dict[str, str] | None = None,
    ) -> None:
        """Put an instance in place directly (someone else's, or left from a lost call)."""
        with self.lock:
            body: dict[str, Any] = {
                "name": name,
                "machineType": f"zones/{zone}/machineTypes/{machine_type}",
                "labels": labels,
                "metadata": {
                    "items": [{"key": k, "value": v} for k, v in (metadata or {}).items()]
                },
            }
            self._instances[(zone, name)] = self._instance_json(zone, body, "RUNNING")

    # --- helpers ------------------------------------------------------------------

    def _base(self) -> str:
        return f"{self.url}/compute/v1/projects/{self.project}"

    def _zone_url(self, zone: str) -> str:
        return f"{self._base()}/zones/{zone}"

    def _region_url(self, region: str) -> str:
        return f"{self._base()}/regions/{region}"

    @staticmethod
    def _region(zone: str) -> str:
        return zone.rsplit("-", 1)[0]

    def _gpus_of(self, instance: dict[str, Any]) -> tuple[str | None, int]:
        zone = instance["zone"].rsplit("/", 1)[-1]
        machine = instance["machineType"].rsplit("/", 1)[-1]
        spec = machine_types_in(zone).get(machine, {})
        for accelerator in spec.get("accelerators", []):
            return accelerator["guestAcceleratorType"], accelerator["guestAcceleratorCount"]
        for accelerator in instance.get("guestAccelerators", []):
            return accelerator["acceleratorType"].rsplit("/", 1)[-1], accelerator[
                "acceleratorCount"
            ]
        return None, 0

    @staticmethod
    def _metric(accelerator: str, instance: dict[str, Any]) -> str:
        spot = instance.get("scheduling", {}).get("provisioningModel") == "SPOT"
        return ("PREEMPTIBLE_" if spot else "") + QUOTA_METRICS[accelerator]

    def _usage(self, region: str | None, metric: str | None) -> float:
        used = 0.0
        for (zone, _), instance in self._instances.items():
            accelerator, count = self._gpus_of(instance)
            if accelerator is None or (region and self._region(zone) != region):
                continue
            if metric is None or self._metric(accelerator, instance) == metric:
                used += count
        return used

    def _limit(self, region: str, metric: str) -> float:
        default = 128.0 if region == "global" else (64.0 if "PREEMPTIBLE" in metric else 32.0)
        return self._quotas.get((region, metric), default)

    def _instance_json(self, zone: str, body: dict[str, Any], status: str) -> dict[str, Any]:
        number = next(self._ids)
        machine = body["machineType"].rsplit("/", 1)[-1]
        instance = json.loads(json.dumps(body))
        instance.update(
            {
                "kind": "compute#instance",
                "id": str(number * 7919),
                "creationTimestamp": _now(),
                "zone": self._zone_url(zone),
                "machineType": f"{self._zone_url(zone)}/machineTypes/{machine}",
                "status": status,
                "selfLink": f"{self._zone_url(zone)}/instances/{body['name']}",
                "labelFingerprint": "42WmSpB8rSM=",
                "cpuPlatform": "Intel Sapphire Rapids",
            }
        )
        interfaces = instance.get("networkInterfaces") or [{"network": "global/networks/default"}]
        for interface in interfaces:
            interface["networkIP"] = self._allocate_ip()
            for config in interface.get("accessConfigs", []):
                config["natIP"] = f"34.{number // 250 % 250}.{number % 250}.7"
        instance["networkInterfaces"] = interfaces
        items = (instance.get("metadata") or {}).get("items") or []
        instance["metadata"] = {
            "kind": "compute#metadata",
            "fingerprint": _fingerprint(items),
            "items": items,
        }
        if "tags" in instance:
            tags = list(instance["tags"].get("items") or [])
            instance["tags"] = {"items": tags, "fingerprint": _fingerprint(tags)}
        return instance

    def _allocate_ip(self) -> str:
        """The next address of the subnet no instance holds, in order from ``.2`` (GCE
        keeps the network, gateway and the last two addresses for itself)."""
        held = {
            interface.get("networkIP")
            for instance in self._instances.values()
            for interface in instance.get("networkInterfaces", [])
        }
        first, usable = 2, self._subnet.num_addresses - 4
        for step in range(max(usable, 0)):
            offset = first + (self._next_host - first + step) % usable
            address = str(self._subnet.network_address + offset)
            if address not in held:
                self._next_host = offset + 1
                return address
        raise ApiError(
            400, f"The subnetwork {self._subnet} has no free IP addresses.", "ipSpaceExhausted"
        )

    def _operation(self, scope: str, kind: str, target: str, on_done: Any) -> _Operation:
        number = next(self._ids)
        name = f"operation-{number}-{number * 2654435761 % 2**32:08x}"
        scope_url = f"{self._base()}/{scope}"
        body = {
            "kind": "compute#operation",
            "id": str(number * 104729),
            "name": name,
            "operationType": kind,
            "targetLink": target,
            "targetId": str(number),
            "status": "RUNNING",
            "user": "someone@example.com",
            "progress": 0,
            "insertTime": _now(),
            "startTime": _now(),
            "selfLink": f"{scope_url}/operations/{name}",
        }
        if scope != "global":
            body["zone" if scope.startswith("zones/") else "region"] = scope_url
        op = _Operation(body, scope, self.op_polls, time.monotonic(), on_done)
        self._operations[(scope, name)] = op
        if self.op_polls <= 0:
            op.finish()
        return op

    def _tick(self) -> None:
        now = time.monotonic()
        for op in self._operations.values():
            if op.body["status"] != "DONE" and now - op.created >= self.op_autocomplete_s:
                op.finish()

    def _fault_for(self, method: str, path: str, after: bool) -> ApiError | None:
        for fault in self._faults:
            if fault.times <= 0 or fault.after != after:
                continue
            if fault.method and fault.method != method:
                continue
            if fault.path and fault.path not in path:
                continue
            fault.times -= 1
            message, reason, domain, extra = _FAULTS.get(
                fault.status, ("Error", "backendError", "global", {})
            )
            error = ApiError(fault.status, fault.message or message, reason, domain, extra)
            error.injected = True
            return error
        if self._throttle is not None and not after:
            rate, rng, max_streak = self._throttle
            if rng.random() < rate and self._streak < max_streak:
                self._streak += 1
                message, reason, domain, extra = _FAULTS[429]
                error = ApiError(429, message, reason, domain, extra)
                error.injected = True
                return error
            self._streak = 0
        return None

    # --- paging and filters -------------------------------------------------------

    def _page(
        self,
        items: list[Any],
        query: dict[str, str],
        size_key: str = "maxResults",
    ) -> tuple[list[Any], str | None]:
        size = min(int(query.get(size_key) or self.page_size), self.page_size)
        token = query.get("pageToken") or ""
        start = int(token[1:]) if token.startswith("p") and token[1:].isdigit() else 0
        chunk = items[start : start + size]
        more = start + size < len(items)
        return chunk, f"p{start + size}" if more else None

    @staticmethod
    def _field(item: dict[str, Any], path: str) -> Any:
        value: Any = item
        for part in path.split("."):
            if not isinstance(value, dict):
                return None
            value = value.get(part)
        return value

    def _matches(self, item: dict[str, Any], expression: str) -> bool:
        expression = expression.strip()
        if not expression:
            return True
        regex = _REGEX.match(expression)
        if regex:
            path, op = regex.group(1), regex.group(2)
            pattern = next(g for g in regex.groups()[2:] if g is not None)
            hit = re.fullmatch(pattern, str(self._field(item, path) or "")) is not None
            return hit if op == "eq" else not hit
        terms = _AIP.findall(expression)
        if not terms or _AIP.sub("", expression).replace("AND", "").strip():
            raise ApiError(400, "Invalid value for field 'filter': " + expression, "invalid")
        for path, op, raw, quoted in terms:
            value = quoted if raw.startswith('"') else raw
            actual = self._field(item, path)
            text = "" if actual is None else str(actual)
            if op == "=" and text != value:
                return False
            if op == "!=" and text == value:
                return False
            if op == ":" and (actual is None or (value != "*" and value not in text)):
                return False
        return True

    def _aggregated(
        self, entries: list[tuple[str, dict[str, Any]]], key: str, query: dict[str, str]
    ) -> dict[str, Any]:
        expression = query.get("filter", "")
        kept = [(scope, item) for scope, item in entries if self._matches(item, expression)]
        chunk, token = self._page(kept, query)
        items: dict[str, Any] = {}
        for scope, item in chunk:
            items.setdefault(scope, {key: []})[key].append(item)
        for zone in ZONES:
            scope = f"zones/{zone}"
            if scope not in items:
                items[scope] = {
                    "warning": {
                        "code": "NO_RESULTS_ON_PAGE",
                        "message": f"There are no results for scope '{scope}' on this page.",
                        "data": [{"key": "scope", "value": scope}],
                    }
                }
        body: dict[str, Any] = {
            "kind": "compute#aggregatedList",
            "items": items,
            "selfLink": f"{self._base()}/aggregated/{key}",
        }
        if token:
            body["nextPageToken"] = token
        return body

    def _listing(
        self, kind: str, items: list[dict[str, Any]], query: dict[str, str], link: str
    ) -> dict[str, Any]:
        expression = query.get("filter", "")
        kept = [item for item in items if self._matches(item, expression)]
        chunk, token = self._page(kept, query)
        body: dict[str, Any] = {"kind": kind, "items": chunk, "selfLink": link}
        if token:
            body["nextPageToken"] = token
        return body

    # --- resources ----------------------------------------------------------------

    def _accelerator_json(self, zone: str, name: str, cards: int) -> dict[str, Any]:
        return {
            "kind": "compute#acceleratorType",
            "id": str(abs(hash(name)) % 10**10),
            "name": name,
            "description": ACCELERATOR_DESCRIPTIONS[name],
            "zone": self._zone_url(zone),
            "maximumCardsPerInstance": cards,
            "selfLink": f"{self._zone_url(zone)}/acceleratorTypes/{name}",
        }

    def _machine_json(self, zone: str, name: str, spec: dict[str, Any]) -> dict[str, Any]:
        return {
            "kind": "compute#machineType",
            "id": str(abs(hash(name)) % 10**10),
            "name": name,
            "description": f"{spec['guestCpus']} vCPUs",
            "guestCpus": spec["guestCpus"],
            "memoryMb": spec["memoryMb"],
            "maximumPersistentDisks": 128,
            "maximumPersistentDisksSizeGb": "263168",
            "zone": zone,
            "isSharedCpu": False,
            "selfLink": f"{self._zone_url(zone)}/machineTypes/{name}",
            **({"accelerators": spec["accelerators"]} if "accelerators" in spec else {}),
        }

    def _region_json(self, region: str) -> dict[str, Any]:
        metrics = sorted(set(QUOTA_METRICS.values()))
        quotas = [{"metric": "CPUS", "limit": 2400.0, "usage": 0.0}]
        for metric in metrics:
            for name in (metric, "PREEMPTIBLE_" + metric):
                quotas.append(
                    {
                        "metric": name,
                        "limit": self._limit(region, name),
                        "usage": self._usage(region, name),
                    }
                )
        return {
            "kind": "compute#region",
            "id": str(abs(hash(region)) % 10**10),
            "name": region,
            "description": region,
            "status": "UP",
            "zones": [self._zone_url(zone) for zone in ZONES if self._region(zone) == region],
            "quotas": quotas,
            "selfLink": self._region_url(region),
        }

    def _project_json(self) -> dict[str, Any]:
        return {
            "kind": "compute#project",
            "id": "4815162342",
            "name": self.project,
            "commonInstanceMetadata": {
                "kind": "compute#metadata",
                "fingerprint": "abc=",
                "items": [{"key": "enable-oslogin", "value": "TRUE"}],
            },
            "quotas": [
                {"metric": "CPUS_ALL_REGIONS", "limit": 4800.0, "usage": 0.0},
                {
                    "metric": "GPUS_ALL_REGIONS",
                    "limit": self._limit("global", "GPUS_ALL_REGIONS"),
                    "usage": self._usage(None, None),
                },
            ],
            "selfLink": self._base(),
        }

    def _insert_instance(
        self, zone: str, body: dict[str, Any], request_id: str | None
    ) -> dict[str, Any]:
        if request_id and request_id in self._request_ids:
            return self._operations[self._request_ids[request_id]].body
        name = str(body.get("name", ""))
        if not _NAME.match(name):
            raise ApiError(400, f"Invalid value for field 'resource.name': '{name}'.", "invalid")
        for key, value in (body.get("labels") or {}).items():
            if not _LABEL_KEY.match(key) or not _LABEL_VALUE.match(str(value)):
                raise ApiError(400, "Invalid value for field 'resource.labels'", "invalid")
        for tag in (body.get("tags") or {}).get("items") or []:
            if not _NAME.match(str(tag)):
                raise ApiError(400, "Invalid value for field 'resource.tags.items[0]'", "invalid")
        machine = str(body.get("machineType", "")).rsplit("/", 1)[-1]
        types = machine_types_in(zone)
        if machine not in types:
            raise ApiError(
                400, f"Invalid value for field 'resource.machineType': '{machine}'.", "invalid"
            )
        for accelerator in body.get("guestAccelerators", []):
            kind = str(accelerator.get("acceleratorType", "")).rsplit("/", 1)[-1]
            count = int(accelerator.get("acceleratorCount", 0))
            if (
                not machine.startswith("n1-")
                or kind not in ZONES[zone]
                or not (0 < count <= ZONES[zone][kind])
            ):
                raise ApiError(
                    400,
                    "Invalid value for field 'resource.guestAccelerators[0].acceleratorType'",
                    "invalid",
                )
        for policy in body.get("resourcePolicies", []):
            policy_name = str(policy).rsplit("/", 1)[-1]
            if (self._region(zone), policy_name) not in self._policies:
                raise ApiError(
                    400, "Invalid value for field 'resource.resourcePolicies[0]'", "invalid"
                )
        if (zone, name) in self._instances:
            raise ApiError(
                409,
                f"The resource 'projects/{self.project}/zones/{zone}/instances/"
                f"{name}' already exists",
                "alreadyExists",
            )
        candidate = self._instance_json(zone, body, "PROVISIONING")
        accelerator, count = self._gpus_of(candidate)
        if accelerator is not None:
            region = self._region(zone)
            metric = self._metric(accelerator, candidate)
            if self._usage(region, metric) + count > self._limit(region, metric):
                raise ApiError(
                    403,
                    f"Quota '{metric}' exceeded.  Limit: "
                    f"{self._limit(region, metric)} in region {region}.",
                    "quotaExceeded",
                    "usageLimits",
                )
            if self._usage(None, None) + count > self._limit("global", "GPUS_ALL_REGIONS"):
                raise ApiError(
                    403,
                    "Quota 'GPUS_ALL_REGIONS' exceeded.  Limit: "
                    f"{self._limit('global', 'GPUS_ALL_REGIONS')} globally.",
                    "quotaExceeded",
                    "usageLimits",
                )
        slot = next((k for k in ((zone, machine), (zone, None)) if k in self._capacity), None)
        exhausted = slot is not None and self._capacity[slot] <= 0
        if exhausted and self._capacity_mode == "http":
            raise ApiError(
                503,
                f"ZONE_RESOURCE_POOL_EXHAUSTED: The zone 'projects/{self.project}"
                f"/zones/{zone}' does not have enough resources available to "
                "fulfill the request.",
                "resourcePoolExhausted",
            )
        if not exhausted:
            if slot is not None:
                self._capacity[slot] -= 1
            self._instances[(zone, name)] = candidate

        def done() -> dict[str, Any] | None:
            if exhausted:
                return {
                    "code": "ZONE_RESOURCE_POOL_EXHAUSTED",
                    "message": f"The zone 'projects/{self.project}/zones/{zone}' does not have "
                    "enough resources available to fulfill the request.  Try a different "
                    "zone, or try again later.",
                }
            if (zone, name) in self._instances:
                self._instances[(zone, name)]["status"] = "RUNNING"
            return None

        op = self._operation(f"zones/{zone}", "insert", candidate["selfLink"], done)
        if request_id:
            self._request_ids[request_id] = (op.scope, op.body["name"])
        return op.body

    def _delete_instance(self, zone: str, name: str, request_id: str | None) -> dict[str, Any]:
        if request_id and request_id in self._request_ids:
            return self._operations[self._request_ids[request_id]].body
        instance = self._instances.get((zone, name))
        if instance is None:
            raise ApiError(
                404,
                f"The resource 'projects/{self.project}/zones/{zone}/instances/"
                f"{name}' was not found",
                "notFound",
            )
        instance["status"] = "STOPPING"

        def done() -> None:
            self._instances.pop((zone, name), None)

        op = self._operation(f"zones/{zone}", "delete", instance["selfLink"], done)
        if request_id:
            self._request_ids[request_id] = (op.scope, op.body["name"])
        return op.body

    def _insert_policy(
        self, region: str, body: dict[str, Any], request_id: str | None
    ) -> dict[str, Any]:
        if request_id and request_id in self._request_ids:
            return self._operations[self._request_ids[request_id]].body
        name = str(body.get("name", ""))
        if not _NAME.match(name):
            raise ApiError(400, "Invalid value for field 'resource.name'", "invalid")
        if (region, name) in self._policies:
            raise ApiError(
                409,
                f"The resource 'projects/{self.project}/regions/{region}/"
                f"resourcePolicies/{name}' already exists",
                "alreadyExists",
            )
        link = f"{self._region_url(region)}/resourcePolicies/{name}"
        self._policies[(region, name)] = {
            **body,
            "kind": "compute#resourcePolicy",
            "region": self._region_url(region),
            "selfLink": link,
            "status": "READY",
        }
        op = self._operation(f"regions/{region}", "insert", link, None)
        if request_id:
            self._request_ids[request_id] = (op.scope, op.body["name"])
        return op.body

    def _delete_policy(self, region: str, name: str) -> dict[str, Any]:
        if (region, name) not in self._policies:
            raise ApiError(
                404,
                f"The resource 'projects/{self.project}/regions/{region}/"
                f"resourcePolicies/{name}' was not found",
                "notFound",
            )
        for instance in self._instances.values():
            if any(
                url.rstrip("/").endswith(f"/{name}") for url in instance.get("resourcePolicies", [])
            ):
                raise ApiError(
                    400,
                    f"The resource_policy resource '{name}' is already being used by an instance",
                    "resourceInUseByAnotherResource",
                )
        link = self._policies.pop((region, name))["selfLink"]
        return self._operation(f"regions/{region}", "delete", link, None).body

    def _set_metadata(
        self, zone: str, name: str, body: dict[str, Any], request_id: str | None
    ) -> dict[str, Any]:
        if request_id and request_id in self._request_ids:
            return self._operations[self._request_ids[request_id]].body
        instance = self._route_get_instance({}, None, zone, name)
        if body.get("fingerprint") != instance["metadata"]["fingerprint"]:
            raise ApiError(
                412,
                "Supplied fingerprint does not match current metadata fingerprint.",
                "conditionNotMet",
            )
        items = [
            {"key": str(item["key"]), "value": str(item.get("value", ""))}
            for item in body.get("items") or []
        ]
        if len({item["key"] for item in items}) != len(items):
            raise ApiError(
                400, "Invalid value for field 'resource.items': duplicate key", "invalid"
            )
        instance["metadata"] = {
            "kind": "compute#metadata",
            "fingerprint": _fingerprint(items),
            "items": items,
        }
        op = self._operation(f"zones/{zone}", "setMetadata", instance["selfLink"], None)
        if request_id:
            self._request_ids[request_id] = (op.scope, op.body["name"])
        return op.body

    def _insert_firewall(self, body: dict[str, Any], request_id: str | None) -> dict[str, Any]:
        if request_id and request_id in self._request_ids:
            return self._operations[self._request_ids[request_id]].body
        name = str(body.get("name", ""))
        if not _NAME.match(name):
            raise ApiError(400, f"Invalid value for field 'resource.name': '{name}'.", "invalid")
        if not body.get("allowed") or any("IPProtocol" not in rule for rule in body["allowed"]):
            raise ApiError(400, "Invalid value for field 'resource.allowed'", "invalid")
        if name in self._firewalls:
            raise ApiError(
                409,
                f"The resource 'projects/{self.project}/global/firewalls/{name}' already exists",
                "alreadyExists",
            )
        link = f"{self._base()}/global/firewalls/{name}"
        network = str(body.get("network") or "global/networks/default").rsplit("/", 1)[-1]
        self._firewalls[name] = {
            "direction": "INGRESS",
            "priority": 1000,
            **body,
            "kind": "compute#firewall",
            "id": str(next(self._ids) * 7919),
            "creationTimestamp": _now(),
            "network": f"{self._base()}/global/networks/{network}",
            "selfLink": link,
        }
        op = self._operation("global", "insert", link, None)
        if request_id:
            self._request_ids[request_id] = (op.scope, op.body["name"])
        return op.body

    def _firewall(self, name: str) -> dict[str, Any]:
        rule = self._firewalls.get(name)
        if rule is None:
            raise ApiError(
                404,
                f"The resource 'projects/{self.project}/global/firewalls/{name}' was not found",
                "notFound",
            )
        return rule

    def _delete_firewall(self, name: str) -> dict[str, Any]:
        link = self._firewall(name)["selfLink"]
        del self._firewalls[name]
        return self._operation("global", "delete", link, None).body

    # --- HTTP ---------------------------------------------------------------------

    def dispatch(self, request: Request) -> Response:
        query = {key: value for key, value in request.args.items()}
        with self.lock:
            self.requests.append((request.method, request.path, query))
            try:
                self._tick()
                fault = self._fault_for(request.method, request.path, after=False)
                if fault is not None:
                    raise fault
                endpoint, args = _URLS.bind("fake").match(request.path, method=request.method)
                if args.pop("project", self.project) != self.project:
                    raise ApiError(404, "The resource 'projects/...' was not found", "notFound")
                body = request.get_json(silent=True) or {}
                result = getattr(self, f"_route_{endpoint}")(query=query, body=body, **args)
                fault = self._fault_for(request.method, request.path, after=True)
                if fault is not None:
                    raise fault
                return _json(200, result)
            except ApiError as error:
                if error.injected:
                    self.faults_served += 1
                return _json(error.status, error.body())
            except HTTPException as error:
                status = error.code or 500
                return _json(
                    status,
                    ApiError(
                        status,
                        "not routed: " + request.path,
                        "notFound" if status == 404 else "invalid",
                    ).body(),
                )

    def _route_project(self, query: dict[str, str], body: Any) -> Any:
        return self._project_json()

    def _route_zones(self, query: dict[str, str], body: Any) -> Any:
        items = [
            {
                "kind": "compute#zone",
                "id": str(i + 2000),
                "name": zone,
                "description": zone,
                "status": "UP",
                "region": self._region_url(self._region(zone)),
                "selfLink": self._zone_url(zone),
            }
            for i, zone in enumerate(ZONES)
        ]
        return self._listing("compute#zoneList", items, query, f"{self._base()}/zones")

    def _route_region(self, query: dict[str, str], body: Any, region: str) -> Any:
        if not any(self._region(zone) == region for zone in ZONES):
            raise ApiError(
                404,
                f"The resource 'projects/{self.project}/regions/{region}' was not found",
                "notFound",
            )
        return self._region_json(region)

    def _route_accelerators(self, query: dict[str, str], body: Any) -> Any:
        entries = [
            (f"zones/{zone}", self._accelerator_json(zone, name, cards))
            for zone, kinds in ZONES.items()
            for name, cards in sorted(kinds.items())
        ]
        return self._aggregated(entries, "acceleratorTypes", query)

    def _route_accelerator(self, query: dict[str, str], body: Any, zone: str, name: str) -> Any:
        if zone not in ZONES or name not in ZONES[zone]:
            raise ApiError(404, f"The resource 'acceleratorTypes/{name}' was not found", "notFound")
        return self._accelerator_json(zone, name, ZONES[zone][name])

    def _route_machine_types(self, query: dict[str, str], body: Any) -> Any:
        entries = [
            (f"zones/{zone}", self._machine_json(zone, name, spec))
            for zone in ZONES
            for name, spec in machine_types_in(zone).items()
        ]
        return self._aggregated(entries, "machineTypes", query)

    def _route_machine_type(self, query: dict[str, str], body: Any, zone: str, name: str) -> Any:
        spec = machine_types_in(zone).get(name) if zone in ZONES else None
        if spec is None:
            raise ApiError(404, f"The resource 'machineTypes/{name}' was not found", "notFound")
        return self._machine_json(zone, name, spec)

    def _visible(self) -> list[tuple[tuple[str, str], dict[str, Any]]]:
        if self._listing_lag > 0:
            self._listing_lag -= 1
            return []
        return sorted(self._instances.items())

    def _route_list_instances(self, query: dict[str, str], body: Any, zone: str) -> Any:
        items = [item for (z, _), item in self._visible() if z == zone]
        return self._listing(
            "compute#instanceList", items, query, f"{self._zone_url(zone)}/instances"
        )

    def _route_insert_instance(self, query: dict[str, str], body: Any, zone: str) -> Any:
        if zone not in ZONES:
            raise ApiError(404, f"The resource 'zones/{zone}' was not found", "notFound")
        return self._insert_instance(zone, body, query.get("requestId"))

    def _route_get_instance(self, query: dict[str, str], body: Any, zone: str, name: str) -> Any:
        instance = self._instances.get((zone, name))
        if instance is None:
            raise ApiError(
                404,
                f"The resource 'projects/{self.project}/zones/{zone}/instances/"
                f"{name}' was not found",
                "notFound",
            )
        return instance

    def _route_delete_instance(self, query: dict[str, str], body: Any, zone: str, name: str) -> Any:
        return self._delete_instance(zone, name, query.get("requestId"))

    def _route_set_metadata(self, query: dict[str, str], body: Any, zone: str, name: str) -> Any:
        return self._set_metadata(zone, name, body, query.get("requestId"))

    def _route_list_firewalls(self, query: dict[str, str], body: Any) -> Any:
        items = [self._firewalls[name] for name in sorted(self._firewalls)]
        return self._listing(
            "compute#firewallList", items, query, f"{self._base()}/global/firewalls"
        )

    def _route_insert_firewall(self, query: dict[str, str], body: Any) -> Any:
        return self._insert_firewall(body, query.get("requestId"))

    def _route_get_firewall(self, query: dict[str, str], body: Any, name: str) -> Any:
        return self._firewall(name)

    def _route_delete_firewall(self, query: dict[str, str], body: Any, name: str) -> Any:
        return self._delete_firewall(name)

    def _route_all_instances(self, query: dict[str, str], body: Any) -> Any:
        entries = [(f"zones/{zone}", item) for (zone, _), item in self._visible()]
        return self._aggregated(entries, "instances", query)

    def _op(self, scope: str, name: str, poll: bool) -> Any:
        op = self._operations.get((scope, name))
        if op is None:
            raise ApiError(
                404, f"The resource '{scope}/operations/{name}' was not found", "notFound"
            )
        if poll and op.body["status"] != "DONE":
            op.polls_left -= 1
            if op.polls_left <= 0:
                op.finish()
        return op.body

    def _route_zone_op(self, query: dict[str, str], body: Any, zone: str, name: str) -> Any:
        return self._op(f"zones/{zone}", name, poll=False)

    def _route_zone_wait(self, query: dict[str, str], body: Any, zone: str, name: str) -> Any:
        return self._op(f"zones/{zone}", name, poll=True)

    def _route_region_op(self, query: dict[str, str], body: Any, region: str, name: str) -> Any:
        return self._op(f"regions/{region}", name, poll=False)

    def _route_region_wait(self, query: dict[str, str], body: Any, region: str, name: str) -> Any:
        return self._op(f"regions/{region}", name, poll=True)

    def _route_global_op(self, query: dict[str, str], body: Any, name: str) -> Any:
        return self._op("global", name, poll=False)

    def _route_global_wait(self, query: dict[str, str], body: Any, name: str) -> Any:
        return self._op("global", name, poll=True)

    def _route_insert_policy(self, query: dict[str, str], body: Any, region: str) -> Any:
        return self._insert_policy(region, body, query.get("requestId"))

    def _route_get_policy(self, query: dict[str, str], body: Any, region: str, name: str) -> Any:
        policy = self._policies.get((region, name))
        if policy is None:
            raise ApiError(404, f"The resource 'resourcePolicies/{name}' was not found", "notFound")
        return policy

    def _route_delete_policy(self, query: dict[str, str], body: Any, region: str, name: str) -> Any:
        return self._delete_policy(region, name)

    def _route_skus(self, query: dict[str, str], body: Any, service: str) -> Any:
        if service != BILLING_SERVICE:
            raise ApiError(404, f"Service {service} not found", "notFound")
        chunk, token = self._page(SKUS, query, size_key="pageSize")
        return {"skus": chunk, "nextPageToken": token or ""}


_C = "/compute/v1/projects/<project>"
_URLS = Map(
    [
        Rule(_C, endpoint="project", methods=["GET"]),
        Rule(f"{_C}/zones", endpoint="zones", methods=["GET"]),
        Rule(f"{_C}/regions/<region>", endpoint="region", methods=["GET"]),
        Rule(f"{_C}/aggregated/acceleratorTypes", endpoint="accelerators", methods=["GET"]),
        Rule(f"{_C}/zones/<zone>/acceleratorTypes/<name>", endpoint="accelerator", methods=["GET"]),
        Rule(f"{_C}/aggregated/machineTypes", endpoint="machine_types", methods=["GET"]),
        Rule(f"{_C}/zones/<zone>/machineTypes/<name>", endpoint="machine_type", methods=["GET"]),
        Rule(f"{_C}/zones/<zone>/instances", endpoint="list_instances", methods=["GET"]),
        Rule(f"{_C}/zones/<zone>/instances", endpoint="insert_instance", methods=["POST"]),
        Rule(f"{_C}/zones/<zone>/instances/<name>", endpoint="get_instance", methods=["GET"]),
        Rule(f"{_C}/zones/<zone>/instances/<name>", endpoint="delete_instance", methods=["DELETE"]),
        Rule(
            f"{_C}/zones/<zone>/instances/<name>/setMetadata",
            endpoint="set_metadata",
            methods=["POST"],
        ),
        Rule(f"{_C}/aggregated/instances", endpoint="all_instances", methods=["GET"]),
        Rule(f"{_C}/global/firewalls", endpoint="list_firewalls", methods=["GET"]),
        Rule(f"{_C}/global/firewalls", endpoint="insert_firewall", methods=["POST"]),
        Rule(f"{_C}/global/firewalls/<name>", endpoint="get_firewall", methods=["GET"]),
        Rule(f"{_C}/global/firewalls/<name>", endpoint="delete_firewall", methods=["DELETE"]),
        Rule(f"{_C}/global/operations/<name>", endpoint="global_op", methods=["GET"]),
        Rule(f"{_C}/global/operations/<name>/wait", endpoint="global_wait", methods=["POST"]),
        Rule(f"{_C}/zones/<zone>/operations/<name>", endpoint="zone_op", methods=["GET"]),
        Rule(f"{_C}/zones/<zone>/operations/<name>/wait", endpoint="zone_wait", methods=["POST"]),
        Rule(f"{_C}/regions/<region>/operations/<name>", endpoint="region_op", methods=["GET"]),
        Rule(
            f"{_C}/regions/<region>/operations/<name>/wait",
            endpoint="region_wait",
            methods=["POST"],
        ),
        Rule(f"{_C}/regions/<region>/resourcePolicies", endpoint="insert_policy", methods=["POST"]),
        Rule(
            f"{_C}/regions/<region>/resourcePolicies/<name>", endpoint="get_policy", methods=["GET"]
        ),
        Rule(
            f"{_C}/regions/<region>/resourcePolicies/<name>",
            endpoint="delete_policy",
            methods=["DELETE"],
        ),
        Rule("/v1/services/<service>/skus", endpoint="skus", methods=["GET"]),
    ]
)


def _json(status: int, payload: Any) -> Response:
    return Response(json.dumps(payload), status=status, mimetype="application/json")


class _QuietHandler(WSGIRequestHandler):
    def log_request(self, *args: Any, **kwargs: Any) -> None:
        return


@contextmanager
def serve_fake_gce() -> Iterator[FakeGce]:
    """Run the fake on 127.0.0.1 (a free port) in a thread; yields its ``FakeGce``."""
    fake = FakeGce()

    @Request.application  # type: ignore[arg-type]
    def app(request: Request) -> Response:
        return fake.dispatch(request)

    server = make_server("127.0.0.1", 0, app, threaded=True, request_handler=_QuietHandler)
    fake.url = f"http://127.0.0.1:{server.server_port}"
    thread = threading.Thread(target=server.serve_forever, name="fake-gce", daemon=True)
    thread.start()
    try:
        yield fake
    finally:
        server.shutdown()
        thread.join(timeout=5)
        server.server_close()


@pytest.fixture(scope="session")
def gce_server() -> Iterator[FakeGce]:
    """One fake GCE + billing server for the whole test session."""
    with serve_fake_gce() as fake:
        yield fake


@pytest.fixture
def gce(gce_server: FakeGce) -> FakeGce:
    """The session's fake GCE with its state reset for this test."""
    gce_server.reset()
    return gce_server
