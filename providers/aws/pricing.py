"""On-demand EC2 prices from the public price list (the regional offer file), cached on disk.

The offer file lives at ``{base}/offers/v1.0/aws/AmazonEC2/current/{region}/index.json``
(``base`` is ``GPUBROKER_AWS_PRICE_LIST_URL``, by default the public pricing endpoint) and
needs no credentials. Its shape::

    {"formatVersion": ..., "publicationDate": ..., "products": {SKU: {"productFamily",
     "attributes": {"instanceType", "operatingSystem", "tenancy", "capacitystatus",
     "preInstalledSw", "regionCode", ...}}}, "terms": {"OnDemand": {SKU: {TERM: {
     "priceDimensions": {DIM: {"unit": "Hrs", "pricePerUnit": {"USD": "55.04"}}}}}},
     "Reserved": {...}}}

A real regional file runs to gigabytes, so it is read as a stream, one product or term at
a time, keeping only instance type -> hourly price for Linux, shared tenancy, capacity
status ``Used`` and no pre-installed software. That small table is what the cache holds.
"""

from __future__ import annotations

import codecs
import gzip
import hashlib
import json
import os
import tempfile
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from decimal import Decimal, InvalidOperation
from pathlib import Path
from typing import IO, Any, cast

from broker.domain import as_utc, utcnow
from broker.errors import ProviderError

PROVIDER = "aws"
OFFER_PATH = "/offers/v1.0/aws/AmazonEC2/current/{region}/index.json"
DEFAULT_TTL = timedelta(hours=24)
FETCH_TIMEOUT_S = 120
_CHUNK = 1 << 20

# The product attributes a plain Linux on-demand node has (missing attributes are not
# held against a product: older files lack some).
_WANTED: Mapping[str, str] = {
    "operatingSystem": "Linux",
    "tenancy": "Shared",
    "capacitystatus": "Used",
    "preInstalledSw": "NA",
    "locationType": "AWS Region",
}
_REQUIRED = ("operatingSystem", "tenancy", "preInstalledSw")


@dataclass(frozen=True)
class PriceTable:
    """Hourly on-demand USD per instance type in one region, as of ``fetched_at``."""

    region: str
    prices: Mapping[str, Decimal]
    fetched_at: datetime
    publication: str | None = None


def offer_url(base_url: str, region: str) -> str:
    return base_url.rstrip("/") + OFFER_PATH.format(region=region)


def on_demand_prices(
    base_url: str,
    region: str,
    cache_dir: Path,
    *,
    ttl: timedelta = DEFAULT_TTL,
    now: datetime | None = None,
) -> PriceTable:
    """The region's price table: from the cache while fresh, else fetched (and cached).

    When a fetch fails and an expired table is cached, the expired one is returned rather
    than nothing; with no table at all the failure raises ``ProviderError``.
    """
    now = now or utcnow()
    path = _cache_path(cache_dir, base_url, region)
    cached = _read_cache(path)
    if cached is not None and now - cached.fetched_at < ttl:
        return cached
    try:
        table = fetch_prices(base_url, region, now=now)
    except ProviderError:
        if cached is not None:
            return cached
        raise
    _write_cache(path, table)
    return table


def fetch_prices(base_url: str, region: str, *, now: datetime | None = None) -> PriceTable:
    url = offer_url(base_url, region)
    if urllib.parse.urlsplit(url).scheme not in ("http", "https"):
        raise ProviderError(PROVIDER, "GPUBROKER_AWS_PRICE_LIST_URL must be an http(s) URL")
    request = urllib.request.Request(url, headers={"Accept-Encoding": "gzip"})
    try:
        with urllib.request.urlopen(request, timeout=FETCH_TIMEOUT_S) as response:
            stream: IO[bytes] = response
            if response.headers.get("Content-Encoding", "").lower() == "gzip":
                stream = cast(IO[bytes], gzip.GzipFile(fileobj=response))
            prices, publication = parse_offer_file(stream)
    except urllib.error.HTTPError as exc:
        raise ProviderError(
            PROVIDER,
            f"the EC2 price list for {region} is unavailable (HTTP {exc.code})",
            retryable=exc.code >= 500,
        ) from None
    except (urllib.error.URLError, OSError, TimeoutError):
        raise ProviderError(
            PROVIDER, f"cannot reach the EC2 price list for {region}", retryable=True
        ) from None
    except ValueError:
        raise ProviderError(
            PROVIDER, f"the EC2 price list for {region} is not valid JSON"
        ) from None
    return PriceTable(region, prices, now or utcnow(), publication)


