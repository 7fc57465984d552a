"""A local EC2 price list in the real offer-file format, served over HTTP on 127.0.0.1.

Paths served (as ``https://pricing.us-east-1.amazonaws.com`` lays them out):

- ``/offers/v1.0/aws/index.json`` — the offer index (``offers.AmazonEC2``)
- ``/offers/v1.0/aws/AmazonEC2/current/region_index.json`` — the region index
- ``/offers/v1.0/aws/AmazonEC2/current/{region}/index.json`` — a regional offer file
  (gzip-encoded when the client accepts it):
  ``products`` (sku -> productFamily, attributes) and ``terms`` (OnDemand and Reserved,
  sku -> term -> priceDimensions -> pricePerUnit.USD)

Every regional file carries, besides the plain Linux on-demand products of ``PRICES``,
decoys with higher prices that a correct filter drops: Windows, Dedicated tenancy,
UnusedCapacityReservation, SQL Server pre-installed, a Local Zone, and Reserved terms.

Use::

    from tests.support.aws_price_list import aws_price_list  # noqa: F401  (the fixture)

    def test_x(aws_price_list):
        url = aws_price_list.url            # set GPUBROKER_AWS_PRICE_LIST_URL to this
        aws_price_list.requests             # paths fetched so far (cache tests)

or, outside pytest, ``with serve_price_list() as server: ...``.
"""

from __future__ import annotations

import gzip
import hashlib
import json
import threading
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from decimal import Decimal
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest

PUBLICATION = "2026-11-01T00:00:00Z"
VERSION = "20261101000000"
ON_DEMAND_TERM = "JRTCKXETXF"
HOURLY_RATE = "6YS6EN2CT7"
RESERVED_TERM = "4NA7Y494T4"

LOCATIONS = {
    "us-east-1": "US East (N. Virginia)",
    "us-west-2": "US West (Oregon)",
    "eu-west-1": "EU (Ireland)",
}

# Linux, shared tenancy, on-demand list prices in USD per hour.
PRICES: dict[str, dict[str, str]] = {
    "us-east-1": {
        "p5.48xlarge": "55.04",
        "p5en.48xlarge": "63.296",
        "p4d.24xlarge": "21.96",
        "p4de.24xlarge": "27.447",
        "g5.xlarge": "1.006",
        "g5.48xlarge": "16.288",
        "g6e.xlarge": "1.861",
        "m5.large": "0.096",
    },
    "us-west-2": {
        "p5.48xlarge": "55.04",
        "p4d.24xlarge": "21.96",
        "g5.xlarge": "1.006",
        "g6.xlarge": "0.8048",
    },
    "eu-west-1": {
        "p5.48xlarge": "61.65",
        "g5.xlarge": "1.123",
    },
}


def _sku(*parts: str) -> str:
    return hashlib.sha1("|".join(parts).encode()).hexdigest()[:16].upper()


def _attributes(region: str, instance_type: str, **overrides: str) -> dict[str, str]:
    attributes = {
        "servicecode": "AmazonEC2",
        "location": LOCATIONS.get(region, region),
        "locationType": "AWS Region",
        "regionCode": region,
        "instanceType": instance_type,
        "instanceFamily": "GPU instance",
        "currentGeneration": "Yes",
        "operatingSystem": "Linux",
        "tenancy": "Shared",
        "capacitystatus": "Used",
        "preInstalledSw": "NA",
        "licenseModel": "No License required",
        "operation": "RunInstances",
        "usagetype": f"BoxUsage:{instance_type}",
        "marketoption": "OnDemand",
    }
    attributes.update(overrides)
    return attributes


def _on_demand_term(sku: str, usd: str) -> dict[str, Any]:
    code = f"{sku}.{ON_DEMAND_TERM}"
    return {
        code: {
            "offerTermCode": ON_DEMAND_TERM,
            "sku": sku,
            "effectiveDate": "2026-11-01T00:00:00Z",
            "priceDimensions": {
                f"{code}.{HOURLY_RATE}": {
                    "rateCode": f"{code}.{HOURLY_RATE}",
                    "description": f"${usd} per On Demand Linux Hour",
                    "beginRange": "0",
                    "endRange": "Inf",
                    "unit": "Hrs",
                    "appliesTo": [],
                    "pricePerUnit": {"USD": usd},
                }
            },
            "termAttributes": {},
        }
    }


def _reserved_term(sku: str, usd: str) -> dict[str, Any]:
    code = f"{sku}.{RESERVED_TERM}"
    return {
        code: {
            "offerTermCode": RESERVED_TERM,
            "sku": sku,
            "effectiveDate": "2026-11-01T00:00:00Z",
            "priceDimensions": {
                f"{code}.{HOURLY_RATE}": {
                    "rateCode": f"{code}.{HOURLY_RATE}",
                    "description": "Linux reserved hourly",
                    "beginRange": "0",
                    "endRange": "Inf",
                    "unit": "Hrs",
                    "appliesTo": [],
                    "pricePerUnit": {"USD": str(Decimal(usd) / 2)},
                }
            },
            "termAttributes": {
                "LeaseContractLength": "1yr",
                "OfferingClass": "standard",
                "PurchaseOption": "No Upfront",
            },
        }
    }


