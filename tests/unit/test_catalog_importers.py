"""Importers of SkyPilot and gpuhunt catalogs, and the bundled snapshot."""

from __future__ import annotations

import csv
import io
from collections import Counter
from decimal import Decimal

from broker.domain import Fabric, Pricing
from providers.catalog import gpuhunt, skypilot, snapshot
from tests.conftest import shared_dataset

CATALOGS = ("cloud-catalogs",)


def _rows(name: str) -> list[tuple[int, list[str]]]:
    """(line number, fields) of a shared CSV, read independently of the importer."""
    with shared_dataset(*CATALOGS, name).open(newline="") as handle:
        reader = csv.reader(handle)
        next(reader)
        return [(reader.line_num, row) for row in reader]


def test_gcp_fixed_gpu_price_is_host_plus_gpu_row_of_the_same_zone() -> None:
    rows = _rows("gcp_vms.csv")
    host = next(r for _, r in rows if r[0] == "a3-highgpu-8g" and r[7] == "us-central1-a")
    gpu = next(
        r
        for _, r in rows
        if r[0] == "" and r[3] == "H100" and r[4] == "8" and r[7] == "us-central1-a"
    )
    result = skypilot.parse_file(shared_dataset(*CATALOGS, "gcp_vms.csv"))
    offers = {
        (o.instance_type, o.zone, o.pricing): o for o in result.records if o.provider == "gcp"
    }
    on_demand = offers[("a3-highgpu-8g", "us-central1-a", Pricing.ON_DEMAND)]
    spot = offers[("a3-highgpu-8g", "us-central1-a", Pricing.SPOT)]
    assert on_demand.price_per_hour == Decimal(host[8]) + Decimal(gpu[8])
    assert spot.price_per_hour == Decimal(host[9]) + Decimal(gpu[9])
    assert on_demand.gpu == "H100" and on_demand.gpus_per_node == 8
    assert on_demand.gpu_memory_gib == 80 and on_demand.vcpus == 208
    assert on_demand.rdma is Fabric.TCPX and on_demand.region == "us-central1"
    # every fixed-GPU host row (a2/a3/a4/g2) became an offer in its zone
    fixed = {(r[0], r[7]) for _, r in rows if r[0].startswith(("a2-", "a3-", "a4-", "g2-"))}
    assert fixed <= {(o.instance_type, o.zone) for o in result.records}
    # attachable GPUs on N1 hosts: n1-standard-8 + one T4, priced as both rows together
    t4 = next(o for o in result.records if o.instance_type == "n1-standard-8+1xnvidia-tesla-t4")
    host8 = next(r for _, r in rows if r[0] == "n1-standard-8" and r[7] == t4.zone)
    t4_row = next(r for _, r in rows if r[3] == "T4" and r[4] == "1" and r[7] == t4.zone)
    assert t4.price_per_hour in (Decimal(host8[8]) + Decimal(t4_row[8]), None)
    assert not any(o.gpu.lower().startswith("tpu") for o in result.records if o.gpu)
    assert result.skipped["tpu"] > 0 and not result.issues


def test_aws_rows_keep_az_ids_and_every_gpu_row_is_an_offer() -> None:
    rows = _rows("aws_vms.csv")
    result = skypilot.parse_file(shared_dataset(*CATALOGS, "aws_vms.csv"))
    got = {(o.instance_type, o.region, o.zone) for o in result.records}
    assert {(r[0], r[8], r[9]) for _, r in rows} == got
    assert any(o.zone and o.zone.startswith("use1-atl") for o in result.records)
    no_spot = {(r[0], r[8], r[9]) for _, r in rows if r[7] == ""}
    spot = {(o.instance_type, o.region, o.zone) for o in result.records if o.pricing == "spot"}
    assert no_spot and not (no_spot & spot)
    p5 = next(o for o in result.records if o.instance_type == "p5.48xlarge")
    assert p5.rdma is Fabric.EFA and p5.interconnect_gbps == 3200 and p5.gpu_memory_gib == 80


