"""What can go wrong in the fake cloud, declared up front as a ``FaultPlan``.

Every fault is deterministic: throttling draws from the provider's seeded sequence, and the
counted faults (``times``, ``timeout_after_create``, ``terminate_failures``) fire on the
first calls that match. A plan can also come from JSON (``GPUBROKER_FAKE_FAULTS``) so a
broker started in another process meets the same faults; ``FaultPlan.from_dict`` names
the offending key when a value is wrong.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass, field, fields
from datetime import datetime
from typing import Any, Literal

from broker.domain import Pricing, as_utc
from broker.errors import ConfigError

FailureKind = Literal["capacity", "quota", "auth", "error", "unavailable"]
FAILURE_KINDS: tuple[str, ...] = ("capacity", "quota", "auth", "error", "unavailable")


@dataclass(frozen=True)
class LaunchFailure:
    """Fail a launch when it is about to create its ``at_node``-th node (1-based, counted
    within one ``launch`` call), ``times`` times (None: every time), optionally only in one
    zone or for one instance type.

    kinds: ``capacity`` -> OutOfCapacity(zone), ``quota`` -> QuotaExceeded, ``auth`` ->
    AuthError, ``error`` -> a non-retryable ProviderError, ``unavailable`` -> a retryable
    ProviderError (a 5xx that outlasted the retries).
    """

    kind: FailureKind
    at_node: int = 1
    times: int | None = 1
    zone: str | None = None
    instance_type: str | None = None

    def __post_init__(self) -> None:
        if self.kind not in FAILURE_KINDS:
            raise ValueError(f"kind must be one of {', '.join(FAILURE_KINDS)}")
        if self.at_node < 1:
            raise ValueError("at_node must be >= 1")
        if self.times is not None and self.times < 1:
            raise ValueError("times must be >= 1 or null")


@dataclass(frozen=True)
class Preemption:
    """Take matching live instances away (state PREEMPTED).

    ``at``: when the clock passes this time, instances launched before it go;
    ``after_seconds``: each matching instance goes this long after its own launch.
    Filters left as None match everything.
    """

    at: datetime | None = None
    after_seconds: float | None = None
    zone: str | None = None
    instance_type: str | None = None
    pricing: Pricing | None = None

    def __post_init__(self) -> None:
        if (self.at is None) == (self.after_seconds is None):
            raise ValueError("give exactly one of at and after_seconds")
        if self.at is not None:
            object.__setattr__(self, "at", as_utc(self.at))
        if self.after_seconds is not None and self.after_seconds < 0:
            raise ValueError("after_seconds must be >= 0")

    def matches(self, zone: str, instance_type: str, pricing: Pricing) -> bool:
        return (
            (self.zone is None or self.zone == zone)
            and (self.instance_type is None or self.instance_type == instance_type)
            and (self.pricing is None or self.pricing == pricing)
        )


@dataclass(frozen=True)
class FaultPlan:
    """All injected faults of one fake provider; the default plan injects nothing.

    - ``throttle_rate``: chance that any API call is refused as throttled; the provider
      retries it with full-jitter backoff (``backoff_base * 2**n`` capped at
      ``backoff_cap`` seconds) up to ``max_attempts`` attempts, then raises ``Throttled``.
    - ``launch_failures``: see ``LaunchFailure``.
    - ``grant_at_most``: the cloud grants at most this many new nodes per launch call
      (a non-gang launch returns a partial grant; a larger gang fails and is rolled back).
    - ``timeout_after_create``: the first N launch calls that create nodes raise a
      retryable ``ProviderError`` after creating them; the retry must converge.
    - ``listing_lag_calls`` / ``listing_lag_seconds``: a new instance shows in
      ``list_instances`` only after that many listing calls / seconds.
    - ``terminate_failures``: the first N terminate calls fail (retryable) and do nothing.
    - ``preemptions``: see ``Preemption``.
    """

    throttle_rate: float = 0.0
    max_attempts: int = 4
    backoff_base: float = 0.05
    backoff_cap: float = 1.0
    launch_failures: tuple[LaunchFailure, ...] = ()
    grant_at_most: int | None = None
    timeout_after_create: int = 0
    listing_lag_calls: int = 0
    listing_lag_seconds: float = 0.0
    terminate_failures: int = 0
    preemptions: tuple[Preemption, ...] = field(default=())

    def __post_init__(self) -> None:
        if not 0.0 <= self.throttle_rate < 1.0:
            raise ValueError("throttle_rate must be in [0, 1)")
        if self.max_attempts < 1:
            raise ValueError("max_attempts must be >= 1")
        if self.backoff_base < 0 or self.backoff_cap < 0:
            raise ValueError("backoff_base and backoff_cap must be >= 0")
        if self.grant_at_most is not None and self.grant_at_most < 0:
            raise ValueError("grant_at_most must be >= 0 or null")
        for name in ("timeout_after_create", "listing_lag_calls", "terminate_failures"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0")
        if self.listing_lag_seconds < 0:
            raise ValueError("listing_lag_seconds must be >= 0")
        object.__setattr__(self, "launch_failures", tuple(self.launch_failures))
        object.__setattr__(self, "preemptions", tuple(self.preemptions))

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], *, source: str = "fault plan") -> FaultPlan:
        """Build a plan from JSON-like data; ``ConfigError`` names ``source`` and the key."""
        if not isinstance(data, Mapping):
            raise ConfigError(f"{source}: must be a JSON object")
        allowed = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - allowed)
        if unknown:
            raise ConfigError(
                f"{source}: unknown key {unknown[0]!r}; allowed: {', '.join(sorted(allowed))}"
            )
        values = dict(data)
        try:
            values["launch_failures"] = tuple(
                _build(LaunchFailure, item, f"{source}: launch_failures[{i}]")
                for i, item in enumerate(values.get("launch_failures", ()))
            )
            values["preemptions"] = tuple(
                _build(Preemption, _preemption_values(item), f"{source}: preemptions[{i}]")
                for i, item in enumerate(values.get("preemptions", ()))
            )
            return cls(**values)
        except (TypeError, ValueError) as exc:
            raise ConfigError(f"{source}: {exc}") from None

    def to_dict(self) -> dict[str, Any]:
        """JSON-safe form that ``from_dict`` reads back."""
        data = asdict(self)
        data["preemptions"] = [
            {
                **item,
                "at": item["at"].isoformat() if item["at"] else None,
                "pricing": str(item["pricing"]) if item["pricing"] else None,
            }
            for item in data["preemptions"]
        ]
        return data


def _preemption_values(item: Any) -> Any:
    if not isinstance(item, Mapping):
        return item
    values = dict(item)
    if isinstance(values.get("at"), str):
        values["at"] = datetime.fromisoformat(values["at"])
    if values.get("pricing") is not None:
        values["pricing"] = Pricing(values["pricing"])
    return values


def _build(kind: type, item: Any, where: str) -> Any:
    if not isinstance(item, Mapping):
        raise ConfigError(f"{where}: must be a JSON object")
    try:
        return kind(**item)
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"{where}: {exc}") from None