def parse_offer_file(stream: IO[bytes]) -> tuple[dict[str, Decimal], str | None]:
    """instance type -> hourly USD for plain Linux on-demand nodes, and the publication date."""
    reader = _JsonStream(stream)
    wanted_skus: dict[str, str] = {}  # sku -> instance type
    hourly: dict[str, Decimal] = {}  # sku -> price (every on-demand sku until products are known)
    products_seen = False
    publication: str | None = None
    for key in reader.members():
        if key == "products":
            for sku in reader.members():
                instance_type = _plain_linux_type(reader.value())
                if instance_type is not None:
                    wanted_skus[sku] = instance_type
            products_seen = True
        elif key == "terms":
            for term_type in reader.members():
                for sku in reader.members():
                    terms = reader.value()
                    if term_type != "OnDemand" or (products_seen and sku not in wanted_skus):
                        continue
                    price = _hourly_price(terms)
                    if price is not None:
                        hourly[sku] = price
        else:
            value = reader.value()
            if key == "publicationDate" and isinstance(value, str):
                publication = value
    prices: dict[str, Decimal] = {}
    for sku, instance_type in sorted(wanted_skus.items()):
        price = hourly.get(sku)
        if price is not None and price > 0:
            prices.setdefault(instance_type, price)
    return prices, publication


def _plain_linux_type(product: Any) -> str | None:
    if not isinstance(product, dict):
        return None
    family = str(product.get("productFamily") or "")
    if family and not family.startswith("Compute Instance"):
        return None
    attributes = product.get("attributes") or {}
    if any(attributes.get(name) is None for name in _REQUIRED):
        return None
    for name, wanted in _WANTED.items():
        value = attributes.get(name)
        if value is not None and value != wanted:
            return None
    instance_type = attributes.get("instanceType")
    return str(instance_type) if instance_type else None


def _hourly_price(terms: Any) -> Decimal | None:
    if not isinstance(terms, dict):
        return None
    for term in terms.values():
        for dimension in (term.get("priceDimensions") or {}).values():
            if str(dimension.get("unit", "")).lower() not in ("hrs", "hours", "hour"):
                continue
            usd = (dimension.get("pricePerUnit") or {}).get("USD")
            try:
                return Decimal(str(usd))
            except (InvalidOperation, ValueError):
                continue
    return None


# --- the on-disk cache ------------------------------------------------------------------


def _cache_path(cache_dir: Path, base_url: str, region: str) -> Path:
    digest = hashlib.sha256(base_url.encode()).hexdigest()[:12]
    return cache_dir / "aws-price-list" / f"{region}-{digest}.json"


def _read_cache(path: Path) -> PriceTable | None:
    try:
        data = json.loads(path.read_text())
        return PriceTable(
            region=str(data["region"]),
            prices={k: Decimal(v) for k, v in data["prices"].items()},
            fetched_at=as_utc(datetime.fromisoformat(data["fetched_at"])),
            publication=data.get("publication"),
        )
    except (OSError, ValueError, KeyError, TypeError, InvalidOperation):
        return None  # no cache, or a damaged one: fetch again


def _write_cache(path: Path, table: PriceTable) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    data = {
        "region": table.region,
        "fetched_at": table.fetched_at.isoformat(),
        "publication": table.publication,
        "prices": {k: str(v) for k, v in sorted(table.prices.items())},
    }
    # Write then rename, so a reader never sees half a file.
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name, suffix=".tmp")
    with os.fdopen(fd, "w") as handle:
        json.dump(data, handle)
    os.replace(tmp, path)


# --- a streaming reader for one big JSON object -----------------------------------------


class _JsonStream:
    """Walks a JSON document whose objects may be too large to hold, member by member.

    ``members()`` iterates an object's keys; after each key the caller must consume the
    member's value, either with ``value()`` (decoded whole) or another ``members()``.
    """

    def __init__(self, stream: IO[bytes]) -> None:
        self._stream = stream
        self._decode = codecs.getincrementaldecoder("utf-8")()
        self._decoder = json.JSONDecoder()
        self._buf = ""
        self._pos = 0
        self._eof = False

    def _fill(self) -> bool:
        if self._eof:
            return False
        chunk = self._stream.read(_CHUNK)
        if not chunk:
            self._eof = True
            self._buf = self._buf[self._pos :] + self._decode.decode(b"", final=True)
        else:
            self._buf = self._buf[self._pos :] + self._decode.decode(chunk)
        self._pos = 0
        return True

    def _peek(self) -> str:
        while True:
            while self._pos < len(self._buf) and self._buf[self._pos] in " \t\r\n":
                self._pos += 1
            if self._pos < len(self._buf):
                return self._buf[self._pos]
            if not self._fill():
                return ""

    def _expect(self, char: str) -> None:
        if self._peek() != char:
            raise ValueError(f"expected {char!r} in the offer file")
        self._pos += 1

    def value(self) -> Any:
        self._peek()
        while True:
            try:
                value, end = self._decoder.raw_decode(self._buf, self._pos)
            except json.JSONDecodeError:
                if not self._fill():
                    raise ValueError("the offer file ends early") from None
                continue
            if end >= len(self._buf) and not self._eof:
                self._fill()  # a number may run on past the buffer: decode it again whole
                continue
            self._pos = end
            return value

    def members(self) -> Iterator[str]:
        self._expect("{")
        if self._peek() == "}":
            self._pos += 1
            return
        while True:
            key = self.value()
            if not isinstance(key, str):
                raise ValueError("an object key in the offer file is not a string")
            self._expect(":")
            yield key
            separator = self._peek()
            self._pos += 1
            if separator == "}":
                return
            if separator != ",":
                raise ValueError("expected ',' or '}' in the offer file")