def regional_offer_file(region: str, prices: Mapping[str, str]) -> dict[str, Any]:
    """The offer file of ``region``: the plain products at ``prices`` plus the decoys."""
    products: dict[str, Any] = {}
    on_demand: dict[str, Any] = {}
    reserved: dict[str, Any] = {}

    def add(instance_type: str, usd: str, tag: str, **overrides: str) -> None:
        sku = _sku(region, instance_type, tag)
        products[sku] = {
            "sku": sku,
            "productFamily": "Compute Instance",
            "attributes": _attributes(region, instance_type, **overrides),
        }
        on_demand[sku] = _on_demand_term(sku, usd)
        if tag == "plain":
            reserved[sku] = _reserved_term(sku, usd)

    for instance_type, usd in prices.items():
        base = Decimal(usd)
        add(instance_type, usd, "plain")
        add(instance_type, str(base * 2), "windows", operatingSystem="Windows")
        add(instance_type, str(base * 3), "dedicated", tenancy="Dedicated")
        add(instance_type, str(base * 4), "unused", capacitystatus="UnusedCapacityReservation")
        add(instance_type, str(base * 5), "sql", preInstalledSw="SQL Std")
        add(
            instance_type,
            str(base * 6),
            "localzone",
            locationType="AWS Local Zone",
            location=f"{LOCATIONS.get(region, region)} Local Zone",
        )
    # A data transfer product, not a node at all.
    transfer = _sku(region, "transfer")
    products[transfer] = {
        "sku": transfer,
        "productFamily": "Data Transfer",
        "attributes": {"servicecode": "AWSDataTransfer", "transferType": "InterRegion Outbound"},
    }
    on_demand[transfer] = _on_demand_term(transfer, "0.02")
    return {
        "formatVersion": "v1.0",
        "disclaimer": "Test fixture in the format of the AWS price list.",
        "offerCode": "AmazonEC2",
        "version": VERSION,
        "publicationDate": PUBLICATION,
        "products": products,
        "terms": {"OnDemand": on_demand, "Reserved": reserved},
    }


def offer_index() -> dict[str, Any]:
    base = "/offers/v1.0/aws/AmazonEC2/current"
    return {
        "formatVersion": "v1.0",
        "disclaimer": "Test fixture.",
        "publicationDate": PUBLICATION,
        "offers": {
            "AmazonEC2": {
                "offerCode": "AmazonEC2",
                "versionIndexUrl": "/offers/v1.0/aws/AmazonEC2/index.json",
                "currentVersionUrl": f"{base}/index.json",
                "currentRegionIndexUrl": f"{base}/region_index.json",
            }
        },
    }


def region_index(regions: Mapping[str, Any]) -> dict[str, Any]:
    base = "/offers/v1.0/aws/AmazonEC2/current"
    return {
        "formatVersion": "v1.0",
        "disclaimer": "Test fixture.",
        "publicationDate": PUBLICATION,
        "regions": {
            region: {"regionCode": region, "currentVersionUrl": f"{base}/{region}/index.json"}
            for region in sorted(regions)
        },
    }


@dataclass
class PriceListServer:
    url: str
    prices: dict[str, dict[str, str]]
    requests: list[str] = field(default_factory=list)


@contextmanager
def serve_price_list(
    prices: Mapping[str, Mapping[str, str]] | None = None,
) -> Iterator[PriceListServer]:
    """Serve the fixture on a free port of 127.0.0.1 until the block ends."""
    table = {region: dict(p) for region, p in (prices or PRICES).items()}
    documents: dict[str, bytes] = {
        "/offers/v1.0/aws/index.json": json.dumps(offer_index()).encode(),
        "/offers/v1.0/aws/AmazonEC2/current/region_index.json": json.dumps(
            region_index(table)
        ).encode(),
    }
    for region, region_prices in table.items():
        path = f"/offers/v1.0/aws/AmazonEC2/current/{region}/index.json"
        documents[path] = json.dumps(regional_offer_file(region, region_prices), indent=2).encode()
    state = PriceListServer(url="", prices=table)

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            state.requests.append(self.path)
            body = documents.get(self.path)
            if body is None:
                self.send_error(404)
                return
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            if "gzip" in self.headers.get("Accept-Encoding", ""):
                body = gzip.compress(body)  # as the pricing endpoint's CDN does
                self.send_header("Content-Encoding", "gzip")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    host, port = server.server_address[:2]
    state.url = f"http://{host}:{port}"
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield state
    finally:
        server.shutdown()
        server.server_close()
        thread.join()


@pytest.fixture(scope="session")
def aws_price_list_server() -> Iterator[PriceListServer]:
    with serve_price_list() as server:
        yield server


@pytest.fixture
def aws_price_list(aws_price_list_server: PriceListServer) -> PriceListServer:
    """The session's price-list server, with its request log emptied for this test."""
    aws_price_list_server.requests.clear()
    return aws_price_list_server
