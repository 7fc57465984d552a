"""Seeded fleet generators for the scheduler benchmark.

``synthetic``: providers x regions x zones x GPU types with a capacity distribution, a spot
share, and a job mix of pre-training gangs, fine-tunes and serving, drawn from templates
(a team submits sweeps of identical jobs), with deadlines, budgets, quotas and an optional
provider share cap. ``catalog``: the same job mix against pools replayed from the public
catalogs in ../shared/datasets/cloud-catalogs with synthetic capacities. ``adversarial``:
demand near supply, many identical jobs, 16-64-node gangs.

Job hours come from a small throughput model (peak TFLOPS x MFU, plus a communication
term that grows as the fabric gets slower), so generation stays vectorised at 10^5 pools;
the product path builds candidates with ``workloads.estimate`` instead.
"""

from __future__ import annotations

import csv
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from scheduler.problem import (
    CANDIDATE_DTYPES,
    INFERENCE,
    TRAINING,
    Candidates,
    Job,
    Pool,
    Problem,
    Quota,
)
from workloads.gpus import GPUS, resolve
from workloads.regions import area_of

SIZES = {"S": (50, 500), "M": (300, 3_000), "L": (1_000, 10_000), "XL": (10_000, 100_000)}

# GPU type -> (list price per GPU-hour, node sizes offered)
GPU_MIX = {
    "T4": (0.53, (1, 4)),
    "L4": (0.80, (1, 4, 8)),
    "A10G": (1.10, (1, 4)),
    "L40S": (1.85, (1, 4, 8)),
    "A100-40GB": (3.00, (8,)),
    "A100-80GB": (3.90, (1, 8)),
    "H100-80GB": (6.20, (1, 8)),
    "H200-141GB": (7.90, (8,)),
}
PROVIDERS = {"aws": 1.0, "gcp": 0.97, "azure": 1.04, "oci": 0.88, "lambda": 0.78}
REGIONS = {
    "aws": ["us-east-1", "us-west-2", "eu-west-1", "eu-central-1", "ap-northeast-1"],
    "gcp": ["us-central1", "us-east4", "europe-west4", "asia-east1"],
    "azure": ["eastus", "westus2", "westeurope", "japaneast"],
    "oci": ["us-ashburn-1", "eu-frankfurt-1", "ap-tokyo-1"],
    "lambda": ["us-east-1", "us-west-1", "europe-central-1"],
}
AREAS = ("us", "europe", "asia")
HORIZON_HOURS = 24.0
SPOT_DISCOUNT = 0.38
SPOT_OVERHEAD = 0.12
HIGH_END = ("A100-40GB", "A100-80GB", "H100-80GB", "H200-141GB")


@dataclass(frozen=True)
class Config:
    jobs: int
    offers: int
    seed: int = 0
    tightness: float = 0.8  # GPU demand of the gangs over supply of high-end pools
    spot_share: float = 0.3
    serving_share: float = 0.06
    gang_share: float = 0.2
    deadline_share: float = 0.3
    budgets: bool = True
    quotas: bool = True
    share_cap: float | None = None
    templates: int | None = None
    gang_nodes: tuple[int, int] = (2, 8)
    capacity_scale: float = 1.0  # < 1 makes the fleet capacity-tight
    big_pools: float = 0.0  # share of 8-GPU high-end pools with room for 16-64-node gangs


def _area(region: str) -> str:
    area = area_of(region)
    if area in AREAS:
        return area
    for prefix, name in (
        ("eu", "europe"),
        ("ap", "asia"),
        ("japan", "asia"),
        ("west", "europe"),
        ("east", "us"),
    ):
        if region.startswith(prefix) or name in region:
            return name
    return "us"


