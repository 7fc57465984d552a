"""Independent checker of a plan: recomputes every cost and checks every constraint.

It shares no code with the model: it reads the pools, jobs and candidate columns and
recomputes from them. A plan from the solver that fails here is a bug and is never shown.
"""

from __future__ import annotations

import math
from collections import defaultdict

from scheduler.problem import INFERENCE, Plan, Problem

REL = 1e-6


def _close(a: float, b: float) -> bool:
    return math.isclose(a, b, rel_tol=REL, abs_tol=1e-6)


def check(problem: Problem, plan: Plan) -> list[str]:
    """Every violation of ``plan`` in words; empty when the plan is valid."""
    out: list[str] = []
    c = problem.candidates
    jobs = {job.id: job for job in problem.jobs}
    by_job = plan.by_job()
    for job_id in set(by_job) | set(plan.unplaced):
        if job_id not in jobs:
            out.append(f"job {job_id}: not in the problem")
    for job in problem.jobs:
        placed, unplaced = job.id in by_job, job.id in plan.unplaced
        if placed == unplaced:
            out.append(f"job {job.id}: must be either placed or unplaced")
    cost = 0.0
    nodes_used: dict[int, int] = defaultdict(int)
    gpus_by_pool: dict[int, int] = defaultdict(int)
    team_cost: dict[str, float] = defaultdict(float)
    weight_by_provider: dict[str, float] = defaultdict(float)
    for job_id, items in sorted(by_job.items()):
        found = jobs.get(job_id)
        if found is None:
            continue
        job = found
        job_cost = 0.0
        served: dict[int, float] = defaultdict(float)
        replicas = 0
        if job.kind != INFERENCE and (len(items) != 1 or items[0].count != 1):
            out.append(f"job {job_id}: a training job takes exactly one gang")
        for a in items:
            i = a.candidate
            if not 0 <= i < len(c) or int(c.shape[i]) != job.shape:
                out.append(f"job {job_id}: candidate {i} is not one of its own")
                continue
            if a.count < 1:
                out.append(f"job {job_id}: non-positive unit count {a.count}")
                continue
            pool = problem.pools[int(c.pool[i])]
            nodes, hours = int(c.nodes[i]), float(c.hours[i])
            unit = pool.price_per_hour * nodes * hours * (1.0 + float(c.overhead[i]))
            if not _close(unit, float(c.cost[i])):
                out.append(f"job {job_id}: candidate cost {c.cost[i]:.4f} != recomputed {unit:.4f}")
            if int(c.gpus[i]) != nodes * pool.gpus_per_node:
                out.append(f"job {job_id}: GPU count disagrees with {pool.label}")
            if nodes > 1 and job.kind != INFERENCE:
                # a pool is one zone, or one region where the provider names no zones
                need = job.min_interconnect_gbps
                if need and (pool.interconnect_gbps or 0.0) < need:
                    out.append(f"job {job_id}: {pool.label} fabric below {need} Gbps")
            if job.max_nodes is not None and nodes > job.max_nodes and job.kind != INFERENCE:
                out.append(f"job {job_id}: {nodes} nodes above max_nodes {job.max_nodes}")
            if pool.pricing == "spot" and not job.spot:
                out.append(f"job {job_id}: spot pool {pool.label} but spot not allowed")
            if job.gpus and pool.gpu not in job.gpus:
                out.append(f"job {job_id}: GPU {pool.gpu} not allowed")
            if job.providers and pool.provider not in job.providers:
                out.append(f"job {job_id}: provider {pool.provider} not allowed")
            # wall time includes the spot recovery overhead, as the candidates count it
            wall = hours * (1.0 + float(c.overhead[i]))
            if job.deadline_hours is not None and wall > job.deadline_hours + 1e-9:
                out.append(f"job {job_id}: {wall:.2f} h misses its deadline")
            job_cost += unit * a.count
            nodes_used[int(c.pool[i])] += nodes * a.count
            gpus_by_pool[int(c.pool[i])] += int(c.gpus[i]) * a.count
            weight = (int(c.gpus[i]) if problem.share_on == "gpus" else unit) * a.count
            weight_by_provider[pool.provider] += weight
            if job.kind == INFERENCE:
                area = int(c.area[i])
                if not 0 <= area < len(job.demand):
                    out.append(f"job {job_id}: candidate {i} serves no demand of the job")
                else:
                    served[area] += float(c.rate[i]) * a.count
                replicas += int(c.replicas[i]) * a.count
        if job.kind == INFERENCE:
            for a_idx, (key, rate) in enumerate(job.demand):
                if served[a_idx] < rate * (1 - 1e-9):
                    out.append(
                        f"job {job_id}: serves {served[a_idx]:.2f} of {rate:.2f} req/s in {key}"
                    )
            if replicas < job.min_replicas:
                out.append(f"job {job_id}: {replicas} replicas below {job.min_replicas}")
        if job.budget is not None and job_cost > job.budget * (1 + REL) + 1e-6:
            out.append(f"job {job_id}: cost {job_cost:.2f} above its budget {job.budget:.2f}")
        team_cost[job.team] += job_cost
        cost += job_cost
    for p, used in sorted(nodes_used.items()):
        pool = problem.pools[p]
        if used > pool.capacity:
            out.append(f"pool {pool.key}: {used} nodes above capacity {pool.capacity}")
    for quota in problem.quotas:
        used = sum(g for p, g in gpus_by_pool.items() if quota.matches(problem.pools[p]))
        if used > quota.limit + 1e-9:
            out.append(f"{quota.label}: {used} GPUs above limit {quota.limit:g}")
    for team, left in sorted(problem.budgets.items()):
        if team_cost.get(team, 0.0) > left * (1 + REL) + 1e-6:
            out.append(f"team {team}: plan costs {team_cost[team]:.2f}, budget left {left:.2f}")
    share = problem.share_cap
    total = sum(weight_by_provider.values())
    if share is not None and total > 0:
        # over the whole fleet: what live allocations hold counts (Problem.share_room)
        held = sum(problem.held.values())
        for provider, weight in sorted(weight_by_provider.items()):
            room = problem.share_room(provider)
            if weight - share * total > room + share * (total + held) * REL + 1e-6:
                fleet = (weight + problem.held.get(provider, 0.0)) / (total + held)
                out.append(f"provider {provider}: share {fleet:.1%} above cap {share:.0%}")
    if not _close(cost, plan.cost):
        out.append(f"plan cost {plan.cost:.4f} != recomputed {cost:.4f}")
    penalty = sum(problem.penalty(jobs[j]) for j in plan.unplaced if j in jobs)
    if not _close(cost + penalty, plan.objective):
        out.append(f"plan objective {plan.objective:.4f} != recomputed {cost + penalty:.4f}")
    if plan.lp_bound is not None and plan.lp_bound > plan.objective * (1 + 1e-6) + 1e-6:
        out.append(f"LP bound {plan.lp_bound:.4f} above the objective {plan.objective:.4f}")
    return out


def capacity_violations(problem: Problem, plan: Plan) -> int:
    """Pools over-booked by ``plan`` (for the per-job-cheapest baseline's report)."""
    c = problem.candidates
    used: dict[int, int] = defaultdict(int)
    for a in plan.assignments:
        used[int(c.pool[a.candidate])] += int(c.nodes[a.candidate]) * a.count
    return sum(1 for p, n in used.items() if n > problem.pools[p].capacity)


def provider_shares(problem: Problem, plan: Plan) -> dict[str, float]:
    """Each provider's share of the plan's GPUs."""
    c = problem.candidates
    gpus: dict[str, float] = defaultdict(float)
    for a in plan.assignments:
        gpus[problem.pools[int(c.pool[a.candidate])].provider] += int(c.gpus[a.candidate]) * a.count
    total = sum(gpus.values()) or 1.0
    return {p: g / total for p, g in sorted(gpus.items())}
