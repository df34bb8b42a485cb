"""Find the listening process that serves the GPU processes NVML reports."""

from __future__ import annotations

import ipaddress
import logging
import os
import re
import sys
from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Final

from gpumeter.processes import ProcessInfo, ProcessResolver

logger = logging.getLogger(__name__)

__all__ = [
    "EPHEMERAL_PORTS",
    "RENDEZVOUS_PORTS",
    "Listener",
    "ServerCandidate",
    "ServerFinder",
    "decode_address",
    "parse_fib_trie",
    "parse_if_inet6",
    "parse_listening_sockets",
]

EPHEMERAL_PORTS: Final = range(32768, 61000)
"""Linux's default ``ip_local_port_range``: what a bind to port 0 gets."""

RENDEZVOUS_PORTS: Final = frozenset({29400, 29500})
"""torchrun's default rendezvous port and torch.distributed's default MASTER_PORT."""

# Generations above a GPU process where its server may be: vLLM's API server is the
# parent of its EngineCore, which is the parent of its GPU workers; SGLang's data-
# parallel controller sits between its HTTP process and the schedulers.
_ANCESTOR_REACH: Final = 2

# How deep below the GPU process's parent the search for a sibling server goes
# (1 = the parent's other children, 2 = their children too).
_RELATIVE_DEPTH: Final = 2

# Most processes one search for a sibling server looks at.
_RELATIVE_LIMIT: Final = 256

# TCP_LISTEN, as the "st" column of /proc/net/tcp prints it.
_TCP_LISTEN: Final = 0x0A

# One socket line of /proc/PID/net/tcp or tcp6: slot, local "ADDR:PORT" (8 hex digits
# for IPv4, 32 for IPv6), remote address, state, tx:rx queues, timer, retransmits,
# uid, timeout, then the socket's inode.
_TCP_LINE_RE: Final = re.compile(
    r"^\s*\d+:\s+(?P<address>[0-9A-Fa-f]{8}|[0-9A-Fa-f]{32}):(?P<port>[0-9A-Fa-f]{4})"
    r"\s+\S+\s+(?P<state>[0-9A-Fa-f]{2})\s+\S+\s+\S+\s+\S+\s+\d+\s+\d+"
    r"\s+(?P<inode>\d+)(?:\s|$)"
)

# A leaf of /proc/PID/net/fib_trie, one IPv4 address: "     |-- 10.244.1.17".
_FIB_LEAF_RE: Final = re.compile(r"^\s*\|--\s+(?P<address>\d+\.\d+\.\d+\.\d+)\s*$")

# A route under the leaf above it: "        /32 host LOCAL" (prefix length, scope,
# type); a /32 of type LOCAL is an address of one of the namespace's interfaces.
_FIB_ROUTE_RE: Final = re.compile(r"^\s*/(?P<length>\d+)\s+\S+\s+(?P<type>[A-Z]+)\b")

# One line of /proc/PID/net/if_inet6: address (32 hex digits, network order),
# interface index, prefix length, scope and flags (hex), interface name.
_IF_INET6_RE: Final = re.compile(
    r"^(?P<address>[0-9a-fA-F]{32})\s+[0-9a-fA-F]+\s+[0-9a-fA-F]+"
    r"\s+(?P<scope>[0-9a-fA-F]+)\s+(?P<flags>[0-9a-fA-F]+)\s+\S+\s*$"
)

# An fd link to a socket: "socket:[123456]"; the number is the socket's inode.
_SOCKET_LINK_RE: Final = re.compile(r"^socket:\[(\d+)\]$")

# IPv6 address scope of if_inet6 for a global address (IFA_SCOPE_UNIVERSE).
_SCOPE_GLOBAL: Final = 0x00

# if_inet6 flags of an address that cannot be used yet or at all
# (IFA_F_DADFAILED | IFA_F_TENTATIVE).
_UNUSABLE_FLAGS: Final = 0x08 | 0x40

_WILDCARDS: Final = frozenset({"0.0.0.0", "::"})


