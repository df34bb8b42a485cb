"""The process source: cgroup paths, the /proc reader and its PID-reuse cache."""

from __future__ import annotations

import os
import pwd
import shutil
import sys
import time
from pathlib import Path

import pytest

from gpumeter.processes import (
    CgroupIdentity,
    ProcessInfo,
    ProcessResolver,
    parse_cgroup,
)

PROC = Path(__file__).resolve().parent / "data" / "proc"

USERS = {0: "root", 997: "ollama", 1000: "alice", 1001: "bob"}

# Container IDs and pod UIDs of the fixture tree, all made up.
C0 = "b886ccdddc49da480e32e81b23d31de5d05266074970783da9a7577163edb366"
C1 = "8744d804a8c88d6a548357cc9b01336fabe3d220970877b54d0d149f138c4d70"
C2 = "2b68bcc3c3d1f40cceca6c5bc8a7347bb4a717f32448a023909dc58f10fdb62b"
C3 = "2fc167e4a342ce6853bcbe11ed5da1c74d49bfc3dbd33e1a1934f348d331d684"
C4 = "60ae385b986ee4fb123616f7284da348d8ca2f03a8f415650b2f7979f44dc65c"
C5 = "db2f3552b87723c5fdac38a72c5188a4bc90784a9b1ad24c32da7c851c11c340"
C6 = "7320fecd05281012815682801832f06d98805a492dbfd62ab840dc43f7735a2a"
C7 = "fff5eb390ff8c79d9449fde4e3ae95533da02d14cd4bd5e865bcab65c77e8ffe"
C8 = "dc9ef9750910e702b14b52871f117efce44f8e08f7522de73a33fbff01789be2"
C9 = "ea4207fbe0a7af94c293b9319b22a016f76fdfe9b1937120a201eb92b209df3c"
C10 = "b985444f9b54a180b808230ddcc573a735470d83c8cfe696ea3fdb8e2e89d2db"
C11 = "92b8ea02dba5559021217c82860e889707d8c0664646093549bbcf3d9cc04fac"
C12 = "f3920ad6db3a30a959b963753355568442950903885652a66ccd0c57c816d82b"
C13 = "5cd2d2f06d8478cca206026327c42c23c751295c6905cdd671c8a1cf36518fdd"
C14 = "d21d6cd9a0de1cc3893227a7de6d64f50f313dd564adf2c92ba1b7d2cb501b53"
C15 = "f35e2826b14e37c91d4e0cd790d7e332e6b0f29e16d325ee8d3a432ca5ff71a1"
C16 = "f8fd0decc34c151b76dba3141356b8abbd7a49c120b3082a4b2aec2020aa7a9c"
U0 = "369483ff-a680-4cc3-9100-b480fc19956a"
U1 = "caeefca0-afbf-4fcc-86a5-06df81341607"
U2 = "96f2231c-9b22-4c2f-8fb1-9ea5b7944fc8"
U3 = "99cf680a-62fa-47da-9718-c121b729d96b"
U4 = "98cdb312-d8fd-4208-af72-533b03c78caa"
U5 = "b4a75950-c35b-47c9-bf07-4f4f645eaf7b"
U6 = "66501c52-2137-4b02-96a2-9fca5b863bf9"
U7 = "2cdf88f4-b4e6-460c-bb77-c75306303852"
U8 = "97a9aa7e-1380-4574-ac03-cb1bf4b1074e"
U9 = "bd1daba1-ba42-4afd-99a9-18c9f07de5b1"
STATIC_POD_UID = "b6be8a36ac18b90c1e06e60fac20a0bc"


def _esc(uid: str) -> str:
    """Escape a pod UID as the kubelet's systemd driver does."""
    return uid.replace("-", "_")


BURSTABLE_POD0 = (
    f"/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{_esc(U0)}.slice"
)

