"""Runs gpumeter as a subprocess and scrapes it, for end-to-end tests."""

from __future__ import annotations

import os
import random
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import TypeVar

from prometheus_client.parser import text_string_to_metric_families

T = TypeVar("T")

Series = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def free_server_port() -> int:
    """A free port below Linux's ephemeral range, where servers are configured.

    Discovery takes a listener on an ephemeral port for a peer connection
    (NCCL, a rendezvous store), not an inference server, so a test server that
    must be discovered listens below 32768.
    """
    for port in random.sample(range(20_000, 32_000), 200):
        with socket.socket() as sock:
            try:
                sock.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    raise RuntimeError("no free port between 20000 and 32000")


class Gpumeter:
    """A ``gpumeter`` subprocess with its stderr kept in a file.

    Args:
        args: the command's arguments, after ``gpumeter``.
        env: the child's environment.
        workdir: where the log file goes.
    """

    def __init__(self, args: Sequence[str], env: Mapping[str, str], workdir: Path):
        self.log_path = workdir / "gpumeter.log"
        self._log = self.log_path.open("wb")
        self.process = subprocess.Popen(
            [sys.executable, "-m", "gpumeter", *args],
            env=dict(env),
            stdout=subprocess.PIPE,
            stderr=self._log,
        )

    def log(self) -> str:
        """What the process has written to stderr so far."""
        return self.log_path.read_text(errors="replace")

    def stop(self, timeout: float = 10.0, *, signal_first: bool = True) -> int:
        """Sends SIGTERM (unless told not to) and waits; returns the exit status."""
        if signal_first and self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
        try:
            status = self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            self.process.kill()
            status = self.process.wait(timeout)
        self._log.close()
        if self.process.stdout is not None:
            self.process.stdout.close()
        return status


def get(url: str, timeout: float = 2.0) -> tuple[int, str]:
    """GETs a URL; returns the status and body (an HTTP error's too)."""
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:
            return int(response.status), response.read().decode()
    except urllib.error.HTTPError as error:
        return int(error.code), error.read().decode()


def series(text: str) -> Series:
    """Every sample of an exposition, by name and sorted labels."""
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def wait_for(
    probe: Callable[[], T | None], timeout: float, what: str, interval: float = 0.1
) -> T:
    """Calls ``probe`` until it returns something other than None.

    Raises:
        AssertionError: ``timeout`` seconds passed first.
    """
    deadline = time.monotonic() + timeout
    last_error: Exception | None = None
    while time.monotonic() < deadline:
        try:
            result = probe()
        except (OSError, ValueError) as exc:  # not up yet, or a half-read body
            last_error = exc
            result = None
        if result is not None:
            return result
        time.sleep(interval)
    raise AssertionError(f"timed out waiting for {what} (last error: {last_error})")


def base_env() -> dict[str, str]:
    """The test process's environment, without gpumeter settings leaking in."""
    return {k: v for k, v in os.environ.items() if not k.startswith("GPUMETER_")}
