"""Import 100,000 SkyPilot-format offer lines and time a filtered query over them.

Usage: python bench/catalog_import.py [--rows N] [--postgres ADMIN_URL]
(``--postgres``: run in a database of its own, created through ADMIN_URL and dropped after.)
Prints a table: parse + upsert of a fresh import, a re-import where every price moved,
a re-import of the same file, and the median of 20 runs of a filtered, sorted query.
"""

from __future__ import annotations

import argparse
import os
import random
import statistics
import tempfile
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from broker.db.engine import Database
from broker.services.offers.imports import import_file
from broker.services.offers.query import query_offers
from broker.services.offers.values import OfferFilter

TYPES = [
    ("p5.48xlarge", "H100", 8, 192, 2048, 55.04),
    ("p4d.24xlarge", "A100", 8, 96, 1152, 21.96),
    ("g5.xlarge", "A10G", 1, 4, 16, 1.006),
    ("g6.12xlarge", "L4", 4, 48, 192, 4.60),
    ("g6e.48xlarge", "L40S", 8, 192, 1536, 30.13),
]
HEADER = (
    "InstanceType,AcceleratorName,AcceleratorCount,vCPUs,MemoryGiB,GpuInfo,Price,SpotPrice,"
    "Region,AvailabilityZone,Arch\n"
)


def write_rows(path: Path, rows: int, seed: int) -> None:
    """``rows`` distinct lines: each type in many synthetic regions and zones; the seed
    moves only the prices, so a second file is a re-import of the same offers."""
    rng = random.Random(seed)
    with path.open("w") as out:
        out.write(HEADER)
        for i in range(rows):
            name, gpu, count, vcpus, mem, price = TYPES[i % len(TYPES)]
            slot = i // len(TYPES)
            region = f"{('us', 'eu', 'ap')[slot % 3]}-r{slot // 8}"
            zone = f"{region}-az{slot % 8}"
            od = price * rng.uniform(0.9, 1.2)
            shape = f"{name},{gpu},{count},{vcpus},{mem},"
            out.write(f"{shape},{od:.4f},{od * 0.4:.4f},{region},{zone},x86_64\n")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rows", type=int, default=100_000)
    parser.add_argument("--postgres", metavar="ADMIN_URL")
    args = parser.parse_args()
    if args.postgres:
        with scratch_postgres(args.postgres) as url:
            run(args.rows, url)
    else:
        with tempfile.TemporaryDirectory() as tmp:
            run(args.rows, f"sqlite:///{tmp}/bench.db")


@contextmanager
def scratch_postgres(admin_url: str) -> Iterator[str]:
    from sqlalchemy import create_engine, text

    name = f"gpubroker_bench_{uuid.uuid4().hex[:8]}"
    admin = create_engine(admin_url, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f'CREATE DATABASE "{name}"'))
    try:
        yield admin_url.rsplit("/", 1)[0] + f"/{name}"
    finally:
        with admin.connect() as conn:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


def run(rows: int, url: str) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        db = Database(url)
        db.ensure_schema()
        path = Path(tmp) / "aws_vms.csv"
        results: list[tuple[str, float, str]] = []
        write_rows(path, rows, seed=1)
        report = import_file(db, path, "skypilot")
        results.append(("import (new)", report.seconds, f"{report.offers} offers"))
        write_rows(path, rows, seed=2)
        report = import_file(db, path, "skypilot")
        total = report.total
        results.append(("re-import (moved)", report.seconds, f"{total.updated} updated"))
        report = import_file(db, path, "skypilot")
        total = report.total
        results.append(("re-import (same)", report.seconds, f"{total.unchanged} unchanged"))
        flt = OfferFilter(gpus=("H100",), min_gpus=8, regions=("us-*",), pricing="spot", limit=20)
        times = []
        for _ in range(20):
            started = time.perf_counter()
            found = query_offers(db, flt)
            times.append(time.perf_counter() - started)
        results.append(("filtered query", statistics.median(times), f"{len(found)} rows"))
        db.dispose()
    load = ", ".join(f"{x:.1f}" for x in os.getloadavg())
    print(f"{rows} lines, {url.split(':', 1)[0]}, load average {load}")
    print(f"{'step':<20} {'seconds':>9}  detail")
    for step, seconds, detail in results:
        print(f"{step:<20} {seconds:>9.3f}  {detail}")


if __name__ == "__main__":
    main()