# pid -> what its cgroup file says: container ID, runtime, pod UID, unit, chosen path.
CGROUPS: dict[int, CgroupIdentity] = {
    # cgroup v2, systemd driver, CRI-O, Burstable pod.
    41001: CgroupIdentity(C0, "crio", U0, None, f"{BURSTABLE_POD0}/crio-{C0}.scope"),
    # cgroup v2, systemd driver, CRI-O, Guaranteed pod (no QoS level).
    41002: CgroupIdentity(
        C1,
        "crio",
        U1,
        None,
        f"/kubepods.slice/kubepods-pod{_esc(U1)}.slice/crio-{C1}.scope",
    ),
    # cgroup v1, systemd driver, CRI-O; one line per hierarchy, rdma left at "/".
    41003: CgroupIdentity(
        C2,
        "crio",
        U2,
        None,
        "/kubepods.slice/kubepods-burstable.slice/"
        f"kubepods-burstable-pod{_esc(U2)}.slice/crio-{C2}.scope",
    ),
    # cgroup v2, containerd, kubelet in its own slice.
    41004: CgroupIdentity(
        C3,
        "containerd",
        U3,
        None,
        "/kubelet.slice/kubelet-kubepods.slice/kubelet-kubepods-burstable.slice/"
        f"kubelet-kubepods-burstable-pod{_esc(U3)}.slice/cri-containerd-{C3}.scope",
    ),
    # kind: a pod's container inside the node's Docker container; the inner one wins.
    41005: CgroupIdentity(
        C5,
        "containerd",
        U4,
        None,
        f"/system.slice/docker-{C4}.scope/kubelet.slice/kubelet-kubepods.slice/"
        "kubelet-kubepods-besteffort.slice/"
        f"kubelet-kubepods-besteffort-pod{_esc(U4)}.slice/cri-containerd-{C5}.scope",
    ),
    # cgroup v1, containerd, "<slice>:<prefix>:<id>" written as one component.
    41006: CgroupIdentity(
        C6,
        "containerd",
        U5,
        None,
        "/system.slice/containerd.service/"
        f"kubepods-besteffort-pod{_esc(U5)}.slice:cri-containerd:{C6}",
    ),
    # cgroup v1, cgroupfs driver: the path does not name the runtime.
    41007: CgroupIdentity(C7, None, U6, None, f"/kubepods/burstable/pod{U6}/{C7}"),
    # cgroup v2, cgroupfs driver, Guaranteed pod.
    41008: CgroupIdentity(C8, None, U7, None, f"/kubepods/pod{U7}/{C8}"),
    # Plain Docker, cgroup v1, systemd driver.
    41009: CgroupIdentity(C9, "docker", None, None, f"/system.slice/docker-{C9}.scope"),
    # Plain Docker, cgroup v2.
    41010: CgroupIdentity(
        C10, "docker", None, None, f"/system.slice/docker-{C10}.scope"
    ),
    # Rootless Podman, with its "container" sub-cgroup.
    41011: CgroupIdentity(
        C11,
        "podman",
        None,
        None,
        "/user.slice/user-1000.slice/user@1000.service/user.slice/"
        f"libpod-{C11}.scope/container",
    ),
    # Rootless kubelet with containerd: no pod level in the path.
    41012: CgroupIdentity(
        C12,
        "containerd",
        None,
        None,
        "/user.slice/user-1001.slice/user@1001.service/user.slice/"
        f"cri-containerd-{C12}.scope",
    ),
    # Seen from a private cgroup namespace: the path climbs out of the reader's root.
    41013: CgroupIdentity(
        C13,
        "containerd",
        U9,
        None,
        f"/../../kubepods-besteffort-pod{_esc(U9)}.slice/cri-containerd-{C13}.scope",
    ),
    # Hybrid: v1 controllers hold the container, the unified hierarchy only "/".
    41014: CgroupIdentity(C14, "docker", None, None, f"/docker/{C14}"),
    # A systemd service on the host.
    41015: CgroupIdentity(
        None, None, None, "ollama.service", "/system.slice/ollama.service"
    ),
    # A tmux window in a user's session.
    41016: CgroupIdentity(
        None,
        None,
        None,
        f"tmux-spawn-{U8}.scope",
        f"/user.slice/user-1000.slice/user@1000.service/tmux-spawn-{U8}.scope",
    ),
    # CRI-O's conmon lives in the pod but is not the container it monitors.
    41017: CgroupIdentity(
        None, None, U0, None, f"{BURSTABLE_POD0}/crio-conmon-{C0}.scope"
    ),
    # A kernel thread sits at the root.
    41018: CgroupIdentity(None, None, None, None, "/"),
    # A login session's scope.
    41019: CgroupIdentity(
        None,
        None,
        None,
        "session-4.scope",
        "/user.slice/user-1000.slice/session-4.scope",
    ),
}