def test_azure_lines_with_an_extra_field_are_reported_not_shifted() -> None:
    rows = _rows("azure_vms.csv")
    long_lines = {line: r for line, r in rows if len(r) == 11}
    result = skypilot.parse_file(shared_dataset(*CATALOGS, "azure_vms.csv"))
    reported = {issue.line for issue in result.issues}
    assert reported == set(long_lines)
    assert all("11 fields for 10 columns" in i.message for i in result.issues)
    fields = next(r for r in long_lines.values() if r[1])  # a GPU row among them
    offer = next(
        o
        for o in result.records
        if (o.instance_type, o.region) == (fields[0], fields[8]) and o.pricing == "on_demand"
    )
    assert offer.price_per_hour == Decimal(fields[6]) and offer.gpu == fields[1]
    assert offer.vcpus == int(float(fields[3]))


def test_azure_nd_rows_carry_infiniband_and_lambda_rows_stay_unknown() -> None:
    azure = skypilot.parse_file(shared_dataset(*CATALOGS, "azure_vms.csv")).records
    nd = [o for o in azure if o.instance_type == "Standard_ND96isr_H100_v5"]
    assert nd and all(
        o.rdma is Fabric.INFINIBAND and o.interconnect_gbps == 3200 and o.nvlink for o in nd
    )
    assert {o.pricing for o in nd} == {Pricing.ON_DEMAND, Pricing.SPOT}
    nc = next(o for o in azure if o.instance_type == "Standard_NC40ads_H100_v5")
    assert nc.rdma is Fabric.NONE and nc.interconnect_gbps == 40
    lam = skypilot.parse_file(shared_dataset(*CATALOGS, "lambda_vms.csv")).records
    h100 = [o for o in lam if o.instance_type == "gpu_8x_h100_sxm5"]
    assert h100 and all(o.interconnect_gbps is None for o in h100)  # not published: unknown


def test_vast_zero_spot_means_no_spot_offer() -> None:
    result = skypilot.parse_file(shared_dataset(*CATALOGS, "vast_vms.csv"))
    assert len(result.records) == len(_rows("vast_vms.csv"))
    assert all(o.pricing == "on_demand" and o.price_per_hour for o in result.records)


def test_bad_lines_are_reported_with_their_numbers() -> None:
    text = (
        "InstanceType,AcceleratorName,AcceleratorCount,vCPUs,MemoryGiB,GpuInfo,Price,SpotPrice,Region\n"
        "g5.xlarge,A10G,1,4,16,,1.006,,us-east-1\n"
        "g5.xlarge,A10G,one,4,16,,1.006,,us-west-2\n"
        "g5.xlarge,A10G,1,4\n"
        "g5.2xlarge,A10G,1,8,32,\"{'Gpus': [\",1.2,,us-east-1\n"
        "g5.4xlarge,A10G,1,16,64,,abc,,us-east-1\n"
        "m5.large,,,2,8,,0.096,,us-east-1\n"
    )
    result = skypilot.parse(io.StringIO(text), provider="aws", source="t.csv")
    assert [i.line for i in result.issues] == [3, 4, 5, 6]
    assert "AcceleratorCount" in result.issues[0].message
    assert "GpuInfo" in result.issues[2].message and "Price" in result.issues[3].message
    assert [(o.instance_type, o.price_per_hour) for o in result.records] == [
        ("g5.xlarge", Decimal("1.006"))
    ]
    assert result.skipped == {"cpu-only": 1}


def test_gpuhunt_rows_with_zones_spot_flags_and_errors() -> None:
    text = (
        "instance_name,location,price,cpu,memory,gpu_count,gpu_name,gpu_memory,spot,disk_size,"
        "gpu_vendor,flags\n"
        "a2-highgpu-1g,us-central1-a,3.67,12,85,1,A100,40.0,False,,nvidia,\n"
        "a2-highgpu-1g,us-central1-a,1.1,12,85,1,A100,40.0,True,,nvidia,\n"
        "n2-standard-2,us-central1-a,0.09,2,8,0,,,False,,,\n"
        "g2-standard-4,us-east1-b,0.70,4,16,1,L4,24.0,maybe,,nvidia,\n"
    )
    result = gpuhunt.parse(io.StringIO(text), provider="gcp", source="gcp.csv")
    assert [(i.line, "spot" in i.message) for i in result.issues] == [(5, True)]
    on_demand, spot = result.records
    assert (on_demand.region, on_demand.zone) == ("us-central1", "us-central1-a")
    assert on_demand.pricing == "on_demand" and spot.pricing == "spot"
    assert spot.price_per_hour == Decimal("1.1") and on_demand.gpu_memory_gib == 40.0
    assert result.skipped == {"cpu-only": 1}


