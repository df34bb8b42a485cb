"""A simulated NVIDIA node and NVML, for the demo and the tests; no GPU needed."""

from gpumeter.sim.demo_node import DemoJob, DemoWorkload, build_demo_node, demo_jobs
from gpumeter.sim.node import (
    EnergyTruth,
    SimGpu,
    SimMigInstance,
    SimNode,
    SimProcess,
    UtilizationSample,
)
from gpumeter.sim.nvml import SimDeviceHandle, SimulatedNvml
from gpumeter.sim.scenario import (
    Scenario,
    ScenarioGpu,
    ScenarioMigInstance,
    ScenarioProcess,
)

__all__ = [
    "DemoJob",
    "DemoWorkload",
    "EnergyTruth",
    "Scenario",
    "ScenarioGpu",
    "ScenarioMigInstance",
    "ScenarioProcess",
    "SimDeviceHandle",
    "SimGpu",
    "SimMigInstance",
    "SimNode",
    "SimProcess",
    "SimulatedNvml",
    "UtilizationSample",
    "build_demo_node",
    "demo_jobs",
]
