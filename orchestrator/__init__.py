"""qdcavity: optical cavity design for quantum-dot LEDs on pluggable solvers.

Public API (mirrors the CLI)::

    stack = qdcavity.load_stack("TE-DIZO")
    ds = qdcavity.solve(stack, "modes", backend="tmm", wavelength_nm=630)
    result = qdcavity.run_study("study.toml")
"""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("qdcavity")
except PackageNotFoundError:  # running from a source tree that is not installed
    __version__ = "0+unknown"

from .api import solve  # noqa: E402
from .runner import run_study  # noqa: E402
from .stack import Stack, load_stack  # noqa: E402

__all__ = ["Stack", "__version__", "load_stack", "run_study", "solve"]