@dataclass(frozen=True, slots=True)
class Listener:
    """A listening TCP socket a process holds.

    Attributes:
        pid: host PID of the process holding the socket.
        host: the bound address as text: ``"0.0.0.0"`` or ``"::"`` for a wildcard,
            ``"127.0.0.1"``, ``"10.1.2.3"``, ``"fd00::12"``. An IPv4-mapped IPv6
            address (``::ffff:10.1.2.3``) is written as its IPv4 address.
        port: the bound port.
    """

    pid: int
    host: str
    port: int


@dataclass(frozen=True, slots=True)
class ServerCandidate:
    """The listening process that owns some GPU processes, and how to reach it.

    Attributes:
        server_pid: host PID of the listening process.
        gpu_pids: the GPU processes attributed to it.
        endpoints: ``(host, port)`` pairs to try from the daemon, best first. IPv6
            hosts are bare addresses (``"::1"``); put brackets around them in a URL.
            Empty when the server listens only on loopback in another network
            namespace, where the daemon cannot reach it.
        command: the server's short command (``/proc/PID/comm``), for logs.
        same_netns: whether the server shares the daemon's network namespace.
    """

    server_pid: int
    gpu_pids: frozenset[int]
    endpoints: tuple[tuple[str, int], ...]
    command: str
    same_netns: bool


def decode_address(text: str) -> str:
    """Decode an address as /proc/net/tcp and tcp6 print it.

    The kernel prints each 32-bit word of the address as a host-order integer in
    hex, so on a little-endian machine ``0100007F`` is 127.0.0.1.

    Args:
        text: 8 hex digits (IPv4) or 32 (IPv6).

    Returns:
        The address as text; an IPv4-mapped IPv6 address as its IPv4 address.

    Raises:
        ValueError: the text is not 8 or 32 hex digits.
    """
    if len(text) not in (8, 32):
        raise ValueError(f"not a /proc/net/tcp address: {text!r}")
    raw = bytes.fromhex(text)
    if sys.byteorder == "little":
        raw = b"".join(raw[i : i + 4][::-1] for i in range(0, len(raw), 4))
    if len(raw) == 4:
        return str(ipaddress.IPv4Address(raw))
    address = ipaddress.IPv6Address(raw)
    mapped = address.ipv4_mapped
    return str(mapped) if mapped is not None else address.compressed


def parse_listening_sockets(text: str) -> dict[int, tuple[str, int]]:
    """Read the listening sockets of a /proc/PID/net/tcp or tcp6 file.

    Args:
        text: the file's content, header included.

    Returns:
        Each listening socket's inode mapped to its bound ``(host, port)``; hosts as
        `decode_address` writes them. Lines that do not parse are skipped.
    """
    listening: dict[int, tuple[str, int]] = {}
    for line in text.splitlines():
        match = _TCP_LINE_RE.match(line)
        if match is None or int(match["state"], 16) != _TCP_LISTEN:
            continue
        inode = int(match["inode"])
        if inode == 0:
            continue
        listening[inode] = (decode_address(match["address"]), int(match["port"], 16))
    return listening


def parse_fib_trie(text: str) -> list[str]:
    """List a network namespace's own IPv4 addresses from /proc/PID/net/fib_trie.

    An address is one whose leaf carries a ``/32 ... LOCAL`` route. Loopback
    addresses (127.0.0.0/8) are left out.

    Args:
        text: the file's content.

    Returns:
        The addresses in the order the file first lists them, without repeats.
    """
    found: list[str] = []
    leaf: str | None = None
    for line in text.splitlines():
        leaf_match = _FIB_LEAF_RE.match(line)
        if leaf_match is not None:
            leaf = leaf_match["address"]
            continue
        route = _FIB_ROUTE_RE.match(line)
        if route is None:
            # A table header or an inner node: the leaf above no longer applies.
            leaf = None
            continue
        if leaf is None or route["length"] != "32" or route["type"] != "LOCAL":
            continue
        if not ipaddress.IPv4Address(leaf).is_loopback and leaf not in found:
            found.append(leaf)
    return found


