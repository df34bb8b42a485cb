"""Who a host PID is: command, user, container, Kubernetes pod and systemd unit."""

from __future__ import annotations

import dataclasses
import logging
import os
import pwd
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Final

logger = logging.getLogger(__name__)

__all__ = ["CgroupIdentity", "ProcessInfo", "ProcessResolver", "parse_cgroup"]

# One path component that is a container's own cgroup: "<prefix>-<64 hex>.scope"
# under the systemd driver ("crio-…", "cri-containerd-…", "docker-…", "libpod-…") or a
# bare "<64 hex>" under the cgroupfs driver. The prefix takes every letter and dash
# before the ID, so "crio-conmon-<id>.scope" has the prefix "crio-conmon".
_CONTAINER_RE: Final = re.compile(
    r"(?:(?P<prefix>[a-z][a-z-]*)-)?(?P<id>[0-9a-f]{64})(?:\.scope)?"
)

# A runtime's "<slice>:<prefix>:<64 hex>" cgroupsPath written out as one component, as
# containerd does on cgroup v1 with the kubelet's systemd driver.
_SLICE_TRIPLE_RE: Final = re.compile(
    r"(?P<slice>[^:]+\.slice):(?P<prefix>[a-z][a-z-]*):(?P<id>[0-9a-f]{64})"
)

# The kubelet's pod cgroup at the end of a component: "pod<UID>" (cgroupfs driver) or
# "kubepods-<qos>-pod<UID>.slice" (systemd driver, which writes each "-" of the UID as
# "_"). A static pod's UID is a 32-hex hash of its manifest, without dashes.
_POD_RE: Final = re.compile(
    r"(?:^|-)pod(?P<uid>[0-9a-f]{8}(?:[-_][0-9a-f]{4}){3}[-_][0-9a-f]{12}|[0-9a-f]{32})"
    r"(?:\.slice)?$"
)

# The "Uid:" line of /proc/PID/status; the first number is the real uid.
_UID_LINE_RE: Final = re.compile(r"^Uid:\s+(\d+)", re.MULTILINE)

# Container runtime by the prefix of its containers' cgroup names. A prefix not listed
# (crio-conmon, libpod-conmon) names a runtime's helper process, not a container.
_RUNTIME_BY_PREFIX: Final = {
    "cri-containerd": "containerd",
    "crio": "crio",
    "docker": "docker",
    "libpod": "podman",
    "nerdctl": "containerd",
}

# Runtime by the parent of a bare container ID (cgroupfs driver outside Kubernetes).
_RUNTIME_BY_PARENT: Final = {"docker": "docker"}

# Clock ticks per second, the unit of start times in /proc/PID/stat.
_CLOCK_TICKS: Final = os.sysconf("SC_CLK_TCK")

# Units of the kinds a process can be in; slices only group them.
_UNIT_SUFFIXES: Final = (".service", ".scope")


@dataclass(frozen=True, slots=True)
class CgroupIdentity:
    """What a process's cgroup path says about it.

    Attributes:
        container_id: the innermost container's 64-hex ID, or None outside containers.
        container_runtime: ``"docker"``, ``"containerd"``, ``"crio"`` or ``"podman"``;
            None when the path names no runtime (a bare ID under the cgroupfs driver).
        pod_uid: the Kubernetes pod UID with dashes restored, or None outside pods.
        systemd_unit: the innermost ``.service`` or ``.scope`` unit of a process that
            is in neither a container nor a pod (``"ollama.service"``); None otherwise.
        path: the cgroup path the identity was read from, as the kernel wrote it.
    """

    container_id: str | None
    container_runtime: str | None
    pod_uid: str | None
    systemd_unit: str | None
    path: str


@dataclass(frozen=True, slots=True)
class ProcessInfo:
    """One process, as /proc describes it.

    Attributes:
        pid: host PID, as NVML reports it.
        ppid: parent's PID when last looked up (a process is re-parented when its
            parent exits).
        start_ticks: start time in clock ticks since boot (``/proc/PID/stat`` field
            22); with ``pid`` it identifies the process across PID reuse.
        command: short name from ``/proc/PID/comm``; the kernel cuts a program's
            name to 15 characters (a kernel thread's may be longer).
        cmdline: the argument vector; empty for kernel threads and zombies.
        uid: real user ID, or None when ``status`` has no ``Uid:`` line.
        user: name of ``uid``, or None when it has no name on this host.
        container_id: see `CgroupIdentity`.
        container_runtime: see `CgroupIdentity`.
        pod_uid: see `CgroupIdentity`.
        systemd_unit: see `CgroupIdentity`.
        cgroup_path: the cgroup path the container, pod and unit came from.
    """

    pid: int
    ppid: int
    start_ticks: int
    command: str
    cmdline: tuple[str, ...]
    uid: int | None
    user: str | None
    container_id: str | None
    container_runtime: str | None
    pod_uid: str | None
    systemd_unit: str | None
    cgroup_path: str


