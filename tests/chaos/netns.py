"""The test network: one network namespace per host, veth pairs to a bridge, iptables faults.

    with Network(["redis", "emu", "r1", "r2"]) as net:
        net.popen("r1", ["python", "-m", "eventd", ...])   # a process on host r1
        with net.inside("emu"):                            # sockets made here live on emu
            emulator.start()
        net.block("r1", net.address("redis"))              # r1 hears nothing from Redis

The bridge sits in a namespace of its own (the switch), so nothing is added to the machine's
own network: every address (10.250.0.0/24) and every iptables rule is inside a namespace this
helper made, and `close()` deletes them all (also at interpreter exit, after a failure).
A thread that enters a namespace (`inside`) makes its sockets there, and the threads it
starts inherit it: the emulator and the receiver run in the test's process but listen on
their own hosts. Faults are iptables rules on a host's `eth0` (never on its loopback, where
the test reads `/metrics`): packets are dropped, no RST is sent, as on a real partition.
"""

from __future__ import annotations

import atexit
import contextlib
import ctypes
import os
import secrets
import shutil
import subprocess
import threading
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, TypeVar

T = TypeVar("T")

CLONE_NEWNET = 0x40000000
SUBNET = "10.250.0"
FIRST_HOST = 10
_libc = ctypes.CDLL(None, use_errno=True)
_alive: set[Network] = set()
_alive_lock = threading.Lock()


class Unavailable(RuntimeError):
    """Network namespaces cannot be made here (not root, no iproute2/iptables, no netns)."""


@dataclass
class Rule:
    """One iptables rule on one host, kept so that it can be deleted again."""

    host: str
    chain: str
    spec: tuple[str, ...]


@dataclass
class Host:
    """A namespace on the bridge: its name, its address, its end of the veth pair."""

    role: str
    netns: str
    address: str
    rules: list[Rule] = field(default_factory=list)