def test_snapshot_covers_the_promised_types_in_three_regions() -> None:
    offers = snapshot()
    promised = {
        "aws": [
            "p5.48xlarge",
            "p5en.48xlarge",
            "p4d.24xlarge",
            "p4de.24xlarge",
            "g5.xlarge",
            "g5.12xlarge",
            "g5.48xlarge",
            "g6.xlarge",
            "g6.12xlarge",
            "g6.48xlarge",
            "g6e.xlarge",
            "g6e.12xlarge",
            "g6e.48xlarge",
        ],
        "gcp": [
            "a3-highgpu-8g",
            "a3-megagpu-8g",
            "a3-ultragpu-8g",
            "a2-highgpu-1g",
            "a2-highgpu-8g",
            "a2-ultragpu-8g",
            "g2-standard-4",
            "g2-standard-48",
        ],
    }
    for provider, types in promised.items():
        for instance_type in types:
            mine = [o for o in offers if (o.provider, o.instance_type) == (provider, instance_type)]
            assert len({o.region for o in mine}) >= 3, instance_type
            assert {o.pricing for o in mine} >= {Pricing.ON_DEMAND}
            assert all(o.as_of and o.source and o.price_per_hour for o in mine)
    assert {o.rdma for o in offers} >= {Fabric.EFA, Fabric.TCPX, Fabric.TCPXO, Fabric.ROCE}


def test_gcp_a4_host_priced_zero_takes_the_b200_row_price() -> None:
    rows = _rows("gcp_vms.csv")
    hosts = [r for _, r in rows if r[0] == "a4-highgpu-8g"]
    assert hosts and all(float(r[8]) == 0.0 for r in hosts)  # the case at hand
    result = skypilot.parse_file(shared_dataset(*CATALOGS, "gcp_vms.csv"))
    offers = {(o.instance_type, o.zone, o.pricing): o for o in result.records}
    for host in hosts:
        gpu = next(
            r for _, r in rows if r[0] == "" and r[3] == "B200" and r[4] == "8" and r[7] == host[7]
        )
        on_demand = offers[("a4-highgpu-8g", host[7], Pricing.ON_DEMAND)]
        assert on_demand.price_per_hour == Decimal(gpu[8]) + Decimal(host[8])
        assert on_demand.gpu == "B200" and on_demand.gpus_per_node == 8
        if float(gpu[9]) > 0:
            spot = offers[("a4-highgpu-8g", host[7], Pricing.SPOT)]
            assert spot.price_per_hour == Decimal(gpu[9]) + Decimal(host[9])


def test_vast_gpu_memory_is_the_node_total_divided_by_its_gpus() -> None:
    import ast

    rows = _rows("vast_vms.csv")
    result = skypilot.parse_file(shared_dataset(*CATALOGS, "vast_vms.csv"))
    by_line = dict(zip([line for line, _ in rows], result.records, strict=True))
    multi = [(line, r) for line, r in rows if r[2] not in ("", "1")]
    assert multi
    for line, r in multi:
        node_mib = ast.literal_eval(r[5])["Gpus"][0]["MemoryInfo"]["SizeInMiB"]
        offer = by_line[line]
        assert offer.instance_type == r[0] and offer.gpus_per_node == int(r[2])
        assert offer.gpu_memory_gib == round(node_mib / 1024 / int(r[2]), 2)
    # the two 2 x A100 rows of the issue: 80 GB and 40 GB cards, not 160 and 80
    two = {by_line[line].gpu_memory_gib for line, r in multi if r[0] == "2x-A100_SXM4-32-65536"}
    assert {40.0, 80.0} <= two
    # and the catalog's names for them: the card each row really carries
    from workloads.gpus import resolve

    names = {
        (r[0], resolve(by_line[line].gpu or "", by_line[line].gpu_memory_gib).name)
        for line, r in multi
        if r[1] in ("A100", "V100")
    }
    assert ("2x-A100_SXM4-32-65536", "A100-80GB") in names
    assert ("2x-A100_SXM4-32-65536", "A100-40GB") in names
    assert {name for row, name in names if "V100" in row} == {"V100"}  # 16 GB cards


