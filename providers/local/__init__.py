"""This machine as a provider: nodes on loopback addresses that boot like cloud nodes.

Each node is an address 127.0.0.2, 127.0.0.3, ... (Ray rewrites 127.0.0.1 to the host's
routable address, so it is left out). A launch with user data boots each node the way a
cloud does: the script runs as a process of its own, reading its metadata (index, own
address, later the head's address) from files under the node's folder, which
``set_metadata`` writes; its Ray processes use a temp dir of their own, which is how
``terminate`` finds and stops exactly them. Launched nodes live in a JSON state file
under the broker home, guarded by a file lock, so a launch is convergent by request id
across processes and the reconciler sees what a crashed broker left behind. ``preempt``
takes a node away (its processes too), the local equivalent of a spot reclaim.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

from broker.config import Settings
from broker.domain import InstanceState, Pricing, as_utc, utcnow
from broker.errors import NotFound, OutOfCapacity, ProviderError
from providers.base import (
    TAG_NODE,
    TAG_OWNER,
    TAG_REQUEST,
    Capability,
    InstanceRecord,
    LaunchRequest,
    OfferRecord,
    ProviderCheck,
    QuotaRecord,
    request_tags,
)
from providers.local import processes

NAME = "local"
REGION = "local"
ZONE = "local"
DEFAULT_NODES = 4
_HELD = (InstanceState.PENDING.value, InstanceState.RUNNING.value)
# Ray sizes: each raylet on one host would count the whole machine's memory otherwise.
NODE_MEMORY_BYTES = 2 * 1024**3
OBJECT_STORE_BYTES = 96 * 1024**2
# Variables of the broker's own process that must not leak into a node's boot.
_PRIVATE_ENV = ("RAY_ADDRESS", "RAY_AUTH_MODE", "RAY_AUTH_TOKEN", "GPUBROKER_CRASH_AT")


@dataclass(frozen=True)
class Machine:
    vcpus: int
    memory_gib: float | None
    gpu: str | None
    gpus: int
    gpu_memory_gib: float | None


def _memory_gib() -> float | None:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                return round(int(line.split()[1]) / 1024**2, 1)
    except OSError:
        return None
    return None


def detect_machine() -> Machine:
    """CPU count, memory and (only when an NVIDIA driver is present) the GPUs via torch."""
    gpu, gpus, gpu_mem = None, 0, None
    if shutil.which("nvidia-smi") or Path("/proc/driver/nvidia").exists():
        import torch

        if torch.cuda.is_available():
            gpus = torch.cuda.device_count()
            props = torch.cuda.get_device_properties(0)
            gpu, gpu_mem = props.name, round(props.total_memory / 1024**3, 1)
    return Machine(os.cpu_count() or 1, _memory_gib(), gpu, gpus, gpu_mem)


def node_address(index: int) -> str:
    return f"127.0.0.{index + 2}"


_STATE_MAX_BYTES = 16 * 2**20


def _read_state(path: Path) -> dict[str, Any]:
    """The state file, checked to be what this module writes; a damaged one is one
    ``ProviderError`` naming it, never a traceback from deep inside a launch."""
    from broker.files import read_bounded

    def damaged(why: str) -> ProviderError:
        return ProviderError(NAME, f"state file {path} is damaged ({why}); move it aside")

    try:
        state = json.loads(read_bounded(path, _STATE_MAX_BYTES, "local provider state file"))
    except (ValueError, RecursionError):
        raise damaged("not JSON") from None
    if not isinstance(state, dict) or not isinstance(state.get("instances"), dict):
        raise damaged("no instances table")
    if not isinstance(state.get("next_id"), int) or isinstance(state["next_id"], bool):
        raise damaged("next_id is not an integer")
    states = {s.value for s in InstanceState}
    pricings = {p.value for p in Pricing}
    for key, raw in state["instances"].items():
        ok = (
            isinstance(raw, dict)
            and raw.get("id") == key
            and isinstance(raw.get("instance_type"), str)
            and raw.get("state") in states
            and raw.get("pricing") in pricings
            and isinstance(raw.get("address"), str | None)
            and isinstance(raw.get("launched_at"), str | None)
            and isinstance(raw.get("tags"), dict)
            and all(isinstance(k, str) and isinstance(v, str) for k, v in raw["tags"].items())
            and str(raw["tags"].get(TAG_NODE, "0")).isdigit()
            and isinstance(raw.get("temp_dir"), str | None)
            and isinstance(raw.get("boot_pid"), int | None)
        )
        if not ok:
            raise damaged(f"instance {key!r} is malformed")
        if raw["launched_at"] is not None:
            try:
                datetime.fromisoformat(raw["launched_at"])
            except ValueError:
                raise damaged(f"instance {key!r} has a bad launch time") from None
    return state


class LocalProvider:
    name = NAME
    capabilities = frozenset({Capability.LIST_OFFERS, Capability.LAUNCH})

    def __init__(self, settings: Settings, *, nodes: int = DEFAULT_NODES) -> None:
        self.settings = settings
        self.nodes = nodes
        self.state_path = settings.home / "local" / "instances.json"
        self.nodes_dir = settings.home / "local" / "nodes"

    @property
    def instance_type(self) -> str:
        return "local-node"

    # --- offers -----------------------------------------------------------------------

    def list_offers(self, regions: Sequence[str] | None = None) -> Iterator[OfferRecord]:
        if regions and REGION not in regions:
            return
        machine = detect_machine()
        yield OfferRecord(
            provider=NAME,
            region=REGION,
            zone=ZONE,
            instance_type=self.instance_type,
            gpu=machine.gpu,
            gpus_per_node=machine.gpus,
            gpu_memory_gib=machine.gpu_memory_gib,
            vcpus=machine.vcpus,
            memory_gib=machine.memory_gib,
            pricing=Pricing.ON_DEMAND,
            price_per_hour=Decimal("0"),
            interconnect_gbps=None,
            capacity_nodes=self.nodes,
            source="local machine",
            as_of=utcnow(),
        )

    def quotas(self, regions: Sequence[str] | None = None) -> Iterator[QuotaRecord]:
        return iter(())

    def check(self, probe: bool = False) -> ProviderCheck:
        """Usable with no credentials; ``probe`` also reads the state file of the nodes."""
        detail = f"{self.nodes} nodes on loopback addresses"
        if probe and self.state_path.exists():
            try:
                state = _read_state(self.state_path)
            except ProviderError as exc:
                return ProviderCheck(NAME, False, "none needed", "this machine", exc.message)
            held = sum(raw["state"] in _HELD for raw in state["instances"].values())
            detail += f", {held} in use"
        return ProviderCheck(NAME, True, "none needed", "this machine", detail)

    # --- state ------------------------------------------------------------------------

    @contextmanager
    def _state(self) -> Iterator[dict[str, Any]]:
        self.state_path.parent.mkdir(parents=True, exist_ok=True)
        lock_path = self.state_path.with_suffix(".lock")
        with open(lock_path, "a+") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            state = (
                _read_state(self.state_path)
                if self.state_path.exists()
                else {"next_id": 1, "instances": {}}
            )
            yield state
            tmp = self.state_path.with_suffix(".tmp")
            tmp.write_text(json.dumps(state, indent=1))
            tmp.replace(self.state_path)

    @staticmethod
    def _record(raw: dict[str, Any]) -> InstanceRecord:
        launched = raw.get("launched_at")
        return InstanceRecord(
            provider=NAME,
            instance_id=raw["id"],
            region=REGION,
            zone=ZONE,
            instance_type=raw["instance_type"],
            state=InstanceState(raw["state"]),
            pricing=Pricing(raw["pricing"]),
            address=raw.get("address"),
            private_address=raw.get("address"),
            launched_at=as_utc(datetime.fromisoformat(launched)) if launched else None,
            tags=dict(raw["tags"]),
        )

    # --- lifecycle --------------------------------------------------------------------

    def launch(self, req: LaunchRequest) -> list[InstanceRecord]:
        with self._state() as state:
            instances: dict[str, dict[str, Any]] = state["instances"]
            mine = {
                int(raw["tags"][TAG_NODE]): raw
                for raw in instances.values()
                if raw["tags"].get(TAG_REQUEST) == req.request_id and raw["state"] in _HELD
            }
            missing = [i for i in range(req.nodes) if i not in mine]
            used = {raw["address"] for raw in instances.values() if raw["state"] in _HELD}
            free = [node_address(i) for i in range(self.nodes) if node_address(i) not in used]
            short = len(free) < len(missing)
            if short and req.gang:
                for raw in mine.values():  # all or nothing: give back what the gang holds
                    self._halt(raw)
                    raw["state"] = InstanceState.TERMINATED.value
                mine = {}
            creating = [] if short and req.gang else missing  # a short gang creates nothing
            for index, address in zip(creating, free, strict=False):
                instance_id = f"local-{state['next_id']}"
                state["next_id"] += 1
                raw = {
                    "id": instance_id,
                    "instance_type": req.instance_type,
                    "state": InstanceState.RUNNING.value,
                    "pricing": Pricing(req.pricing).value,
                    "address": address,
                    "launched_at": utcnow().isoformat(),
                    "tags": request_tags(req, index),
                }
                instances[instance_id] = raw
                mine[index] = raw
                if req.user_data:
                    raw["temp_dir"] = self._temp_dir(instance_id)
                    raw["boot_pid"] = self._boot(raw, req)
            records = [self._record(mine[i]) for i in sorted(mine)]
        if short and req.gang:
            raise OutOfCapacity(
                NAME, ZONE, f"{len(free)} of {self.nodes} local nodes free, need {len(missing)}"
            )
        return records

    # --- booting -----------------------------------------------------------------------

    def _temp_dir(self, instance_id: str) -> str:
        # Ray's unix sockets live under the temp dir; keep the path short.
        digest = hashlib.sha1(f"{self.settings.home.resolve()}:{instance_id}".encode())
        return f"/tmp/gbr-{digest.hexdigest()[:10]}"

    def _node_dir(self, instance_id: str) -> Path:
        return self.nodes_dir / instance_id

    def _boot(self, raw: dict[str, Any], req: LaunchRequest) -> int:
        """Run the node's user data as its own process; returns the boot script's pid."""
        folder = self._node_dir(raw["id"])
        shutil.rmtree(folder, ignore_errors=True)
        (folder / "meta").mkdir(parents=True)
        self._write_metadata(raw["id"], {**raw["tags"], "local-ipv4": raw["address"]})
        script = folder / "boot.sh"
        script.write_text(req.user_data or "")
        cpus = max(1, (os.cpu_count() or 1) // max(1, req.nodes))
        env = {k: v for k, v in os.environ.items() if k not in _PRIVATE_ENV}
        env.update(
            GPUBROKER_METADATA_DIR=str(folder / "meta"),
            GPUBROKER_PYTHON=sys.executable,
            GPUBROKER_RAY_ARGS=(
                f"--temp-dir={raw['temp_dir']} --num-cpus={cpus} "
                f"--memory={NODE_MEMORY_BYTES} --object-store-memory={OBJECT_STORE_BYTES}"
            ),
        )
        with open(folder / "boot.log", "ab") as log:
            proc = subprocess.Popen(
                ["bash", str(script)],
                cwd=folder,
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        return proc.pid

    def _write_metadata(self, instance_id: str, items: Mapping[str, str]) -> None:
        folder = self._node_dir(instance_id) / "meta"
        folder.mkdir(parents=True, exist_ok=True)
        for key, value in items.items():
            tmp = folder / f".{key}.tmp"
            tmp.write_text(value)
            tmp.replace(folder / key)

    @staticmethod
    def _halt(raw: dict[str, Any]) -> None:
        """Stop every process of a booted node (nothing to do for one never booted)."""
        if not raw.get("temp_dir"):
            return
        roots = [raw["boot_pid"]] if raw.get("boot_pid") else []
        left = processes.stop([raw["temp_dir"]], roots)
        if left:
            raise ProviderError(NAME, f"node {raw['id']}: processes {left} did not stop")
        shutil.rmtree(raw["temp_dir"], ignore_errors=True)

    def set_metadata(self, instance_ids: Sequence[str], items: Mapping[str, str]) -> None:
        with self._state() as state:
            for instance_id in instance_ids:
                raw = state["instances"].get(instance_id)
                if raw is None:
                    raise NotFound(f"local instance {instance_id} does not exist")
                raw["tags"].update(items)
                self._write_metadata(instance_id, items)

    def list_instances(self, owner_tag: str) -> list[InstanceRecord]:
        with self._state() as state:
            return [
                self._record(raw)
                for raw in state["instances"].values()
                if raw["tags"].get(TAG_OWNER) == owner_tag
                and raw["state"] != InstanceState.TERMINATED.value
            ]

    def terminate(self, instance_ids: Sequence[str], request_id: str) -> None:
        with self._state() as state:
            for instance_id in instance_ids:
                raw = state["instances"].get(instance_id)
                if raw is not None:
                    self._halt(raw)
                    raw["state"] = InstanceState.TERMINATED.value

    def preempt(self, instance_id: str) -> None:
        """Take a running node away (the local stand-in for a spot reclaim)."""
        with self._state() as state:
            raw = state["instances"].get(instance_id)
            if raw is None:
                raise NotFound(f"local instance {instance_id} does not exist")
            self._halt(raw)
            raw["state"] = InstanceState.PREEMPTED.value


def create(settings: Settings) -> LocalProvider:
    return LocalProvider(settings, nodes=settings.local_nodes)
