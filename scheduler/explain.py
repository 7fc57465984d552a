"""Why a plan looks the way it does, in words.

Per placed job: the chosen candidate, the runner-up (next-cheapest other placement) with
the cost and time difference, and the constraint that kept the job off anything cheaper
("pool p5.48xlarge/use1-az4 full", "team budget", "provider share cap"). Per unplaced job:
the reason ("no offer with ... in the allowed regions", "budget of team X has $Y left,
cheapest placement costs $Z", "every viable pool is full").
"""

from __future__ import annotations

from collections import defaultdict
from typing import Any

from scheduler.problem import INFERENCE, Plan, Problem


class _Usage:
    def __init__(self, problem: Problem, plan: Plan) -> None:
        c = problem.candidates
        self.nodes: dict[int, int] = defaultdict(int)
        self.gpus: dict[int, int] = defaultdict(int)
        self.team: dict[str, float] = defaultdict(float)
        self.weight: dict[str, float] = defaultdict(float)
        jobs = {j.id: j for j in problem.jobs}
        for a in plan.assignments:
            p = int(c.pool[a.candidate])
            self.nodes[p] += int(c.nodes[a.candidate]) * a.count
            self.gpus[p] += int(c.gpus[a.candidate]) * a.count
            self.team[jobs[a.job].team] += float(c.cost[a.candidate]) * a.count
            self.weight[problem.pools[p].provider] += _weight(problem, a.candidate) * a.count
        self.quota_used = [
            sum(g for p, g in self.gpus.items() if q.matches(problem.pools[p]))
            for q in problem.quotas
        ]


def _blocker(
    problem: Problem,
    usage: _Usage,
    cand: int,
    team: str,
    extra_cost: float,
    *,
    freed: int | None = None,
) -> str | None:
    """The constraint that keeps candidate ``cand`` out; ``freed``: the job's own chosen
    candidate, whose nodes and share weight it would give back."""
    c = problem.candidates
    p = int(c.pool[cand])
    pool = problem.pools[p]
    used = usage.nodes.get(p, 0)
    if freed is not None and int(c.pool[freed]) == p:
        used -= int(c.nodes[freed])
    if used + int(c.nodes[cand]) > pool.capacity:
        return f"pool {pool.label} full"
    for q, quota in enumerate(problem.quotas):
        if quota.matches(pool) and usage.quota_used[q] + int(c.gpus[cand]) > quota.limit:
            return quota.label + " reached"
    if team in problem.budgets and usage.team.get(team, 0.0) + extra_cost > problem.budgets[team]:
        return "team budget"
    share = problem.share_cap
    if share is not None:
        total = sum(usage.weight.values())
        w = _weight(problem, cand)
        # over the whole fleet: share_room counts what live allocations hold
        mine = usage.weight.get(pool.provider, 0.0) + w
        if freed is not None:
            total -= _weight(problem, freed)
            if problem.pools[int(c.pool[freed])].provider == pool.provider:
                mine -= _weight(problem, freed)
        if mine - share * (total + w) > problem.share_room(pool.provider) + 1e-9:
            return "provider share cap"
    return None


def _weight(problem: Problem, cand: int) -> float:
    c = problem.candidates
    return float(c.gpus[cand]) if problem.share_on == "gpus" else float(c.cost[cand])


def _describe(problem: Problem, cand: int) -> dict[str, Any]:
    c = problem.candidates
    p = int(c.pool[cand])
    pool = problem.pools[p]
    out: dict[str, Any] = {
        "pool": pool.key,
        "nodes": int(c.nodes[cand]),
        "hours": round(float(c.hours[cand]), 4),
        "cost": round(float(c.cost[cand]), 4),
    }
    assumed = problem.assumed_fabric_gbps.get(p)
    if assumed is not None and int(c.nodes[cand]) > 1:
        out["fabric"] = f"unknown; hours assume {assumed:g} Gbps between nodes"
    return out


