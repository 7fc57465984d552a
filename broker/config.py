"""Settings: environment ``GPUBROKER_*`` > ``$GPUBROKER_HOME/config.toml`` > defaults.

Every setting is declared once in ``_FIELDS`` with its parser; a bad value raises
``ConfigError`` naming the variable or the file key and what is allowed. Secrets never
live here: cloud credentials come from each SDK's own chain.
"""

from __future__ import annotations

import os
import tomllib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from broker.errors import ConfigError


def _number(raw: Any, kind: type[int] | type[float]) -> Any:
    if isinstance(raw, bool):
        raise ValueError(f"must be {'an integer' if kind is int else 'a number'}")
    try:
        return kind(raw)
    except (TypeError, ValueError):
        raise ValueError(f"must be {'an integer' if kind is int else 'a number'}") from None


# Upper bound of every positive number setting: large enough for any real use, small
# enough that no deadline or window computed from one leaves the calendar.
_MAX_SETTING = 100_000


def _positive_float(raw: Any) -> float:
    value = _number(raw, float)
    if not 0 < value <= _MAX_SETTING:  # also refuses nan and inf
        raise ValueError(f"must be > 0 and at most {_MAX_SETTING}")
    return value


def _positive_int(raw: Any) -> int:
    value = _number(raw, int)
    if not 0 < value <= _MAX_SETTING:
        raise ValueError(f"must be > 0 and at most {_MAX_SETTING}")
    return value


def _fraction(raw: Any) -> float:
    value = _number(raw, float)
    if not 0 < value <= 1:
        raise ValueError("must be in (0, 1]")
    return value


def _str_list(raw: Any) -> tuple[str, ...]:
    if isinstance(raw, str):
        items = [part.strip() for part in raw.split(",")]
    elif isinstance(raw, list | tuple):
        items = [str(part).strip() for part in raw]
    else:
        raise ValueError("must be a comma-separated string or a list of strings")
    return tuple(item for item in items if item)


def _port(raw: Any) -> int:
    value = _number(raw, int)
    if not 1024 <= value <= 65000:
        raise ValueError("must be a port in 1024-65000")
    return value


def _cidr(raw: Any) -> str:
    import ipaddress

    try:
        return str(ipaddress.ip_network(str(raw).strip(), strict=False))
    except ValueError:
        raise ValueError("must be a CIDR such as 203.0.113.0/24") from None


def _optional_str(raw: Any) -> str | None:
    text = str(raw).strip()
    return text or None


def _path(raw: Any) -> Path:
    return Path(str(raw)).expanduser()


@dataclass(frozen=True)
class Settings:
    """Resolved settings. Build with :func:`load_settings`, not directly."""

    home: Path
    database_url: str
    # providers
    aws_regions: tuple[str, ...] = ()
    aws_price_list_url: str = "https://pricing.us-east-1.amazonaws.com"
    aws_max_attempts: int = 4
    gcp_project: str | None = None
    gcp_regions: tuple[str, ...] = ()
    gcp_compute_endpoint: str | None = None
    gcp_billing_endpoint: str | None = None
    # planning
    solver: str = "highs"
    solver_time_limit: float = 30.0
    solver_relative_gap: float = 0.005
    default_pool_capacity: int = 4
    capacity_cooldown_minutes: float = 30.0
    max_provider_share: float = 1.0
    # the fabric between nodes assumed for an offer that states none (None: the scheduler's
    # default); a plan flags every gang placed on such an assumption
    unknown_interconnect_gbps: float | None = None
    offer_max_age_days: float = 30.0  # older prices are left out by --fresh, warned about
    # execution
    ray_port: int = 6390
    ray_dashboard_port: int = 8265
    serve_port: int = 8000  # where a serving allocation's head answers HTTP
    local_nodes: int = 4  # nodes the local provider offers on this machine
    ingress_cidr: str | None = None  # who may reach cloud nodes' Ray ports; required to launch
    cluster_network: str = "public"  # how the broker reaches a head: its public or private IP
    head_timeout_s: float = 900.0  # from RUNNING nodes to a head that answers
    workdir_max_mib: float = 100.0
    owner_tag: str = "gpubroker"
    # scheduled reports by email
    smtp_host: str | None = None
    smtp_port: int = 25
    smtp_security: str = "none"  # none | starttls | ssl
    smtp_user: str | None = None
    smtp_password: str | None = None
    smtp_from: str = "gpubroker@localhost"
    extra: Mapping[str, Any] = field(default_factory=dict)

    def ensure_home(self) -> Path:
        """Create the home folder if missing, readable by its owner only (0700): it holds
        the database, cluster secrets and runs."""
        try:
            self.home.mkdir(mode=0o700, parents=True, exist_ok=True)
        except FileExistsError:
            raise ConfigError(f"GPUBROKER_HOME: {self.home} is not a folder") from None
        except OSError as exc:
            message = f"GPUBROKER_HOME: cannot create {self.home} ({exc.strerror})"
            raise ConfigError(message) from None
        return self.home

    @property
    def config_file(self) -> Path:
        return self.home / "config.toml"

    @property
    def cache_dir(self) -> Path:
        return self.home / "cache"

    @property
    def runs_dir(self) -> Path:
        return self.home / "runs"


