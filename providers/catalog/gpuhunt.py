"""Importer for gpuhunt's catalog CSVs (``aws.csv``, ``gcp.csv`` ... or a merged file).

Columns: ``instance_name,location,price,cpu,memory,gpu_count,gpu_name,gpu_memory,spot,
disk_size,gpu_vendor[,flags]``, optionally with a leading ``provider`` column in merged
files. One line is one offer: ``spot`` says its pricing, ``price`` is USD per instance-hour
(GPU and host together), ``gpu_memory`` is GB per GPU. ``location`` is a region, or a zone
for GCP (``us-central1-a``), in which case the region is derived from it.
"""

from __future__ import annotations

import re
from datetime import UTC, datetime
from pathlib import Path
from typing import TextIO

from broker.domain import Pricing
from broker.errors import UserError
from providers.base import OfferRecord
from providers.catalog.parse import (
    ImportIssue,
    ParseResult,
    RowError,
    number,
    open_text,
    price,
    read_rows,
)
from providers.catalog.shapes import gpu_share, network_of

REQUIRED = (
    "instance_name",
    "location",
    "price",
    "cpu",
    "memory",
    "gpu_count",
    "gpu_name",
    "gpu_memory",
    "spot",
)
OPTIONAL = ("provider",)

_GCP_ZONE = re.compile(r"^([a-z]+-[a-z]+\d+)-[a-z]$")
_TRUE = {"true", "1", "yes"}
_FALSE = {"false", "0", "no", ""}


def _region_zone(provider: str, location: str) -> tuple[str, str | None]:
    match = _GCP_ZONE.match(location) if provider == "gcp" else None
    return (match.group(1), location) if match else (location, None)


def parse(
    handle: TextIO,
    *,
    provider: str | None,
    source: str,
    as_of: datetime | None = None,
    fallback: str | None = None,
) -> ParseResult:
    """Records and issues for one gpuhunt CSV. Without a ``provider`` column the provider
    is ``provider`` (or ``fallback``, guessed from the file name); with one, a given
    ``provider`` keeps only that provider's rows."""
    result = ParseResult()
    for line, row in read_rows(handle, REQUIRED, source, result, OPTIONAL):
        try:
            name = (row.get("provider") or provider or fallback or "").strip().lower()
            if not name:
                raise UserError(f"{source}: no provider column; pass --provider")
            if provider and name != provider:
                result.skip(f"other provider ({name})")
                continue
            _parse_row(result, row, name, source, as_of)
        except RowError as exc:
            result.issues.append(ImportIssue(line, str(exc)))
    return result


def _parse_row(
    result: ParseResult, row: dict[str, str], provider: str, source: str, as_of: datetime | None
) -> None:
    gpus = number(row["gpu_count"], "gpu_count") or 0
    gpu = row["gpu_name"].strip()
    if gpus <= 0 or not gpu:
        result.skip("cpu-only")
        return
    memory = number(row["gpu_memory"], "gpu_memory")
    if gpus != int(gpus):  # a share of one GPU: see ``shapes.gpu_share``
        try:
            gpu, memory = gpu_share(gpu, gpus)
        except ValueError as exc:
            raise RowError(f"gpu_count: {exc}") from None
        gpus = 1
    spot_text = row["spot"].strip().lower()
    if spot_text not in _TRUE | _FALSE:
        raise RowError(f"spot: expected True or False, got {row['spot']!r}")
    instance_type = row["instance_name"].strip()
    location = row["location"].strip()
    if not instance_type or not location:
        raise RowError("instance_name and location must not be empty")
    region, zone = _region_zone(provider, location)
    vcpus = number(row["cpu"], "cpu")
    net = network_of(provider, instance_type)
    result.records.append(
        OfferRecord(
            provider=provider,
            region=region,
            zone=zone,
            instance_type=instance_type,
            gpu=gpu,
            gpus_per_node=int(gpus),
            gpu_memory_gib=memory,
            vcpus=None if vcpus is None else round(vcpus),
            memory_gib=number(row["memory"], "memory"),
            pricing=Pricing.SPOT if spot_text in _TRUE else Pricing.ON_DEMAND,
            price_per_hour=price(row["price"], "price"),
            interconnect_gbps=net.gbps,
            rdma=net.fabric,
            nvlink=net.nvlink,
            source=source,
            as_of=as_of,
        )
    )


def parse_file(path: str | Path, provider: str | None = None) -> ParseResult:
    try:
        as_of: datetime | None = datetime.fromtimestamp(Path(path).stat().st_mtime, UTC)
    except OSError:
        as_of = None
    stem = Path(path).stem.lower()
    fallback = stem if re.fullmatch(r"[a-z][a-z0-9]*", stem) and stem != "catalog" else None
    with open_text(path) as handle:
        return parse(
            handle,
            provider=provider,
            source=f"gpuhunt:{Path(path).name}"[:128],
            as_of=as_of,
            fallback=fallback,
        )