def synthetic_pools(cfg: Config, rng: np.random.Generator) -> list[Pool]:
    gpus = list(GPU_MIX)
    weights = np.array([3, 3, 2, 2, 2, 2, 3, 1], dtype=float)
    pools: list[Pool] = []
    seen: set[str] = set()
    providers = list(PROVIDERS)
    i = 0
    while len(pools) < cfg.offers:
        i += 1
        provider = providers[int(rng.integers(len(providers)))]
        region = REGIONS[provider][int(rng.integers(len(REGIONS[provider])))]
        zone = f"{region}-{'abcdef'[int(rng.integers(6))]}"
        gpu = gpus[int(rng.choice(len(gpus), p=weights / weights.sum()))]
        price, sizes = GPU_MIX[gpu]
        gpn = sizes[int(rng.integers(len(sizes)))]
        spot = rng.random() < cfg.spot_share
        variant = int(rng.integers(1, 1 + max(1, cfg.offers // 400)))
        itype = f"{gpu.lower()}.{gpn}x.v{variant}"
        pricing = "spot" if spot else "on_demand"
        key = f"{provider}/{zone}/{itype}/{pricing}"
        if key in seen:
            continue
        seen.add(key)
        per_gpu = price * PROVIDERS[provider] * float(rng.uniform(0.9, 1.15))
        if spot:
            per_gpu *= SPOT_DISCOUNT
        high = gpu in HIGH_END and gpn == 8
        fabric = (
            float(rng.choice([400, 800, 1600, 3200]))
            if high and rng.random() < 0.7
            else float(rng.choice([10, 25, 50, 100]))
        )
        capacity = int(min(64, rng.geometric(0.35 if gpn == 8 else 0.2)))
        if cfg.big_pools and high and rng.random() < cfg.big_pools:
            capacity = int(rng.integers(16, 65))
        pools.append(
            Pool(
                provider,
                region,
                zone,
                itype,
                pricing,
                gpu,
                gpn,
                round(per_gpu * gpn, 4),
                capacity,
                fabric,
                "efa" if fabric >= 400 else "none",
            )
        )
    return pools


def catalog_pools(cfg: Config, rng: np.random.Generator, root: Path) -> list[Pool] | None:
    """GPU rows of the public catalogs as pools (zone where given), synthetic capacity."""
    files = {"aws": "aws_vms.csv", "gcp": "gcp_vms.csv", "lambda": "lambda_vms.csv"}
    rows: list[Pool] = []
    for provider, name in files.items():
        path = root / name
        if not path.exists():
            return None
        with path.open(newline="") as handle:
            for rec in csv.DictReader(handle):
                gpu_name, count = rec.get("AcceleratorName"), rec.get("AcceleratorCount")
                if not gpu_name or not count:
                    continue
                gpu = resolve(gpu_name).name
                if gpu not in GPUS:
                    continue
                gpn = max(1, int(float(count)))
                region = rec.get("Region") or ""
                zone = rec.get("AvailabilityZone") or f"{region}-z"
                for pricing, column in (("on_demand", "Price"), ("spot", "SpotPrice")):
                    raw = rec.get(column) or ""
                    if not raw or float(raw) <= 0:
                        continue
                    high = gpu in HIGH_END and gpn == 8
                    fabric = 3200.0 if high and provider != "lambda" else 100.0 if high else 25.0
                    rows.append(
                        Pool(
                            provider,
                            region,
                            zone,
                            rec["InstanceType"],
                            pricing,
                            gpu,
                            gpn,
                            float(raw),
                            int(min(32, rng.geometric(0.3))),
                            fabric,
                            "efa" if fabric >= 400 else "none",
                        )
                    )
    unique = {p.key: p for p in rows}
    pools = [unique[k] for k in sorted(unique)]
    if len(pools) > cfg.offers:
        keep = np.sort(rng.choice(len(pools), size=cfg.offers, replace=False))
        pools = [pools[int(i)] for i in keep]
    return pools


@dataclass
class _Template:
    kind: str
    team: str
    priority: int
    gpus_allowed: tuple[str, ...]
    min_gpus: dict[str, int]  # per allowed GPU: GPUs needed (memory)
    gpu_hours_h100: float  # work in H100-hours at full efficiency
    comm: float  # communication intensity
    spot: bool
    min_fabric: float | None
    max_nodes: int | None
    fixed_nodes: int | None
    deadline_factor: float | None
    rate: float = 0.0  # inference: total req/s
    shares: tuple[tuple[str, float], ...] = ()
    rps_per_gpu_h100: float = 0.0
    gpus_per_replica: dict[str, int] | None = None
    min_replicas: int = 0


def _templates(cfg: Config, rng: np.random.Generator) -> list[_Template]:
    n = cfg.templates or max(6, int(2.0 * math.sqrt(cfg.jobs)))
    teams = [f"team{i}" for i in range(max(2, min(8, n // 4)))]
    out = []
    for t in range(n):
        u = rng.random()
        team = teams[t % len(teams)]
        priority = int(rng.choice([0, 0, 1, 2]))
        if u < cfg.serving_share:
            params_gb = float(rng.choice([16, 40, 140]))
            allowed = tuple(g for g in GPU_MIX if GPUS[g].memory_gib >= 24)
            gpr = {
                g: max(1, 2 ** math.ceil(math.log2(params_gb * 1.3 / GPUS[g].memory_gib)))
                for g in allowed
            }
            gpr = {g: r for g, r in gpr.items() if r <= 8}
            shares = rng.dirichlet(np.ones(len(AREAS)))
            out.append(
                _Template(
                    INFERENCE,
                    team,
                    priority,
                    tuple(gpr),
                    {},
                    0.0,
                    0.0,
                    bool(rng.random() < 0.3),
                    None,
                    None,
                    None,
                    None,
                    rate=float(rng.uniform(5, 60)),
                    shares=tuple((a, float(s)) for a, s in zip(AREAS, shares, strict=True)),
                    rps_per_gpu_h100=float(8.0 * 16 / params_gb),
                    gpus_per_replica=gpr,
                    min_replicas=int(rng.integers(1, 3)),
                )
            )
        elif u < cfg.serving_share + cfg.gang_share:
            lo, hi = cfg.gang_nodes
            nodes = int(rng.integers(lo, hi + 1))
            allowed = tuple(g for g in HIGH_END if rng.random() < 0.8) or ("H100-80GB",)
            out.append(
                _Template(
                    TRAINING,
                    team,
                    priority,
                    allowed,
                    {g: 8 * nodes for g in allowed},
                    float(rng.uniform(40, 400)) * nodes,
                    float(rng.uniform(0.1, 0.4)),
                    bool(rng.random() < 0.4),
                    100.0 if rng.random() < 0.6 else None,
                    nodes,
                    nodes,
                    _deadline(cfg, rng),
                )
            )
        else:
            mem = float(rng.choice([12, 24, 40, 70, 140]))
            allowed = tuple(g for g in GPU_MIX if GPUS[g].memory_gib * 8 >= mem)
            need = {
                g: max(1, 2 ** math.ceil(math.log2(max(mem / GPUS[g].memory_gib, 1))))
                for g in allowed
            }
            out.append(
                _Template(
                    TRAINING,
                    team,
                    priority,
                    allowed,
                    need,
                    float(rng.uniform(2, 60)),
                    float(rng.uniform(0.02, 0.2)),
                    bool(rng.random() < 0.5),
                    None,
                    2,
                    None,
                    _deadline(cfg, rng),
                )
            )
    return out


def _deadline(cfg: Config, rng: np.random.Generator) -> float | None:
    return float(rng.uniform(1.5, 4.0)) if rng.random() < cfg.deadline_share else None


def _pool_arrays(pools: list[Pool]) -> dict[str, np.ndarray]:
    return {
        "gpu": np.array([p.gpu for p in pools]),
        "spot": np.array([p.pricing == "spot" for p in pools]),
        "gpn": np.array([p.gpus_per_node for p in pools], dtype=np.int64),
        "cap": np.array([p.capacity for p in pools], dtype=np.int64),
        "fabric": np.array([p.interconnect_gbps or 10.0 for p in pools], dtype=np.float64),
        "price": np.array([p.price_per_hour for p in pools], dtype=np.float64),
        "area": np.array([_area(p.region) for p in pools]),
    }


def _per_gpu(gpu: np.ndarray, table: dict[str, float]) -> np.ndarray:
    out = np.zeros(len(gpu), dtype=np.float64)
    for name, value in table.items():
        out[gpu == name] = value
    return out


def _training_rows(shape: int, tpl: _Template, arrays: dict) -> dict[str, np.ndarray]:
    h100 = GPUS["H100-80GB"].bf16_tflops
    best = min(tpl.gpu_hours_h100 * h100 / GPUS[g].bf16_tflops for g in tpl.gpus_allowed)
    idx = np.flatnonzero(
        np.isin(arrays["gpu"], list(tpl.gpus_allowed)) & (arrays["spot"] <= tpl.spot)
    )
    gpu, gpn, cap = arrays["gpu"][idx], arrays["gpn"][idx], arrays["cap"][idx]
    fabric, price, spot = arrays["fabric"][idx], arrays["price"][idx], arrays["spot"][idx]
    need = _per_gpu(gpu, {g: float(n) for g, n in tpl.min_gpus.items()})
    tflops = _per_gpu(gpu, {g: GPUS[g].bf16_tflops for g in tpl.gpus_allowed})
    n_min = np.maximum(1, np.ceil(need / gpn)).astype(np.int64)
    options = [np.full(len(idx), tpl.fixed_nodes)] if tpl.fixed_nodes else [n_min, 2 * n_min]
    parts = []
    for nodes in options:
        ok = (nodes >= n_min) & (nodes <= cap)
        if tpl.max_nodes and not tpl.fixed_nodes:
            ok &= nodes <= tpl.max_nodes
        if tpl.min_fabric:
            ok &= ~((nodes > 1) & (fabric < tpl.min_fabric))
        gpus = nodes * gpn
        hours = tpl.gpu_hours_h100 * h100 / tflops / gpus
        hours = np.where(nodes > 1, hours * (1 + tpl.comm * 400.0 / fabric), hours)
        if tpl.deadline_factor is not None:
            ok &= ~(hours > tpl.deadline_factor * best / np.maximum(8, need))
        overhead = np.where(spot, SPOT_OVERHEAD, 0.0)
        cost = price * nodes * hours * (1 + overhead)
        parts.append(
            {
                "pool": idx[ok],
                "nodes": nodes[ok],
                "hours": hours[ok],
                "cost": cost[ok],
                "gpus": gpus[ok],
                "overhead": overhead[ok],
            }
        )
    out = {k: np.concatenate([p[k] for p in parts]).astype(CANDIDATE_DTYPES[k]) for k in parts[0]}
    out["shape"] = np.full(len(out["pool"]), shape, dtype=CANDIDATE_DTYPES["shape"])
    return out


def _serving_rows(shape: int, tpl: _Template, arrays: dict) -> dict[str, np.ndarray]:
    keys = [a for a, _ in tpl.shares]
    gpr_table = tpl.gpus_per_replica or {}
    idx = np.flatnonzero(
        np.isin(arrays["gpu"], list(tpl.gpus_allowed)) & (arrays["spot"] <= tpl.spot)
    )
    gpu, gpn, price = arrays["gpu"][idx], arrays["gpn"][idx], arrays["price"][idx]
    gpr = _per_gpu(gpu, {g: float(r) for g, r in gpr_table.items()}).astype(np.int64)
    ok = gpr <= gpn
    idx, gpu, gpn, price, gpr = idx[ok], gpu[ok], gpn[ok], price[ok], gpr[ok]
    replicas = gpn // gpr
    h100_bw = GPUS["H100-80GB"].memory_bandwidth_gbps
    bandwidth = _per_gpu(gpu, {g: GPUS[g].memory_bandwidth_gbps for g in gpr_table})
    rps = tpl.rps_per_gpu_h100 * gpr * bandwidth / h100_bw
    area = np.array([keys.index(a) for a in arrays["area"][idx]], dtype=np.int64)
    overhead = np.where(arrays["spot"][idx], SPOT_OVERHEAD, 0.0)
    cost = price * HORIZON_HOURS * (1 + overhead)
    n = len(idx)
    out = {
        "shape": np.full(n, shape),
        "pool": idx,
        "nodes": np.ones(n, dtype=np.int64),
        "hours": np.full(n, HORIZON_HOURS),
        "cost": cost,
        "gpus": gpn,
        "area": area,
        "rate": rps * replicas,
        "replicas": replicas,
        "overhead": overhead,
    }
    return {k: np.asarray(v, dtype=CANDIDATE_DTYPES[k]) for k, v in out.items()}


def build(cfg: Config, pools: list[Pool], rng: np.random.Generator) -> Problem:
    templates = _templates(cfg, rng)
    arrays = _pool_arrays(pools)
    # Each template's rows go straight into one array per column, sized for the most rows
    # any template can have (two node counts per pool): pages never written are never
    # resident, and no list of per-template arrays sits beside the merged ones (at XL
    # that pair held twice the candidates' 0.8 GiB).
    room = 2 * len(pools) * len(templates)
    merged = {k: np.empty(room, dtype=dtype) for k, dtype in CANDIDATE_DTYPES.items()}
    used = 0
    for shape, tpl in enumerate(templates):
        maker = _serving_rows if tpl.kind == INFERENCE else _training_rows
        part = maker(shape, tpl, arrays)
        size = len(part["pool"])
        for k, column in merged.items():
            column[used : used + size] = part.get(k, -1 if k == "area" else 0)
        used += size
    filled = {k: v[:used] for k, v in merged.items()}
    del merged  # from_arrays lets each column go as it sorts it
    candidates = Candidates.from_arrays(filled, len(templates))
    # Jobs: templates drawn with gangs rarer; serving templates once each.
    weights = np.array(
        [0.3 if t.kind == INFERENCE else (0.5 if t.fixed_nodes else 1.0) for t in templates]
    )
    picks = rng.choice(len(templates), size=cfg.jobs, p=weights / weights.sum())
    jobs = []
    for job_id, shape in enumerate(sorted(int(s) for s in picks), start=1):
        tpl = templates[shape]
        demand = tuple((a, tpl.rate * s) for a, s in tpl.shares) if tpl.kind == INFERENCE else ()
        jobs.append(
            Job(
                id=job_id,
                name=f"job-{job_id}",
                team=tpl.team,
                priority=tpl.priority,
                shape=shape,
                kind=tpl.kind,
                demand=demand,
                min_replicas=tpl.min_replicas,
                spot=tpl.spot,
                min_interconnect_gbps=tpl.min_fabric,
                max_nodes=tpl.max_nodes if tpl.kind == TRAINING else None,
                gpus=tpl.gpus_allowed,
                no_candidate_reason="no offer meets its GPU, fabric and deadline needs",
            )
        )
    # jobs were sorted by template: shuffle ids so arrival order mixes templates
    order = rng.permutation(len(jobs))
    jobs = [
        Job(**{**job.__dict__, "id": int(order[i]) + 1, "name": f"job-{int(order[i]) + 1}"})
        for i, job in enumerate(jobs)
    ]
    problem = Problem(
        jobs=jobs,
        pools=pools,
        candidates=candidates,
        n_shapes=len(templates),
        max_provider_share=cfg.share_cap,
        seed=cfg.seed,
    )
    _scale_capacity(problem, cfg)
    if cfg.quotas:
        problem.quotas = _quotas(problem, rng)
    if cfg.budgets:
        problem.budgets = _budgets(problem, rng)
    return problem


def _scale_capacity(problem: Problem, cfg: Config) -> None:
    """Scale pool capacity so that cheapest-choice demand over supply is ``tightness``."""
    c = problem.candidates
    demand = np.zeros(len(problem.pools))
    counts: dict[int, int] = {}
    for job in problem.jobs:
        counts[job.shape] = counts.get(job.shape, 0) + 1
    for shape, n in counts.items():
        rows = c.of_shape(shape)
        if len(rows):
            first = rows.start
            demand[c.pool[first]] += int(c.nodes[first]) * n
    supply = float(sum(p.capacity for p in problem.pools))
    wanted = float(demand.sum())
    if wanted <= 0 or supply <= 0:
        return
    factor = max(wanted / (cfg.tightness * supply), 1.0) * cfg.capacity_scale
    pools = []
    for p in problem.pools:
        cap = max(1, round(p.capacity * factor))
        pools.append(Pool(**{**p.__dict__, "capacity": cap}))
    problem.pools = pools


def _quotas(problem: Problem, rng: np.random.Generator) -> list[Quota]:
    """A GPU quota per provider and high-end family at 60-90 % of its capacity."""
    totals: dict[tuple[str, str], int] = {}
    for p in problem.pools:
        if p.gpu in HIGH_END:
            key = (p.provider, p.gpu)
            totals[key] = totals.get(key, 0) + p.capacity * p.gpus_per_node
    return [
        Quota(provider=prov, family=gpu, limit=float(int(total * rng.uniform(0.6, 0.9))))
        for (prov, gpu), total in sorted(totals.items())
    ]


def _budgets(problem: Problem, rng: np.random.Generator) -> dict[str, float]:
    """Half of the teams get a budget of 1.25-1.8x their jobs' cheapest cost."""
    c = problem.candidates
    cheapest: dict[str, float] = {}
    for job in problem.jobs:
        rows = c.of_shape(job.shape)
        if not len(rows):
            continue
        sl = slice(rows.start, rows.stop)
        if job.kind == TRAINING:
            low = float(c.cost[rows.start])
        else:
            per_rate = float(np.min(c.cost[sl] / np.maximum(c.rate[sl], 1e-9)))
            low = per_rate * sum(rate for _, rate in job.demand) + float(c.cost[sl].min())
        cheapest[job.team] = cheapest.get(job.team, 0.0) + low
    teams = sorted(cheapest)
    return {t: round(cheapest[t] * float(rng.uniform(1.25, 1.8)), 2) for t in teams[::2]}


def synthetic(cfg: Config) -> Problem:
    rng = np.random.default_rng(cfg.seed)
    return build(cfg, synthetic_pools(cfg, rng), rng)


def catalog(cfg: Config, root: Path) -> Problem | None:
    rng = np.random.default_rng(cfg.seed)
    pools = catalog_pools(cfg, rng, root)
    return None if pools is None else build(cfg, pools, rng)


def adversarial(cfg: Config) -> Problem:
    hard = Config(
        **{
            **cfg.__dict__,
            "tightness": 0.97,
            "gang_share": 0.5,
            "templates": max(4, int(math.sqrt(cfg.jobs) / 2)),
            "gang_nodes": (16, 64),
            "serving_share": 0.0,
            "big_pools": 0.5,
        }
    )
    rng = np.random.default_rng(cfg.seed)
    return build(hard, synthetic_pools(hard, rng), rng)