# pid -> ppid, start ticks, comm, argv, real uid.
PROCESSES: dict[int, tuple[int, int, str, tuple[str, ...], int]] = {
    41001: (
        40990,
        8812345,
        "python3",
        (
            "python3",
            "-m",
            "vllm.entrypoints.openai.api_server",
            "--model",
            "/models/llama-3.1-8b-instruct",
            "--port",
            "8000",
        ),
        1001,
    ),
    41002: (
        40991,
        8813001,
        "text-generation",
        (
            "/opt/conda/bin/python3.11",
            "/opt/conda/bin/text-generation-server",
            "serve",
            "/data/mistral-7b-instruct",
            "--port",
            "5000",
        ),
        0,
    ),
    41003: (
        40992,
        8814500,
        "python",
        ("python", "serve.py", "--device", "cuda:0"),
        1000,
    ),
    41004: (
        40993,
        9020011,
        "tritonserver",
        ("tritonserver", "--model-repository=/models", "--http-port=8000"),
        1000,
    ),
    41005: (
        40994,
        9120400,
        "llama-server",
        (
            "/app/llama-server",
            "-m",
            "/models/qwen2.5-7b-instruct-q4_k_m.gguf",
            "--host",
            "0.0.0.0",
            "--port",
            "8080",
            "-ngl",
            "99",
        ),
        0,
    ),
    41006: (
        40995,
        9233012,
        "python3",
        (
            "python3",
            "-m",
            "sglang.launch_server",
            "--model-path",
            "/models/gemma-2-9b-it",
            "--port",
            "30000",
        ),
        0,
    ),
    41007: (40996, 9301777, "ollama", ("/bin/ollama", "serve"), 0),
    41008: (40997, 9402220, "python", ("python", "-u", "infer.py"), 1000),
    41009: (
        40998,
        9510000,
        "python3",
        ("python3", "bench.py", "--batch-size", "32"),
        0,
    ),
    41010: (
        40999,
        9620004,
        "llama-server",
        ("/llama-server", "--model", "/models/phi-3-mini-4k-instruct-q8_0.gguf"),
        0,
    ),
    41011: (
        41000,
        9730100,
        "llama-server",
        (
            "llama-server",
            "-m",
            "/models/llama-3.2-3b-instruct-q4_k_m.gguf",
            "--port",
            "8081",
        ),
        1000,
    ),
    41012: (40981, 9800420, "python3", ("python3", "worker.py"), 231072),
    41013: (
        40982,
        9901234,
        "python3",
        (
            "python3",
            "-m",
            "vllm.entrypoints.openai.api_server",
            "--model",
            "/models/qwen2.5-14b-instruct",
        ),
        1000,
    ),
    41014: (40983, 10002345, "python", ("python", "app.py"), 0),
    41015: (
        40984,
        10100999,
        "ollama",
        (
            "/usr/local/bin/ollama",
            "runner",
            "--model",
            "/usr/share/ollama/.ollama/models/blobs/sha256-6a0746a1ec1a",
            "--ctx-size",
            "8192",
            "--port",
            "39745",
        ),
        997,
    ),
    41016: (
        40985,
        10203040,
        "python3",
        ("python3", "train.py", "--epochs", "3"),
        1000,
    ),
    41017: (
        40986,
        8812100,
        "conmon",
        (
            "/usr/bin/conmon",
            "-b",
            f"/run/containers/storage/overlay-containers/{C0}/userdata",
            "-c",
            C0,
            "--exit-dir",
            "/var/run/crio/exits",
        ),
        0,
    ),
    41018: (2, 412, "kworker/3:1H", (), 0),
    # A setuid program: real uid 1000, effective uid 0.
    41019: (41016, 10305060, "x) (y z)", ("/home/alice/bin/x) (y z)", "--flag"), 1000),
}


def _expected_info(pid: int) -> ProcessInfo:
    ppid, start_ticks, command, cmdline, uid = PROCESSES[pid]
    cgroup = CGROUPS[pid]
    return ProcessInfo(
        pid=pid,
        ppid=ppid,
        start_ticks=start_ticks,
        command=command,
        cmdline=cmdline,
        uid=uid,
        user=USERS.get(uid),
        container_id=cgroup.container_id,
        container_runtime=cgroup.container_runtime,
        pod_uid=cgroup.pod_uid,
        systemd_unit=cgroup.systemd_unit,
        cgroup_path=cgroup.path,
    )


