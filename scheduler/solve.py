"""Solve a placement problem: greedy warm start, column generation, integer solve, checks.

1. Jobs are grouped into classes; the better of the greedy-by-regret and first-come
   plans is the first feasible plan.
2. Column generation (with valid rounding cuts of pool, quota and serving rows) over
   the *full* candidate space: the LP over the columns found so
   far gives duals; every candidate of every class is priced with them (vectorised) and
   the most negative ones join. When none prices out, the LP optimum is the full-space LP
   bound. Every round's duals also give a Lagrangian bound (``bound.relaxed_bound``: one
   gang per training job, never below zero); the best of them is what stands when the
   round limit ends pricing first. A solve that returns no duals (an empty problem) ends
   pricing at once: the bound is the Lagrangian one at zero multipliers and columns are
   ranked by cost. The LP's solution rounded (``baselines.lp_rounding``: down, then up
   where there is room, greedy for the rest) is the next plan: where the safety stop
   cuts the integer solve short, it is what stands (L catalog, 35 % spend cap: 80 jobs
   left out, where greedy leaves 436).
3. Each class also keeps its cheapest columns by reduced cost until their pools could hold
   twice its jobs (pruning by cumulative capacity, never a flat top-K), plus the greedy
   plan's columns, so the integer model can always do at least as well as greedy.
4. The integer model (HiGHS by default, CP-SAT on request; CP-SAT is hinted with the
   greedy plan, HiGHS has it as its fallback) runs to its node limit, the relative gap,
   or (HiGHS) its first plan within the gap asked for of the best full-space bound so
   far; the best of it, greedy and the LP rounded wins (the solver's where they tie).
   Gaps handed to the solvers are over cost: where penalties of jobs no plan can place
   fill the objective, a gap over the whole would say nothing about cost. The plan is
   checked by ``validate`` before it is returned.
   Under a cap on GPUs, past ``capped_kept_columns`` kept columns, that solve goes by way
   of the cap priced at the LP's duals, then the capped model over that plan's columns and
   greedy's (``_capped_by_prices``): the dense share rows made the capped model's root
   alone take most of the time there.
5. When serving jobs are in the problem, a Lagrangian bound (``scheduler.bound``) solves
   each serving job's covering problem in integers (before step 4, node-limited); the
   reported bound is the larger of it and the LP bound. Where pricing converged, the
   integer model's proven bound also holds for the full space up to the LP bound plus the
   least reduced cost of any column left out of it.
6. The full-space step (``scheduler.full_space``), on the integer model over every
   candidate (with the LP's cuts), by size (``_full_space_mode``); skipped when the plan is
   already within the gap asked for of the bound proven so far (a re-plan the integer
   solve has settled: decided by work, not the clock). It needs only the LP of step 2,
   so it starts in a child process right after pricing and runs beside step 4 on the
   other core; where step 4 settles the plan, the child is killed (M synthetic, 35 % cap
   on GPUs: 40.9 -> 25.6 s on a slow 2-core machine, the same plan):
   - small enough (a smaller limit under a share cap): HiGHS solves it; its proven dual
     bound raises the reported bound (whole nodes per serving area and whole gangs leave
     an integrality gap no LP bound closes), and its solution replaces the plan when
     cheaper (pruned columns can miss the optimum where budgets bind);
   - larger, up to ``root_bound_columns``: only its root node's cuts run, for their
     bound (M synthetic: 0.04 % below the plan where the Lagrangian bound was 0.19 %);
   - under a share cap beyond the capped limit: the same model (exact, or its root cuts
     by size) with the share rows moved into the objective at the LP's duals
     (``bound.share_prices``), a Lagrangian relaxation whose bound holds for the capped
     problem and is at least the LP bound (M synthetic, 35 % cap on GPUs: 0.29 % -> 0.14 %
     below the plan; M catalog: 1.6 % -> 0.17 % of cost); a cap that does not bind is
     priced at zero and proven at once. Its solution is the plan where it keeps the cap
     and costs less; either way, where the raised bound leaves the plan outside the
     target gap, its columns join the integer model over the kept columns, which runs
     once more with a few nodes (M catalog, GPU cap: 0.17 % -> 0.07 %).
7. Where the LP places a fraction of a job more than the plan, the cost gap is read
   against the least LP cost of placing the jobs the plan places (column generation with
   penalties off and each class's jobs left out fixed at the plan's), since a bound that
   carries penalties says nothing about cost there. The cost gap says how well the plan
   buys what it places.
   Where the plan's cost is not within the gap asked for of that (or of the bound less
   the plan's penalties, where higher), the LP's duals, free of penalties, pick the
   columns of one more integer solve with the placement fixed, cut off at the plan's
   cost, which buys the same jobs for less where penalties drew the first solve's
   attention (L catalog: 942,400 -> 893,939, with the LP at 856,182). Under a share cap
   that solve goes by way of the cap priced at the LP's duals, then keeps what it can of
   that plan under the cap (L catalog, 35 % cap on GPUs: 177,403 -> 172,806, on spend
   731,470 -> 713,330). The full-space root step (step 6, a bound over cost and penalties
   together) gives way to it there.
   Last, where the fleet has training and serving jobs and pricing converged, the
   training gangs are bought again with every serving unit and each class's placement
   held as the plan has them (``_training_resolve``): that model is small enough to
   solve near its optimum (L catalog: 900,210 -> 890,063 after the polish).
8. Placement is its own figure, in priority weight (``problem.placement_weight``): where
   the plan leaves jobs out, column generation with costs out of the objective bounds the
   most weight any plan can place (``_most_placeable``), which the plan's weight is read
   against. It needs only the LP of step 2: where that LP leaves jobs out, it runs in a
   child process from then on, beside steps 4-7 (``solver_process.Child``).
Every step is limited by work (``WorkLimits``: rounds, candidates priced, nodes, columns),
never by the clock, and the solvers run single-threaded with a fixed seed, so the same
input gives the same plan on any machine and under any load. ``time_limit`` is a safety
stop only: when it fires, the plan says so (``Plan.clock_stop``, and in its status).

The share cap is on each provider's share of the whole fleet, what live allocations hold
(``Problem.held``) included. A cap under which no new job can be placed (below
1 / (providers that can host any job), none of which has room beside what is held) is
refused as ``Infeasible`` naming the smallest cap that can hold.
"""

from __future__ import annotations

import functools
import math
import time
from dataclasses import dataclass, replace

import numpy as np

from broker.errors import ConfigError, Infeasible
from scheduler.baselines import Units, first_come, greedy_regret, lp_rounding, units_to_plan
from scheduler.bound import (
    SERVING_NODES,
    SharePrices,
    lagrangian_bound,
    relaxed_bound,
    share_prices,
)
from scheduler.explain import explain_plan
from scheduler.full_space import PRICED_MODES, ROOT_MODES, FullSpace, solve_full_space
from scheduler.model import (
    Duals,
    JobClass,
    Master,
    MipResult,
    PoolIndex,
    build_classes,
    hard_stop_grace,
    reduced_costs,
)
from scheduler.problem import INFERENCE, TRAINING, Plan, Problem, placement_weight
from scheduler.solver_process import Child
from scheduler.validate import check

