"""Discovery: which listening process serves which GPU processes, and where."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from gpumeter.engines.discovery import (
    Listener,
    ServerCandidate,
    ServerFinder,
    decode_address,
    parse_fib_trie,
    parse_if_inet6,
    parse_listening_sockets,
)
from gpumeter.processes import ProcessInfo, ProcessResolver

DATA = Path(__file__).resolve().parent / "data" / "discovery"

# The daemon's process in every fixture tree; in k8s/ it is in its own pod's network
# namespace, and 910 is a daemon on the host network.
DAEMON = 900


def _no_user(_uid: int) -> str | None:
    return None


def _finder(case: str | Path, self_pid: int = DAEMON) -> ServerFinder:
    root = case if isinstance(case, Path) else DATA / case / "proc"
    return ServerFinder(ProcessResolver(root, _no_user), root, self_pid)


def _copy(case: str, tmp_path: Path) -> Path:
    """Copy a fixture tree, links as links, so a test can change it."""
    root = tmp_path / case / "proc"
    shutil.copytree(DATA / case / "proc", root, symlinks=True)
    return root


# --- each fixture tree, end to end ------------------------------------------------


def test_llamacpp_is_its_own_server() -> None:
    # The GPU process listens on 127.0.0.1:8080; the http.server in another tmux
    # pane (under the grandparent) is not a relative that is searched.
    assert _finder("llamacpp").find({2210}) == [
        ServerCandidate(
            2210, frozenset({2210}), (("127.0.0.1", 8080),), "llama-server", True
        )
    ]


def test_vllm_workers_and_engine_cores_belong_to_their_api_servers() -> None:
    # TP=2: two workers under an EngineCore under the API server on 0.0.0.0:8000;
    # worker 0 also listens for torch's TCPStore and NCCL. TP=1: the EngineCore is
    # the GPU process and holds the TCPStore; its API server is on 127.0.0.1:8001.
    assert _finder("vllm").find([3201, 3202, 3380]) == [
        ServerCandidate(
            3100, frozenset({3201, 3202}), (("127.0.0.1", 8000),), "vllm", True
        ),
        ServerCandidate(3300, frozenset({3380}), (("127.0.0.1", 8001),), "vllm", True),
    ]


def test_tgi_shards_belong_to_the_router_beside_them() -> None:
    # Shard 0 listens on 29500 (torch's MASTER_PORT); the router, a sibling under
    # text-generation-launcher, on 3000 and its Prometheus port 9000.
    expected = [
        ServerCandidate(
            4020,
            frozenset({4010, 4011}),
            (("127.0.0.1", 3000), ("127.0.0.1", 9000)),
            "text-generation",
            True,
        )
    ]
    assert _finder("tgi").find({4010, 4011}) == expected
    # Each shard alone finds the router too.
    assert _finder("tgi").find({4011})[0].server_pid == 4020


def test_tgi_without_the_kernels_lists_of_children(tmp_path: Path) -> None:
    # Without CONFIG_PROC_CHILDREN there are task directories but no "children"
    # files; the children then come from a scan of every process's parent.
    root = _copy("tgi", tmp_path)
    for children in root.glob("*/task/*/children"):
        children.unlink()
    assert _finder(root).find({4010, 4011}) == _finder("tgi").find({4010, 4011})


def _set_parent(root: Path, pid: int, ppid: int) -> None:
    """Rewrite a fixture process's parent in its stat line."""
    stat = root / str(pid) / "stat"
    head, _, rest = stat.read_text().partition(") ")
    fields = rest.split(" ")
    fields[1] = str(ppid)
    stat.write_text(f"{head}) {' '.join(fields)}")


def _set_children(root: Path, pid: int, children: list[int]) -> None:
    """Rewrite a fixture process's list of children."""
    path = root / str(pid) / "task" / str(pid) / "children"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(f"{child} " for child in children))


def _wrap_router(root: Path, wrappers: list[int]) -> None:
    """Put a chain of ``sh -c`` processes between TGI's launcher and its router."""
    parent = 4000
    _set_children(root, 4000, [4010, 4011, wrappers[0]])
    for wrapper in wrappers:
        directory = root / str(wrapper)
        shutil.copytree(root / "4000", directory, symlinks=True)
        shutil.rmtree(directory / "task")
        (directory / "comm").write_text("sh\n")
        _set_parent(root, wrapper, parent)
        parent = wrapper
    for wrapper, child in zip(wrappers, [*wrappers[1:], 4020], strict=True):
        _set_children(root, wrapper, [child])
    _set_parent(root, 4020, wrappers[-1])


