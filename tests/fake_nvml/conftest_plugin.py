"""Pytest fixtures that put the fake NVML driver under the real pynvml."""

from __future__ import annotations

import ctypes
import itertools
import os
from collections.abc import Iterator, Mapping
from pathlib import Path

import pynvml
import pytest

from gpumeter.sim.scenario import Scenario
from tests.fake_nvml import SCENARIO_ENV, build_fake_nvml, write_scenario

__all__ = ["FakeNvml", "fake_nvml", "fake_nvml_lib"]

# The pre-loaded library stays referenced for the whole session.
_preloaded: list[ctypes.CDLL] = []


def _address(lib: ctypes.CDLL, name: str) -> int | None:
    return ctypes.cast(getattr(lib, name), ctypes.c_void_p).value


@pytest.fixture(scope="session")
def fake_nvml_lib(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Builds the fake driver once and loads it into this process.

    pynvml opens the bare name ``libnvidia-ml.so.1``; glibc answers that with an
    already loaded library of the same SONAME, so loading the fake by path first
    makes every in-process pynvml call reach it.
    """
    library = build_fake_nvml(tmp_path_factory.mktemp("fake_nvml"))
    lib = ctypes.CDLL(str(library), mode=ctypes.RTLD_GLOBAL)
    _preloaded.append(lib)
    ours = _address(lib, "nvmlInitWithFlags")
    loaded = pynvml.nvmlLib
    by_name = loaded if loaded is not None else ctypes.CDLL("libnvidia-ml.so.1")
    if _address(by_name, "nvmlInitWithFlags") != ours:
        raise RuntimeError(
            "another libnvidia-ml.so.1 was loaded before the fake NVML; "
            "the fake must be loaded before anything calls nvmlInit"
        )
    return library


class FakeNvml:
    """Controls the fake driver for one test.

    Attributes:
        path: the fake ``libnvidia-ml.so.1``.
        lib_dir: its directory, for ``LD_LIBRARY_PATH`` in subprocesses.
        scenario_path: the scenario file currently served, once loaded.
    """

    def __init__(
        self, library: Path, workdir: Path, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        self.path = library
        self.lib_dir = library.parent
        self.scenario_path: Path | None = None
        self._workdir = workdir
        self._monkeypatch = monkeypatch
        self._names = itertools.count(1)

    def load(self, scenario: Scenario) -> Path:
        """Serves a new machine from the next ``nvmlInit()`` on.

        Shuts NVML down completely, then points the driver at a new scenario file.
        A new file means a fresh start: energy counters and utilization samples
        begin again from the scenario.

        Args:
            scenario: the machine to serve.

        Returns:
            The scenario file, also in ``os.environ["FAKE_NVML_SCENARIO"]``.
        """
        self.shutdown_all()
        path = self._workdir / f"scenario-{next(self._names)}.txt"
        write_scenario(scenario, path)
        self._monkeypatch.setenv(SCENARIO_ENV, str(path))
        self.scenario_path = path
        return path

    def update(self, scenario: Scenario) -> None:
        """Rewrites the current scenario file in place, as a hot reload.

        The driver notices on its next call. Energy counters carry on for GPUs
        whose ``energy_mj`` is unchanged and restart where it changed.

        Args:
            scenario: the machine's new state.

        Raises:
            RuntimeError: nothing was loaded yet.
        """
        if self.scenario_path is None:
            raise RuntimeError("load() a scenario before updating it")
        write_scenario(scenario, self.scenario_path)

    def env(self, base: Mapping[str, str] | None = None) -> dict[str, str]:
        """Returns an environment in which a subprocess's pynvml finds the fake.

        Args:
            base: the environment to extend; ``os.environ`` by default.

        Returns:
            A copy of ``base`` with ``LD_LIBRARY_PATH`` and the scenario variable.
        """
        env = dict(os.environ if base is None else base)
        previous = env.get("LD_LIBRARY_PATH")
        env["LD_LIBRARY_PATH"] = os.pathsep.join(
            [str(self.lib_dir), *([previous] if previous else [])]
        )
        if self.scenario_path is not None:
            env[SCENARIO_ENV] = str(self.scenario_path)
        return env

    def shutdown_all(self) -> None:
        """Balances every outstanding ``nvmlInit()`` with ``nvmlShutdown()``."""
        for _ in range(100_000):
            try:
                pynvml.nvmlShutdown()
            except pynvml.NVMLError_Uninitialized:
                return
            except pynvml.NVMLError:
                # The scenario made nvmlShutdown itself fail (a missing
                # function, say); serve one that does not, then try again.
                if self.scenario_path is None:
                    raise
                write_scenario(Scenario(gpus=()), self.scenario_path)
        raise RuntimeError("nvmlShutdown never reported NVML as uninitialized")


@pytest.fixture
def fake_nvml(
    fake_nvml_lib: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> Iterator[FakeNvml]:
    """Gives the test a controller for the fake driver; call ``load()`` first."""
    workdir = tmp_path / "fake_nvml"
    workdir.mkdir()
    controller = FakeNvml(fake_nvml_lib, workdir, monkeypatch)
    yield controller
    controller.shutdown_all()