def explain_plan(problem: Problem, plan: Plan) -> dict[int, dict[str, Any]]:
    usage = _Usage(problem, plan)
    c = problem.candidates
    by_job = plan.by_job()
    out: dict[int, dict[str, Any]] = {}
    for job in sorted(problem.jobs, key=lambda j: j.id):
        rows = c.of_shape(job.shape)
        items = by_job.get(job.id)
        if not items:
            out[job.id] = {"reason": _unplaced_reason(problem, usage, job, rows)}
            continue
        if job.kind == INFERENCE:
            units = sum(a.count for a in items)
            types = sorted({problem.pools[int(c.pool[a.candidate])].gpu or "cpu" for a in items})
            out[job.id] = {
                "chosen": [dict(_describe(problem, a.candidate), units=a.count) for a in items],
                "summary": f"{units} nodes over {', '.join(types)}",
                "binding": "cheapest cover of each demand at its SLO",
            }
            continue
        chosen = items[0].candidate
        runner = next(
            (
                i
                for i in rows
                if i != chosen and (c.pool[i], c.nodes[i]) != (c.pool[chosen], c.nodes[chosen])
            ),
            None,
        )
        info: dict[str, Any] = {"chosen": _describe(problem, chosen)}
        if runner is not None:
            info["runner_up"] = dict(
                _describe(problem, runner),
                cost_difference=round(float(c.cost[runner] - c.cost[chosen]), 4),
                hours_difference=round(float(c.hours[runner] - c.hours[chosen]), 4),
            )
        binding = "cheapest viable placement"
        for i in rows:
            if float(c.cost[i]) >= float(c.cost[chosen]) - 1e-9:
                break
            block = _blocker(
                problem, usage, i, job.team, float(c.cost[i] - c.cost[chosen]), freed=chosen
            )
            binding = block or "within the solver's gap"
            break
        info["binding"] = binding
        out[job.id] = info
    return out


def _unplaced_reason(problem: Problem, usage: _Usage, job: Any, rows: range) -> str:
    if len(rows) == 0:
        return job.no_candidate_reason or "no viable offer for this job"
    c = problem.candidates
    if job.kind == INFERENCE:
        areas = set(c.area[rows.start : rows.stop].tolist())
        if any(a not in areas for a in range(len(job.demand))):
            return job.no_candidate_reason or "some user region has no offer that meets the SLO"
    cheapest = float(c.cost[rows.start])
    if job.kind == INFERENCE:
        total = sum(rate for _, rate in job.demand)
        per_rate = min(float(c.cost[i] / max(c.rate[i], 1e-12)) for i in rows)
        cheapest = per_rate * total
    if job.team in problem.budgets:
        left = problem.budgets[job.team] - usage.team.get(job.team, 0.0)
        if cheapest > left + 1e-9:
            return (
                f"budget of team {job.team} has ${max(left, 0):,.2f} left, "
                f"cheapest placement costs ${cheapest:,.2f}"
            )
    reasons: dict[str, int] = defaultdict(int)
    for i in rows:
        block = _blocker(problem, usage, i, job.team, float(c.cost[i]))
        reasons[block or "taken by the plan"] += 1
    if "provider share cap" in reasons and len(reasons) == 1:
        return "provider share cap"
    pools_full = sum(1 for r in reasons if r.startswith("pool "))
    if pools_full and pools_full == len(reasons):
        return f"every viable pool is full ({pools_full} pools)"
    top = sorted(reasons.items(), key=lambda kv: (-kv[1], kv[0]))
    if job.kind == INFERENCE:
        return (
            "not enough capacity to serve the request rate at the SLO ("
            + ", ".join(r for r, _ in top[:2])
            + ")"
        )
    named = [r for r, _ in top if not r.startswith("pool ")][:2]
    if pools_full:
        named.insert(0, f"{pools_full} viable pools full")
    return "; ".join(named) or "capacity taken by higher-priority or cheaper placements"