def test_tgi_router_two_levels_down_is_found(tmp_path: Path) -> None:
    # launcher -> sh -> router: the router is the launcher's grandchild.
    root = _copy("tgi", tmp_path)
    _wrap_router(root, [4015])
    assert _finder(root).find({4010, 4011})[0].server_pid == 4020


def test_tgi_router_three_levels_down_is_too_far(tmp_path: Path) -> None:
    root = _copy("tgi", tmp_path)
    _wrap_router(root, [4015, 4016])
    assert _finder(root).find({4010, 4011}) == []


def test_sglang_schedulers_belong_to_the_http_process() -> None:
    # Scheduler 0 listens for its TCPStore on a port near 30000 and for NCCL on the
    # network card; the HTTP process (SGLang's default host) on 127.0.0.1:30000.
    assert _finder("sglang").find({5100, 5101}) == [
        ServerCandidate(
            5000, frozenset({5100, 5101}), (("127.0.0.1", 30000),), "python3", True
        )
    ]


K8S_FROM_ELSEWHERE = [
    ServerCandidate(6100, frozenset({6200}), (("10.244.1.17", 8000),), "vllm", False),
    ServerCandidate(
        7100,
        frozenset({7100}),
        (("10.244.1.18", 8080), ("fd00:10:244:1::12", 8080)),
        "llama-server",
        False,
    ),
    # Bound to 127.0.0.1 in its pod: found, but the daemon cannot reach it.
    ServerCandidate(7200, frozenset({7200}), (), "llama-server", False),
]


@pytest.mark.parametrize(
    "daemon", [900, 910], ids=["daemon-pod-network", "host-network"]
)
def test_kubernetes_pods_are_reached_at_their_pod_ip(daemon: int) -> None:
    # Pod A: vLLM on 0.0.0.0:8000, an Istio sidecar beside it. Pod B: llama.cpp on
    # [::]:8080 with an IPv4 and a global IPv6 address (and a tentative one, left
    # out) and a sidecar that is not its relative, being another container.
    assert _finder("k8s", daemon).find({6200, 7100, 7200}) == K8S_FROM_ELSEWHERE


def test_kubernetes_pod_seen_from_its_own_network_namespace() -> None:
    # The daemon in pod A's namespace (as a sidecar would be) reaches it on loopback.
    found = _finder("k8s", self_pid=6300).find({6200, 7100})
    assert found == [
        ServerCandidate(6100, frozenset({6200}), (("127.0.0.1", 8000),), "vllm", True),
        K8S_FROM_ELSEWHERE[1],
    ]


def test_unreadable_daemon_namespace_counts_as_the_same() -> None:
    # No self_pid and no proc_root/self in the fixture: the daemon's namespace is
    # unknown, and every server is taken to share it.
    root = DATA / "k8s" / "proc"
    finder = ServerFinder(ProcessResolver(root, _no_user), root)
    assert finder.find({6200}) == [
        ServerCandidate(6100, frozenset({6200}), (("127.0.0.1", 8000),), "vllm", True)
    ]


def test_training_jobs_have_no_server() -> None:
    # One job under a login shell, one service whose parent is systemd, which holds
    # the socket-activated port 22: pid 1 is never a server.
    assert _finder("training").find({7100, 7300}) == []


def test_processes_gone_or_half_gone() -> None:
    # 8100: its parent has no directory; 8200: its fd/ is gone, its parent still
    # serves; 8300: no directory; 8400: its parent lacks comm, so it ends the walk.
    assert _finder("vanished").find({8100, 8200, 8300, 8400}) == [
        ServerCandidate(8150, frozenset({8200}), (("127.0.0.1", 8000),), "vllm", True)
    ]


