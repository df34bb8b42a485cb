"""Runs promtool from Debian's prometheus package against an exposition."""

from __future__ import annotations

import shutil
import subprocess

import pytest


def check_metrics(exposition: str) -> list[str]:
    """Returns promtool's findings for an exposition; empty when it is clean."""
    promtool = shutil.which("promtool")
    if promtool is None:
        pytest.fail("promtool not found: install Debian's prometheus package")
    result = subprocess.run(
        [promtool, "check", "metrics"],
        input=exposition,
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    findings = [line for line in (result.stdout + result.stderr).splitlines() if line]
    if result.returncode != 0 and not findings:
        findings = [f"promtool exited {result.returncode}"]
    return findings