def _price_or_none(text: str) -> Decimal | None:
    text = text.strip()
    return Decimal(text) if text and Decimal(text) > 0 else None


def _share_name(gpu: str, count: str) -> str:
    """``A10`` x ``0.167`` -> ``A10-1/6``, worked out here apart from the importer."""
    denominator = round(1 / float(count))
    assert abs(1 / denominator - float(count)) < 0.001, count
    return f"{gpu}-1/{denominator}"


def _expected_plain(name: str) -> Counter[tuple[object, ...]]:
    """Offers a SkyPilot CSV of one-row-per-instance (AWS, Azure, Lambda, Vast) holds, each
    priced from its row's Price / SpotPrice as SkyPilot reads them."""
    expected: Counter[tuple[object, ...]] = Counter()
    with shared_dataset(*CATALOGS, name).open(newline="") as handle:
        for row in csv.DictReader(handle):  # a line with an extra trailing field is read too
            count = (row["AcceleratorCount"] or "").strip()
            gpu = (row["AcceleratorName"] or "").strip()
            if not gpu or not count:
                continue
            if float(count) != int(float(count)):
                gpu = _share_name(gpu, count)
            where = (row["InstanceType"], row["Region"], row.get("AvailabilityZone") or None, gpu)
            on_demand, spot = _price_or_none(row["Price"]), _price_or_none(row["SpotPrice"])
            if on_demand is not None or spot is None:
                expected[(*where, "on_demand", on_demand)] += 1
            if spot is not None:
                expected[(*where, "spot", spot)] += 1
    return expected


def _expected_gcp() -> Counter[tuple[object, ...]]:
    """GCP offers as SkyPilot prices them: the host row plus the GPU row of the same zone
    (a zero host price is carried by the GPU row), for fixed-GPU hosts and for attachable
    GPUs on an N1 host with 8 vCPUs per GPU; unpriced when either part has no price."""
    from providers.catalog.shapes import N1_ATTACHABLE, gcp_fixed_gpus

    rows = [r for _, r in _rows("gcp_vms.csv")]
    hosts = {(r[0], r[7]): r for r in rows if r[0]}
    gpus = {(r[3], int(r[4]), r[7]): r for r in rows if not r[0] and r[3]}
    offers = []
    for (machine, zone), host in hosts.items():
        fixed = gcp_fixed_gpus(machine)
        if fixed is not None:
            offers.append((machine, host, gpus.get((*fixed, zone)), fixed[0]))
    for (gpu, count, zone), gpu_row in gpus.items():
        host = hosts.get((f"n1-standard-{8 * count}", zone))
        if gpu in N1_ATTACHABLE and host is not None:
            offers.append((f"{host[0]}+{count}x{N1_ATTACHABLE[gpu]}", host, gpu_row, gpu))
    expected: Counter[tuple[object, ...]] = Counter()
    for instance_type, host, gpu_row, gpu in offers:
        prices = []
        for col in (8, 9):
            host_price = Decimal(host[col]) if host[col].strip() else None
            gpu_price = _price_or_none(gpu_row[col]) if gpu_row is not None else None
            both = host_price is not None and gpu_price is not None
            prices.append(host_price + gpu_price if both else None)  # type: ignore[operator]
        where = (instance_type, host[6], host[7], gpu)
        on_demand, spot = prices
        if on_demand is not None or spot is None:
            expected[(*where, "on_demand", on_demand)] += 1
        if spot is not None:
            expected[(*where, "spot", spot)] += 1
    return expected


