"""The Lifelong control plane: API, settings, Redis store, ingest, tracking, supervisor and CLI."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("lifelong")
except PackageNotFoundError:  # running from a source tree that was not installed
    __version__ = "0.0.0"

__all__ = ["__version__"]
