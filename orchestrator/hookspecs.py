"""pluggy hook specifications: the one hook through which backends register.

A plugin is a module (or object) registered under the entry-point group ``qdcavity``::

    [project.entry-points.qdcavity]
    mysolver = "mysolver_qdcavity.plugin"

and implementing::

    from qdcavity.hookspecs import hookimpl

    @hookimpl
    def qdcavity_backends():
        return [MySolverBackend()]
"""

from __future__ import annotations

import pluggy

PROJECT = "qdcavity"
hookspec = pluggy.HookspecMarker(PROJECT)
hookimpl = pluggy.HookimplMarker(PROJECT)


@hookspec
def qdcavity_backends() -> list:  # list[qdcavity.backend.Backend]
    """Return the backend objects this plugin provides."""