def test_a_server_that_exits_during_the_walk(tmp_path: Path) -> None:
    root = _copy("vllm", tmp_path)

    class Vanishing(ProcessResolver):
        """Removes the API server's open files right after it is looked up."""

        def lookup(self, pid: int) -> ProcessInfo | None:
            info = super().lookup(pid)
            if pid == 3100:
                shutil.rmtree(root / "3100" / "fd", ignore_errors=True)
                shutil.rmtree(root / "3100" / "net", ignore_errors=True)
            return info

    finder = ServerFinder(Vanishing(root, _no_user), root, DAEMON)
    # Nothing is left for the workers to belong to: their own ports (TCPStore,
    # NCCL) are a distributed job's, not a server's.
    assert finder.find({3201, 3202}) == []
    assert finder.find({3202}) == []


def test_unreadable_open_files_mean_no_listener(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    real_listdir = os.listdir

    def listdir(path: str | os.PathLike[str]) -> list[str]:
        if str(path).endswith("/2210/fd"):
            raise PermissionError(13, "Permission denied", str(path))
        return real_listdir(path)

    monkeypatch.setattr(os, "listdir", listdir)
    assert _finder("llamacpp").find({2210}) == []


def test_a_parent_cycle_ends_the_walk(tmp_path: Path) -> None:
    # Not a state the kernel shows, but the walk must end: bash's parent is the
    # llama.cpp server it started.
    root = _copy("llamacpp", tmp_path)
    stat = root / "2151" / "stat"
    stat.write_text(stat.read_text().replace(") S 2150 ", ") S 2210 "))
    assert _finder(root).find({2210}) == _finder("llamacpp").find({2210})


def test_gpu_processes_with_only_peer_ports_are_not_servers(tmp_path: Path) -> None:
    # The llama.cpp server moved to port 40000, in the ephemeral range: a GPU
    # process listening only there looks like a distributed job's rank.
    root = _copy("llamacpp", tmp_path)
    for tcp in root.glob("*/net/tcp"):
        tcp.write_text(
            tcp.read_text().replace("0100007F:1F90 00000000", "0100007F:9C40 00000000")
        )
    assert _finder(root).listeners(2210) == [Listener(2210, "127.0.0.1", 40000)]
    assert _finder(root).find({2210}) == []


def test_listeners_of_one_process() -> None:
    finder = _finder("vllm")
    # Most likely HTTP first: none here; wildcard before the network card's address.
    assert finder.listeners(3201) == [
        Listener(3201, "::", 45131),
        Listener(3201, "192.168.1.20", 40123),
    ]
    assert finder.listeners(3100) == [Listener(3100, "0.0.0.0", 8000)]
    assert finder.listeners(3180) == []
    assert finder.listeners(99999) == []


def test_namespace_cache_follows_pid_reuse(tmp_path: Path) -> None:
    root = _copy("k8s", tmp_path)
    finder = _finder(root, 910)
    assert finder.find({6200})[0].same_netns is False
    # PID 6100 is reused by a process on the host network (new start time).
    stat = root / "6100" / "stat"
    stat.write_text(stat.read_text().replace(" 90200 ", " 95000 "))
    link = root / "6100" / "ns" / "net"
    link.unlink()
    link.symlink_to("net:[4026531840]")
    assert finder.find({6200}) == [
        ServerCandidate(6100, frozenset({6200}), (("127.0.0.1", 8000),), "vllm", True)
    ]


# --- parsers ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "address"),
    [
        ("0100007F", "127.0.0.1"),
        ("00000000", "0.0.0.0"),
        ("1101F40A", "10.244.1.17"),
        ("00000000000000000000000000000000", "::"),
        ("00000000000000000000000001000000", "::1"),
        ("0000000000000000FFFF00000100007F", "127.0.0.1"),
        ("0000000000000000FFFF00001101F40A", "10.244.1.17"),
        ("100000FD010044020000000012000000", "fd00:10:244:1::12"),
        ("000080FE00000000FF06E5D4128877FE", "fe80::d4e5:6ff:fe77:8812"),
    ],
)
def test_decode_address(text: str, address: str) -> None:
    if sys.byteorder != "little":
        pytest.skip("the samples are as a little-endian kernel prints them")
    assert decode_address(text) == address


def test_decode_address_rejects_other_lengths() -> None:
    with pytest.raises(ValueError, match="not a /proc/net/tcp address"):
        decode_address("0100007F00")