def _resolver(root: Path = PROC) -> ProcessResolver:
    return ProcessResolver(root, user_name=USERS.get)


def _copy(pid: int, root: Path) -> Path:
    """Copy one fixture process under ``root`` and return its directory."""
    return Path(shutil.copytree(PROC / str(pid), root / str(pid)))


def _set_stat(directory: Path, *, ppid: int, start_ticks: int) -> None:
    """Rewrite the parent and start time in a fixture's stat file."""
    stat = directory / "stat"
    head, _, tail = stat.read_text().rpartition(")")
    fields = tail.split()
    fields[1], fields[19] = str(ppid), str(start_ticks)
    stat.write_text(f"{head}) {' '.join(fields)}\n")


def test_fixture_tree_and_tables_agree() -> None:
    pids = {int(path.name) for path in PROC.iterdir()}
    assert pids == set(CGROUPS) == set(PROCESSES)


@pytest.mark.parametrize("pid", sorted(CGROUPS))
def test_parse_cgroup_reads_every_fixture_shape(pid: int) -> None:
    text = (PROC / str(pid) / "cgroup").read_text()
    assert parse_cgroup(text) == CGROUPS[pid]


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        pytest.param(
            f"12:cpuset:/docker/{C15}\n",
            CgroupIdentity(C15, "docker", None, None, f"/docker/{C15}"),
            id="docker-cgroupfs-v1",
        ),
        pytest.param(
            f"0::/system.slice/nerdctl-{C15}.scope\n",
            CgroupIdentity(
                C15, "containerd", None, None, f"/system.slice/nerdctl-{C15}.scope"
            ),
            id="nerdctl",
        ),
        pytest.param(
            f"0::/machine.slice/libpod-{C15}.scope/container\n",
            CgroupIdentity(
                C15,
                "podman",
                None,
                None,
                f"/machine.slice/libpod-{C15}.scope/container",
            ),
            id="podman-rootful",
        ),
        pytest.param(
            f"0::/machine.slice/libpod-conmon-{C15}.scope\n",
            CgroupIdentity(
                None,
                None,
                None,
                f"libpod-conmon-{C15}.scope",
                f"/machine.slice/libpod-conmon-{C15}.scope",
            ),
            id="podman-conmon-is-no-container",
        ),
        pytest.param(
            "0::/kubepods.slice/kubepods-burstable.slice/"
            f"kubepods-burstable-pod{STATIC_POD_UID}.slice/"
            f"cri-containerd-{C15}.scope\n",
            CgroupIdentity(
                C15,
                "containerd",
                STATIC_POD_UID,
                None,
                "/kubepods.slice/kubepods-burstable.slice/"
                f"kubepods-burstable-pod{STATIC_POD_UID}.slice/"
                f"cri-containerd-{C15}.scope",
            ),
            id="static-pod-hash-uid",
        ),
        pytest.param(
            "0::/kubepods.slice/kubepods-besteffort.slice/"
            f"kubepods-besteffort-pod{_esc(U3)}.slice\n",
            CgroupIdentity(
                None,
                None,
                U3,
                None,
                "/kubepods.slice/kubepods-besteffort.slice/"
                f"kubepods-besteffort-pod{_esc(U3)}.slice",
            ),
            id="pod-level-without-container",
        ),
        pytest.param(
            f"0::/system.slice/docker-{C4}.scope/kubelet.slice/kubelet-kubepods.slice/"
            f"kubelet-kubepods-pod{_esc(U4)}.slice\n",
            CgroupIdentity(
                None,
                None,
                U4,
                None,
                f"/system.slice/docker-{C4}.scope/kubelet.slice/kubelet-kubepods.slice/"
                f"kubelet-kubepods-pod{_esc(U4)}.slice",
            ),
            id="kind-pod-level-drops-the-node-container",
        ),
        pytest.param(
            f"0::/system.slice/docker-{C4}.scope/kubelet.slice/kubelet.service\n",
            CgroupIdentity(
                C4,
                "docker",
                None,
                None,
                f"/system.slice/docker-{C4}.scope/kubelet.slice/kubelet.service",
            ),
            id="kind-node-process",
        ),
        pytest.param(
            "0::/../../../system.slice/ollama.service\n",
            CgroupIdentity(
                None,
                None,
                None,
                "ollama.service",
                "/../../../system.slice/ollama.service",
            ),
            id="private-cgroupns-host-service",
        ),
        pytest.param(
            "0::/system.slice/run-containerd-io.containerd.runtime.v2.task-k8s.io-"
            f"{C16}-rootfs.mount\n",
            CgroupIdentity(
                None,
                None,
                None,
                None,
                "/system.slice/run-containerd-io.containerd.runtime.v2.task-k8s.io-"
                f"{C16}-rootfs.mount",
            ),
            id="mount-unit-is-no-container",
        ),
        pytest.param(
            f"0::/system.slice/docker-{C16}.scope (deleted)\n",
            CgroupIdentity(
                C16, "docker", None, None, f"/system.slice/docker-{C16}.scope"
            ),
            id="removed-cgroup",
        ),
        pytest.param(
            "1:name=systemd:/user.slice/user-1000.slice/session-2.scope\n"
            "0::/user.slice/user-1000.slice/session-2.scope\n",
            CgroupIdentity(
                None,
                None,
                None,
                "session-2.scope",
                "/user.slice/user-1000.slice/session-2.scope",
            ),
            id="hybrid-session",
        ),
        pytest.param(
            "3:cpu,cpuacct:/system.slice\n"
            "1:name=systemd:/system.slice/containerd.service\n",
            CgroupIdentity(
                None,
                None,
                None,
                "containerd.service",
                "/system.slice/containerd.service",
            ),
            id="v1-deepest-line-wins",
        ),
        pytest.param(
            "0::/user.slice/user-1000.slice/user@1000.service/app.slice/"
            "app-gnome-firefox-4242.scope\n",
            CgroupIdentity(
                None,
                None,
                None,
                "app-gnome-firefox-4242.scope",
                "/user.slice/user-1000.slice/user@1000.service/app.slice/"
                "app-gnome-firefox-4242.scope",
            ),
            id="innermost-unit",
        ),
        pytest.param(
            "0::/init.scope\n",
            CgroupIdentity(None, None, None, "init.scope", "/init.scope"),
            id="pid-one",
        ),
        pytest.param("", CgroupIdentity(None, None, None, None, ""), id="empty"),
        pytest.param(
            "garbage\n", CgroupIdentity(None, None, None, None, ""), id="malformed"
        ),
    ],
)
def test_parse_cgroup_more_shapes(text: str, expected: CgroupIdentity) -> None:
    assert parse_cgroup(text) == expected