def parse_if_inet6(text: str) -> list[str]:
    """List a network namespace's global IPv6 addresses from /proc/PID/net/if_inet6.

    Loopback, link-local and other non-global addresses are left out, and so are
    addresses still tentative or that failed duplicate address detection.

    Args:
        text: the file's content.

    Returns:
        The addresses, compressed (``"fd00:10:244:1::12"``), in file order.
    """
    found: list[str] = []
    for line in text.splitlines():
        match = _IF_INET6_RE.match(line)
        if match is None:
            continue
        if int(match["scope"], 16) != _SCOPE_GLOBAL:
            continue
        if int(match["flags"], 16) & _UNUSABLE_FLAGS:
            continue
        address = ipaddress.IPv6Address(bytes.fromhex(match["address"])).compressed
        if address not in found:
            found.append(address)
    return found


def _read_text(path: Path) -> str:
    """Read a /proc file as text; raises OSError when it cannot be read."""
    return path.read_bytes().decode("utf-8", errors="replace")


def _read_link(path: Path) -> str | None:
    """Read a symbolic link; None when it is gone or unreadable."""
    try:
        return os.readlink(path)
    except OSError:
        return None


def _no_user_name(_uid: int) -> str | None:
    """Name no user: the process scan needs parents, not user names."""
    return None


def _is_peer_port(port: int) -> bool:
    """Whether a port is more likely a distributed job's than an HTTP server's.

    Ports a bind to port 0 gets (a torch TCPStore on a free port, NCCL's bootstrap,
    ZMQ) and torch's default rendezvous ports are; ports an operator chose are not.
    """
    return port in EPHEMERAL_PORTS or port in RENDEZVOUS_PORTS


def _all_peer_ports(listeners: list[Listener]) -> bool:
    """Whether every port a process listens on is a peer port."""
    return all(_is_peer_port(listener.port) for listener in listeners)


def _is_loopback(host: str) -> bool:
    """Whether a bound address is a loopback address."""
    return ipaddress.ip_address(host).is_loopback


def _listener_order(listener: Listener) -> tuple[bool, bool, int, bool, str]:
    """Sort key of a server's listeners, most likely HTTP first.

    Peer ports (see `_is_peer_port`) last, sockets bound to a wildcard or loopback
    before those bound to one address (collective-communication libraries bind to
    a network card's), then by port, IPv4 before IPv6.
    """
    specific = listener.host not in _WILDCARDS and not _is_loopback(listener.host)
    return (
        _is_peer_port(listener.port),
        specific,
        listener.port,
        ":" in listener.host,
        listener.host,
    )