def parse_cgroup(text: str) -> CgroupIdentity:
    """Read a process's container, pod and unit from its ``/proc/PID/cgroup``.

    Every line (cgroup v1, v2 or both) is read. The line whose path says the most wins:
    one naming a container beats one that does not, then one naming a pod, then the
    deeper path, then the unified (``0::``) line. Paths seen from a private cgroup
    namespace start with ``..`` components; those are skipped, and what follows is
    read as usual.

    Args:
        text: the file's content.

    Returns:
        The identity; every field None and ``path`` empty when no line parses.
    """
    best = CgroupIdentity(None, None, None, None, "")
    best_rank = (False, False, -1, False)
    for line in text.splitlines():
        hierarchy, _, rest = line.partition(":")
        _, found, path = rest.partition(":")
        if not found:
            continue
        # The kernel marks the path of a removed cgroup (a zombie's, say).
        path = path.removesuffix(" (deleted)")
        parts = [part for part in path.split("/") if part not in ("", "..")]
        identity = _identify(parts, path)
        rank = (
            identity.container_id is not None,
            identity.pod_uid is not None,
            len(parts),
            hierarchy == "0",
        )
        if rank > best_rank:
            best, best_rank = identity, rank
    return best


def _identify(parts: list[str], path: str) -> CgroupIdentity:
    """Read one cgroup path, already split into components."""
    container_at, container_id, runtime = _innermost_container(parts)
    pod_at, pod_uid = _innermost_pod(parts)
    if pod_at > container_at:
        # The container holds a whole kubelet (a kind node); the process is not in it
        # as a workload, it is in one of that kubelet's pods.
        container_id = runtime = None
    unit = None
    if container_id is None and pod_uid is None:
        unit = next((p for p in reversed(parts) if p.endswith(_UNIT_SUFFIXES)), None)
    return CgroupIdentity(container_id, runtime, pod_uid, unit, path)


def _innermost_container(parts: list[str]) -> tuple[int, str | None, str | None]:
    """Find the deepest container component: its index, ID and runtime, or -1."""
    for index in range(len(parts) - 1, -1, -1):
        part = parts[index]
        triple = _SLICE_TRIPLE_RE.fullmatch(part)
        if triple is not None:
            runtime = _RUNTIME_BY_PREFIX.get(triple["prefix"])
            if runtime is not None:
                return index, triple["id"], runtime
            continue
        match = _CONTAINER_RE.fullmatch(part)
        if match is None:
            continue
        prefix = match["prefix"]
        if prefix is None:
            parent = parts[index - 1] if index > 0 else ""
            return index, match["id"], _RUNTIME_BY_PARENT.get(parent)
        if prefix in _RUNTIME_BY_PREFIX:
            return index, match["id"], _RUNTIME_BY_PREFIX[prefix]
    return -1, None, None


def _innermost_pod(parts: list[str]) -> tuple[int, str | None]:
    """Find the deepest pod component: its index and un-escaped UID, or -1."""
    for index in range(len(parts) - 1, -1, -1):
        # In the "<slice>:<prefix>:<id>" form the pod is in the slice.
        match = _POD_RE.search(parts[index].partition(":")[0])
        if match is not None:
            return index, match["uid"].replace("_", "-")
    return -1, None


def _passwd_user_name(uid: int) -> str | None:
    """Name a uid from the password database, or None if it has no entry."""
    try:
        return pwd.getpwuid(uid).pw_name
    except KeyError:
        return None


def _read_text(path: Path) -> str:
    """Read a /proc file; bytes that are not UTF-8 become U+FFFD."""
    return path.read_bytes().decode("utf-8", errors="replace")


