"""The GPU source: NVML readings as immutable samples keyed by UUID."""

from gpumeter.gpus.nvml import NvmlSource, load_pynvml
from gpumeter.gpus.records import GpuCapabilities, GpuDevice, GpuSample, ProcessSample

__all__ = [
    "GpuCapabilities",
    "GpuDevice",
    "GpuSample",
    "NvmlSource",
    "ProcessSample",
    "load_pynvml",
]
