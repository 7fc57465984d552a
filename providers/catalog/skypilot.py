"""Importer for SkyPilot's catalog CSVs (``vms.csv`` of aws, gcp, azure, lambda, vast ...).

Facts of the format this importer handles:
- prices are USD per instance-hour; ``Price`` or ``SpotPrice`` may be empty (unknown);
  a zero price means "none" (vast.ai writes 0.00 for "no spot"), never "free";
- AWS zones are AZ ids (``use1-az1``, local zones ``use1-atl2-az1``) and are kept as given;
- ``GpuInfo`` is a Python literal (single quotes), read with ``ast.literal_eval``;
- GCP bills GPUs apart from the host: a GPU row has no ``InstanceType`` and prices
  ``AcceleratorCount`` GPUs alone. A launchable a2/a3/a4/g2 offer is its host row plus the
  GPU row of the same zone; N1 hosts take attachable GPUs (T4, V100, P100, P4, K80),
  emitted as ``n1-standard-<8n>+<accelerator>x<n>`` shapes. A host priced 0.0 (a4, whose
  B200 row carries the whole price) adds nothing: the offer costs what its GPU row says;
- vast.ai's ``GpuInfo`` gives the node's GPU memory in ``SizeInMiB`` (all its GPUs
  together), so per-GPU memory is that divided by ``AcceleratorCount``; elsewhere it is
  per GPU;
- some files have lines with more fields than the header (an unquoted comma in the last
  column); they are repaired only when the extra fields lie past every column read;
- Azure sells fractional GPUs (``AcceleratorCount`` 0.167, 0.333, 0.5 of an A10): such a
  row is a node with one GPU named for its share, ``A10-1/6`` (``shapes.gpu_share``),
  listed and priced but not planned.
CPU-only and TPU rows are counted as skipped, not imported.
"""

from __future__ import annotations

import ast
import re
from collections.abc import Iterable
from datetime import UTC, datetime
from decimal import Decimal
from functools import lru_cache
from pathlib import Path
from typing import Any, TextIO

from broker.domain import Pricing
from providers.base import OfferRecord
from providers.catalog.parse import (
    ImportIssue,
    ParseResult,
    RowError,
    count,
    number,
    open_text,
    price,
    read_rows,
)
from providers.catalog.shapes import (
    N1_ATTACHABLE,
    gcp_fixed_gpus,
    gpu_share,
    n1_shape,
    network_of,
)

REQUIRED = (
    "InstanceType",
    "AcceleratorName",
    "AcceleratorCount",
    "vCPUs",
    "MemoryGiB",
    "GpuInfo",
    "Price",
    "SpotPrice",
    "Region",
)
OPTIONAL = ("AvailabilityZone",)

_NAME_RE = re.compile(r"^([a-z][a-z0-9]*)[_-]")


def provider_from_name(path: str | Path) -> str | None:
    """``aws_vms.csv`` -> ``aws``; None when the file name does not say."""
    match = _NAME_RE.match(Path(path).name.lower())
    return match.group(1) if match else None


@lru_cache(maxsize=4096)
def gpu_memory_gib(gpu_info: str, share: int = 1) -> float | None:
    """Memory from a ``GpuInfo`` literal divided by ``share`` (the GPU count where the
    literal gives the node's total); None when absent. Raises RowError if the text looks
    like a literal but is not one."""
    text = gpu_info.strip()
    if not text.startswith("{"):
        return None  # some files write just the GPU name here
    try:
        data: Any = ast.literal_eval(text)
        mib = data["Gpus"][0]["MemoryInfo"]["SizeInMiB"]
        return round(float(mib) / 1024 / share, 2)
    except (ValueError, SyntaxError, KeyError, IndexError, TypeError):
        raise RowError(
            f"GpuInfo: not a Python literal with Gpus[0].MemoryInfo ({text[:40]!r})"
        ) from None


def parse(
    handle: TextIO, *, provider: str, source: str, as_of: datetime | None = None
) -> ParseResult:
    """Records and issues for one SkyPilot CSV of ``provider``."""
    result = ParseResult()
    rows = read_rows(handle, REQUIRED, source, result, OPTIONAL)
    if provider == "gcp":
        _parse_gcp(rows, provider, source, as_of, result)
    else:
        _parse_plain(rows, provider, source, as_of, result)
    return result


