"""The tidy3d backend, registered through the ``qdcavity`` entry point.

Importing this package never imports tidy3d (about 2.5 s): the backend imports it on first use.
Install with ``pip install 'qdcavity[tidy3d]'``. Method, grid, tolerances and the web job flow
are described in docs/tidy3d.md.
"""

from qdcavity.hookspecs import hookimpl

from .backend import Tidy3DBackend


@hookimpl
def qdcavity_backends() -> list[Tidy3DBackend]:
    return [Tidy3DBackend()]