SOLVERS = ("highs", "cpsat")
PRICE_TOL = 1e-7
COLUMNS_PER_ROUND = 8
SERVING_COLUMNS = 200
DENSE_SHARE_PROVIDERS = 8
# Dense share rows put every column in every provider's row: past this many columns HiGHS's
# presolve stalled on them (minutes at 1,000 jobs x 10,000 pools), so larger models keep the
# sparse form with the auxiliary total. Below it dense rows win by far (a 3,000-column
# capped model: 15-60 s dense, beyond 160 s sparse on the shared 2-core machine).
DENSE_SHARE_MAX_COLUMNS = 20_000
# The integer solver measures its gap against its own (restricted) bound, which is above the
# full-space LP bound the plan reports; aim it at half the gap asked for.
MIP_GAP_SHARE = 0.5
# ... and stop it at the first plan within this share of the gap asked for of the bound
# proven over the full space so far (the plan is then good enough; more work only moves
# the bound)
TARGET_GAP_SHARE = 0.8
MIN_COST_SHARE = 1e-3
# Wall-clock safety stops, as shares of time_limit: past them a step ends early and the plan
# says so. A plan that depends on them is no longer reproducible, so the work limits are
# sized to end well before them.
CG_SAFETY_SHARE = 0.7
SERVING_SAFETY_SHARE = 0.75
RELAXED_SAFETY_SHARE = 0.8  # root cuts and the priced relaxation leave time for the cost yardstick
LAGRANGIAN_MAX_SERVING = 100  # one small integer solve per serving job: skip beyond
RESOLVE_GAP = 1e-4  # the training re-solve's gap: near its optimum, which is cheap to prove
# ... and its columns: a training class's best until their pools hold this many times its
# jobs (2 in the other models). L catalog: 2 -> 893,784 in 1.3 s, 4 -> 891,029 in 1.3 s,
# 8 -> 890,063 in 2.0 s, 16 -> 890,048 in 2.9 s, every training candidate (46,135)
# 891,415 in 33 s (its node limit ends it)
RESOLVE_HOLD = 8.0
WEIGHT_TOL = 1e-3  # LP arithmetic below a whole job's weight (``_most_placeable``)
WARM_START_CHILD_CANDIDATES = 1_000_000  # first-come beside greedy by regret from this many


