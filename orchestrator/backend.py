"""The backend interface every solver plugin implements (built-in or third-party)."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, ClassVar

import xarray as xr

from .analyses import Analysis
from .stack import Stack


@dataclass(frozen=True)
class Availability:
    """Whether a backend can run here, and if not, why and how to fix it."""

    available: bool
    reason: str = ""
    install_hint: str = ""


class Backend(ABC):
    """A solver answering some analyses for planar stacks.

    Subclasses set ``name``, ``version`` (enters every cache key: bump it whenever results
    change) and ``analyses`` (the analysis kinds it answers), and implement :meth:`run`.
    ``tolerances`` declares, per result variable, the absolute agreement with an exact solver
    the backend promises at its default options (used by ``qdcavity compare`` and the
    conformance suite).
    """

    name: ClassVar[str]
    version: ClassVar[str]
    analyses: ClassVar[frozenset[str]]
    description: ClassVar[str] = ""
    tolerances: ClassVar[Mapping[str, float]] = {}

    def availability(self) -> Availability:
        """Cheap check (no heavy imports of the solver unless needed)."""
        return Availability(True)

    def solver_versions(self) -> dict[str, str]:
        """Versions of the underlying solver libraries, recorded in result provenance."""
        return {}

    @abstractmethod
    def run(self, stack: Stack, analysis: Analysis, options: Mapping[str, Any]) -> xr.Dataset:
        """Answer ``analysis`` for ``stack``; return a dataset obeying the analysis contract."""