def _parse_stat(text: str) -> tuple[int, int]:
    """Return the parent PID and start time (clock ticks) from ``/proc/PID/stat``.

    Raises:
        ValueError: the text is not a stat line.
    """
    # The command sits in parentheses and may hold spaces and ")" itself, so the
    # numeric fields start after the last ")".
    _, found, after = text.rpartition(")")
    fields = after.split()
    if not found or len(fields) < 20:
        raise ValueError(f"not a /proc/PID/stat line: {text[:80]!r}")
    # fields[0] is field 3 (state); ppid is field 4, starttime field 22.
    return int(fields[1]), int(fields[19])


class ProcessResolver:
    """Look up processes in a /proc tree, remembering each until its PID is reused.

    A cached process costs one read of ``/proc/PID/stat`` per lookup; its parent is
    refreshed from that read, everything else was read once when the process was
    first seen. A later ``setuid``, argv rewrite or move to another cgroup is
    therefore not noticed. Not safe for concurrent use from several threads.
    """

    def __init__(
        self,
        proc_root: Path = Path("/proc"),
        user_name: Callable[[int], str | None] | None = None,
    ) -> None:
        """Create a resolver.

        Args:
            proc_root: where the proc filesystem is mounted (a fixture tree in tests).
            user_name: names a uid, returning None when it has no name; defaults to
                the host's password database.
        """
        self._proc_root = proc_root
        self._user_name = user_name if user_name is not None else _passwd_user_name
        self._cache: dict[int, ProcessInfo] = {}
        self._boot_time: float | None = None

    def lookup(self, pid: int) -> ProcessInfo | None:
        """Describe a process.

        Args:
            pid: PID in the namespace of ``proc_root`` (the host's, for NVML PIDs).

        Returns:
            The process, or None if it has exited or its files cannot be read.
        """
        directory = self._proc_root / str(pid)
        try:
            ppid, start_ticks = _parse_stat(_read_text(directory / "stat"))
            cached = self._cache.get(pid)
            if cached is not None and cached.start_ticks == start_ticks:
                if cached.ppid != ppid:
                    cached = dataclasses.replace(cached, ppid=ppid)
                    self._cache[pid] = cached
                return cached
            info = self._read(pid, directory, ppid, start_ticks)
        except (OSError, ValueError) as error:
            self._cache.pop(pid, None)
            logger.debug("process %d is gone or unreadable: %s", pid, error)
            return None
        if info is None:
            self._cache.pop(pid, None)
            logger.debug("PID %d was reused while it was being read", pid)
            return None
        self._cache[pid] = info
        return info

    def started_at(self, info: ProcessInfo) -> float | None:
        """When a process started, in Unix seconds; None if the boot time is unknown.

        Args:
            info: the process, as :meth:`lookup` gave it.
        """
        if self._boot_time is None:
            try:
                for line in _read_text(self._proc_root / "stat").splitlines():
                    if line.startswith("btime "):
                        self._boot_time = float(line.split()[1])
                        break
            except (OSError, ValueError, IndexError):
                return None
        if self._boot_time is None:
            return None
        return self._boot_time + info.start_ticks / _CLOCK_TICKS

    def forget_except(self, live_pids: Iterable[int]) -> None:
        """Drop what is remembered about every PID not in ``live_pids``.

        Args:
            live_pids: the PIDs still worth remembering, such as NVML's latest list.
        """
        live = set(live_pids)
        for pid in [pid for pid in self._cache if pid not in live]:
            del self._cache[pid]

    def _read(
        self, pid: int, directory: Path, ppid: int, start_ticks: int
    ) -> ProcessInfo | None:
        """Read every file of a process not seen before; None if its PID was reused."""
        command = _read_text(directory / "comm").removesuffix("\n")
        arguments = _read_text(directory / "cmdline").split("\0")
        if arguments[-1] == "":
            arguments.pop()
        uid_line = _UID_LINE_RE.search(_read_text(directory / "status"))
        uid = int(uid_line[1]) if uid_line is not None else None
        cgroup = parse_cgroup(_read_text(directory / "cgroup"))

        # Had the process exited and its PID been reused since the first stat read,
        # the files above could describe two different processes.
        if _parse_stat(_read_text(directory / "stat"))[1] != start_ticks:
            return None

        return ProcessInfo(
            pid=pid,
            ppid=ppid,
            start_ticks=start_ticks,
            command=command,
            cmdline=tuple(arguments),
            uid=uid,
            user=self._user_name(uid) if uid is not None else None,
            container_id=cgroup.container_id,
            container_runtime=cgroup.container_runtime,
            pod_uid=cgroup.pod_uid,
            systemd_unit=cgroup.systemd_unit,
            cgroup_path=cgroup.path,
        )
