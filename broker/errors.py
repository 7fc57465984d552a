"""The one error tree (DESIGN §8). Every failure that crosses a layer is one of these.

Messages are written for the person at the terminal: one line, naming the field, file or
resource and what is allowed. They never carry a credential: adapters build them from
our own words, not from the text of an SDK exception that may echo a request.
"""

from __future__ import annotations

from collections.abc import Sequence


class BrokerError(Exception):
    """Root of every error the broker raises on purpose."""

    exit_code = 1

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message

    def __str__(self) -> str:
        return self.message


# --- the user's input -------------------------------------------------------------------


class UserError(BrokerError):
    """Bad input: a spec, a flag, a config value, a missing file. Exit code 2."""

    exit_code = 2


class SpecError(UserError):
    """A job spec field is wrong; ``field`` is its dotted path (``model.layers``)."""

    def __init__(self, field: str, message: str, *, source: str | None = None) -> None:
        where = f"{source}: " if source else ""
        super().__init__(f"{where}{field}: {message}" if field else f"{where}{message}")
        self.field = field
        self.source = source


class ConfigError(UserError):
    """A setting from the environment or config.toml is wrong."""


class NotFound(UserError):
    """A named thing (job, offer, file, schedule) does not exist."""


# --- the providers ----------------------------------------------------------------------


class ProviderError(BrokerError):
    """A cloud or other supply source failed; ``retryable`` says whether to try again."""

    def __init__(self, provider: str, message: str, *, retryable: bool = False) -> None:
        super().__init__(f"{provider}: {message}")
        self.provider = provider
        self.retryable = retryable


class ClusterError(BrokerError):
    """The nodes of an allocation did not form a cluster, or its head did not answer."""


class AuthError(ProviderError):
    """Credentials are missing, expired or lack a permission."""

    def __init__(self, provider: str, message: str) -> None:
        super().__init__(provider, message, retryable=False)


class Throttled(ProviderError):
    """The provider asked us to slow down and retries ran out."""

    def __init__(self, provider: str, message: str) -> None:
        super().__init__(provider, message, retryable=True)


# --- capacity ---------------------------------------------------------------------------


class CapacityError(BrokerError):
    """Not enough supply to do what was asked."""


class OutOfCapacity(CapacityError):
    """The provider has no capacity for the request in ``zone`` right now."""

    def __init__(self, provider: str, zone: str, message: str = "") -> None:
        detail = f": {message}" if message else ""
        super().__init__(f"{provider}: out of capacity in {zone}{detail}")
        self.provider = provider
        self.zone = zone


class QuotaExceeded(CapacityError):
    """A quota (``quota`` names it) would be exceeded by the request."""

    def __init__(self, provider: str, quota: str, message: str = "") -> None:
        detail = f": {message}" if message else ""
        super().__init__(f"{provider}: quota {quota} exceeded{detail}")
        self.provider = provider
        self.quota = quota


# --- concurrency ------------------------------------------------------------------------


class ConflictError(BrokerError):
    """The state changed under us."""


class StaleWrite(ConflictError):
    """A row was changed by someone else since it was read."""


class AlreadyExists(ConflictError):
    """A row with the same identity already exists."""


# --- planning and money -----------------------------------------------------------------


class BudgetExceeded(BrokerError):
    """Spending would go past a team's budget."""

    exit_code = 3


class Infeasible(BrokerError):
    """No plan satisfies the constraints; ``reasons`` says why, one per line."""

    exit_code = 3

    def __init__(self, reasons: Sequence[str]) -> None:
        self.reasons = list(reasons)
        super().__init__("infeasible: " + "; ".join(self.reasons))


class SolverTimeout(BrokerError):
    """The solver found no feasible plan within its time limit."""

    exit_code = 3


class SolverCrashed(BrokerError):
    """The solver's process ended without an answer (killed, or out of memory)."""
