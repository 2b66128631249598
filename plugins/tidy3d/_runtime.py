"""Lazy access to Tidy3D and process-level knobs (logging, BLAS threads).

Nothing here imports tidy3d at module import: ``import qdcavity`` and the plugin registry stay
cheap (tidy3d's own import costs ~2.5 s). :func:`tidy3d` imports it on first use and turns a
missing extra into a :class:`~qdcavity.errors.BackendError` carrying the install command.
"""

from __future__ import annotations

import importlib
import importlib.util
import os
from functools import cache
from importlib.metadata import PackageNotFoundError, version
from types import ModuleType

from threadpoolctl import threadpool_limits

from qdcavity.errors import BackendError

INSTALL_HINT = "pip install 'qdcavity[tidy3d]'"
SUPPORTED = ">=2.12,<2.13"


def find_tidy3d() -> bool:
    """True if tidy3d is importable, without importing it."""
    return importlib.util.find_spec("tidy3d") is not None


def tidy3d_version() -> str | None:
    try:
        return version("tidy3d")
    except PackageNotFoundError:
        return None


def analyses_note(cloud: list[str]) -> str:
    """Which analyses run where, and whether ``SIMCLOUD_APIKEY`` is set (no tidy3d import)."""
    key = ("SIMCLOUD_APIKEY is set" if os.environ.get("SIMCLOUD_APIKEY") else
           "no SIMCLOUD_APIKEY in the environment; set it or run `tidy3d configure "
           "--apikey=<key>`, dry_run = true builds and validates without one")
    return (f"modes: local, no API key; {', '.join(cloud)}: Tidy3D cloud FDTD, API key "
            f"needed ({key})")


def _missing() -> BackendError:
    return BackendError(f"the tidy3d backend needs the 'tidy3d' extra; install it with "
                        f"`{INSTALL_HINT}`", field="backend")


@cache
def tidy3d() -> ModuleType:
    """``import tidy3d`` (once), quietened to errors only."""
    if not find_tidy3d():
        raise _missing()
    try:
        td = importlib.import_module("tidy3d")
    except ImportError as exc:  # installed but broken (e.g. numpy ABI mismatch)
        raise BackendError(f"tidy3d is installed but cannot be imported ({exc}); reinstall "
                           f"with `{INSTALL_HINT}`", field="backend") from exc
    # tidy3d warns on every local mode solve that it has no subpixel averaging; this backend
    # does its own interface averaging (docs/tidy3d.md), so only errors are shown.
    # (``td.config.logging_level`` raises in 2.12; the section is ``logging.level``.)
    try:
        td.config.logging.level = "ERROR"
    except Exception:  # noqa: BLE001  a logging knob must never break a solve
        pass
    return td


def tidy3d_module(name: str) -> ModuleType:
    """A tidy3d submodule (``tidy3d.web``, ``tidy3d.plugins.mode``...), importing tidy3d first."""
    tidy3d()
    return importlib.import_module(name)


# ----- BLAS threads ------------------------------------------------------------------------
def blas_threads(n: int = 1) -> threadpool_limits:
    """Limit BLAS threads to ``n`` inside a ``with`` block (restored afterwards).

    The local mode solver's eigen-solve is a small sparse problem: with OpenBLAS threads it ran
    0.8-2.8 s instead of 0.37 s on the 2-core machine (measured, docs/tidy3d.md). numpy is
    already imported by the host, so environment variables come too late: threadpoolctl sets
    the thread count of the BLAS libraries already loaded.
    """
    return threadpool_limits(limits=n, user_api="blas")
