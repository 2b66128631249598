"""qdcavity: optical cavity design for quantum-dot LEDs on pluggable solvers."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("qdcavity")
except PackageNotFoundError:  # running from a source tree that is not installed
    __version__ = "0+unknown"
