"""The built-in transfer-matrix backend, registered through the ``qdcavity`` entry point."""

from qdcavity.hookspecs import hookimpl

from .backend import TmmBackend


@hookimpl
def qdcavity_backends() -> list[TmmBackend]:
    return [TmmBackend()]
