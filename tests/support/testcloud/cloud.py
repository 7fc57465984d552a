"""``TestCloud`` and ``Host``: cloud instances booted as hosts on one bridge.

See the package docstring for the API. The parts of one host, and why:

- network namespace ``<id>-<n>``: a veth whose outer end is on the cloud's bridge and
  whose inner end is ``eth0`` with the instance's private IP, plus a default route via
  the bridge's address (the root namespace forwards nothing, ``ip_forward`` stays as it
  is, so traffic for anywhere else dies there); its ``lo`` holds 169.254.169.254, where
  the metadata service listens;
- ``unshare --mount --uts --pid --fork --kill-child --mount-proc``: its own mounts (tmpfs
  ``/tmp`` and ``/dev/shm``, an overlay over ``/root`` so ``~/.ray`` or ``~/.cache``
  writes stay in the host, an ``/etc/hosts`` naming ``metadata.google.internal``), its
  own host name, and its own PID namespace whose PID 1 (``hostinit.py``) runs the user
  data and keeps what it starts alive. Killing that PID 1 ends every process of the host
  at once, so a halt cannot miss a forked daemon;
- started through ``setpriv --pdeathsig KILL`` from one long-lived thread: if the test
  process dies without cleaning up, its hosts die with it (``cleanup_stale`` later
  removes the namespaces and links).
"""

from __future__ import annotations

import atexit
import base64
import contextlib
import ipaddress
import logging
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import IO, Any

from tests.support.testcloud import network
from tests.support.testcloud.metadata import (
    METADATA_ADDRESS,
    Ec2Metadata,
    GceMetadata,
    GceSource,
    Metadata,
    MetadataServer,
    ec2_client,
    zone_of,
)

log = logging.getLogger(__name__)

DEFAULT_SUBNETS = ("10.0.0.0/8", "172.31.0.0/16")
STANDARD_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
HOSTINIT = Path(__file__).with_name("hostinit.py")
_TOOLS = {name: shutil.which(name) or f"/usr/bin/{name}" for name in ("setpriv", "unshare")}
_SH = shutil.which("sh") or "/bin/sh"
_NSENTER = shutil.which("nsenter") or "/usr/bin/nsenter"

# Runs as the host's first process inside its new namespaces: private mounts, host name,
# then PID 1. Absolute paths: the test's PATH for the host may lack the system dirs.
_SETUP = """set -eu
d=$1 name=$2 python=$3 init=$4
shift 4
# A private /tmp, but what the image needs from under the machine's /tmp (the
# interpreter, the checkout) stays visible: each argument left is such a path.
{mount} --bind /tmp "$d/machine-tmp"
{mount} -t tmpfs -o mode=1777 tmpfs /tmp
for kept in "$@"; do
  {mkdir} -p "/tmp/$kept"
  {mount} --bind "$d/machine-tmp/$kept" "/tmp/$kept"
done
{mount} -t tmpfs -o mode=1777 tmpfs /dev/shm
{mount} -t tmpfs -o mode=0700 tmpfs "$d/rw"
{mkdir} "$d/rw/upper" "$d/rw/work"
{mount} -t overlay overlay -o "lowerdir=/root,upperdir=$d/rw/upper,workdir=$d/rw/work" /root
{mount} --bind "$d/hosts" /etc/hosts
{hostname} "$name"
exec "$python" -I "$init" "$d"
""".format(**{t: shutil.which(t) or f"/bin/{t}" for t in ("mount", "mkdir", "hostname")})


def kept_under_tmp() -> list[str]:
    """Paths below /tmp a host must still see: this interpreter's prefix and real binary,
    and the checkout (``hostinit.py``); a CI checkout may well live under /tmp."""
    needed = {
        Path(sys.prefix).resolve(),
        Path(sys.executable).resolve().parent,
        HOSTINIT.resolve().parents[3],
    }
    tmp = Path("/tmp")
    return sorted(str(p.relative_to(tmp)) for p in needed if p.is_relative_to(tmp))


def default_env(**extra: str) -> dict[str, str]:
    """What a machine image gives the boot script: the test interpreter's bin first on
    ``PATH`` (its ``python3``, ``ray``), ``HOME=/root``, a UTF-8 locale; plus ``extra``."""
    bin_dir = str(Path(sys.executable).parent)
    return {"PATH": f"{bin_dir}:{STANDARD_PATH}", "HOME": "/root", "LANG": "C.UTF-8", **extra}