@dataclass(frozen=True)
class WorkLimits:
    """How much work one solve may do; with the input, these alone decide the plan.

    The defaults end well inside a 30 s safety stop on fleets up to 1,000 jobs x 10,000
    pools on one shared core: the full-space step stops at 30,000 columns because HiGHS's
    presolve and root alone took over 30 s at 77,000, and at 8,000 under a share cap
    because the capped root LP took a minute at 15,000 (see bench/RESULTS.md). Above
    that, root cuts alone (no presolve, heuristics or restarts) took 12 s over M
    synthetic's 87,000 columns."""

    cg_rounds: int = 60  # column-generation rounds (one LP solve and one pricing pass each)
    # ... and no more rounds than this many candidate prices allow: every round prices every
    # candidate, so a 15.6-million-candidate fleet (XL) gets 20 rounds, which end before the
    # safety stop on a slow shared core (1.77 % where 30 rounds gave 1.73 %)
    cg_priced: int = 320_000_000
    mip_nodes: int = 2_000  # branch-and-bound nodes over the kept columns
    full_space_nodes: int = 1_000  # branch-and-bound nodes over every candidate
    # over the kept columns again, once the priced full-space plan's columns join them
    priced_columns_nodes: int = 200
    # the integer solve with the placement fixed (step 7), which stops at this many
    # solutions cheaper than the plan (0: no such solve). Its plans on L catalog (seeds
    # 1, 3, 7 and 11; seed 7 under caps too) and M catalog were found within 40 nodes; the
    # nodes after them found nothing and took up to 7 s (L catalog, seed 1: 163 nodes,
    # 13.2 s), which the training re-solve after it needs
    polish_nodes: int = 40
    polish_solutions: int = 2
    # under a share cap, the capped solve over the columns of the plan and of the polish's
    # plan with the cap priced (``_priced_polish``)
    merge_nodes: int = 200
    # the training gangs bought again around the plan's serving units (``_training_resolve``)
    resolve_nodes: int = 2_000
    # under a cap on GPUs, past this many kept columns the integer solve over them goes by
    # way of the cap priced (``_capped_by_prices``): L catalog's 11,104 took 19.8 s capped;
    # the other bench fleets keep at most 5,276
    capped_kept_columns: int = 8_000
    # ... and its merge under the cap: on L catalog its plan came at the root node, the
    # same at 50 nodes as at 200, which took 2.2 s more
    capped_merge_nodes: int = 50
    # pricing rounds of the bound on placement (step 8): any round's Lagrangian bound holds,
    # and on L catalog the first one's is already the converged LP's (15 rounds, 7 s)
    placement_rounds: int = 5
    # ... and, in either, no more nodes than this many columns allow (a node's LP grows with
    # them): L catalog's 11,337 kept columns get 88 nodes, where 2,000 took 162 s on a
    # slow core
    node_columns: int = 1_000_000
    full_space_columns: int = 30_000  # the full-space step only up to this many columns
    full_space_capped_columns: int = 8_000  # ... and this many under a share cap
    # above full_space_columns and up to this many (no share cap), only the full-space
    # model's root cuts run, for their bound
    root_bound_columns: int = 120_000
    serving_nodes: int = SERVING_NODES  # per serving job's covering problem (bound only)

    def nodes(self, limit: int, columns: int) -> int:
        """Branch-and-bound nodes for a model of ``columns`` columns: ``limit``, and no more
        than ``node_columns`` allow."""
        return min(limit, max(1, self.node_columns // max(columns, 1)))


class InvalidPlan(AssertionError):
    """The solver produced a plan that the independent checker rejects (a bug)."""


def solve(
    problem: Problem,
    *,
    solver: str = "highs",
    time_limit: float = 30.0,
    relative_gap: float = 0.005,
    seed: int | None = None,
    explain: bool = True,
    work: WorkLimits | None = None,
) -> Plan:
    """The plan for ``problem``; ``time_limit`` (seconds) is a safety stop, ``work`` the
    limits that decide the plan."""
    if solver not in SOLVERS:
        raise ConfigError(f"solver: must be one of {', '.join(SOLVERS)}, not {solver!r}")
    work = work or WorkLimits()
    start = time.perf_counter()
    stop = start + time_limit
    seed = problem.seed if seed is None else seed
    _check_share_cap(problem)
    classes = build_classes(problem)
    pools = PoolIndex.of(problem)
    timings: dict[str, float] = {}
    clock_stops: list[str] = []

    # warm start: the better of greedy-by-regret and first-come failover, on two cores
    # where the fleet is large (XL: 5.9 s and 8.8 s); below, the fork costs more than it saves
    come = (
        Child(functools.partial(first_come, problem, classes))
        if len(problem.candidates) >= WARM_START_CHILD_CANDIDATES
        else None
    )
    regret = greedy_regret(problem, classes)
    failover = None if come is None else come.result(seconds=math.inf)
    if failover is None:
        failover = first_come(problem, classes)
    greedy, greedy_plan = min(
        (
            (units, units_to_plan(problem, classes, units, solver="greedy"))
            for units in (regret, failover)
        ),
        key=lambda pair: pair[1].objective,
    )
    timings["first_feasible"] = time.perf_counter() - start

    cg = _column_generation(
        problem,
        classes,
        pools,
        greedy,
        rounds=min(work.cg_rounds, max(1, work.cg_priced // max(len(problem.candidates), 1))),
        deadline=start + CG_SAFETY_SHARE * time_limit,
    )
    lp_bound, duals_columns, lp_model = cg.bound, cg.rcs, cg.master
    if cg.clock_stop:
        clock_stops.append("column generation")
    timings["lp_bound"] = time.perf_counter() - start
    timings["cg_rounds"] = float(cg.rounds)
    best = _Incumbent(problem, classes, solver, greedy_plan, greedy)
    # the LP rounded: where the safety stop cuts the integer solve short, what stands
    values = {key: lp_model.values[var] for key, var in lp_model.columns.items()}
    best.offer(lp_rounding(problem, classes, values), None, source="LP rounding")
    columns = _enrich(problem, classes, pools, duals_columns, greedy)
    # The solvers measure gaps over cost and penalties together; where penalties of jobs no
    # plan can place (those the LP leaves out) make up most of the objective, the gap asked
    # for is one over cost.
    lp_placed, lp_penalties = _lp_placement(classes, lp_model)
    cost_share = (
        max(cg.lp_objective - lp_penalties, 0.0) / cg.lp_objective if cg.lp_objective > 0 else 1.0
    )
    mip_gap = relative_gap * MIP_GAP_SHARE * max(cost_share, MIN_COST_SHARE)

    # without the LP's pool and quota roundings: HiGHS derives its own from those rows, and
    # with them copied in it settled placement worse (M catalog, 35 % spend cap: 444,752
    # against 439,858 after the polish; L catalog: 945 jobs placed against 946)
    @functools.cache
    def kept_model() -> Master:
        """The integer model over the kept columns, built on first use: a large capped
        model goes by way of the cap priced instead (``_capped_by_prices``)."""
        return _integer_master(
            problem, classes, pools, columns, solver=solver, cuts_from=lp_model, roundings=False
        )

    full_columns = sum(len(problem.candidates.of_shape(cls.shape)) for cls in classes)
    full_mode = _full_space_mode(problem, full_columns, work)
    # The most weight any plan can place depends on the LP alone: where the LP leaves jobs
    # out (so will a plan), it is worked out beside the integer steps, on the other
    # core (L catalog: 2.2 s of 28.6)
    most_placeable = functools.partial(
        _most_placeable,
        problem,
        classes,
        pools,
        lp_model,
        work=work,
        exact=full_mode == "mip",
        deadline=stop,
        seed=seed,
    )
    placeable = Child(most_placeable) if lp_placed < len(problem.jobs) - WEIGHT_TOL else None
    # The full-space step needs only the LP too: it starts now on the other core, beside
    # the integer solve over the kept columns, whose plan only decides whether it is
    # wanted; a child not wanted is killed (M catalog, 35 % spend cap: 49.1 -> 32.0 s)
    full_deadline = stop if full_mode == "mip" else start + RELAXED_SAFETY_SHARE * time_limit
    full_child = (
        None
        if full_mode is None
        else Child(
            functools.partial(
                solve_full_space,
                problem,
                classes,
                pools,
                lp_model,
                full_mode,
                dense_share=_dense_share(problem, "highs", full_columns),
                nodes=work.nodes(work.full_space_nodes, full_columns),
                deadline=full_deadline,
                relative_gap=mip_gap,
                seed=seed,
            )
        )
    )
    if full_mode not in ("mip", "root"):
        # Serving units are whole nodes: the Lagrangian bound closes much of that LP gap.
        # It runs before the integer solve, whose time is the safety stop's remainder.
        # The full-space step's cuts close more of it (M synthetic: the Lagrangian bound
        # 0.19 % below the plan, the root cuts 0.04 %), so it is left out there.
        stronger, stopped = _serving_whole_bound(
            problem,
            classes,
            pools,
            lp_model.duals,
            deadline=start + SERVING_SAFETY_SHARE * time_limit,
            serving_nodes=work.serving_nodes,
        )
        if stopped:
            clock_stops.append("serving bound")
        lp_bound = max(lp_bound, stronger)
    # a plan within this gap of a valid bound is solved: the full-space steps, which only
    # raise the bound or find a plan a little cheaper, are then skipped
    target_gap = mip_gap / MIP_GAP_SHARE * TARGET_GAP_SHARE

    def over_kept_columns(bound: float, nodes: int) -> MipResult:
        """The integer solve over the kept columns, stopping (HiGHS) at its first plan
        within the target gap of ``bound``."""
        mip = kept_model()
        return mip.solve_mip(
            solver,
            time_limit=time_limit - (time.perf_counter() - start),
            relative_gap=mip_gap,
            seed=seed,
            nodes=work.nodes(nodes, sum(len(cols) for cols in mip.by_class.values())),
            hint=greedy,
            target=bound / (1.0 - target_gap) if solver == "highs" and bound > 0 else None,
        )

    kept = sum(len(cols) for cols in columns.values())
    prices = None if lp_model.duals is None else share_prices(problem, pools, lp_model.duals)
    near: MipResult | None = None
    if (
        solver == "highs"
        and prices is not None
        and problem.share_on == "gpus"
        and kept > work.capped_kept_columns
    ):
        near, restricted = _capped_by_prices(
            problem,
            classes,
            pools,
            columns,
            prices,
            greedy,
            cuts_from=lp_model,
            relative_gap=mip_gap,
            work=work,
            time_limit=time_limit - (time.perf_counter() - start),
            seed=seed,
        )
    else:
        restricted = over_kept_columns(lp_bound, work.mip_nodes)
    timings["integer"] = time.perf_counter() - start
    if restricted.clock_stop:
        clock_stops.append("integer solve")
    if cg.converged and restricted.bound is not None:
        # A plan using a column left out costs at least the LP bound plus that column's
        # reduced cost (duals of the converged LP): so the restricted model's proven bound
        # holds for the full space up to there.
        excluded = _cheapest_excluded(problem, classes, cg.rcs, columns)
        lp_bound = max(lp_bound, min(restricted.bound, cg.lp_objective + excluded))
        timings["cheapest_excluded_rc"] = excluded
    rejected: list[str] = []
    if near is not None:
        best.offer(near.units, None)  # a plan only where it happens to keep the cap
    best.offer(restricted.units, rejected)
    if full_mode is not None and _gap(best.plan.objective, lp_bound) <= target_gap:
        full_mode = None
        timings["full_space_skipped"] = 1.0
    if full_mode in ROOT_MODES and cg.converged and lp_placed > _placed(problem, best.plan):
        # the root cuts bound cost and penalties together, which says nothing of cost where
        # the LP places more jobs than the plan: the time goes to the cost polish instead
        full_mode = None
        timings["full_space_skipped"] = 1.0
    full = FullSpace()
    if full_child is not None and full_mode is None:
        full_child.cancel()
    elif full_child is not None:
        # past its deadline and the grace of the solve inside it, the child is killed
        left = max(full_deadline - time.perf_counter(), 0.0) + 2 * hard_stop_grace(time_limit)
        full = full_child.result(seconds=left) or FullSpace(clock_stop=True)
    if full_mode is not None:
        timings["root_bound" if full_mode in ROOT_MODES else "full_space"] = (
            time.perf_counter() - start
        )
    if full.clock_stop:
        clock_stops.append(
            "full-space root bound" if full_mode in ROOT_MODES else "full-space integer solve"
        )
    if full.bound is not None and full.bound > lp_bound:
        lp_bound = full.bound
    # a priced step's solution is a plan only where it happens to keep the cap
    best.offer(full.units, None if full_mode in PRICED_MODES else rejected)
    if (
        full_mode in PRICED_MODES
        and full.units
        and _gap(best.plan.objective, lp_bound) > target_gap
        and _add_units(kept_model(), classes, full.units)
    ):
        # the priced plan's columns, found over every candidate, give the capped integer
        # solve over the kept columns better ones (M catalog, 35 % cap on GPUs: 6 new
        # columns, 394,070 -> 393,684 in 1 s, cheaper than the capped model over every
        # column found in 400 s; with a spend cap 446,631 -> 446,108). Not where the
        # full-space bound already settles the plan: M synthetic with a 35 % spend cap,
        # 0.073 % from its bound, took 11.5 s more there for $0.58 of 147,606.
        again = over_kept_columns(lp_bound, work.priced_columns_nodes)
        timings["integer_priced_columns"] = time.perf_counter() - start
        if again.clock_stop:
            clock_stops.append("integer solve with the priced columns")
        best.offer(again.units, rejected)
    # where the LP places more jobs than the plan, the least cost of placing the plan's jobs
    # (step 7): the cost gap's yardstick, and the columns of the cost polish
    placement: _ColumnGeneration | None = None

    def settle(found: MipResult, step: str) -> None:
        """A late step's plan joins the incumbent unless the safety stop cut the step
        short: what it found before the stop would depend on the machine's speed."""
        if found.clock_stop:
            clock_stops.append(step)
        else:
            best.offer(found.units, rejected)

    if cg.converged and lp_placed > _placed(problem, best.plan):
        left_out = _left_out_by_class(classes, best.plan)
        placement = _placement_lp(
            problem,
            classes,
            pools,
            lp_model,
            left_out,
            best.units,
            rounds=work.cg_rounds,
            deadline=stop,
            serving_nodes=work.serving_nodes,
        )
        timings["placement_cost_bound"] = time.perf_counter() - start
        if placement.clock_stop:
            clock_stops.append("placement cost bound")
        elif (
            placement.converged
            and work.polish_solutions > 0
            and _gap(best.plan.cost, _cost_yardstick(problem, best.plan, lp_bound, placement))
            > relative_gap * TARGET_GAP_SHARE
        ):
            polished = _cost_polish(
                problem,
                classes,
                pools,
                placement,
                left_out,
                best.units,
                best.plan.cost,
                work=work,
                time_limit=stop - time.perf_counter(),
                seed=seed,
            )
            timings["cost_polish"] = time.perf_counter() - start
            settle(polished, "cost polish")
    # the re-solve's columns are ranked by a converged LP's reduced costs: where pricing
    # stopped at its round limit (XL), they are not final, and the re-solve took 34 s
    # there for $28 of 6.18 M
    ranked = placement if placement is not None and placement.converged else cg
    resolve = {cls.kind for cls in classes} == {INFERENCE, TRAINING} and ranked.converged
    if resolve and stop - time.perf_counter() <= 0.5:
        clock_stops.append("training re-solve")
    elif resolve:
        resolved = _training_resolve(
            problem,
            classes,
            pools,
            ranked,
            best.units,
            _left_out_by_class(classes, best.plan),
            best.plan.cost,
            work=work,
            time_limit=stop - time.perf_counter(),
            seed=seed,
        )
        timings["training_resolve"] = time.perf_counter() - start
        settle(resolved, "training re-solve")
    plan = best.plan
    if placeable is not None and not plan.unplaced:
        placeable.cancel()
    plan.placed_weight = problem.placed_weight(plan)
    plan.most_placeable = plan.placed_weight
    if plan.unplaced:
        if placeable is None:
            most = most_placeable()
        else:
            left = max(stop - time.perf_counter(), 0.0)
            # a child past the stop is killed: every job's weight still bounds the figure
            most = placeable.result(seconds=left + hard_stop_grace(left)) or _Placeable(
                sum(placement_weight(cls.priority) * cls.count for cls in classes), True
            )
        plan.most_placeable = most.weight
        timings["most_placeable"] = time.perf_counter() - start
        if most.clock_stop:
            clock_stops.append("bound on placement")
    plan.solver = solver
    plan.lp_bound = min(max(lp_bound, 0.0), plan.objective)
    plan.gap = _gap(plan.objective, plan.lp_bound)
    # the LP's cost of its own placement is a yardstick only where pricing converged; the
    # bound less the plan's penalties is one either way (XL, which ends pricing at its
    # round limit, places every job: its cost gap is then its gap)
    lp_cost = cg.lp_objective - lp_penalties if cg.converged else 0.0
    yardstick = _cost_yardstick(problem, plan, plan.lp_bound, placement, lp_cost=lp_cost)
    plan.cost_gap = _gap(plan.cost, max(yardstick, 0.0))
    plan.status = restricted.status + (f" ({best.source} kept)" if best.source else "")
    if rejected:
        plan.status += f"; solver plan refused by the checker ({'; '.join(rejected)})"
    if clock_stops:
        plan.clock_stop = True
        plan.status += f"; safety time limit stopped the {', '.join(clock_stops)}"
    plan.solve_seconds = time.perf_counter() - start
    timings["total"] = plan.solve_seconds
    plan.timings = timings
    problems = check(problem, plan)
    if problems:
        raise InvalidPlan("; ".join(problems[:5]))
    if explain:
        plan.explain = explain_plan(problem, plan)
        for job_id, info in plan.explain.items():
            if job_id in plan.unplaced:
                plan.unplaced[job_id] = info["reason"]
    return plan


@dataclass
class _Incumbent:
    """The best plan so far and the units it was made of; the greedy plan first."""

    problem: Problem
    classes: list[JobClass]
    solver: str
    plan: Plan
    units: Units
    source: str = "greedy plan"  # where the plan came from where not from a solver

    def offer(self, found: Units | None, rejected: list[str] | None, source: str = "") -> None:
        """``found`` units (a solver's, or ``source``'s) become the plan where cheaper
        (a solver's also where as cheap as a heuristic's) and passing the checker; a
        refusal is added to ``rejected`` (None: refused silently)."""
        if found is None:
            return
        candidate = units_to_plan(self.problem, self.classes, found, solver=self.solver)
        better = candidate.objective < self.plan.objective - 1e-9 or (
            bool(self.source) and not source and candidate.objective <= self.plan.objective + 1e-9
        )
        if not better:
            return
        # HiGHS can hand back a solution mapped out of its presolved model that misses a
        # share row by far more than its tolerance (L catalog, 35 % cap: 35.5 %)
        problems = check(self.problem, candidate)
        if problems:
            if rejected is not None:
                rejected.append(problems[0])
            return
        self.plan, self.units, self.source = candidate, found, source


def _cost_yardstick(
    problem: Problem,
    plan: Plan,
    bound: float,
    placement: _ColumnGeneration | None,
    *,
    lp_cost: float = 0.0,
) -> float:
    """What the cost of placing what ``plan`` places is proven to be at least: ``bound``
    less the penalties of the jobs the plan leaves out. Where the LP leaves fractions of
    jobs out, that figure carries part of a penalty, so where the LP places no more jobs
    than the plan (``placement`` None) the LP's own cost of its placement, ``lp_cost``, is
    the yardstick where larger, and where it places more, the least cost of placing the
    plan's jobs (``placement``, where it converged: its LP, or its Lagrangian bound with
    serving jobs whole where that is larger)."""
    yardstick = bound - sum(problem.penalty(job) for job in problem.jobs if job.id in plan.unplaced)
    if placement is None:
        return max(yardstick, lp_cost)
    if placement.converged:
        return max(yardstick, placement.lp_objective, placement.integer_bound)
    return yardstick


def _placed(problem: Problem, plan: Plan) -> float:
    """The plan's jobs placed, less a tolerance: below it, the LP places more."""
    return len(problem.jobs) - len(plan.unplaced) + 1e-6


def _cost_polish(
    problem: Problem,
    classes: list[JobClass],
    pools: PoolIndex,
    placement: _ColumnGeneration,
    left_out: list[int],
    units: Units,
    cost: float,
    *,
    work: WorkLimits,
    time_limit: float,
    seed: int,
) -> MipResult:
    """HiGHS over the columns ``placement`` (the converged LP of placing what ``units``
    places) ranks best, with that LP's cuts and each class's jobs left out fixed at
    ``left_out``, cut off at ``cost`` and stopped at the work limits' solutions or
    nodes. Penalties are then constant, so the solve is over cost alone; ``units``'
    columns are among the model's, so it can place the plan's jobs as the plan does.
    Under a share cap it goes by way of the cap priced instead (``_priced_polish``)."""
    columns = _enrich(problem, classes, pools, placement.rcs, units)
    duals = placement.master.duals
    prices = None if duals is None else share_prices(problem, pools, duals)
    if prices is not None:
        return _priced_polish(
            problem,
            classes,
            pools,
            placement,
            columns,
            prices,
            left_out,
            units,
            work=work,
            time_limit=time_limit,
            seed=seed,
        )
    mip = _integer_master(
        problem, classes, pools, columns, solver="highs", cuts_from=placement.master
    )
    mip.fix_unplaced(left_out)
    _add_units(mip, classes, units)
    return mip.solve_mip(
        "highs",
        time_limit=time_limit,
        relative_gap=0.0,
        seed=seed,
        nodes=work.nodes(work.polish_nodes, sum(len(c) for c in mip.by_class.values())),
        solutions=work.polish_solutions,
        cutoff=cost,
    )


def _priced_polish(
    problem: Problem,
    classes: list[JobClass],
    pools: PoolIndex,
    placement: _ColumnGeneration,
    columns: dict[int, np.ndarray],
    prices: SharePrices,
    left_out: list[int],
    units: Units,
    *,
    work: WorkLimits,
    time_limit: float,
    seed: int,
) -> MipResult:
    """The cost polish under a share cap, by way of the cap priced (``_through_prices``),
    with each class's jobs left out fixed at ``left_out`` in both solves. L catalog with a
    35 % GPU cap: the capped solve over every column found nothing in 88 nodes (15 s),
    where the relaxed one found 166,617 at 35.3 % on one provider and the merge kept
    172,806 of it against a plan of 177,403. The merge has no cut-off (the caller keeps
    what is cheaper): with the plan's cost as one, HiGHS found nothing there in 500 nodes."""
    relaxed = _integer_master(
        problem, classes, pools, columns, solver="highs", cuts_from=placement.master, prices=prices
    )
    relaxed.fix_unplaced(left_out)
    _add_units(relaxed, classes, units)
    near, merged = _through_prices(
        problem,
        classes,
        pools,
        relaxed,
        units,
        cuts_from=placement.master,
        left_out=left_out,
        nodes=work.polish_nodes,
        merge_nodes=work.merge_nodes,
        relative_gap=0.0,
        work=work,
        time_limit=time_limit,
        seed=seed,
    )
    return merged or near


def _capped_by_prices(
    problem: Problem,
    classes: list[JobClass],
    pools: PoolIndex,
    columns: dict[int, np.ndarray],
    prices: SharePrices,
    greedy: Units,
    *,
    cuts_from: Master,
    relative_gap: float,
    work: WorkLimits,
    time_limit: float,
    seed: int,
) -> tuple[MipResult | None, MipResult]:
    """The integer solve over the kept ``columns`` of a large model under a GPU cap, by
    way of the cap priced at the LP's duals (``_through_prices``, merged with the greedy
    plan's columns). L catalog with a 35 % GPU cap: the capped model over its 11,104
    columns took 19.8 s for 177,403 (its root holds the time: its dense share rows), the
    priced one 5.8 s and the merge 3.6 s for 177,332; after the polish and the re-solve
    170,109 where it had been 172,303. Under a spend cap it did not pay: 14.9 s and 7.6 s
    against 17.8 s, and 717,113 after the polish against 712,611. The relaxed solve's
    result, and the merge's with the relaxed solve's bound: plus the prices' constant, that
    bounds the capped model over ``columns`` (a Lagrangian relaxation of it)."""
    relaxed = _integer_master(
        problem,
        classes,
        pools,
        columns,
        solver="highs",
        cuts_from=cuts_from,
        roundings=False,
        prices=prices,
    )
    near, merged = _through_prices(
        problem,
        classes,
        pools,
        relaxed,
        greedy,
        cuts_from=cuts_from,
        left_out=None,
        nodes=work.mip_nodes,
        merge_nodes=work.capped_merge_nodes,
        relative_gap=relative_gap,
        work=work,
        time_limit=time_limit,
        seed=seed,
        roundings=False,
    )
    bound = None if near.bound is None else near.bound + prices.constant
    if merged is None:
        return None, replace(near, units=None, bound=bound)
    return near, replace(merged, bound=bound, clock_stop=near.clock_stop or merged.clock_stop)


def _through_prices(
    problem: Problem,
    classes: list[JobClass],
    pools: PoolIndex,
    relaxed: Master,
    units: Units,
    *,
    cuts_from: Master,
    left_out: list[int] | None,
    nodes: int,
    merge_nodes: int,
    relative_gap: float,
    work: WorkLimits,
    time_limit: float,
    seed: int,
    roundings: bool = True,
) -> tuple[MipResult, MipResult | None]:
    """A capped integer solve in two steps. HiGHS over ``relaxed``, the model with the
    share rows moved into the objective (``bound.share_prices``): without the dense share
    rows it solves in a fraction of the time, and its plans sit near the cap. Then the
    capped model over only the columns of that plan and of ``units`` (a plan that keeps
    the cap): it holds both, so it finds what of the relaxed plan can be kept under the
    cap. Each class's jobs left out are fixed at ``left_out`` in the merge where given
    (the caller fixed them in ``relaxed``). The relaxed solve's result, and the merge's
    (None where the relaxed solve found nothing or the safety stop cut it short)."""
    start = time.perf_counter()
    near = relaxed.solve_mip(
        "highs",
        time_limit=time_limit,
        relative_gap=relative_gap,
        seed=seed,
        nodes=work.nodes(nodes, sum(len(c) for c in relaxed.by_class.values())),
    )
    if near.units is None or near.clock_stop:
        return near, None
    merged = _integer_master(
        problem,
        classes,
        pools,
        _columns_of({**units, **near.units}),
        solver="highs",
        cuts_from=cuts_from,
        roundings=roundings,
    )
    if left_out is not None:
        merged.fix_unplaced(left_out)
    return near, merged.solve_mip(
        "highs",
        time_limit=time_limit - (time.perf_counter() - start),
        relative_gap=relative_gap,
        seed=seed,
        nodes=work.nodes(merge_nodes, sum(len(c) for c in merged.by_class.values())),
    )


def _training_resolve(
    problem: Problem,
    classes: list[JobClass],
    pools: PoolIndex,
    lp: _ColumnGeneration,
    units: Units,
    left_out: list[int],
    cost: float,
    *,
    work: WorkLimits,
    time_limit: float,
    seed: int,
) -> MipResult:
    """The training gangs bought again around the serving units of ``units``: HiGHS
    over the training classes' columns that ``lp`` ranks best (until their pools hold
    ``RESOLVE_HOLD`` times a class's jobs, where the other models stop at twice), with
    every serving column and each class's jobs left out (``left_out``) held as ``units``
    has them, cut off at ``cost``. Serving jobs make up most of the integer model's
    columns (their units are small and mixed: L catalog, 9,802 of 11,001), where the
    gangs, which hold most of the cost, are fought over; alone, the gangs' model is small
    enough to solve near its optimum with more columns than the whole model could take
    (L catalog after the cost polish: 900,210 -> 890,063 in 2.0 s over 2,631 training
    columns, where the whole model found 893,470 only after 36 s)."""
    gangs = [cls for cls in classes if cls.kind == TRAINING]
    training = _enrich(problem, gangs, pools, lp.rcs, units, hold=RESOLVE_HOLD)
    mip = _integer_master(problem, classes, pools, training, solver="highs", cuts_from=lp.master)
    mip.fix_unplaced(left_out)
    _add_units(mip, classes, units)
    mip.fix_columns(INFERENCE, units)
    return mip.solve_mip(
        "highs",
        time_limit=time_limit,
        relative_gap=RESOLVE_GAP,
        seed=seed,
        nodes=work.nodes(work.resolve_nodes, sum(len(c) for c in training.values())),
        cutoff=cost,
    )


def _integer_master(
    problem: Problem,
    classes: list[JobClass],
    pools: PoolIndex,
    columns: dict[int, np.ndarray],
    *,
    solver: str,
    cuts_from: Master,
    roundings: bool = True,
    prices: SharePrices | None = None,
) -> Master:
    """The integer model over ``columns`` (per class), with ``cuts_from``'s cuts (its
    serving cover cuts only, without ``roundings``), and the share rows moved into the
    objective at ``prices`` where given."""
    n_columns = sum(len(cols) for cols in columns.values())
    mip = Master(
        problem,
        classes,
        pools,
        integer=True,
        dense_share=_dense_share(problem, solver, n_columns),
        integral_total=solver == "cpsat",
        capped=prices is None,
        prices=None if prices is None else prices.of,
    )
    mip.copy_cuts_from(cuts_from, roundings=roundings)
    for cls in classes:
        mine = columns.get(cls.index)
        if mine is not None and len(mine):
            mip.add_columns(cls, mine)
    return mip


def _add_units(master: Master, classes: list[JobClass], units: Units) -> int:
    """The columns of ``units`` not yet in ``master``, added; how many were new."""
    return sum(
        master.add_columns(classes[k], cands) for k, cands in sorted(_columns_of(units).items())
    )


def _columns_of(units: Units) -> dict[int, np.ndarray]:
    """The columns ``units`` use, per class, in ascending order."""
    by_class: dict[int, set[int]] = {}
    for k, cand in units:
        by_class.setdefault(k, set()).add(cand)
    return {k: np.asarray(sorted(cands), dtype=np.int64) for k, cands in by_class.items()}


def _lp_placement(classes: list[JobClass], master: Master) -> tuple[float, float]:
    """Jobs the LP places (each class's jobs less its "unplaced" value) and the penalties
    of the fractions it leaves unplaced: its objective less those is its placement cost."""
    values = master.values
    unplaced = [float(values.get(u, 0.0)) for u in master.unplaced]
    placed = sum(cls.count - u for cls, u in zip(classes, unplaced, strict=True))
    penalties = sum(cls.penalty * u for cls, u in zip(classes, unplaced, strict=True))
    return round(placed, 6), penalties


def _cheapest_excluded(
    problem: Problem,
    classes: list[JobClass],
    rcs: dict[int, np.ndarray],
    columns: dict[int, np.ndarray],
) -> float:
    """The least reduced cost of any candidate not among the integer model's columns."""
    cheapest = math.inf
    for cls in classes:
        rc = rcs.get(cls.index)
        if rc is None or len(rc) == 0:
            continue
        start = problem.candidates.of_shape(cls.shape).start
        out = np.ones(len(rc), dtype=bool)
        kept = columns.get(cls.index)
        if kept is not None and len(kept):
            out[kept - start] = False
        left = rc[out & np.isfinite(rc)]
        if len(left):
            cheapest = min(cheapest, float(left.min()))
    return cheapest


def _check_share_cap(problem: Problem) -> None:
    """Refuse a share cap under which no plan can place a job: below 1 / (providers holding
    any candidate) where none of them has room beside what live allocations hold
    (``Problem.share_room``), some provider always carries more than the cap. Where one
    has room, the integer model decides what fits.

    The cap named is the smallest that holds new jobs spread over every provider, or, where
    less, one job alone beside what is held: (held_v + w) / (held + w) for the lightest
    candidate w of provider v."""
    cap = problem.share_cap
    c = problem.candidates
    if cap is None or len(c) == 0:
        return
    names = problem.providers
    where = {name: i for i, name in enumerate(names)}
    of_pool = np.array([where[pool.provider] for pool in problem.pools], dtype=np.int64)
    weight = c.gpus.astype(np.float64) if problem.share_on == "gpus" else c.cost
    lightest = np.full(len(names), np.inf)
    np.minimum.at(lightest, of_pool[c.pool], weight)
    hosting = np.flatnonzero(np.isfinite(lightest))
    if cap >= 1.0 / len(hosting) - 1e-12 or float(lightest[hosting].min()) <= 0:
        return  # spread over every provider, or a job that weighs nothing, fits
    if any(problem.share_room(names[v]) > 0 for v in hosting):
        return
    held = sum(problem.held.values())
    smallest = min(
        [1.0 / len(hosting)]
        + [
            (problem.held.get(names[v], 0.0) + float(lightest[v])) / (held + float(lightest[v]))
            for v in hosting
        ]
    )
    hosts = [names[v] for v in hosting]
    beside = " beside what live allocations hold" if held > 0 else ""
    raise Infeasible(
        [
            f"max_provider_share {cap:.0%}: no plan can place a job under it with "
            f"{len(hosts)} provider{'s' if len(hosts) > 1 else ''} offering candidates "
            f"({', '.join(hosts)}){beside}; the smallest cap that can hold is {smallest:.0%}"
        ]
    )


def _full_space_mode(problem: Problem, columns: int, work: WorkLimits) -> str | None:
    """How the full-space step runs: "mip" (branch and bound), "root" (root cuts only, for
    the bound), "priced" and "priced root" (the same with the share rows priced into the
    objective: a relaxation, so its bound holds, and its solution is a plan only where it
    keeps the cap) or None (the space of ``columns`` candidates is above the work
    limits' columns)."""
    if columns == 0:
        return None
    if problem.share_cap is not None:
        if columns <= work.full_space_capped_columns:
            return "mip"
        if columns <= work.full_space_columns:
            return "priced"
        return "priced root" if columns <= work.root_bound_columns else None
    if columns <= work.full_space_columns:
        return "mip"
    return "root" if columns <= work.root_bound_columns else None


def _dense_share(problem: Problem, solver: str, columns: int) -> bool:
    """Share rows in the integer model: dense (each column in every provider's row) when
    providers and columns are few; HiGHS branches far better on them than on the
    auxiliary total, which the column generation keeps so that pricing stays sparse.
    CP-SAT cannot hold a continuous total, so it always gets dense rows when the share is
    on spend."""
    if solver == "cpsat" and problem.share_on == "spend":
        return True
    return len(problem.providers) <= DENSE_SHARE_PROVIDERS and columns <= DENSE_SHARE_MAX_COLUMNS


def _gap(objective: float, bound: float) -> float:
    if objective <= 0:
        return 0.0
    return max(0.0, (objective - bound) / objective)


def lp_bound(problem: Problem, *, rounds: int = 1_000, time_budget: float = 60.0) -> float:
    """The full-space LP lower bound alone (used by benchmarks and tests)."""
    classes = build_classes(problem)
    pools = PoolIndex.of(problem)
    return _column_generation(
        problem, classes, pools, {}, rounds=rounds, deadline=time.perf_counter() + time_budget
    ).bound


def _initial_columns(problem: Problem, cls: JobClass, greedy: Units) -> np.ndarray:
    rows = problem.candidates.of_shape(cls.shape)
    cheapest = np.arange(rows.start, min(rows.stop, rows.start + 4))
    mine = [cand for (k, cand) in greedy if k == cls.index]
    return np.unique(np.concatenate([cheapest, np.asarray(mine, dtype=np.int64)]))


@dataclass
class _ColumnGeneration:
    """The bound (LP optimum when pricing converged, else the best Lagrangian bound of any
    round, never below zero), the last reduced costs per class, the LP model, the rounds
    run, and whether the safety clock (not the round limit) ended it."""

    bound: float
    rcs: dict[int, np.ndarray]
    master: Master
    rounds: int = 0
    converged: bool = False
    clock_stop: bool = False
    lp_objective: float = 0.0  # of the last LP solved (0 where none returned duals)
    # a bound on the same model in integers, above the LP where serving jobs are whole
    # (``_placement_lp``); 0 where not computed
    integer_bound: float = 0.0


def _column_generation(
    problem: Problem,
    classes: list[JobClass],
    pools: PoolIndex,
    greedy: Units,
    *,
    rounds: int,
    deadline: float,
    cuts: bool = True,
    master: Master | None = None,
) -> _ColumnGeneration:
    """LP bound over the full space, and the final reduced costs per class; from
    ``master`` and its columns where given (its bound is then only its LP optimum)."""
    if master is None:
        master = Master(problem, classes, pools, integer=False)
        for cls in classes:
            master.add_columns(cls, _initial_columns(problem, cls, greedy))
    costs = problem.candidates.cost
    scale = max(1.0, master.cost_weight * float(np.median(costs))) if len(costs) else 1.0
    best = 0.0  # costs and penalties are never negative
    done = 0
    while True:
        objective, duals = master.solve_lp()
        done += 1
        if duals is None:
            return _bound_without_duals(problem, classes, pools, master, deadline)
        rcs = {
            cls.index: reduced_costs(problem, pools, cls, duals, cost_weight=master.cost_weight)
            for cls in classes
        }
        lagrangian = relaxed_bound(problem, classes, pools, duals, rcs)
        if lagrangian is not None:
            best = max(best, lagrangian)
        clock = time.perf_counter() > deadline
        if clock or done >= rounds:
            return _ColumnGeneration(
                best, rcs, master, done, clock_stop=clock, lp_objective=objective
            )
        added = 0
        for cls in classes:
            rc = rcs[cls.index]
            negative = np.flatnonzero(rc < -PRICE_TOL * scale)
            if len(negative) == 0:
                continue
            start = problem.candidates.of_shape(cls.shape).start
            present = np.asarray(master.by_class.get(cls.index, []), dtype=np.int64) - start
            fresh = negative[~np.isin(negative, present)]
            best_new = fresh[np.argsort(rc[fresh], kind="stable")[:COLUMNS_PER_ROUND]]
            added += master.add_columns(cls, best_new + start)
        if added == 0 and (not cuts or master.add_rounding_cuts() + master.add_cover_cuts() == 0):
            return _ColumnGeneration(
                max(best, objective), rcs, master, done, converged=True, lp_objective=objective
            )


def _placement_lp(
    problem: Problem,
    classes: list[JobClass],
    pools: PoolIndex,
    lp_model: Master,
    left_out: list[int],
    units: Units,
    *,
    rounds: int,
    deadline: float,
    serving_nodes: int = SERVING_NODES,
) -> _ColumnGeneration:
    """The least cost (penalties aside) of any plan that leaves out ``left_out[k]`` of
    class k's jobs, as an LP over the full space: column generation from ``lp_model``'s
    columns and cuts and the columns of ``units`` (a plan with those counts), with the
    penalties off and the "unplaced" values fixed (they hold no candidate, so pricing is
    unchanged). Its ``lp_objective`` bounds that cost where it converged within
    ``rounds``; with serving jobs, so does the Lagrangian bound at its duals with each
    serving job's covering problem in integers (``integer_bound``; L catalog with a
    35 % GPU cap: 164,263 -> 166,264 in 1.2 s)."""
    master = _from_lp_model(problem, classes, pools, lp_model)
    master.fix_unplaced(left_out)
    _add_units(master, classes, units)
    placement = _column_generation(
        problem, classes, pools, {}, rounds=rounds, deadline=deadline, master=master
    )
    if placement.converged:
        placement.integer_bound, placement.clock_stop = _serving_whole_bound(
            problem,
            _with_placement_fixed(classes, left_out),
            pools,
            master.duals,
            deadline=deadline,
            serving_nodes=serving_nodes,
        )
    return placement


def _serving_whole_bound(
    problem: Problem,
    classes: list[JobClass],
    pools: PoolIndex,
    duals: Duals | None,
    *,
    deadline: float,
    serving_nodes: int,
    cost_weight: float = 1.0,
) -> tuple[float, bool]:
    """The Lagrangian bound at ``duals`` with each serving job's covering problem in whole
    nodes (``bound.lagrangian_bound``), and whether the safety stop ``deadline`` cut it
    short. It runs only where the LP returned duals and there are serving jobs, at most
    ``LAGRANGIAN_MAX_SERVING``; 0 (a bound, since costs and weights are never negative)
    where it does not run, is unbounded, or was cut short."""
    serving = sum(1 for cls in classes if cls.kind == INFERENCE)
    if duals is None or not 0 < serving <= LAGRANGIAN_MAX_SERVING:
        return 0.0, False
    whole = lagrangian_bound(
        problem,
        classes,
        pools,
        duals,
        deadline=deadline,
        serving_nodes=serving_nodes,
        cost_weight=cost_weight,
    )
    if whole is None:
        return 0.0, time.perf_counter() > deadline
    return whole, False


def _with_placement_fixed(classes: list[JobClass], left_out: list[int]) -> list[JobClass]:
    """The classes as the model with ``left_out[k]`` of class k's jobs unplaced sees them,
    for its Lagrangian bound: a training class places the rest (a job its subproblem
    leaves out costs the penalty, which keeps the bound below that model's optimum), a
    serving job left out covers its demand at no cost, and a class left out whole drops
    out."""
    fixed = []
    for cls, left in zip(classes, left_out, strict=True):
        if cls.kind == INFERENCE:
            fixed.append(replace(cls, penalty=0.0) if left else cls)
        elif cls.count > left:
            fixed.append(replace(cls, jobs=cls.jobs[: cls.count - left]))
    return fixed


def _from_lp_model(
    problem: Problem,
    classes: list[JobClass],
    pools: PoolIndex,
    lp_model: Master,
    *,
    cost_weight: float = 1.0,
) -> Master:
    """A fresh LP over ``classes`` that starts from ``lp_model``'s cuts and columns, for a
    column generation of another objective over the same rows."""
    master = Master(problem, classes, pools, integer=False, cost_weight=cost_weight)
    master.copy_cuts_from(lp_model)
    for cls in classes:
        mine = lp_model.by_class.get(cls.index)
        if mine:
            master.add_columns(cls, np.asarray(mine, dtype=np.int64))
    return master


def _left_out_by_class(classes: list[JobClass], plan: Plan) -> list[int]:
    return [sum(1 for job in cls.jobs if job in plan.unplaced) for cls in classes]


@dataclass
class _Placeable:
    """The most priority weight any plan can place, and whether the safety stop cut its
    proof short (the figure then holds, but is weaker on a slower machine)."""

    weight: int
    clock_stop: bool


def _most_placeable(
    problem: Problem,
    classes: list[JobClass],
    pools: PoolIndex,
    lp_model: Master,
    *,
    work: WorkLimits,
    exact: bool,
    deadline: float,
    seed: int,
) -> _Placeable:
    """The most priority weight any plan can place: the least weight any LP solution
    leaves out, with costs out of the objective (budget rows keep them) and each class's
    penalty its jobs' weight, by column generation from ``lp_model``'s columns and cuts
    (``work.placement_rounds``; any round's Lagrangian bound holds, and with serving jobs
    so does the one at its last duals with their covering problems in whole nodes). Where
    the model over every candidate is small enough for the full-space integer step
    (``exact``), the same in integers, for the bound of its root cuts, which closes what
    whole gangs and nodes leave open (S synthetic: the LP allows 75, the root cuts prove
    74 in 0.2-0.6 s with or without a share cap, where branch and bound took 5 s under a
    cap). A plan's weight is a whole number, so the figure is rounded down, less a
    tolerance for the solvers' arithmetic.

    The main LP cannot give this figure: its penalties are ten times the dearest single
    placement, not above the cost of the whole fleet, so a plan may place more weight than
    it does, at a higher cost."""
    weighed = [replace(cls, penalty=float(placement_weight(cls.priority))) for cls in classes]
    master = _from_lp_model(problem, weighed, pools, lp_model, cost_weight=0.0)
    cg = _column_generation(
        problem, weighed, pools, {}, rounds=work.placement_rounds, deadline=deadline, master=master
    )
    left_out, clock_stop = cg.bound, cg.clock_stop
    if not clock_stop:
        # serving jobs in whole nodes (L catalog with a 35 % GPU cap: at most 1527 -> 1519)
        whole, clock_stop = _serving_whole_bound(
            problem,
            weighed,
            pools,
            master.duals,
            deadline=deadline,
            serving_nodes=work.serving_nodes,
            cost_weight=0.0,
        )
        left_out = max(left_out, whole)
    if exact and not clock_stop and deadline - time.perf_counter() > 0.5:
        columns = sum(len(problem.candidates.of_shape(cls.shape)) for cls in weighed)
        full = solve_full_space(
            problem,
            weighed,
            pools,
            lp_model,
            "root",
            dense_share=_dense_share(problem, "highs", columns),
            nodes=1,
            deadline=deadline,
            relative_gap=0.0,
            seed=seed,
            cost_weight=0.0,
        )
        clock_stop = full.clock_stop
        if full.bound is not None:
            left_out = max(left_out, full.bound)
    total = sum(cls.penalty * cls.count for cls in weighed)
    return _Placeable(math.floor(total - left_out + WEIGHT_TOL), clock_stop)


def _bound_without_duals(
    problem: Problem, classes: list[JobClass], pools: PoolIndex, master: Master, deadline: float
) -> _ColumnGeneration:
    """No duals to price with (the LP solve returned none; an empty problem has no rows):
    the bound is the Lagrangian one at zero multipliers, else 0 (costs are never
    negative), and columns are ranked by cost alone."""
    zero = Duals.zero(problem, pools)
    weight = master.cost_weight
    bound = lagrangian_bound(problem, classes, pools, zero, deadline=deadline, cost_weight=weight)
    rcs = {
        cls.index: reduced_costs(problem, pools, cls, zero, cost_weight=weight) for cls in classes
    }
    return _ColumnGeneration(0.0 if bound is None else bound, rcs, master)


def _enrich(
    problem: Problem,
    classes: list[JobClass],
    pools: PoolIndex,
    rcs: dict[int, np.ndarray],
    greedy: Units,
    *,
    hold: float = 2.0,
) -> dict[int, np.ndarray]:
    """Columns for the integer model: best by reduced cost until pools hold ``hold``
    times a training class's jobs."""
    c = problem.candidates
    out: dict[int, np.ndarray] = {}
    for cls in classes:
        rows = c.of_shape(cls.shape)
        rc = rcs.get(cls.index)
        if rc is None or len(rc) == 0:
            continue
        order = np.argsort(rc, kind="stable")
        order = order[np.isfinite(rc[order])]
        cands = order + rows.start
        fit = pools.capacity[c.pool[cands]] // np.maximum(c.nodes[cands], 1)
        near_zero = int(np.sum(rc[order] <= 1e-6 * max(1.0, cls.penalty)))
        if cls.kind == "inference":
            # units are small and mixed: keep them all up to a bound, best first, plus,
            # per demand key, enough units to serve it three times over
            picked = [cands[:SERVING_COLUMNS]]
            for a, (_, rate) in enumerate(cls.demand):
                mine_a = cands[c.area[cands] == a]
                fit_a = pools.capacity[c.pool[mine_a]] // np.maximum(c.nodes[mine_a], 1)
                served = np.cumsum(fit_a * c.rate[mine_a])
                picked.append(mine_a[: int(np.searchsorted(served, 3.0 * rate)) + 4])
            kept = np.concatenate(picked)
        else:
            need = hold * cls.count
            # a pool counts once per class, whatever node counts it offers
            first = _first_of_pool(c.pool[cands])
            supply = np.cumsum(np.where(first, np.minimum(fit, cls.count), 0))
            keep = int(np.searchsorted(supply, need)) + 1
            kept = cands[: max(keep, min(near_zero, 400), 8)]
        mine = [cand for (k, cand) in greedy if k == cls.index]
        out[cls.index] = np.unique(np.concatenate([kept, np.asarray(mine, dtype=np.int64)]))
    return out


def _first_of_pool(pool: np.ndarray) -> np.ndarray:
    _, first_index = np.unique(pool, return_index=True)
    mask = np.zeros(len(pool), dtype=bool)
    mask[first_index] = True
    return mask


def describe(plan: Plan) -> str:
    gap = "-" if plan.gap is None else f"{plan.gap:.3%}"
    return (
        f"{plan.solver}: cost {plan.cost:.2f}, bound {plan.lp_bound}, gap {gap}, "
        f"{len(plan.unplaced)} unplaced, {plan.solve_seconds:.1f} s"
    )
