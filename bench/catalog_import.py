"""Import 100,000 SkyPilot-format offer lines and time a filtered query over them.

Usage: python bench/catalog_import.py [--rows N] [--database-url URL]
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
from pathlib import Path

from broker.db.engine import Database
from broker.services import catalog

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
    parser.add_argument("--database-url")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        url = args.database_url or f"sqlite:///{tmp}/bench.db"
        db = Database(url)
        db.ensure_schema()
        path = Path(tmp) / "aws_vms.csv"
        results: list[tuple[str, float, str]] = []
        write_rows(path, args.rows, seed=1)
        report = catalog.import_file(db, path, "skypilot")
        results.append(("import (new)", report.seconds, f"{report.offers} offers"))
        write_rows(path, args.rows, seed=2)
        report = catalog.import_file(db, path, "skypilot")
        total = report.total
        results.append(("re-import (moved)", report.seconds, f"{total.updated} updated"))
        report = catalog.import_file(db, path, "skypilot")
        total = report.total
        results.append(("re-import (same)", report.seconds, f"{total.unchanged} unchanged"))
        flt = catalog.OfferFilter(
            gpus=("H100",), min_gpus=8, regions=("us-*",), pricing="spot", limit=20
        )
        times = []
        for _ in range(20):
            started = time.perf_counter()
            rows = catalog.query_offers(db, flt)
            times.append(time.perf_counter() - started)
        results.append(("filtered query", statistics.median(times), f"{len(rows)} rows"))
        db.dispose()
    load = ", ".join(f"{x:.1f}" for x in os.getloadavg())
    print(f"{args.rows} lines, {url.split(':', 1)[0]}, load average {load}")
    print(f"{'step':<20} {'seconds':>9}  detail")
    for step, seconds, detail in results:
        print(f"{step:<20} {seconds:>9.3f}  {detail}")


if __name__ == "__main__":
    main()