# name -> parser. The env variable is GPUBROKER_<NAME upper>; the file key is <name>.
_FIELDS: dict[str, Callable[[Any], Any]] = {
    "database_url": _optional_str,
    "aws_regions": _str_list,
    "aws_price_list_url": _optional_str,
    "aws_max_attempts": _positive_int,
    "gcp_project": _optional_str,
    "gcp_regions": _str_list,
    "gcp_compute_endpoint": _optional_str,
    "gcp_billing_endpoint": _optional_str,
    "solver": lambda raw: _choice(raw, ("highs", "cpsat")),
    "solver_time_limit": _positive_float,
    "solver_relative_gap": _fraction,
    "default_pool_capacity": _positive_int,
    "capacity_cooldown_minutes": _positive_float,
    "max_provider_share": _fraction,
    "unknown_interconnect_gbps": _positive_float,
    "offer_max_age_days": _positive_float,
    "ray_port": _port,
    "ray_dashboard_port": _port,
    "serve_port": _port,
    "local_nodes": _positive_int,
    "ingress_cidr": _cidr,
    "cluster_network": lambda raw: _choice(raw, ("public", "private")),
    "head_timeout_s": _positive_float,
    "workdir_max_mib": _positive_float,
    "owner_tag": _optional_str,
    "smtp_host": _optional_str,
    "smtp_port": _port,
    "smtp_security": lambda raw: _choice(raw, ("none", "starttls", "ssl")),
    "smtp_user": _optional_str,
    "smtp_password": _optional_str,
    "smtp_from": _optional_str,
}


def _choice(raw: Any, allowed: tuple[str, ...]) -> str:
    text = str(raw).strip().lower()
    if text not in allowed:
        raise ValueError("must be one of " + ", ".join(allowed))
    return text


def default_home() -> Path:
    return Path(os.environ.get("GPUBROKER_HOME") or "~/.gpubroker").expanduser()


_MAX_CONFIG_BYTES = 1 << 20


def _read_file(path: Path) -> dict[str, Any]:
    if not path.exists() and not path.is_symlink():
        return {}
    from broker.files import read_bounded

    raw = read_bounded(path, _MAX_CONFIG_BYTES, "config file")
    try:
        data = tomllib.loads(raw.decode("utf-8"))
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{path}: not UTF-8 text (byte {exc.start})") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: not valid TOML ({exc})") from None
    unknown = sorted(set(data) - set(_FIELDS))
    if unknown:
        raise ConfigError(
            f"{path}: unknown key {unknown[0]!r}; allowed keys: {', '.join(sorted(_FIELDS))}"
        )
    return data


def load_settings(env: Mapping[str, str] | None = None) -> Settings:
    """Resolve settings from the environment, the config file and the defaults."""
    env = os.environ if env is None else env
    home = _path(env.get("GPUBROKER_HOME") or "~/.gpubroker")
    file_values = _read_file(home / "config.toml")
    values: dict[str, Any] = {}
    for name, parse in _FIELDS.items():
        env_name = f"GPUBROKER_{name.upper()}"
        if env_name in env and env[env_name] != "":
            raw, where = env[env_name], env_name
        elif name in file_values:
            raw, where = file_values[name], f"{home / 'config.toml'}: {name}"
        else:
            continue
        try:
            values[name] = parse(raw)
        except (TypeError, ValueError) as exc:
            # Name the setting and the rule, never the value: it may be a URL with a password.
            raise ConfigError(f"{where}: {exc}") from None
    if values.get("database_url") is None:
        values["database_url"] = f"sqlite:///{home / 'broker.db'}"
    declared = {f.name for f in fields(Settings)}
    return Settings(home=home, **{k: v for k, v in values.items() if k in declared})
