"""A serving fleet with mixed request sizes: the planned GPU mix against the best single GPU
type at the same latency targets (planner only, no replay).

    python -m bench.simulate.serving

Three endpoints of a 7B model (chat, long-document summaries, short code completions),
planned with ``planning.plan`` over the shared AWS and GCP catalogs: once with every GPU
type allowed, then once per GPU type with only that type allowed (the planner prices
serving one day at a time).
"""

from __future__ import annotations

import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
CATALOGS = ROOT.parent / "shared" / "datasets" / "cloud-catalogs"
GPUS = ("H100", "H200", "A100-80GB", "A100-40GB", "L40S", "L4", "A10G")
SLO = {"ttft_ms": 800, "tpot_ms": 40}
ENDPOINTS: tuple[dict[str, Any], ...] = (
    {"name": "chat", "request_rate": 40, "input_tokens": 1024, "output_tokens": 256},
    {"name": "summaries", "request_rate": 8, "input_tokens": 6000, "output_tokens": 400},
    {"name": "completions", "request_rate": 120, "input_tokens": 300, "output_tokens": 48},
)


def _spec(endpoint: dict[str, Any], gpus: list[str]) -> dict[str, Any]:
    return {
        "kind": "inference",
        "team": "product",
        "model": {"preset": "llama-7b"},
        "slo": SLO,
        "regions": {"us": 1.0},
        "min_replicas": 1,
        "constraints": {"gpus": gpus, "regions": ["us-*"]},
        **endpoint,
    }


def _plan(db: Any, settings: Any, gpus: list[str]) -> tuple[float | None, int, float]:
    """(plan cost for a day of serving, unplaced jobs, plan seconds) on ``gpus``."""
    from broker.services import jobs, planning
    from workloads.spec import parse_spec

    ids = [jobs.submit(db, parse_spec(_spec(e, gpus))).id for e in ENDPOINTS]
    began = time.perf_counter()
    report = planning.plan(db, settings, job_ids=ids)
    seconds = time.perf_counter() - began
    for job_id in ids:
        jobs.cancel(db, settings, job_id)
    placed = not report.unplaced
    return (float(report.objective) if placed else None), len(report.unplaced), seconds


def main() -> int:
    if not CATALOGS.is_dir():
        print(f"missing dataset: {CATALOGS}", file=sys.stderr)
        return 1
    from broker.config import load_settings
    from broker.db.engine import Database
    from broker.services import catalog

    work = Path(tempfile.mkdtemp(prefix="bench-serving-mix-"))
    settings = load_settings({"GPUBROKER_HOME": str(work)})
    db = Database(settings.database_url)
    for name in ("aws", "gcp"):
        catalog.import_file(db, CATALOGS / f"{name}_vms.csv", "skypilot", provider=name)
    rows = [("mix of " + "/".join(GPUS), *_plan(db, settings, list(GPUS)))]
    rows += [(gpu, *_plan(db, settings, [gpu])) for gpu in GPUS]
    db.dispose()
    print(f"{'allowed GPUs':<52}{'USD/day':>10}{'unplaced':>10}{'plan s':>8}")
    for label, cost, unplaced, seconds in rows:
        shown = f"{cost:,.2f}" if cost is not None else "-"
        print(f"{label:<52}{shown:>10}{unplaced:>10}{seconds:>8.2f}")
    singles = [cost for _, cost, _, _ in rows[1:] if cost is not None]
    mix = rows[0][1]
    if mix is not None and singles:
        print(f"mix vs best single GPU type: {1 - mix / min(singles):.1%} cheaper")
    return 0


if __name__ == "__main__":
    sys.exit(main())
