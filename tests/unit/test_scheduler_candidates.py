"""Specs -> candidates through the estimator: gangs stay in one zone, reasons in words."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from scheduler.candidates import build_problem
from scheduler.problem import Pool
from scheduler.solve import solve
from scheduler.validate import check
from workloads.spec import parse_spec

NOW = datetime(2026, 1, 1, tzinfo=UTC)


def _train(**extra):
    data = {
        "kind": "training",
        "name": "t",
        "model": {"preset": "gpt-125m"},
        "tokens": 2_000_000_000,
        "nodes": 2,
        "constraints": {"gpus": ["H100"]},
    }
    data.update(extra)
    return parse_spec(data)


def _pool(
    zone: str, capacity: int, price: float = 50.0, fabric: float = 3200.0, gpu: str = "H100-80GB"
) -> Pool:
    return Pool(
        "aws", "us-east-1", zone, "p5.48xlarge", "on_demand", gpu, 8, price, capacity, fabric, "efa"
    )


def test_two_node_gang_never_straddles_zones() -> None:
    pools = [_pool("use1-az1", 1), _pool("use1-az2", 1)]
    problem = build_problem([(1, _train())], pools, now=NOW)
    assert len(problem.candidates) == 0
    plan = solve(problem, time_limit=5)
    assert 1 in plan.unplaced and plan.assignments == []
    roomy = build_problem([(1, _train())], [*pools, _pool("use1-az3", 2)], now=NOW)
    plan = solve(roomy, time_limit=5)
    pool = roomy.pools[int(roomy.candidates.pool[plan.assignments[0].candidate])]
    assert pool.zone == "use1-az3" and check(roomy, plan) == []


def test_slow_fabric_is_slower_and_dearer_not_forbidden() -> None:
    fast, slow = _pool("a", 2, fabric=3200.0), _pool("b", 2, fabric=25.0)
    problem = build_problem([(1, _train())], [fast, slow], now=NOW)
    c = problem.candidates
    hours = {problem.pools[int(c.pool[i])].zone: float(c.hours[i]) for i in range(len(c))}
    assert hours["b"] > hours["a"]
    needs = build_problem(
        [(1, _train(constraints={"gpus": ["H100"], "min_interconnect_gbps": 400}))], [slow], now=NOW
    )
    plan = solve(needs, time_limit=5)
    assert "400 Gbps" in plan.unplaced[1]


def test_every_infeasibility_names_its_reason() -> None:
    pools = [_pool("a", 4)]
    cases = {
        "no offer with B200 GPUs": _train(constraints={"gpus": ["B200"]}),
        "deadline": _train(deadline=(NOW + timedelta(minutes=1)).isoformat()),
        "above the job's budget": _train(budget="0.01"),
        "does not allow spot": _train(constraints={"gpus": ["H100"], "spot": True}),
    }
    spot_only = [Pool("aws", "us-east-1", "a", "p5", "spot", "H100-80GB", 8, 20.0, 4, 3200.0)]
    for i, (words, spec) in enumerate(cases.items(), start=1):
        target = spot_only if "spot" in words else pools
        if "spot" in words:
            spec = _train()
        problem = build_problem([(i, spec)], target, now=NOW)
        plan = solve(problem, time_limit=5)
        assert words.split()[0] in plan.unplaced[i] or words in plan.unplaced[i], plan.unplaced


def test_spot_candidates_carry_preemption_overhead() -> None:
    spot = Pool("aws", "us-east-1", "a", "p5", "spot", "H100-80GB", 8, 20.0, 4, 3200.0, "efa")
    problem = build_problem(
        [(1, _train(constraints={"gpus": ["H100"], "spot": True}))], [spot], now=NOW
    )
    c = problem.candidates
    assert len(c) and float(c.overhead[0]) > 0
    assert float(c.cost[0]) > 20.0 * int(c.nodes[0]) * float(c.hours[0])


def test_inference_spec_becomes_units_per_area() -> None:
    spec = parse_spec(
        {
            "kind": "inference",
            "name": "s",
            "model": {"preset": "llama-7b"},
            "request_rate": 20,
            "input_tokens": 512,
            "output_tokens": 128,
            "slo": {"ttft_ms": 1000, "tpot_ms": 50},
            "regions": {"us": 0.5, "europe": 0.5},
            "min_replicas": 2,
        }
    )
    small = Pool("gcp", "europe-west4", "europe-west4-a", "g2", "on_demand", "L4", 1, 1.0, 8)
    problem = build_problem([(1, spec)], [_pool("use1-az1", 4, price=40.0), small], now=NOW)
    plan = solve(problem, time_limit=5)
    assert plan.unplaced[1].startswith("no offer can serve europe at the SLO (time per output")
    pools = [
        _pool("use1-az1", 4, price=40.0),
        Pool("gcp", "europe-west4", "europe-west4-a", "g4", "on_demand", "L40S", 4, 8.0, 8),
    ]
    problem = build_problem([(1, spec)], pools, now=NOW)
    plan = solve(problem, time_limit=5)
    assert plan.unplaced == {} and check(problem, plan) == []
    providers = {
        problem.pools[int(problem.candidates.pool[a.candidate])].provider for a in plan.assignments
    }
    assert providers == {"aws", "gcp"}


def test_spot_adds_only_recovery_time_not_checkpoint_writes_again() -> None:
    """Checkpoint writes are in the estimate's hours already: at 40 % of the on-demand
    price, spot with frequent checkpoints must come out far cheaper, not dearer."""
    from scheduler.candidate_rules import training_spot_overhead

    spec = _train(checkpoint_every=500, nodes=None, constraints={"gpus": ["H100"], "spot": True})
    on_demand = _pool("a", 4, price=50.0)
    spot = Pool(
        "aws", "us-east-1", "a", "p5.48xlarge", "spot", "H100-80GB", 8, 20.0, 4, 3200.0, "efa"
    )
    problem = build_problem([(1, spec)], [on_demand, spot], now=NOW)
    c = problem.candidates
    by_pricing = {
        problem.pools[int(c.pool[i])].pricing: i for i in range(len(c)) if int(c.nodes[i]) == 1
    }
    od, sp = by_pricing["on_demand"], by_pricing["spot"]
    assert float(c.hours[od]) == float(c.hours[sp])
    assert 0 < float(c.overhead[sp]) < 0.2
    assert float(c.cost[sp]) < 0.5 * float(c.cost[od])
    two = [i for i in range(len(c)) if int(c.nodes[i]) == 2 and float(c.overhead[i]) > 0]
    for i in two:  # the same rule estimate uses: every node of the gang can be reclaimed
        from workloads.estimate import Hardware, estimate_training

        est = estimate_training(
            spec,
            Hardware(
                gpu="H100-80GB", gpus_per_node=8, nodes=2, interconnect_gbps=3200.0, rdma=True
            ),
        )
        assert float(c.overhead[i]) == training_spot_overhead(spec, est.step_seconds, 2)


def test_zone_less_pools_hold_a_gang_within_their_region() -> None:
    lam = Pool(
        "lambda",
        "us-east-1",
        "",
        "gpu_8x_h100_sxm5",
        "on_demand",
        "H100-80GB",
        8,
        23.92,
        4,
        3200.0,
        "infiniband",
    )
    problem = build_problem([(1, _train())], [lam], now=NOW)
    assert len(problem.candidates) and int(problem.candidates.nodes[0]) == 2
    plan = solve(problem, time_limit=5)
    assert plan.unplaced == {} and check(problem, plan) == []


def test_the_validator_counts_spot_overhead_against_the_deadline() -> None:
    from scheduler.problem import Assignment, Candidates, Job, Plan, Problem

    spot = Pool("aws", "us-east-1", "a", "p5", "spot", "H100-80GB", 8, 20.0, 4, 3200.0)
    # 10 h of work plus 10 % recovery: 11 h on the wall, against a 10.5 h deadline
    rows = [(0, 0, 1, 10.0, 20.0 * 10.0 * 1.1, 8, -1, 0.0, 0, 0.1)]
    job = Job(id=1, name="j", team="a", priority=0, shape=0, spot=True, deadline_hours=10.5)
    problem = Problem(
        jobs=[job], pools=[spot], candidates=Candidates.from_rows(rows, 1), n_shapes=1
    )
    plan = Plan([Assignment(1, 0)], {}, 220.0, 220.0)
    assert any("misses its deadline" in v for v in check(problem, plan))


def test_an_unknown_fabric_is_a_setting_and_is_flagged_in_the_plan() -> None:
    from scheduler.candidate_rules import CandidateSettings

    unknown = Pool(
        "lambda", "us-east-1", "", "gpu_8x_h100_sxm5", "on_demand", "H100-80GB", 8, 23.92, 4, None
    )
    slow = build_problem([(1, _train())], [unknown], now=NOW)
    fast = build_problem(
        [(1, _train())],
        [unknown],
        now=NOW,
        knobs=CandidateSettings(unknown_interconnect_gbps=400.0),
    )
    assert float(fast.candidates.hours[0]) < float(slow.candidates.hours[0])
    plan = solve(fast, time_limit=5)
    assert plan.explain[1]["chosen"]["fabric"] == ("unknown; hours assume 400 Gbps between nodes")


def test_one_rule_set_judges_gangs_for_plan_and_estimate() -> None:
    """``TrainingRules`` is what both ``plan`` and ``estimate`` go through: a gang beyond the
    pool's capacity is out with that reason (not "does not fit"), and a deadline is met or
    missed on the wall clock, spot recovery included, alike for candidates and validator."""
    from scheduler.candidate_rules import CandidateSettings, TrainingRules

    rules = TrainingRules(CandidateSettings(), {})
    small = _pool("a", 1)
    [gang] = rules.options(_train(), small, hours_left=None)
    assert (gang.stage, gang.reason) == ("fit", "2 nodes exceed the offer's capacity (1)")
    problem = build_problem([(1, _train())], [small], now=NOW)
    assert problem.jobs[0].no_candidate_reason == "2 nodes exceed the offer's capacity (1)"

    spec = _train(constraints={"gpus": ["H100"], "spot": True})
    spot = Pool("aws", "us-east-1", "a", "p5", "spot", "H100-80GB", 8, 20.0, 4, 3200.0, "efa")
    [free] = rules.options(spec, spot, hours_left=None)
    assert free.stage is None and free.overhead > 0
    # a deadline between the bare hours and the wall-clock hours: spot misses it
    between = free.estimate.hours * (1 + free.overhead / 2)
    [late] = rules.options(spec, spot, hours_left=between)
    [on_time] = rules.options(spec, _pool("b", 4), hours_left=between)
    assert late.stage == "deadline" and on_time.stage is None
    deadline = (NOW + timedelta(hours=between)).isoformat()
    tight = _train(constraints={"gpus": ["H100"], "spot": True}, deadline=deadline)
    problem = build_problem([(1, tight)], [spot, _pool("b", 4)], now=NOW)
    pricings = {problem.pools[int(p)].pricing for p in problem.candidates.pool}
    assert pricings == {"on_demand"}
    plan = solve(problem, time_limit=5)
    assert plan.unplaced == {} and check(problem, plan) == []