def parse_file(path: str | Path, provider: str | None = None) -> ParseResult:
    from broker.errors import UserError

    with open_text(path) as handle:
        name = provider or provider_from_name(path)
        if not name:
            raise UserError(f"{path}: cannot tell the provider from the file name; pass --provider")
        source = f"skypilot:{Path(path).name}"[:128]
        return parse(handle, provider=name, source=source, as_of=_mtime(path))


def _mtime(path: str | Path) -> datetime | None:
    try:
        return datetime.fromtimestamp(Path(path).stat().st_mtime, UTC)
    except OSError:
        return None


def _offers(
    result: ParseResult,
    *,
    provider: str,
    region: str,
    zone: str | None,
    instance_type: str,
    gpu: str,
    gpus: int,
    gpu_memory: float | None,
    vcpus: float | None,
    memory: float | None,
    on_demand: Decimal | None,
    spot: Decimal | None,
    source: str,
    as_of: datetime | None,
) -> None:
    """Append the on-demand offer (price possibly unknown) and the spot offer if sold."""
    net = network_of(provider, instance_type)
    cores = None if vcpus is None else round(vcpus)
    zone = zone or None
    prices: list[tuple[Pricing, Decimal | None]] = [] if spot is None else [(Pricing.SPOT, spot)]
    if on_demand is not None or spot is None:
        prices.insert(0, (Pricing.ON_DEMAND, on_demand))
    for pricing, amount in prices:
        # positional: this runs for every line of files with 100,000s of lines
        result.records.append(
            OfferRecord(
                provider,
                region,
                zone,
                instance_type,
                gpu,
                gpus,
                gpu_memory,
                cores,
                memory,
                pricing,
                amount,
                net.gbps,
                net.fabric,
                net.nvlink,
                None,
                source,
                as_of,
            )
        )


def _parse_plain(
    rows: Iterable[tuple[int, dict[str, str]]],
    provider: str,
    source: str,
    as_of: datetime | None,
    result: ParseResult,
) -> None:
    for line, row in rows:
        gpu = row["AcceleratorName"].strip()
        if not gpu:
            result.skip("cpu-only")
            continue
        try:
            raw_count = number(row["AcceleratorCount"], "AcceleratorCount")
            if raw_count is None or raw_count <= 0:
                raise RowError("AcceleratorCount: missing for a GPU row")
            gpus, memory = int(raw_count), None
            if raw_count != gpus:
                gpu, memory = _share(gpu, raw_count, "AcceleratorCount")
                gpus = 1
            else:
                memory = _per_gpu_memory(provider, row["GpuInfo"], gpus)
            instance_type = row["InstanceType"].strip()
            region = row["Region"].strip()
            if not instance_type or not region:
                raise RowError("InstanceType and Region must not be empty")
            _offers(
                result,
                provider=provider,
                region=region,
                zone=row.get("AvailabilityZone", "").strip() or None,
                instance_type=instance_type,
                gpu=gpu,
                gpus=gpus,
                gpu_memory=memory,
                vcpus=number(row["vCPUs"], "vCPUs"),
                memory=number(row["MemoryGiB"], "MemoryGiB"),
                on_demand=price(row["Price"], "Price"),
                spot=price(row["SpotPrice"], "SpotPrice"),
                source=source,
                as_of=as_of,
            )
        except RowError as exc:
            result.issues.append(ImportIssue(line, str(exc)))


def _share(gpu: str, count: float, column: str) -> tuple[str, float | None]:
    try:
        return gpu_share(gpu, count)
    except ValueError as exc:
        raise RowError(f"{column}: {exc}") from None


def _per_gpu_memory(provider: str, gpu_info: str, gpus: int) -> float | None:
    return gpu_memory_gib(gpu_info, gpus if provider == "vast" else 1)  # vast: node total


_GpuKey = tuple[str, int, str]  # (accelerator name, count, zone)


