"""Meep backend plugin: real MIT Meep (FDTD) run in a worker process (docs/meep.md).

Importing this module is cheap: no subprocess is started and Meep is not imported here.
"""

from __future__ import annotations

from qdcavity.hookspecs import hookimpl

from .backend import MeepBackend

__all__ = ["MeepBackend", "qdcavity_backends"]


@hookimpl
def qdcavity_backends() -> list:
    return [MeepBackend()]
