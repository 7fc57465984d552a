"""The broker's side of a run: the head's Ray Jobs API, reached with the cluster's token.

A run is one Ray job (``python -m workloads.driver``) submitted to the head of the
allocation's own cluster. Its output is copied, as it grows, to ``output.log`` in the
job's run folder, which is what ``gpubroker logs`` shows also after the nodes are gone;
lines holding ``workloads.driver.EVENT_MARK`` are events (progress, checkpoints).
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from broker.errors import BrokerError, ClusterError, UserError
from workloads.driver import EVENT_MARK

OUTPUT_FILE = "output.log"
ENTRYPOINT = "python -m workloads.driver"
_ANSI = re.compile(r"\x1b\[[0-9;]*m")  # Ray colours the prefixes of workers' lines


@dataclass(frozen=True)
class Head:
    """Where the Jobs API of one cluster answers, and the token it wants."""

    url: str
    token: str

    @property
    def host(self) -> str:
        """The address the head is reached at (its serving endpoint answers there too)."""
        from urllib.parse import urlsplit

        return urlsplit(self.url).hostname or ""

    def client(self) -> Any:
        import logging

        from ray.job_submission import JobSubmissionClient

        # Ray's SDK logs each package upload at INFO; the broker reports progress itself.
        for name in ("ray.dashboard.modules.dashboard_sdk", "ray._private.runtime_env.packaging"):
            logging.getLogger(name).setLevel(logging.WARNING)
        return JobSubmissionClient(self.url, headers={"Authorization": f"Bearer {self.token}"})


def connect(head: Head, timeout_s: float, give_up: Callable[[], bool] | None = None) -> Any:
    """A client of ``head`` once it answers; ``ClusterError`` after ``timeout_s``.

    ``give_up`` is asked between tries (a cancel); it makes ``connect`` return None.
    """
    deadline = time.monotonic() + timeout_s
    last = "no answer"
    while True:
        try:
            client = head.client()
            client.list_jobs()
            return client
        except Exception as exc:  # the SDK raises ConnectionError, RuntimeError, ...
            last = type(exc).__name__
        if give_up is not None and give_up():
            return None
        if time.monotonic() > deadline:
            raise ClusterError(
                f"the Ray head at {head.url} did not answer within {timeout_s:g} s ({last})"
            )
        time.sleep(1.0)


def submit(
    client: Any,
    submission_id: str,
    timeout_s: float,
    give_up: Callable[[], bool] | None = None,
    **job: Any,
) -> str | None:
    """Submit the run as ``submission_id``, trying again while the head's job agent is not
    up yet (a head under load answers the API before its agent); the same id makes a retry
    of a submission that did get through harmless. None when ``give_up`` says so."""
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            return str(client.submit_job(submission_id=submission_id, **job))
        except Exception as exc:  # the SDK raises RuntimeError with the head's answer
            message = str(exc)
            if "already exists" in message:
                return submission_id
            if not any(sign in message for sign in _NOT_YET):
                raise ClusterError(f"the Ray head refused the run: {_first(message)}") from None
            if time.monotonic() > deadline:
                raise ClusterError(
                    f"the Ray head did not take the run within {timeout_s:g} s ({_first(message)})"
                ) from None
        if give_up is not None and give_up():
            return None
        time.sleep(2.0)


# What a head says while its job agent is still starting (or briefly unreachable).
_NOT_YET = ("No available agent", "Connection", "connection", "503", "502", "Timeout")


def _first(message: str) -> str:
    return message.strip().splitlines()[0][:300] if message.strip() else "no message"


def shipped_packages() -> list[str]:
    """The folders shipped with every job: ``workloads`` (the driver, the GPT, storage)
    and ``broker``, whose error tree they raise; nodes need nothing else of ours."""
    import broker.errors
    import workloads.driver

    folders = []
    for module in (workloads.driver, broker.errors):
        if module.__file__ is None:  # only a namespace package has no file
            raise BrokerError(f"{module.__name__} has no source file to ship to the nodes")
        folders.append(str(Path(module.__file__).parent))
    return folders


def runtime_env(run_json: str, envs: dict[str, str], workdir: str | None) -> dict[str, Any]:
    env: dict[str, Any] = {
        "py_modules": shipped_packages(),
        "env_vars": {**envs, "GPUBROKER_RUN": run_json},
    }
    if workdir:
        env["working_dir"] = workdir
    return env


def parse_events(lines: list[str]) -> list[dict[str, Any]]:
    """The JSON events among ``lines`` (each after the mark, wherever Ray's prefix ends)."""
    records = []
    for line in lines:
        at = line.find(EVENT_MARK)
        if at < 0:
            continue
        try:
            record = json.loads(line[at + len(EVENT_MARK) :])
        except json.JSONDecodeError:
            continue
        if isinstance(record, dict):
            records.append(record)
    return records


class OutputCopy:
    """Appends what is new in a job's logs to the run's ``output.log``, line by line."""

    def __init__(self, run_dir: Path, header: str) -> None:
        run_dir.mkdir(parents=True, exist_ok=True)
        self.path = run_dir / OUTPUT_FILE
        self._seen = 0
        self._partial = ""
        with open(self.path, "a", encoding="utf-8") as handle:
            handle.write(f"== {header}\n")

    def update(self, logs: str) -> list[str]:
        """Take the job's whole log text; write and return the complete new lines."""
        if len(logs) < self._seen:  # the head restarted its log: start over
            self._seen = 0
        fresh = self._partial + logs[self._seen :]
        self._seen = len(logs)
        lines = fresh.split("\n")
        self._partial = lines.pop()
        lines = [_ANSI.sub("", line) for line in lines]
        if lines:
            with open(self.path, "a", encoding="utf-8") as handle:
                handle.write("\n".join(lines) + "\n")
        return lines

    def tail(self, count: int = 10) -> list[str]:
        """The last ``count`` lines of output (events left out)."""
        text = self.path.read_text(encoding="utf-8", errors="replace")
        lines = [line for line in text.splitlines() if EVENT_MARK not in line]
        return lines[-count:]


def read_output(run_dir: Path, offset: int = 0) -> tuple[list[str], int]:
    """The run's output lines after byte ``offset`` (events left out), and the new offset.

    Only complete lines are returned, so a reader following a growing file never shows
    half a line.
    """
    path = run_dir / OUTPUT_FILE
    if not path.exists():
        return [], offset
    if not path.is_file():  # a FIFO would block the reader, a folder cannot be read
        raise UserError(f"{path}: the run's output is not a regular file")
    with open(path, "rb") as handle:
        handle.seek(offset)
        data = handle.read()
    complete = data[: data.rfind(b"\n") + 1]
    text = complete.decode("utf-8", errors="replace")
    lines = [line for line in text.splitlines() if EVENT_MARK not in line]
    return lines, offset + len(complete)