@pytest.mark.parametrize("pid", sorted(PROCESSES))
def test_lookup_reads_every_field(pid: int) -> None:
    assert _resolver().lookup(pid) == _expected_info(pid)


def test_lookup_caches_by_start_time_and_rereads_a_reused_pid(tmp_path: Path) -> None:
    directory = _copy(41015, tmp_path)
    resolver = _resolver(tmp_path)
    first = resolver.lookup(41015)
    assert first == _expected_info(41015)

    # Same start time: only stat is read, the other files are not needed.
    for name in ("comm", "cmdline", "status", "cgroup"):
        (directory / name).unlink()
    assert resolver.lookup(41015) is first

    # The PID now belongs to a new process in a Docker container.
    (directory / "comm").write_text("python3\n")
    (directory / "cmdline").write_bytes(b"python3\0serve.py\0")
    (directory / "status").write_text("Name:\tpython3\nUid:\t1000\t1000\t1000\t1000\n")
    (directory / "cgroup").write_text(f"0::/system.slice/docker-{C16}.scope\n")
    _set_stat(directory, ppid=77, start_ticks=10100999 + 5000)
    second = resolver.lookup(41015)
    assert second == ProcessInfo(
        pid=41015,
        ppid=77,
        start_ticks=10105999,
        command="python3",
        cmdline=("python3", "serve.py"),
        uid=1000,
        user="alice",
        container_id=C16,
        container_runtime="docker",
        pod_uid=None,
        systemd_unit=None,
        cgroup_path=f"/system.slice/docker-{C16}.scope",
    )


