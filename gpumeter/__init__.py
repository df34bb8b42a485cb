"""gpumeter: what a token costs on your own NVIDIA GPUs."""

__all__ = ["__version__"]

__version__ = "0.1.0"