def _parse_gcp(
    rows: Iterable[tuple[int, dict[str, str]]],
    provider: str,
    source: str,
    as_of: datetime | None,
    result: ParseResult,
) -> None:
    """Compose GCP offers: host row + GPU row of the same zone (see the module doc)."""
    gpu_rows: dict[_GpuKey, tuple[Decimal | None, Decimal | None, float | None]] = {}
    hosts: dict[tuple[str, str], tuple[int, dict[str, str]]] = {}
    for line, row in rows:
        try:
            zone = row.get("AvailabilityZone", "").strip()
            if not row["Region"].strip() or not zone:
                raise RowError("Region and AvailabilityZone must not be empty")
            machine = row["InstanceType"].strip()
            if machine:
                hosts[(machine, zone)] = (line, row)
                continue
            name = row["AcceleratorName"].strip()
            if not name:
                raise RowError("a row needs an InstanceType or an AcceleratorName")
            if name.lower().startswith("tpu"):
                result.skip("tpu")
                continue
            gpus = count(row["AcceleratorCount"], "AcceleratorCount")
            if not gpus:
                raise RowError("AcceleratorCount: missing for a GPU row")
            gpu_rows[(name, gpus, zone)] = (
                price(row["Price"], "Price"),
                price(row["SpotPrice"], "SpotPrice"),
                gpu_memory_gib(row["GpuInfo"]),
            )
        except RowError as exc:
            result.issues.append(ImportIssue(line, str(exc)))

    used: set[_GpuKey] = set()
    for (machine, zone), (line, row) in hosts.items():
        fixed = gcp_fixed_gpus(machine)
        if fixed is None:
            result.skip("cpu-only")
            continue
        name, gpus = fixed
        key = (name, gpus, zone)
        gpu_price = gpu_rows.get(key)
        if gpu_price is None:
            result.skip("no GPU price row for the host's zone (price unknown)")
        used.add(key)
        _compose(result, provider, source, as_of, line, row, machine, name, gpus, gpu_price)

    for key, gpu_price in gpu_rows.items():
        name, gpus, zone = key
        if key in used:
            continue
        if name not in N1_ATTACHABLE:
            result.skip("GPU row without a host of its family")
            continue
        host_type, offer_type = n1_shape(name, gpus)
        host = hosts.get((host_type, zone))
        if host is None:
            result.skip("attachable GPU without an N1 host price in its zone")
            continue
        line, row = host
        _compose(result, provider, source, as_of, line, row, offer_type, name, gpus, gpu_price)


def _compose(
    result: ParseResult,
    provider: str,
    source: str,
    as_of: datetime | None,
    line: int,
    host: dict[str, str],
    instance_type: str,
    gpu: str,
    gpus: int,
    gpu_price: tuple[Decimal | None, Decimal | None, float | None] | None,
) -> None:
    try:
        host_od = _host_price(host["Price"], "Price")
        host_spot = _host_price(host["SpotPrice"], "SpotPrice")
        gpu_od, gpu_spot, memory = gpu_price or (None, None, None)
        _offers(
            result,
            provider=provider,
            region=host["Region"].strip(),
            zone=host["AvailabilityZone"].strip(),
            instance_type=instance_type,
            gpu=gpu,
            gpus=gpus,
            gpu_memory=memory,
            vcpus=number(host["vCPUs"], "vCPUs"),
            memory=number(host["MemoryGiB"], "MemoryGiB"),
            on_demand=_sum(host_od, gpu_od),
            spot=_sum(host_spot, gpu_spot),
            source=source,
            as_of=as_of,
        )
    except RowError as exc:
        result.issues.append(ImportIssue(line, str(exc)))


def _host_price(raw: str, column: str) -> Decimal | None:
    """A GCP host's price: zero is "carried by the GPU row" (a4), not unknown."""
    value = price(raw, column)
    if value is None and raw.strip() and Decimal(raw.strip()) == 0:
        return Decimal(0)
    return value


def _sum(host: Decimal | None, gpu: Decimal | None) -> Decimal | None:
    return None if host is None or gpu is None else host + gpu
