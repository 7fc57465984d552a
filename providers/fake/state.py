"""The fake cloud's state: its instances and the counters that make faults deterministic.

In memory by default. Given a path, the state lives in a JSON file that every operation
reads and writes under an exclusive file lock, so a broker that crashes and restarts, or a
reconciler in another process, sees the same cloud.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import tempfile
import threading
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

from broker.domain import InstanceState, Pricing
from broker.errors import ConfigError

LIVE_STATES = frozenset({InstanceState.PENDING, InstanceState.RUNNING})
_FORMAT = 1


@dataclass
class FakeInstance:
    instance_id: str
    region: str
    zone: str
    instance_type: str
    pricing: Pricing
    gpus: int
    state: InstanceState
    launched_at: datetime
    address: str
    tags: dict[str, str]
    visible_after_list: int = 0  # shows in listings once this many listing calls passed
    terminated_at: datetime | None = None

    @property
    def live(self) -> bool:
        return self.state in LIVE_STATES

    def to_json(self) -> dict[str, Any]:
        data = asdict(self)
        data["pricing"] = str(self.pricing)
        data["state"] = str(self.state)
        data["launched_at"] = self.launched_at.isoformat()
        data["terminated_at"] = self.terminated_at.isoformat() if self.terminated_at else None
        return data

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> FakeInstance:
        values = dict(data)
        values["pricing"] = Pricing(values["pricing"])
        values["state"] = InstanceState(values["state"])
        values["launched_at"] = datetime.fromisoformat(values["launched_at"])
        if values.get("terminated_at"):
            values["terminated_at"] = datetime.fromisoformat(values["terminated_at"])
        return cls(**values)


@dataclass
class CloudState:
    instances: dict[str, FakeInstance] = field(default_factory=dict)
    # nodes, draws, launch_calls, terminate_calls, list_calls, timeouts, failure:<i>
    counters: dict[str, int] = field(default_factory=dict)

    def bump(self, name: str) -> int:
        self.counters[name] = self.counters.get(name, 0) + 1
        return self.counters[name]

    def count(self, name: str) -> int:
        return self.counters.get(name, 0)

    def to_json(self) -> dict[str, Any]:
        return {
            "format": _FORMAT,
            "instances": [inst.to_json() for inst in self.instances.values()],
            "counters": dict(self.counters),
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> CloudState:
        instances = [FakeInstance.from_json(item) for item in data.get("instances", [])]
        return cls(
            instances={inst.instance_id: inst for inst in instances},
            counters={str(k): int(v) for k, v in data.get("counters", {}).items()},
        )


class StateStore:
    """Hands out the state for one operation at a time (a thread lock, plus a file lock
    and a fresh read/write of the file when persistent)."""

    def __init__(self, path: str | Path | None = None) -> None:
        self.path = Path(path).expanduser() if path else None
        self._memory = CloudState()
        self._lock = threading.RLock()

    @contextlib.contextmanager
    def open(self) -> Iterator[CloudState]:
        with self._lock:
            if self.path is None:
                yield self._memory
                return
            self.path.parent.mkdir(parents=True, exist_ok=True)
            lock_path = self.path.with_name(self.path.name + ".lock")
            with lock_path.open("a") as lock_file:
                fcntl.flock(lock_file, fcntl.LOCK_EX)
                try:
                    state = self._read()
                    try:
                        yield state
                    finally:
                        # Written even when the operation raises: a failed call may
                        # already have changed the cloud (a timeout after create).
                        self._write(state)
                finally:
                    fcntl.flock(lock_file, fcntl.LOCK_UN)

    def _read(self) -> CloudState:
        assert self.path is not None
        if not self.path.exists():
            return CloudState()
        try:
            data = json.loads(self.path.read_text())
            if not isinstance(data, dict) or data.get("format") != _FORMAT:
                raise ValueError(f"expected a JSON object with format {_FORMAT}")
            return CloudState.from_json(data)
        except (ValueError, KeyError, TypeError, AttributeError) as exc:
            raise ConfigError(f"{self.path}: not a fake cloud state file ({exc})") from None

    def _write(self, state: CloudState) -> None:
        assert self.path is not None
        fd, tmp = tempfile.mkstemp(dir=self.path.parent, prefix=self.path.name + ".")
        with os.fdopen(fd, "w") as handle:
            json.dump(state.to_json(), handle, indent=1, sort_keys=True)
        os.replace(tmp, self.path)