PRICE_FILES = ("aws_vms.csv", "azure_vms.csv", "gcp_vms.csv", "lambda_vms.csv", "vast_vms.csv")


def price_fidelity(name: str) -> dict[str, int]:
    """Offers imported from one shared CSV against the offers SkyPilot prices from it."""
    result = skypilot.parse_file(shared_dataset(*CATALOGS, name))
    expected = _expected_gcp() if name == "gcp_vms.csv" else _expected_plain(name)
    got: Counter[tuple[object, ...]] = Counter(
        (o.instance_type, o.region, o.zone, o.gpu, o.pricing.value, o.price_per_hour)
        for o in result.records
    )
    wrong = got - expected
    return {
        "offers": sum(got.values()),
        "expected": sum(expected.values()),
        "priced_differently": sum(wrong.values()),
        "missing": sum((expected - got).values()),
        "unpriced": sum(n for key, n in got.items() if key[-1] is None),
        "unpriced_where_priced": sum(n for key, n in wrong.items() if key[-1] is None),
    }


def test_every_offer_is_priced_as_skypilot_prices_it() -> None:
    """Over the five shared catalogs: every imported offer carries the price SkyPilot reads
    from the same rows, none is missing, and an offer is unpriced only where SkyPilot has
    no price either."""
    for name in PRICE_FILES:
        figures = price_fidelity(name)
        assert figures["offers"] == figures["expected"] > 0, (name, figures)
        assert figures["priced_differently"] == figures["missing"] == 0, (name, figures)
        assert figures["unpriced_where_priced"] == 0, (name, figures)


def test_azure_fractional_gpus_are_one_gpu_shares_unknown_to_the_planner() -> None:
    from workloads.gpus import resolve

    rows = [r for _, r in _rows("azure_vms.csv") if r[2] and float(r[2]) != int(float(r[2]))]
    assert len(rows) == 108  # the shared file's Standard_NV{6,12,18}ads_A10_v5 rows
    result = skypilot.parse_file(shared_dataset(*CATALOGS, "azure_vms.csv"))
    assert "fractional GPU share" not in result.skipped
    shares = {o.instance_type: o for o in result.records if o.gpu and "/" in o.gpu}
    got = {k: (o.gpu, o.gpus_per_node, o.gpu_memory_gib) for k, o in shares.items()}
    assert got == {
        "Standard_NV6ads_A10_v5": ("A10-1/6", 1, 4.0),
        "Standard_NV12ads_A10_v5": ("A10-1/3", 1, 8.0),
        "Standard_NV18ads_A10_v5": ("A10-1/2", 1, 12.0),
    }
    assert all(not resolve(o.gpu).known for o in shares.values() if o.gpu)
    row = next(r for r in rows if r[0] == "Standard_NV6ads_A10_v5")
    offer = next(
        o
        for o in result.records
        if (o.instance_type, o.region, o.pricing) == (row[0], row[8], "on_demand")
    )
    assert offer.price_per_hour == Decimal(row[6])


def test_gpuhunt_fractional_gpus_become_one_gpu_shares_and_bad_counts_are_reported() -> None:
    text = (
        "instance_name,location,price,cpu,memory,gpu_count,gpu_name,gpu_memory,spot,disk_size,"
        "gpu_vendor,flags\n"
        "Standard_NV6ads_A10_v5,eastus,0.454,6,55,0.167,A10,24.0,False,,nvidia,\n"
        "Standard_NV18ads_A10_v5,eastus,1.6,18,220,0.5,A10,24.0,False,,nvidia,\n"
        "odd,eastus,1.0,4,16,1.5,A10,24.0,False,,nvidia,\n"
    )
    result = gpuhunt.parse(io.StringIO(text), provider="azure", source="azure.csv")
    assert [
        (o.gpu, o.gpus_per_node, o.gpu_memory_gib, o.price_per_hour) for o in result.records
    ] == [("A10-1/6", 1, 4.0, Decimal("0.454")), ("A10-1/2", 1, 12.0, Decimal("1.6"))]
    assert [(i.line, "gpu_count" in i.message) for i in result.issues] == [(4, True)]