def test_cached_process_gets_its_new_parent(tmp_path: Path) -> None:
    directory = _copy(41016, tmp_path)
    resolver = _resolver(tmp_path)
    assert resolver.lookup(41016) == _expected_info(41016)
    _set_stat(directory, ppid=1, start_ticks=10203040)
    info = resolver.lookup(41016)
    assert info is not None
    assert info.ppid == 1
    assert info.cmdline == PROCESSES[41016][3]


def test_vanished_process_is_none(tmp_path: Path) -> None:
    directory = _copy(41001, tmp_path)
    resolver = _resolver(tmp_path)
    assert resolver.lookup(99999) is None
    assert resolver.lookup(41001) is not None
    shutil.rmtree(directory)
    assert resolver.lookup(41001) is None


def test_process_gone_between_reads_is_none(tmp_path: Path) -> None:
    directory = _copy(41001, tmp_path)
    (directory / "cmdline").unlink()
    assert _resolver(tmp_path).lookup(41001) is None


def test_unreadable_file_is_none(tmp_path: Path) -> None:
    directory = _copy(41001, tmp_path)
    (directory / "cgroup").unlink()
    (directory / "cgroup").mkdir()
    assert _resolver(tmp_path).lookup(41001) is None


@pytest.mark.parametrize("stat", ["", "41001 (python3 S 1 2\n", "41001 (x) S 1 2 3\n"])
def test_malformed_stat_is_none(tmp_path: Path, stat: str) -> None:
    directory = _copy(41001, tmp_path)
    (directory / "stat").write_text(stat)
    assert _resolver(tmp_path).lookup(41001) is None


def test_stat_with_parentheses_and_spaces_in_the_command(tmp_path: Path) -> None:
    directory = _copy(41019, tmp_path)
    resolver = _resolver(tmp_path)
    info = resolver.lookup(41019)
    assert info is not None
    assert (info.command, info.ppid, info.start_ticks) == ("x) (y z)", 41016, 10305060)

    # A name built to fool a parser that splits at the first ")".
    trap = "a) R 9 9 9 (b"
    (directory / "comm").write_text(trap + "\n")
    tail = (directory / "stat").read_text().rpartition(")")[2]
    (directory / "stat").write_text(f"41019 ({trap}){tail}")
    _set_stat(directory, ppid=41016, start_ticks=10305061)
    info = resolver.lookup(41019)
    assert info is not None
    assert (info.command, info.ppid, info.start_ticks) == (trap, 41016, 10305061)


def test_forget_except_drops_only_the_dead(tmp_path: Path) -> None:
    kept, dropped = _copy(41008, tmp_path), _copy(41009, tmp_path)
    resolver = _resolver(tmp_path)
    assert resolver.lookup(41008) is not None
    assert resolver.lookup(41009) is not None
    for directory in (kept, dropped):
        (directory / "cmdline").write_bytes(b"changed\0")

    resolver.forget_except(iter([41008, 12345]))

    kept_info, dropped_info = resolver.lookup(41008), resolver.lookup(41009)
    assert kept_info is not None
    assert kept_info.cmdline == PROCESSES[41008][3]
    assert dropped_info is not None
    assert dropped_info.cmdline == ("changed",)


def test_default_user_names_come_from_the_password_database() -> None:
    info = ProcessResolver().lookup(os.getpid())
    assert info is not None
    try:
        expected: str | None = pwd.getpwuid(os.getuid()).pw_name
    except KeyError:
        expected = None
    assert (info.uid, info.user) == (os.getuid(), expected)


def test_real_proc_self() -> None:
    pid = os.getpid()
    info = ProcessResolver().lookup(pid)
    assert info is not None
    assert info.pid == pid
    assert info.ppid == os.getppid()
    assert info.cmdline == tuple(sys.orig_argv)
    # comm is the basename of the file exec'd: the interpreter, or the script that
    # a "#!" line ran through it; truncated to 15 characters.
    assert info.command in {os.path.basename(arg)[:15] for arg in sys.orig_argv[:2]}
    assert info.start_ticks > 0
    assert info.cgroup_path.startswith("/")


def test_started_at_is_boot_time_plus_start_ticks() -> None:
    resolver = ProcessResolver()
    info = resolver.lookup(os.getpid())
    assert info is not None
    started = resolver.started_at(info)
    assert started is not None
    # This test process started a little while ago, not in the future.
    assert time.time() - 3600 < started <= time.time()