class _Pass:
    """What one `ServerFinder.find` call has read, so nothing is read twice."""

    def __init__(self, finder: ServerFinder) -> None:
        self.finder = finder
        self.infos: dict[int, ProcessInfo | None] = {}
        self.inodes: dict[int, frozenset[int]] = {}
        self.tables: dict[str, dict[int, tuple[str, int]]] = {}
        self.children_of: dict[int, list[int]] = {}
        self.scanned: dict[int, list[int]] | None = None
        self.addresses: dict[str, tuple[list[str], list[str]]] = {}

    def info(self, pid: int) -> ProcessInfo | None:
        """Look a process up once per pass."""
        if pid not in self.infos:
            self.infos[pid] = self.finder._processes.lookup(pid)
        return self.infos[pid]

    def socket_inodes(self, pid: int) -> frozenset[int]:
        """Inodes of the sockets among a process's open files."""
        cached = self.inodes.get(pid)
        if cached is not None:
            return cached
        fd_dir = self.finder._proc_root / str(pid) / "fd"
        found: set[int] = set()
        try:
            names = os.listdir(fd_dir)
        except OSError as error:
            logger.debug("cannot list the files of process %d: %s", pid, error)
            names = []
        for name in names:
            # A file closed since the listing, or a process gone: skip it.
            target = _read_link(fd_dir / name)
            match = _SOCKET_LINK_RE.match(target) if target is not None else None
            if match is not None:
                found.add(int(match[1]))
        result = frozenset(found)
        self.inodes[pid] = result
        return result

    def table(self, info: ProcessInfo) -> dict[int, tuple[str, int]]:
        """Listening sockets of a process's network namespace, by inode."""
        key = self.finder._netns(info) or f"pid:{info.pid}"
        cached = self.tables.get(key)
        if cached is not None:
            return cached
        table: dict[int, tuple[str, int]] = {}
        net = self.finder._proc_root / str(info.pid) / "net"
        for name in ("tcp", "tcp6"):
            try:
                table.update(parse_listening_sockets(_read_text(net / name)))
            except OSError as error:
                # No IPv6 in the kernel, or the process is gone.
                logger.debug("cannot read %s: %s", net / name, error)
        self.tables[key] = table
        return table

    def listeners(self, info: ProcessInfo) -> list[Listener]:
        """The listening TCP sockets a process holds, most likely HTTP first."""
        inodes = self.socket_inodes(info.pid)
        if not inodes:
            return []
        table = self.table(info)
        found = {
            Listener(info.pid, *table[inode]) for inode in inodes if inode in table
        }
        return sorted(found, key=_listener_order)

    def local_addresses(self, info: ProcessInfo) -> tuple[list[str], list[str]]:
        """IPv4 and global IPv6 addresses of a process's network namespace."""
        key = self.finder._netns(info) or f"pid:{info.pid}"
        cached = self.addresses.get(key)
        if cached is not None:
            return cached
        net = self.finder._proc_root / str(info.pid) / "net"
        ipv4: list[str] = []
        ipv6: list[str] = []
        try:
            ipv4 = parse_fib_trie(_read_text(net / "fib_trie"))
        except OSError as error:
            logger.debug("cannot read %s: %s", net / "fib_trie", error)
        try:
            ipv6 = parse_if_inet6(_read_text(net / "if_inet6"))
        except OSError as error:
            logger.debug("cannot read %s: %s", net / "if_inet6", error)
        self.addresses[key] = (ipv4, ipv6)
        return ipv4, ipv6

    def children(self, pid: int) -> list[int]:
        """A process's children, from the kernel's per-thread lists or a scan."""
        cached = self.children_of.get(pid)
        if cached is not None:
            return cached
        task_dir = self.finder._proc_root / str(pid) / "task"
        found: set[int] = set()
        listed = True
        try:
            tids = os.listdir(task_dir)
        except OSError:
            tids = []
        for tid in tids:
            try:
                text = _read_text(task_dir / tid / "children")
            except FileNotFoundError:
                if (task_dir / tid).is_dir():
                    # The kernel keeps no such list (no CONFIG_PROC_CHILDREN).
                    listed = False
                    break
                continue
            except OSError:
                continue
            found.update(int(word) for word in text.split() if word.isdigit())
        result = sorted(found) if listed else self._scan().get(pid, [])
        self.children_of[pid] = result
        return result

    def _scan(self) -> dict[int, list[int]]:
        """Map every process's parent to its children by reading all of /proc."""
        if self.scanned is not None:
            return self.scanned
        resolver = self.finder._scan_resolver
        by_parent: dict[int, list[int]] = {}
        seen: list[int] = []
        try:
            entries = os.listdir(self.finder._proc_root)
        except OSError:
            entries = []
        for entry in entries:
            if not entry.isdigit():
                continue
            info = resolver.lookup(int(entry))
            if info is not None:
                seen.append(info.pid)
                by_parent.setdefault(info.ppid, []).append(info.pid)
        resolver.forget_except(seen)
        for children in by_parent.values():
            children.sort()
        self.scanned = by_parent
        return by_parent


