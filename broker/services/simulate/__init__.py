"""What would a fleet have cost: replay a scenario under several policies and compare.

``simulate`` runs every (policy, seed) pair of a scenario, each into its own SQLite
database under ``ledger_dir`` (``<policy>-seed<N>.db``, where ``gpubroker report`` reads
the simulated ledger), and returns the means per policy. Pairs run one after another in
this process, or as Ray tasks (``parallel``: on this machine, or on the cluster at
``address``).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from broker.config import Settings
from broker.db.engine import Database
from broker.services.simulate.results import PolicySummary, RunFigures, measure, summarise
from broker.services.simulate.scenario import (
    POLICIES,
    LoadedScenario,
    Scenario,
    check_policies,
    load,
)

__all__ = [
    "POLICIES",
    "LoadedScenario",
    "PolicySummary",
    "RunFigures",
    "Scenario",
    "load",
    "simulate",
]

ProgressFn = Callable[[str, float], None]  # (run label, fraction of that run done)


@dataclass(frozen=True)
class _Task:
    loaded: LoadedScenario
    policy: str
    seed: int
    offers: list[Any]
    database: Path
    settings: Settings


def _run_task(task: _Task, progress: Callable[[float], None] | None = None) -> RunFigures:
    from broker.services.simulate.engine import Replay

    replay = Replay(task.loaded, task.policy, task.seed, task.offers, task.database, task.settings)
    return measure(replay.run(progress))


def simulate(
    db: Database,
    settings: Settings,
    loaded: LoadedScenario,
    *,
    policies: list[str] | None = None,
    seeds: int = 1,
    ledger_dir: Path,
    parallel: bool = False,
    address: str | None = None,
    progress: ProgressFn | None = None,
) -> list[PolicySummary]:
    """Replay ``loaded`` under each policy for seeds 0..seeds-1; means per policy."""
    from broker.errors import UserError
    from broker.services.offers.bootstrap import ensure_catalog
    from broker.services.simulate.policies import policy_offers
    from broker.services.simulate.supply import offers_from

    chosen = list(policies or loaded.scenario.policies)
    check_policies(chosen, "--policy")
    if seeds < 1:
        raise UserError("--seeds: must be >= 1")
    ensure_catalog(db, settings)
    offers = offers_from(db, loaded)
    for policy in chosen:  # a policy left with no offers is the scenario's fault: say so now
        policy_offers(offers, policy, loaded.scenario.single_cloud)
    tasks = [
        _Task(loaded, policy, seed, offers, ledger_dir / f"{policy}-seed{seed}.db", settings)
        for seed in range(seeds)
        for policy in chosen
    ]
    if parallel:
        figures = _on_ray(tasks, address, progress)
    else:
        figures = []
        for task in tasks:
            label = f"{task.policy} seed {task.seed}"

            def tell(done: float, label: str = label) -> None:
                if progress is not None:
                    progress(label, done)

            figures.append(_run_task(task, tell))
    return summarise(figures, chosen)


def _on_ray(
    tasks: list[_Task], address: str | None, progress: ProgressFn | None
) -> list[RunFigures]:
    """Each pair as a Ray task; ``progress`` hears of each as it completes."""
    import ray

    started_here = not ray.is_initialized()
    if started_here:
        if address:
            ray.init(address=address, log_to_driver=False)
        else:
            # a private local cluster on free ports (never Redis's 6379), no dashboard
            ray.init(include_dashboard=False, log_to_driver=False, configure_logging=False)
    try:
        remote = ray.remote(num_cpus=1)(_run_task)
        pending = {remote.remote(task): task for task in tasks}
        results: dict[int, RunFigures] = {}
        order = {id(task): index for index, task in enumerate(tasks)}
        while pending:
            done, _ = ray.wait(list(pending), num_returns=1)
            for ref in done:
                task = pending.pop(ref)
                results[order[id(task)]] = ray.get(ref)
                if progress is not None:
                    progress(f"{task.policy} seed {task.seed}", 1.0)
        return [results[i] for i in range(len(tasks))]
    finally:
        if started_here:
            ray.shutdown()