def test_parse_listening_sockets_tcp() -> None:
    text = textwrap.dedent(
        """\
          sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode
           0: 0100007F:1F90 00000000:0000 0A 00000000:00000000 00:00000000 00000000  1000        0 61001 1 0000000000000000 100 0 0 10 0
           1: 00000000:1F40 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 71001 1 0000000000000000 100 0 0 10 0
           2: 0100007F:1F90 0100007F:C852 01 00000000:00000000 02:000A7B7E 00000000  1000        0 61050 2 0000000000000000 20 4 30 10 -1
           3: 0100007F:1F90 0100007F:C826 06 00000000:00000000 03:00001739 00000000     0        0 0 3 0000000000000000
        """  # noqa: E501
    )
    assert parse_listening_sockets(text) == {
        61001: ("127.0.0.1", 8080),
        71001: ("0.0.0.0", 8000),
    }


def test_parse_listening_sockets_tcp6() -> None:
    text = (DATA / "k8s" / "proc" / "7100" / "net" / "tcp6").read_text()
    assert parse_listening_sockets(text) == {111001: ("::", 8080)}
    mapped = (
        "   0: 0000000000000000FFFF00001101F40A:1F40 "
        "00000000000000000000000000000000:0000 0A 00000000:00000000 00:00000000 "
        "00000000     0        0 5151 1 0000000000000000 100 0 0 10 0\n"
    )
    if sys.byteorder == "little":
        assert parse_listening_sockets(mapped) == {5151: ("10.244.1.17", 8000)}
    assert parse_listening_sockets("garbage\n\n   7: nonsense\n") == {}


def test_parse_fib_trie() -> None:
    text = (DATA / "k8s" / "proc" / "6100" / "net" / "fib_trie").read_text()
    assert parse_fib_trie(text) == ["10.244.1.17"]
    host = (DATA / "vllm" / "proc" / "3100" / "net" / "fib_trie").read_text()
    # Both tables list the addresses; each comes once, broadcasts never.
    assert parse_fib_trie(host) == ["172.17.0.1", "192.168.1.20"]
    # Calico: a /32 on eth0 and no subnet route; the real file of a machine.
    calico = textwrap.dedent(
        """\
        Main:
          +-- 0.0.0.0/0 3 0 4
             |-- 0.0.0.0
                /0 universe UNICAST
             |-- 169.254.1.1
                /32 link UNICAST
             +-- 127.0.0.0/8 2 0 2
                +-- 127.0.0.0/31 1 0 0
                   |-- 127.0.0.0
                      /8 host LOCAL
                   |-- 127.0.0.1
                      /32 host LOCAL
                |-- 127.255.255.255
                   /32 link BROADCAST
             |-- 192.168.43.7
                /32 host LOCAL
        """
    )
    assert parse_fib_trie(calico) == ["192.168.43.7"]
    assert parse_fib_trie("") == []


def test_parse_if_inet6() -> None:
    text = (DATA / "k8s" / "proc" / "7100" / "net" / "if_inet6").read_text()
    assert parse_if_inet6(text) == ["fd00:10:244:1::12"]
    assert parse_if_inet6("00000000000000000000000000000001 01 80 10 80 lo\n") == []


# --- the real /proc ----------------------------------------------------------------

_SERVER = textwrap.dedent(
    """\
    import socket, subprocess, sys
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen()
    child = subprocess.Popen(
        [sys.executable, "-c", "import sys; sys.stdin.read()"],
        stdin=subprocess.PIPE,
    )
    print(listener.getsockname()[1], child.pid, flush=True)
    sys.stdin.read()
    child.stdin.close()
    child.wait()
    """
)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="needs Linux /proc")
def test_real_proc_finds_the_listening_parent() -> None:
    server = subprocess.Popen(
        [sys.executable, "-c", _SERVER],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert server.stdout is not None
        port_text, child_text = server.stdout.readline().split()
        port, child = int(port_text), int(child_text)
        resolver = ProcessResolver()
        info = resolver.lookup(server.pid)
        assert info is not None
        assert ServerFinder(resolver).find({child}) == [
            ServerCandidate(
                server.pid,
                frozenset({child}),
                (("127.0.0.1", port),),
                info.command,
                True,
            )
        ]
    finally:
        assert server.stdin is not None
        server.stdin.close()
        try:
            server.wait(timeout=10)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait()
        if server.stdout is not None:
            server.stdout.close()
