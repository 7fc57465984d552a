"""Secrets the broker must keep but never put in its database: report webhook URLs
(they carry a token). They live in ``$GPUBROKER_HOME/secrets.json``, mode 0600; the
database holds only a reference with the part that is safe to show::

    secret:<random key>:https://hooks.example.com/...

A value without the ``secret:`` prefix is taken as it is (stored by an older version).
"""

from __future__ import annotations

import fcntl
import json
import secrets as random
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from broker.errors import ConfigError

PREFIX = "secret:"
FILE = "secrets.json"
_MAX_BYTES = 4 * 2**20


def _home(home: Path | None) -> Path:
    from broker.config import default_home

    return home if home is not None else default_home()


@contextmanager
def _store(home: Path | None) -> Iterator[dict[str, str]]:
    """The secrets, locked for the block; written back (0600) when the block ends."""
    from broker.files import read_bounded, write_atomic

    folder = _home(home)
    folder.mkdir(mode=0o700, parents=True, exist_ok=True)
    path = folder / FILE
    with open(folder / f"{FILE}.lock", "a+") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        data: dict[str, str] = {}
        if path.exists() or path.is_symlink():
            try:
                data = json.loads(read_bounded(path, _MAX_BYTES, "secrets file"))
            except ValueError:
                raise ConfigError(f"{path}: damaged (not JSON); move it aside") from None
            if not isinstance(data, dict):
                raise ConfigError(f"{path}: damaged (not a JSON object); move it aside")
        before = dict(data)
        yield data
        if data != before:
            write_atomic(path, json.dumps(data, indent=1), what="secrets file", mode=0o600)


def seal(value: str, shown: str, home: Path | None = None) -> str:
    """Keep ``value`` in the secrets file; the reference to store instead of it, carrying
    ``shown`` (a redacted form that is safe to print)."""
    key = random.token_hex(12)
    with _store(home) as data:
        data[key] = value
    return f"{PREFIX}{key}:{shown}"


def shown(stored: str) -> str:
    """What may be printed of a stored value: the redacted part of a reference."""
    if stored.startswith(PREFIX):
        return stored[len(PREFIX) :].partition(":")[2]
    return stored


def unseal(stored: str, home: Path | None = None) -> str:
    """The secret a reference stands for (a plain value is returned as it is)."""
    if not stored.startswith(PREFIX):
        return stored
    key = stored[len(PREFIX) :].partition(":")[0]
    with _store(home) as data:
        value = data.get(key)
    if value is None:
        raise ConfigError(f"secret {key[:6]}... is missing from {_home(home) / FILE}")
    return value


def forget(stored: str | None, home: Path | None = None) -> None:
    """Drop the secret a reference stands for (when its schedule is removed)."""
    if stored and stored.startswith(PREFIX):
        key = stored[len(PREFIX) :].partition(":")[0]
        with _store(home) as data:
            data.pop(key, None)
