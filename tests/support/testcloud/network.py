"""Bridge, namespaces and veths through ``ip``; ownership records; stale-run cleanup.

Every name starts with ``gbt`` and a 5-hex cloud id (``gbt1a2b3``): the bridge is
``<id>br``, a host's outer veth ``<id>v<n>`` (Linux allows 15 characters) and its
network namespace ``<id>-<n>``. A cloud records its owner (pid and process start time,
so a reused pid is not mistaken for it) in ``/run/gbt/<id>/owner``; ``cleanup_stale``
removes the namespaces, links, processes and state of clouds whose owner is gone, and
never touches those of a live test process.
"""

from __future__ import annotations

import contextlib
import fcntl
import ipaddress
import json
import logging
import os
import re
import shutil
import signal
import subprocess
import time
import uuid
from pathlib import Path
from typing import IO

log = logging.getLogger(__name__)

PREFIX = "gbt"
STATE_ROOT = Path("/run/gbt")
_CLOUD_ID = re.compile(rf"^({PREFIX}[0-9a-f]{{5}})")
_OURS_NS = re.compile(rf"^{PREFIX}[0-9a-f]{{5}}-\d+$")
_OURS_LINK = re.compile(rf"^{PREFIX}[0-9a-f]{{5}}(br|v\d+)$")

IP = shutil.which("ip") or "/usr/sbin/ip"


class IpError(RuntimeError):
    """An ``ip`` command failed; the message carries its stderr."""


def ip(*args: str, check: bool = True) -> str:
    """Run ``ip ARGS`` and return its stdout; raise ``IpError`` with stderr on failure."""
    done = subprocess.run([IP, *args], capture_output=True, text=True, timeout=30)
    if check and done.returncode != 0:
        raise IpError(f"ip {' '.join(args)}: {done.stderr.strip()}")
    return done.stdout


def new_cloud_id() -> str:
    return PREFIX + uuid.uuid4().hex[:5]


def netns_names() -> list[str]:
    """Names of every network namespace ``ip netns`` knows."""
    return [line.split()[0] for line in ip("netns", "list").splitlines() if line.strip()]


def link_names() -> list[str]:
    return [str(item["ifname"]) for item in json.loads(ip("-j", "link", "show") or "[]")]


def netns_pids(netns: str) -> list[int]:
    """Processes whose network namespace is ``netns`` (empty when it is gone)."""
    out = ip("netns", "pids", netns, check=False)
    return [int(pid) for pid in out.split() if pid.isdigit()]


def kill_netns_processes(netns: str, timeout: float = 10.0) -> None:
    """SIGKILL every process in ``netns`` until none is left (they may fork meanwhile)."""
    deadline = time.monotonic() + timeout
    while True:
        pids = netns_pids(netns)
        if not pids:
            return
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        if time.monotonic() > deadline:
            raise RuntimeError(f"processes {pids} of {netns} survive SIGKILL")
        time.sleep(0.05)


def delete_netns(netns: str) -> None:
    """Kill its processes, then delete the namespace (its veth pair goes with it)."""
    if netns in netns_names():
        kill_netns_processes(netns)
        ip("netns", "delete", netns, check=False)


def delete_link(name: str) -> None:
    if name in link_names():
        ip("link", "delete", name, check=False)


# --- ownership ---------------------------------------------------------------------


def _start_time(pid: int) -> str | None:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return stat.rsplit(")", 1)[1].split()[19]  # field 22: start time in clock ticks


def write_owner(state_dir: Path) -> None:
    pid = os.getpid()
    (state_dir / "owner").write_text(f"{pid} {_start_time(pid)}\n")


def owner_alive(cloud_id: str) -> bool:
    """Whether the process that made cloud ``cloud_id`` still runs."""
    try:
        pid_text, start = (STATE_ROOT / cloud_id / "owner").read_text().split()
    except (OSError, ValueError):
        return False
    return _start_time(int(pid_text)) == start


def cleanup_stale() -> list[str]:
    """Remove what crashed earlier runs left (their owner is dead); return what went.

    Safe while other test processes run clouds of their own: theirs have a live owner.
    """
    removed: list[str] = []
    for netns in netns_names():
        match = _CLOUD_ID.match(netns)
        if _OURS_NS.match(netns) and match and not owner_alive(match.group(1)):
            delete_netns(netns)
            removed.append(f"netns {netns}")
    for link in link_names():
        match = _CLOUD_ID.match(link)
        if _OURS_LINK.match(link) and match and not owner_alive(match.group(1)):
            delete_link(link)
            removed.append(f"link {link}")
    if STATE_ROOT.is_dir():
        for entry in STATE_ROOT.iterdir():
            if _CLOUD_ID.fullmatch(entry.name) and not owner_alive(entry.name):
                shutil.rmtree(entry, ignore_errors=True)
                removed.append(f"state {entry}")
    for item in removed:
        log.warning("test cloud: removed stale %s", item)
    return removed


def take_machine_lock(timeout: float) -> IO[str]:
    """Hold the machine-wide test-cloud lock (released when the file closes, or when the
    process dies): clouds share their subnets, so test runs on one machine take turns."""
    STATE_ROOT.mkdir(parents=True, exist_ok=True)
    handle = open(STATE_ROOT / ".lock", "a+")  # noqa: SIM115 - held for the cloud's life
    deadline = time.monotonic() + timeout
    while True:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            if time.monotonic() > deadline:
                handle.close()
                raise TimeoutError(
                    f"another test cloud held {STATE_ROOT / '.lock'} for {timeout:.0f} s"
                ) from None
            time.sleep(0.2)
            continue
        handle.seek(0)
        handle.truncate()
        handle.write(f"{os.getpid()}\n")
        handle.flush()
        return handle


# --- checks ------------------------------------------------------------------------


def overlapping_routes(subnets: list[ipaddress.IPv4Network]) -> list[str]:
    """Routes of the root namespace's main table (besides the default) that a subnet of
    the cloud would overlap: taking them over could divert the machine's real traffic, and
    two clouds on one subnet would route each other's hosts."""
    routes = json.loads(ip("-j", "-4", "route", "show", "table", "main") or "[]")
    found = []
    for route in routes:
        dst = route.get("dst")
        if not dst or dst == "default":
            continue
        network = ipaddress.ip_network(dst, strict=False)
        for subnet in subnets:
            if network.overlaps(subnet):
                found.append(f"{dst} dev {route.get('dev')} overlaps {subnet}")
    return found


_unavailable: list[str | None] = []


def unavailable_reason() -> str | None:
    """Why a test cloud cannot run here (not root, a tool missing, no netns), or None.

    Probes once per process by creating and deleting a namespace.
    """
    if _unavailable:
        return _unavailable[0]
    reason: str | None = None
    if os.geteuid() != 0:
        reason = "the test cloud needs root (network and mount namespaces)"
    else:
        missing = [t for t in ("ip", "unshare", "nsenter", "setpriv") if not shutil.which(t)]
        if missing:
            reason = f"the test cloud needs {', '.join(missing)} on PATH"
        elif "overlay" not in Path("/proc/filesystems").read_text():
            reason = "the test cloud needs overlayfs (a private /root per host)"
        else:
            probe = f"{PREFIX}probe{uuid.uuid4().hex[:6]}"
            try:
                ip("netns", "add", probe)
                ip("netns", "delete", probe)
            except (IpError, OSError, subprocess.SubprocessError) as exc:
                reason = f"`ip netns` is unavailable: {exc}"
    _unavailable.append(reason)
    return reason