def wait_for(predicate: Callable[[], Any], timeout: float, what: str, interval: float = 0.1) -> Any:
    """Poll ``predicate`` until it returns something truthy (returned); exceptions count as
    not yet. Raises ``TimeoutError`` naming ``what`` and the last exception."""
    deadline = time.monotonic() + timeout
    last: BaseException | None = None
    while True:
        try:
            value = predicate()
            if value:
                return value
        except Exception as exc:
            last = exc
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {timeout:.0f} s waiting for {what}") from last
        time.sleep(interval)


class Host:
    """One booted instance: its namespaces, metadata service and processes."""

    def __init__(
        self,
        cloud: TestCloud,
        index: int,
        instance_id: str,
        private_ip: str,
        metadata: Metadata,
        log_path: Path,
    ) -> None:
        self.cloud, self.index = cloud, index
        self.instance_id, self.private_ip, self.metadata = instance_id, private_ip, metadata
        self.netns = f"{cloud.id}-{index}"
        self.veth = f"{cloud.id}v{index}"
        self.dir = cloud.state_dir / str(index)
        self.log_path = log_path
        self.env: dict[str, str] = {}
        self._server: MetadataServer | None = None
        self._process: subprocess.Popen[bytes] | None = None
        self._halting = False
        self._halted = threading.Event()
        self._lock = threading.Lock()

    def __repr__(self) -> str:
        state = "halted" if self.halted else "up"
        return f"<Host {self.instance_id} {self.private_ip} {self.netns} {state}>"

    @property
    def halted(self) -> bool:
        """True once ``halt`` has finished: no process, namespace or veth is left."""
        return self._halted.is_set()

    @property
    def exit_code(self) -> int | None:
        """The user data's exit status; None while it runs (or once the host is halted)."""
        try:
            return int((self.dir / "status").read_text())
        except (OSError, ValueError):
            return None

    def log(self) -> str:
        """The host's console so far: the user data's stdout and stderr."""
        try:
            return self.log_path.read_text(errors="replace")
        except OSError:
            return ""

    def pids(self) -> list[int]:
        """Processes of this host, as the root namespace numbers them."""
        return network.netns_pids(self.netns)

    def _init_pid(self) -> int:
        if self._process is None:
            raise RuntimeError(f"{self} has no running init")
        children = Path(f"/proc/{self._process.pid}/task/{self._process.pid}/children")
        pids = children.read_text().split()
        if not pids:
            raise RuntimeError(f"{self} has no running init")
        return int(pids[0])

    def run(
        self, argv: Sequence[str], timeout: float = 30, check: bool = True
    ) -> subprocess.CompletedProcess[str]:
        """Run ``argv`` inside the host (its network, mounts, host name and PIDs) with the
        host's environment, as ``ssh node CMD`` would; returns the completed process."""
        enter = ["--target", str(self._init_pid()), "--mount", "--uts", "--net", "--pid"]
        return subprocess.run(
            [_NSENTER, *enter, "--wd=/", "--", *argv],
            env=self.env,
            capture_output=True,
            text=True,
            timeout=timeout,
            check=check,
        )

    def _start(self, user_data: str, env: Mapping[str, str]) -> None:
        # The namespace and its links; any failure is cleaned up by halt().
        self.env = dict(env)
        subnet = self.cloud.subnet_of(self.private_ip)
        gateway = self.cloud.gateways[subnet]
        network.ip("netns", "add", self.netns)
        network.ip(
            "link", "add", self.veth, "type", "veth", "peer", "name", "eth0", "netns", self.netns
        )
        network.ip("link", "set", self.veth, "master", self.cloud.bridge, "up")
        inside = ("-n", self.netns)
        network.ip(*inside, "addr", "add", f"{self.private_ip}/{subnet.prefixlen}", "dev", "eth0")
        network.ip(*inside, "link", "set", "eth0", "up")
        network.ip(*inside, "link", "set", "lo", "up")
        network.ip(*inside, "addr", "add", f"{METADATA_ADDRESS}/32", "dev", "lo")
        network.ip(*inside, "route", "add", "default", "via", str(gateway))
        self._server = MetadataServer(self.netns, self.metadata)

        hostname = self.metadata.hostname(self.private_ip)
        self.dir.mkdir(parents=True)
        (self.dir / "rw").mkdir()
        (self.dir / "machine-tmp").mkdir()
        script = self.dir / "user-data"
        script.write_text(user_data)
        script.chmod(0o700)
        (self.dir / "hosts").write_text(
            "127.0.0.1\tlocalhost\n"
            f"{self.private_ip}\t{hostname}\n"
            f"{METADATA_ADDRESS}\tmetadata.google.internal metadata\n"
        )
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        argv = [
            _TOOLS["setpriv"],
            "--pdeathsig",
            "KILL",
            "--",
            network.IP,
            "netns",
            "exec",
            self.netns,
            _TOOLS["unshare"],
            "--mount",
            "--uts",
            "--pid",
            "--fork",
            "--kill-child",
            "--mount-proc",
            "--propagation",
            "private",
            "--",
            _SH,
            "-c",
            _SETUP,
            "testcloud-host",
            str(self.dir),
            hostname,
            sys.executable,
            str(HOSTINIT),
            *kept_under_tmp(),
        ]
        self._process = self.cloud._spawn(argv, self.log_path, env)
        process = self._process
        wait_for(
            lambda: (self.dir / "up").exists() or process.poll() is not None, 15, f"{self} to start"
        )
        if process.poll() is not None:
            raise RuntimeError(f"{self} failed to start:\n{self.log()}")

    def halt(self) -> None:
        """Power the host off: kill every process in it, drop its metadata service,
        namespace, veth and state. Idempotent; the log file stays."""
        with self._lock:
            halting, self._halting = self._halting, True
        if halting:  # another thread halts it: return once that is done
            self._halted.wait(timeout=60)
            return
        try:
            if self._process is not None:
                # SIGKILL to PID 1 ends every process of its PID namespace, and unshare (our
                # child) reaps it, so no zombie is left to the machine's init. Killing
                # unshare instead would do too (--kill-child), but orphan PID 1.
                with contextlib.suppress(OSError, RuntimeError, ValueError):
                    os.kill(self._init_pid(), signal.SIGKILL)
                try:
                    self._process.wait(timeout=10)
                except subprocess.TimeoutExpired:
                    self._process.kill()
                    self._process.wait(timeout=10)
            network.kill_netns_processes(self.netns)  # anything entered from outside
            if self._server is not None:
                self._server.close()
            network.delete_netns(self.netns)
            network.delete_link(self.veth)
            shutil.rmtree(self.dir, ignore_errors=True)
            self.cloud._forget(self)
        finally:
            self._halted.set()