class ServerFinder:
    """Find, for GPU processes, the process that listens for their HTTP clients.

    The server of a GPU process is chosen among the processes that hold a
    listening TCP socket:

    * its parent and grandparent (pid 1 never counts, nor anything above it);
    * the GPU process itself;
    * failing a clear winner above, its relatives: the parent's other children and
      their children, in the GPU process's own cgroup (so a launcher's router, as
      in TGI, but not a pod's sidecar container), at most 256 of them.

    GPU processes listen too (a torch TCPStore, NCCL's bootstrap), so a candidate
    is ranked by, in order: whether every port it listens on is a peer port (in
    `EPHEMERAL_PORTS` or `RENDEZVOUS_PORTS`, what a distributed job binds rather
    than what an operator chooses), whether it is itself one of the GPU processes,
    then by place in the list above, nearest first. A GPU process whose ports are
    all peer ports is never a server. vLLM's API server (port 8000) thus beats its
    EngineCore's TCPStore on a free port; SGLang's HTTP process beats its rank-0
    scheduler; TGI's router beats its rank-0 shard's TCPStore on 29500; a llama.cpp
    server is its own server, unless a parent listens on a port of its choosing.

    Known misses: a single-process server whose parent, or a process started next
    to it under the same shell (a tensorboard), listens on a chosen port is
    attributed to that process; one listening only on peer ports is not found;
    nor are servers whose GPU processes are not their descendants (Ray actors).
    Candidates are guesses for the prober to confirm: a torchrun agent, holding
    the rendezvous port of its GPU ranks, is one.

    The endpoints come from the server's listening sockets: peer ports last,
    wildcard- and loopback-bound sockets before those bound to one address, then
    by port, IPv4 before IPv6. In the daemon's own network namespace a wildcard
    becomes the loopback address of its family and any other address is used as
    bound. In another namespace (a pod's), a wildcard becomes the namespace's own
    addresses (IPv4 from ``fib_trie``, then global IPv6 from ``if_inet6`` for
    ``::``); loopback-bound sockets cannot be reached and give no endpoint.

    The daemon's namespace is that of ``self_pid``; two processes share a
    namespace when their ``/proc/PID/ns/net`` links read the same. When either link
    cannot be read the namespaces are taken to be the same.

    Everything but each process's namespace (kept until its PID is reused) is read
    afresh on every call. Not safe for concurrent use from several threads.
    """

    def __init__(
        self,
        processes: ProcessResolver | None = None,
        proc_root: Path = Path("/proc"),
        self_pid: int | None = None,
    ) -> None:
        """Create a finder.

        Args:
            processes: looks processes up; a resolver over ``proc_root`` if None.
            proc_root: where the proc filesystem is mounted (a fixture tree in tests).
            self_pid: the process whose network namespace is the daemon's; None
                means the caller (``proc_root/self``).
        """
        self._proc_root = proc_root
        self._processes = (
            processes if processes is not None else ProcessResolver(proc_root)
        )
        self._self_pid = self_pid
        # Reads every process when the kernel keeps no lists of children; its own
        # cache, so the scan neither fills nor is emptied by the caller's resolver.
        self._scan_resolver = ProcessResolver(proc_root, user_name=_no_user_name)
        # pid -> (start ticks, "net:[inode]" or None)
        self._netns_cache: dict[int, tuple[int, str | None]] = {}

    def find(self, gpu_pids: Iterable[int]) -> list[ServerCandidate]:
        """Find the servers of GPU processes.

        Pass every GPU process of the node at once: a listening process is ranked
        down when it is one of them.

        Args:
            gpu_pids: host PIDs of processes using a GPU, as NVML reports them.

        Returns:
            One candidate per server, by server PID; GPU processes that have
            exited or that no listening process owns are in none.
        """
        gpu = frozenset(gpu_pids)
        scan = _Pass(self)
        daemon_netns = self._daemon_netns()
        owned: dict[int, set[int]] = {}
        servers: dict[int, tuple[ProcessInfo, list[Listener]]] = {}
        for pid in sorted(gpu):
            found = self._server_of(pid, gpu, scan)
            if found is None:
                logger.debug("GPU process %d: no listening process owns it", pid)
                continue
            info, listeners = found
            servers[info.pid] = (info, listeners)
            owned.setdefault(info.pid, set()).add(pid)

        candidates: list[ServerCandidate] = []
        for server_pid in sorted(servers):
            info, listeners = servers[server_pid]
            netns = self._netns(info)
            same = netns is None or daemon_netns is None or netns == daemon_netns
            endpoints = self._endpoints(info, listeners, same, scan)
            logger.debug(
                "server %d (%s) owns GPU processes %s; endpoints %s",
                server_pid,
                info.command,
                sorted(owned[server_pid]),
                endpoints,
            )
            candidates.append(
                ServerCandidate(
                    server_pid=server_pid,
                    gpu_pids=frozenset(owned[server_pid]),
                    endpoints=endpoints,
                    command=info.command,
                    same_netns=same,
                )
            )
        looked_up = {pid for pid, info in scan.infos.items() if info is not None}
        for pid in [pid for pid in self._netns_cache if pid not in looked_up]:
            del self._netns_cache[pid]
        return candidates

    def listeners(self, pid: int) -> list[Listener]:
        """List the listening TCP sockets a process holds.

        Args:
            pid: host PID.

        Returns:
            Its listeners, most likely HTTP first; empty if it has exited, holds
            none, or its files cannot be read.
        """
        scan = _Pass(self)
        info = scan.info(pid)
        return scan.listeners(info) if info is not None else []

    def _server_of(
        self, pid: int, gpu: frozenset[int], scan: _Pass
    ) -> tuple[ProcessInfo, list[Listener]] | None:
        """Choose the server of one GPU process; None when there is none."""
        origin = scan.info(pid)
        if origin is None:
            return None
        chain = [origin]
        seen = {pid}
        while len(chain) <= _ANCESTOR_REACH:
            parent_pid = chain[-1].ppid
            if parent_pid <= 1 or parent_pid in seen:
                break
            parent = scan.info(parent_pid)
            if parent is None:
                break
            chain.append(parent)
            seen.add(parent_pid)

        best: tuple[ProcessInfo, list[Listener]] | None = None
        best_rank: tuple[bool, bool, int] | None = None

        def consider(place: int, info: ProcessInfo) -> None:
            nonlocal best, best_rank
            listeners = scan.listeners(info)
            if not listeners:
                return
            rank = (_all_peer_ports(listeners), info.pid in gpu, place)
            if rank[0] and rank[1]:
                # A GPU process with only peer ports is a rank of a distributed job.
                return
            if best_rank is None or rank < best_rank:
                best, best_rank = (info, listeners), rank

        # Ancestors nearest first, then the process itself.
        ordered = [*chain[1:], origin]
        for place, info in enumerate(ordered):
            consider(place, info)
        if len(chain) > 1 and (best_rank is None or best_rank[:2] != (False, False)):
            relatives = self._relatives(origin, chain[1], scan)
            for place, info in enumerate(relatives, start=len(ordered)):
                consider(place, info)
        return best

    def _relatives(
        self, origin: ProcessInfo, parent: ProcessInfo, scan: _Pass
    ) -> list[ProcessInfo]:
        """The parent's other descendants in the origin's cgroup, breadth first."""
        found: list[ProcessInfo] = []
        examined = 0
        queue = deque((child, 1) for child in scan.children(parent.pid))
        while queue and examined < _RELATIVE_LIMIT:
            pid, depth = queue.popleft()
            if pid == origin.pid:
                continue
            examined += 1
            info = scan.info(pid)
            if info is None or info.cgroup_path != origin.cgroup_path:
                continue
            found.append(info)
            if depth < _RELATIVE_DEPTH:
                queue.extend((child, depth + 1) for child in scan.children(pid))
        return found

    def _endpoints(
        self,
        info: ProcessInfo,
        listeners: list[Listener],
        same_netns: bool,
        scan: _Pass,
    ) -> tuple[tuple[str, int], ...]:
        """Where the daemon can reach a server's listeners, best first."""
        endpoints: list[tuple[str, int]] = []
        for listener in listeners:
            host = listener.host
            if same_netns:
                hosts = [{"0.0.0.0": "127.0.0.1", "::": "::1"}.get(host, host)]
            elif host == "0.0.0.0":
                hosts = scan.local_addresses(info)[0]
            elif host == "::":
                ipv4, ipv6 = scan.local_addresses(info)
                hosts = [*ipv4, *ipv6]
            elif _is_loopback(host):
                hosts = []
            else:
                hosts = [host]
            for endpoint in ((host, listener.port) for host in hosts):
                if endpoint not in endpoints:
                    endpoints.append(endpoint)
        return tuple(endpoints)

    def _netns(self, info: ProcessInfo) -> str | None:
        """A process's network namespace (``"net:[inode]"``), or None if unreadable."""
        cached = self._netns_cache.get(info.pid)
        if cached is not None and cached[0] == info.start_ticks:
            return cached[1]
        netns = _read_link(self._proc_root / str(info.pid) / "ns" / "net")
        self._netns_cache[info.pid] = (info.start_ticks, netns)
        return netns

    def _daemon_netns(self) -> str | None:
        """The daemon's network namespace, or None if unreadable."""
        name = "self" if self._self_pid is None else str(self._self_pid)
        return _read_link(self._proc_root / name / "ns" / "net")
