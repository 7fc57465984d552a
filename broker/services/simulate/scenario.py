"""A simulation scenario: the window, the supply, the demand and the policies to compare.

Read from YAML with unknown keys refused (``SpecError`` naming the dotted field). Job specs
in the demand are ordinary job specs (a path relative to the scenario file, or inline),
validated by ``workloads.spec.parse_spec`` like any submitted job.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from broker.errors import SpecError, UserError

POLICIES: tuple[str, ...] = (
    "gpubroker",
    "per-job-cheapest",
    "single-cloud-on-demand",
    "spot-greedy",
)


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False, frozen=True)


class SupplyConfig(_Model):
    """Which offers of the database take part, and how spot behaves where no trace says."""

    providers: list[str] = Field(default_factory=list)  # empty: every provider but local
    gpus: list[str] = Field(default_factory=list)  # empty: every GPU type
    regions: list[str] = Field(default_factory=list)  # empty: every region
    capacity_nodes: int = Field(default=8, ge=1, le=10_000)  # on-demand pools the offer leaves open
    spot_capacity_nodes: int = Field(default=8, ge=1, le=10_000)  # spot pools at full availability
    refresh_minutes: float = Field(default=60.0, ge=1, le=24 * 60)
    # the seeded model (used when ``traces`` is not given)
    preemptions_per_hour: float = Field(default=0.1, ge=0, le=10)  # reclaims per spot node
    spot_availability: float = Field(default=0.8, gt=0, le=1)
    spot_price_volatility: float = Field(default=0.05, ge=0, le=1)


class PlannerConfig(_Model):
    replan_minutes: float = Field(default=15.0, ge=1, le=24 * 60)
    max_provider_share: float = Field(default=1.0, gt=0, le=1)
    time_limit: float = Field(default=5.0, gt=0, le=600)


class TeamConfig(_Model):
    budget: float = Field(gt=0, le=1e12)
    period: Literal["month", "week"] = "month"


class JobEntry(_Model):
    """One job: its spec (path or mapping), when it arrives and its deadline after that."""

    spec: str | dict[str, Any]
    at_hours: float = Field(ge=0)
    deadline_hours: float | None = Field(default=None, gt=0)


class MixEntry(_Model):
    """Jobs of one kind arriving at ``per_day`` a day (Poisson), their size scaled by a
    uniform factor in ``scale`` (tokens or steps), each with ``deadline_hours``."""

    spec: str | dict[str, Any]
    per_day: float = Field(gt=0, le=10_000)
    deadline_hours: float | None = Field(default=None, gt=0)
    scale: tuple[float, float] = (1.0, 1.0)

    @field_validator("scale")
    @classmethod
    def _scale(cls, value: tuple[float, float]) -> tuple[float, float]:
        if not 0 < value[0] <= value[1] <= 1000:
            raise ValueError("must be [low, high] with 0 < low <= high <= 1000")
        return value


class DemandConfig(_Model):
    jobs: list[JobEntry] = Field(default_factory=list)
    mix: list[MixEntry] = Field(default_factory=list)


class Scenario(_Model):
    name: str = Field(default="scenario", pattern=r"^[A-Za-z0-9_.-]{1,64}$")
    start: datetime = datetime(2026, 1, 5, tzinfo=UTC)
    days: float = Field(default=28.0, gt=0, le=366)
    drain_days: float = Field(default=7.0, ge=0, le=366)
    seed: int = Field(default=0, ge=0)
    traces: str | None = None  # a folder with availability/ and preemption/ JSON traces
    supply: SupplyConfig = Field(default_factory=SupplyConfig)
    planner: PlannerConfig = Field(default_factory=PlannerConfig)
    single_cloud: str | None = None  # the provider of single-cloud-on-demand (default: most offers)
    policies: list[str] = Field(default_factory=lambda: list(POLICIES))
    teams: dict[str, TeamConfig] = Field(default_factory=dict)
    demand: DemandConfig = Field(default_factory=DemandConfig)

    @field_validator("start")
    @classmethod
    def _aware(cls, value: datetime) -> datetime:
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)

    @field_validator("policies")
    @classmethod
    def _policies(cls, value: list[str]) -> list[str]:
        check_policies(value, "policies")
        return value

    @property
    def end(self) -> datetime:
        return self.start + timedelta(days=self.days)


def check_policies(names: list[str], where: str) -> None:
    for name in names:
        if name not in POLICIES:
            raise SpecError(where, f"unknown policy {name!r}; known: {', '.join(POLICIES)}")
    if not names:
        raise SpecError(where, "name at least one policy")


@dataclass(frozen=True)
class Arrival:
    """One job of the demand: its validated spec (as a dict) and when it is submitted."""

    at: datetime
    spec: dict[str, Any]
    deadline: datetime | None


@dataclass(frozen=True)
class LoadedScenario:
    scenario: Scenario
    path: Path
    specs: dict[str, dict[str, Any]]  # spec reference -> validated spec dict
    trace_dir: Path | None

    @property
    def name(self) -> str:
        return self.scenario.name


def load(path: str | Path) -> LoadedScenario:
    """Read and check a scenario file; every problem is one ``UserError`` naming it."""
    import yaml

    path = Path(path)
    source = str(path)
    try:
        text = path.read_text()
    except FileNotFoundError:
        raise UserError(f"{source}: no such scenario file") from None
    except OSError as exc:
        raise UserError(f"{source}: cannot read ({exc.strerror})") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError:
        raise SpecError("", "not valid YAML", source=source) from None
    if not isinstance(data, dict):
        raise SpecError("", "a scenario must be a mapping of keys to values", source=source)
    try:
        scenario = Scenario.model_validate(data)
    except SpecError as exc:
        raise SpecError(exc.field, str(exc).split(": ", 1)[-1], source=source) from None
    except ValidationError as exc:
        error = exc.errors(include_url=False, include_input=False)[0]
        field = ".".join(str(p) for p in error["loc"])
        message = error["msg"]
        if error["type"] == "extra_forbidden":
            message = "unknown field; allowed: " + ", ".join(_allowed(error["loc"][:-1]))
        raise SpecError(field, message, source=source) from None
    base = path.parent
    trace_dir = None
    if scenario.traces is not None:
        trace_dir = (base / scenario.traces).resolve()
        if not trace_dir.is_dir():
            raise SpecError("traces", f"no such trace folder: {trace_dir}", source=source)
    specs: dict[str, dict[str, Any]] = {}
    entries = [("jobs", i, e.spec) for i, e in enumerate(scenario.demand.jobs)]
    entries += [("mix", i, e.spec) for i, e in enumerate(scenario.demand.mix)]
    if not entries:
        raise SpecError("demand", "no jobs: give demand.jobs or demand.mix", source=source)
    for group, index, ref in entries:
        key = _spec_key(ref)
        if key not in specs:
            specs[key] = _load_spec(ref, base, f"{source}: demand.{group}[{index}].spec")
    for team in scenario.teams:
        if not team or len(team) > 64:
            raise SpecError("teams", "team names are 1 to 64 characters", source=source)
    return LoadedScenario(scenario, path, specs, trace_dir)


def _allowed(loc: tuple[Any, ...]) -> list[str]:
    """The field names of the scenario model at ``loc`` (the parent of an unknown key)."""
    model: Any = Scenario
    for part in loc:
        info = model.model_fields.get(part) if isinstance(part, str) else None
        inner = getattr(info, "annotation", None) if info is not None else None
        if isinstance(inner, type) and issubclass(inner, BaseModel):
            model = inner
        else:
            for arg in getattr(inner, "__args__", ()):  # list[JobEntry], dict[str, TeamConfig]
                if isinstance(arg, type) and issubclass(arg, BaseModel):
                    model = arg
    return sorted(model.model_fields)


def _spec_key(ref: str | dict[str, Any]) -> str:
    import json

    return ref if isinstance(ref, str) else json.dumps(ref, sort_keys=True)


def _load_spec(ref: str | dict[str, Any], base: Path, where: str) -> dict[str, Any]:
    from workloads.spec import parse_spec, spec_to_dict

    if isinstance(ref, str):
        file = base / ref
        try:
            data: Any = file.read_text()
        except OSError:
            raise UserError(f"{where}: no such spec file: {file}") from None
    else:
        data = ref
    spec = parse_spec(data, source=where)
    if spec.kind != "training":
        raise SpecError(
            "kind", "only training jobs are replayed; serving endpoints are not", source=where
        )
    if spec.model is None and spec.estimated_hours is None:
        raise SpecError(
            "estimated_hours", "user code needs estimated_hours to be replayed", source=where
        )
    return spec_to_dict(spec)


def arrivals(loaded: LoadedScenario, seed: int) -> list[Arrival]:
    """The demand of one seed: the listed jobs, and the mix drawn with ``seed``."""
    scenario = loaded.scenario
    rng = random.Random(f"demand:{scenario.seed}:{seed}")
    out: list[Arrival] = []
    for listed in scenario.demand.jobs:
        at = scenario.start + timedelta(hours=listed.at_hours)
        spec = loaded.specs[_spec_key(listed.spec)]
        out.append(_arrival(spec, at, listed.deadline_hours, 1.0))
    for entry in scenario.demand.mix:
        spec = loaded.specs[_spec_key(entry.spec)]
        for day in range(math.ceil(scenario.days)):
            for _ in range(_poisson(rng, entry.per_day * min(1.0, scenario.days - day))):
                hours = 24.0 * (day + rng.random())
                if hours >= scenario.days * 24.0:
                    continue
                factor = rng.uniform(*entry.scale)
                at = scenario.start + timedelta(hours=hours)
                out.append(_arrival(spec, at, entry.deadline_hours, factor))
    out.sort(key=lambda a: (a.at, a.spec["name"]))
    numbered = []
    for index, arrival in enumerate(out, start=1):
        spec = {**arrival.spec, "name": f"{arrival.spec['name']}-{index}"[:64]}
        numbered.append(Arrival(arrival.at, spec, arrival.deadline))
    return numbered


def _arrival(
    spec: dict[str, Any], at: datetime, deadline_hours: float | None, factor: float
) -> Arrival:
    spec = dict(spec)
    if factor != 1.0:
        for key in ("tokens", "steps"):
            if spec.get(key):
                spec[key] = max(1, int(spec[key] * factor))
        if isinstance(spec.get("estimated_hours"), int | float):
            spec["estimated_hours"] = spec["estimated_hours"] * factor
    deadline = None if deadline_hours is None else at + timedelta(hours=deadline_hours)
    if deadline is not None:
        spec["deadline"] = deadline.isoformat()
    return Arrival(at, spec, deadline)


def _poisson(rng: random.Random, mean: float) -> int:
    """A Poisson draw (Knuth's method in chunks, exact for any mean)."""
    count = 0
    while mean > 0:
        step = min(mean, 30.0)
        mean -= step
        limit, product = math.exp(-step), rng.random()
        while product > limit:
            count += 1
            product *= rng.random()
    return count