def _run(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    done = subprocess.run(list(args), capture_output=True, text=True, timeout=30)
    if check and done.returncode != 0:
        raise Unavailable(f"{' '.join(args)}: {done.stderr.strip() or done.returncode}")
    return done


def probe() -> None:
    """Raise Unavailable with the reason when namespaces cannot be made on this machine."""
    if os.geteuid() != 0:
        raise Unavailable("network namespaces need root (ip netns add)")
    for tool, package in (("ip", "iproute2"), ("iptables", "iptables")):
        if shutil.which(tool) is None:
            raise Unavailable(f"{tool} not found; install with: apt-get install {package}")


def enter(netns: str) -> None:
    """Move the calling thread into `netns` (its new sockets are made there)."""
    fd = os.open(f"/run/netns/{netns}", os.O_RDONLY)
    try:
        if _libc.setns(fd, CLONE_NEWNET) != 0:
            errno = ctypes.get_errno()
            raise OSError(errno, f"setns into {netns}: {os.strerror(errno)}")
    finally:
        os.close(fd)


_where = threading.local()


def _settle_in(netns: str) -> None:
    """A caller thread's start: enter the host for good, and remember which it is."""
    enter(netns)
    _where.netns = netns


class Network:
    """Namespaces for `roles` on one bridge; a context manager that always removes them."""

    def __init__(self, roles: Sequence[str], prefix: str | None = None) -> None:
        self.prefix = prefix or f"ev{secrets.token_hex(3)}"
        self.switch = f"{self.prefix}-sw"
        self.hosts: dict[str, Host] = {}
        self._roles = list(dict.fromkeys(roles))
        self._made: list[str] = []
        self._lock = threading.Lock()
        self._callers: dict[str, ThreadPoolExecutor] = {}

    # -- lifecycle ------------------------------------------------------------------------------
    def __enter__(self) -> Network:
        return self.open()

    def __exit__(self, *exc: object) -> None:
        self.close()

    def open(self) -> Network:
        """Make the switch and every host; Unavailable (and nothing left behind) if it fails."""
        probe()
        with _alive_lock:
            _alive.add(self)
        try:
            self._netns(self.switch)
            _run("ip", "-n", self.switch, "link", "add", "br0", "type", "bridge")
            _run("ip", "-n", self.switch, "link", "set", "br0", "up")
            for index, role in enumerate(self._roles):
                self.add_host(role, index)
        except BaseException:
            self.close()
            raise
        return self

    def _netns(self, name: str) -> None:
        _run("ip", "netns", "add", name)
        self._made.append(name)
        _run("ip", "-n", name, "link", "set", "lo", "up")

    def add_host(self, role: str, index: int | None = None) -> Host:
        """One more host on the bridge (addresses are given in order of creation)."""
        with self._lock:
            if role in self.hosts:
                return self.hosts[role]
            number = len(self.hosts) if index is None else index
            netns = f"{self.prefix}-{role}"
            self._netns(netns)
            port = f"p{number}"
            _run("ip", "link", "add", "eth0", "netns", netns, "type", "veth",
                 "peer", "name", port, "netns", self.switch)
            _run("ip", "-n", self.switch, "link", "set", port, "master", "br0")
            _run("ip", "-n", self.switch, "link", "set", port, "up")
            address = f"{SUBNET}.{FIRST_HOST + number}"
            _run("ip", "-n", netns, "addr", "add", f"{address}/24", "dev", "eth0")
            _run("ip", "-n", netns, "link", "set", "eth0", "up")
            host = Host(role, netns, address)
            self.hosts[role] = host
            return host

    def close(self) -> None:
        """Delete every namespace made (their veths, addresses and rules go with them)."""
        with self._lock:
            callers, self._callers = self._callers, {}
        for caller in callers.values():
            caller.shutdown(wait=True, cancel_futures=True)
        for name in reversed(self._made):
            _run("ip", "netns", "del", name, check=False)
        self._made.clear()
        with _alive_lock:
            _alive.discard(self)

    # -- using the hosts ------------------------------------------------------------------------
    def address(self, role: str) -> str:
        """The host's address on the bridge."""
        return self.hosts[role].address

    def exec_prefix(self, role: str) -> list[str]:
        """The command prefix that runs a program on `role`."""
        return ["ip", "netns", "exec", self.hosts[role].netns]

    def popen(self, role: str, args: Sequence[str], **kwargs: Any) -> subprocess.Popen[bytes]:
        """Start a process on `role` (`ip netns exec` execs it: the pid is the program's)."""
        return subprocess.Popen([*self.exec_prefix(role), *args], **kwargs)

    @contextlib.contextmanager
    def inside(self, role: str) -> Iterator[None]:
        """Run the block on `role`: sockets (and threads) made in it belong to that host."""
        own = os.open("/proc/thread-self/ns/net", os.O_RDONLY)
        try:
            enter(self.hosts[role].netns)
            try:
                yield
            finally:
                if _libc.setns(own, CLONE_NEWNET) != 0:
                    raise OSError(ctypes.get_errno(), "setns back to the test's namespace")
        finally:
            os.close(own)

    def call(self, role: str, fn: Callable[..., T], *args: Any, timeout: float = 60.0) -> T:
        """`fn(*args)` on a thread that lives on `role` (one per host, made on first use), so
        its connections are that host's: the test reads Redis from an observer host, a
        replica's /metrics on the replica's own loopback."""
        netns = self.hosts[role].netns
        if getattr(_where, "netns", None) == netns:  # called from that host already
            return fn(*args)
        with self._lock:
            caller = self._callers.get(role)
            if caller is None:
                caller = ThreadPoolExecutor(1, thread_name_prefix=f"on-{role}",
                                            initializer=_settle_in, initargs=(netns,))
                self._callers[role] = caller
        return caller.submit(fn, *args).result(timeout)

    # -- faults ---------------------------------------------------------------------------------
    def block(self, role: str, peers: Sequence[str], *, inbound: bool = True,
              outbound: bool = True, port: int | None = None) -> list[Rule]:
        """Drop what `role` exchanges with `peers` (addresses) on eth0, silently: `inbound`
        what arrives from them, `outbound` what it sends them; `port`: only that TCP port of
        theirs (a host's stream port but not its REST port)."""
        added: list[Rule] = []
        for peer in peers:
            if outbound:
                match = ("-p", "tcp", "--dport", str(port)) if port else ()
                added.append(self._rule(role, "OUTPUT", ("-o", "eth0", "-d", peer, *match)))
            if inbound:
                match = ("-p", "tcp", "--sport", str(port)) if port else ()
                added.append(self._rule(role, "INPUT", ("-i", "eth0", "-s", peer, *match)))
        return added

    def isolate(self, role: str) -> list[Rule]:
        """Drop everything on the host's eth0, both ways (its loopback still works)."""
        return [self._rule(role, "OUTPUT", ("-o", "eth0")),
                self._rule(role, "INPUT", ("-i", "eth0"))]

    def _rule(self, role: str, chain: str, match: tuple[str, ...]) -> Rule:
        rule = Rule(role, chain, (*match, "-j", "DROP"))
        _run(*self.exec_prefix(role), "iptables", "-w", "-A", chain, *rule.spec)
        self.hosts[role].rules.append(rule)
        return rule

    def unblock(self, rules: Sequence[Rule]) -> None:
        """Delete these rules (a heal)."""
        for rule in rules:
            _run(*self.exec_prefix(rule.host), "iptables", "-w", "-D", rule.chain, *rule.spec,
                 check=False)
            with contextlib.suppress(ValueError):
                self.hosts[rule.host].rules.remove(rule)

    def heal(self) -> None:
        """Delete every rule on every host."""
        for host in self.hosts.values():
            self.unblock(list(host.rules))


@atexit.register
def _remove_leftovers() -> None:
    """A test that died between open() and close() still leaves no namespace behind."""
    with _alive_lock:
        networks = list(_alive)
    for network in networks:
        network.close()