class TestCloud:
    """A bridge of hosts in the root namespace, one per booted cloud instance."""

    __test__ = False  # a class named Test*: not a pytest test class

    def __init__(
        self,
        subnets: Sequence[str] = DEFAULT_SUBNETS,
        env: Mapping[str, str] | None = None,
        log_dir: Path | None = None,
        lock_timeout: float = 300,
    ) -> None:
        self.lock_timeout = lock_timeout
        self.subnets = sorted(
            (ipaddress.IPv4Network(s) for s in subnets), key=lambda n: -n.prefixlen
        )
        # The bridge's address in each subnet: the last usable one, which clouds never
        # hand out (moto's random 10.x addresses stop at .254 in every octet).
        self.gateways = {net: net.broadcast_address - 1 for net in self.subnets}
        self.env: dict[str, str] = dict(env if env is not None else default_env())
        self.id = network.new_cloud_id()
        self.bridge = f"{self.id}br"
        self.state_dir = network.STATE_ROOT / self.id
        self.log_dir = log_dir or self.state_dir / "logs"
        self._hosts: dict[str, Host] = {}
        self._seen: set[str] = set()  # instance ids booted once: never booted again
        self._next = 0
        self._lock = threading.RLock()
        self._stop = threading.Event()
        self._watchers: list[threading.Thread] = []
        self._spawner: ThreadPoolExecutor | None = None
        self._machine_lock: IO[str] | None = None
        self._started = False
        self._closed = False
        self.errors: list[str] = []  # what the watchers failed at, oldest first

    # --- lifecycle -------------------------------------------------------------------

    def __enter__(self) -> TestCloud:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def start(self) -> None:
        """Wait for the machine's other test cloud (if any) to finish, remove what crashed
        runs left, then create the bridge (a gateway address per subnet) and the state."""
        if self._started:
            return
        self._machine_lock = network.take_machine_lock(self.lock_timeout)
        network.cleanup_stale()  # what a crashed run left would overlap our subnets
        overlaps = network.overlapping_routes(self.subnets)
        if overlaps:
            self._machine_lock.close()
            raise RuntimeError(
                "test cloud subnets overlap routes of this machine (pick others, or remove "
                "what a crashed run left with cleanup_stale()): " + "; ".join(overlaps)
            )
        self._started = True
        atexit.register(self.close)
        try:
            self.state_dir.mkdir(parents=True)
            network.write_owner(self.state_dir)
            network.ip("link", "add", self.bridge, "type", "bridge")
            for net, gateway in self.gateways.items():
                network.ip("addr", "add", f"{gateway}/{net.prefixlen}", "dev", self.bridge)
            network.ip("link", "set", self.bridge, "up")
            # One long-lived thread starts every host: --pdeathsig fires when the thread
            # that forked the process ends, so that thread must live as long as the cloud.
            self._spawner = ThreadPoolExecutor(1, thread_name_prefix=f"{self.id}-spawn")
        except BaseException:
            self.close()
            raise

    def close(self) -> None:
        """Halt every host, stop the watchers, remove the bridge and state. Idempotent."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
        self._stop.set()
        for watcher in self._watchers:
            watcher.join(timeout=15)
        problems: list[BaseException] = []
        for host in self.hosts:
            try:
                host.halt()
            except Exception as exc:
                problems.append(exc)
        if self._spawner is not None:
            self._spawner.shutdown(wait=True)
        if self._started:
            network.delete_link(self.bridge)
        shutil.rmtree(self.state_dir, ignore_errors=True)
        if self._machine_lock is not None:
            self._machine_lock.close()
        atexit.unregister(self.close)
        if problems:
            raise RuntimeError(f"test cloud {self.id}: halting hosts failed: {problems}")

    # --- hosts -------------------------------------------------------------------------

    @property
    def hosts(self) -> list[Host]:
        """Hosts up now, in boot order."""
        with self._lock:
            return list(self._hosts.values())

    def host(self, instance_id: str) -> Host:
        with self._lock:
            return self._hosts[instance_id]

    def wait_for_host(self, instance_id: str, timeout: float = 30) -> Host:
        """The host of ``instance_id`` once a watcher has booted it; a watcher error shows."""

        def booted() -> Host | None:
            if self.errors:
                raise RuntimeError("; ".join(self.errors))
            with self._lock:
                return self._hosts.get(instance_id)

        return wait_for(booted, timeout, f"instance {instance_id} to boot")

    def host_env(self, extra: Mapping[str, str] | None = None) -> dict[str, str]:
        return {**self.env, **(extra or {})}

    def subnet_of(self, private_ip: str) -> ipaddress.IPv4Network:
        address = ipaddress.IPv4Address(private_ip)
        for net in self.subnets:  # most specific first
            if address in net and address not in (net.network_address, self.gateways[net]):
                return net
        raise ValueError(f"{private_ip} is in none of the test cloud's subnets {self.subnets}")

    def boot(
        self,
        instance_id: str,
        private_ip: str,
        user_data: str | None,
        metadata: Metadata,
        env: Mapping[str, str] | None = None,
    ) -> Host:
        """Boot ``instance_id`` as a host at ``private_ip`` and run ``user_data`` in it
        unmodified, as root, with the cloud's ``env`` (plus ``env``)."""
        if not self._started or self._closed:
            raise RuntimeError("the test cloud is not running (use it as a context manager)")
        self.subnet_of(private_ip)
        with self._lock:
            if instance_id in self._hosts:
                raise ValueError(f"{instance_id} is already booted")
            if any(h.private_ip == private_ip for h in self._hosts.values()):
                raise ValueError(f"{private_ip} is already taken by another host")
            index, self._next = self._next, self._next + 1
            log_path = self.log_dir / f"{index}-{instance_id}.log"
            host = Host(self, index, instance_id, private_ip, metadata, log_path)
            self._hosts[instance_id] = host
            self._seen.add(instance_id)
        try:
            host._start(user_data or "", self.host_env(env))
        except BaseException:
            host.halt()
            raise
        log.info("test cloud: booted %r", host)
        return host

    def _forget(self, host: Host) -> None:
        with self._lock:
            if self._hosts.get(host.instance_id) is host:
                del self._hosts[host.instance_id]

    def _spawn(
        self, argv: list[str], log_path: Path, env: Mapping[str, str]
    ) -> subprocess.Popen[bytes]:
        assert self._spawner is not None

        def spawn() -> subprocess.Popen[bytes]:
            with open(log_path, "ab") as out:
                return subprocess.Popen(
                    argv,
                    stdin=subprocess.DEVNULL,
                    stdout=out,
                    stderr=subprocess.STDOUT,
                    env=dict(env),
                    cwd="/",
                )

        return self._spawner.submit(spawn).result()

    # --- watchers ------------------------------------------------------------------

    def watch_ec2(self, endpoint_url: str, region: str, interval: float = 0.25) -> None:
        """Boot each running instance of ``region`` once, with its ``PrivateIpAddress``
        and ``UserData``; halt the host of an instance that stops or terminates."""
        ec2 = ec2_client(endpoint_url, region)

        def poll() -> None:
            running: set[str] = set()
            for page in ec2.get_paginator("describe_instances").paginate():
                for reservation in page["Reservations"]:
                    for item in reservation["Instances"]:
                        if item["State"]["Name"] not in ("pending", "running"):
                            continue
                        instance_id = item["InstanceId"]
                        running.add(instance_id)
                        if item["State"]["Name"] != "running" or instance_id in self._seen:
                            continue
                        self._seen.add(instance_id)  # once, even if booting it fails
                        found = ec2.describe_instance_attribute(
                            InstanceId=instance_id, Attribute="userData"
                        )
                        encoded = (found.get("UserData") or {}).get("Value") or ""
                        self.boot(
                            instance_id,
                            item["PrivateIpAddress"],
                            base64.b64decode(encoded).decode() if encoded else None,
                            Ec2Metadata(endpoint_url, region, instance_id),
                        )
            self._halt_missing(
                running,
                lambda h: (
                    h.metadata.flavour == "ec2" and getattr(h.metadata, "region", None) == region
                ),
            )

        self._watch(f"ec2 {region}", poll, interval)

    def watch_gce(self, source: GceSource, interval: float = 0.25) -> None:
        """Boot each RUNNING instance of ``source`` once (``networkInterfaces[0].networkIP``,
        metadata ``startup-script``); halt the host of one that stops or is deleted.

        ``source``: the ``FakeGce`` itself (its state, read directly) or
        ``GceRest(endpoint, project)`` (through the API).
        """

        def poll() -> None:
            running: set[str] = set()
            for instance in source.instances():
                name = str(instance.get("name"))
                if instance.get("status") not in ("PROVISIONING", "STAGING", "RUNNING"):
                    continue
                running.add(name)
                if instance.get("status") != "RUNNING" or name in self._seen:
                    continue
                self._seen.add(name)
                items = {
                    str(item.get("key")): str(item.get("value", ""))
                    for item in (instance.get("metadata") or {}).get("items") or []
                }
                interfaces = instance.get("networkInterfaces") or [{}]
                self.boot(
                    name,
                    str(interfaces[0].get("networkIP")),
                    items.get("startup-script"),
                    GceMetadata(source, zone_of(instance), name),
                )
            self._halt_missing(
                running,
                lambda h: (
                    h.metadata.flavour == "gce" and getattr(h.metadata, "source", None) is source
                ),
            )

        self._watch("gce", poll, interval)

    def _halt_missing(self, running: set[str], mine: Callable[[Host], bool]) -> None:
        for host in self.hosts:
            if mine(host) and host.instance_id not in running:
                log.info("test cloud: instance %s is gone, halting its host", host.instance_id)
                host.halt()

    def _watch(self, what: str, poll: Callable[[], None], interval: float) -> None:
        if not self._started or self._closed:
            raise RuntimeError("the test cloud is not running (use it as a context manager)")

        def loop() -> None:
            while not self._stop.is_set():
                try:
                    poll()
                except Exception as exc:
                    if self._stop.is_set():
                        return
                    message = f"watch {what}: {type(exc).__name__}: {exc}"
                    log.warning("test cloud: %s", message)
                    if message not in self.errors:
                        self.errors.append(message)
                self._stop.wait(interval)

        thread = threading.Thread(target=loop, name=f"{self.id}-watch-{what}", daemon=True)
        self._watchers.append(thread)
        thread.start()
