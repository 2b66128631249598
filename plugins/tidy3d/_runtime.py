"""Lazy access to Tidy3D and process-level knobs (logging, BLAS threads).

Nothing here imports tidy3d at module import: ``import qdcavity`` and the plugin registry stay
cheap (tidy3d's own import costs ~2.5 s). :func:`tidy3d` imports it on first use and turns a
missing extra into a :class:`~qdcavity.errors.BackendError` carrying the install command.
"""

from __future__ import annotations

import ctypes
import importlib
import importlib.util
import os
import re
from collections.abc import Iterator
from contextlib import contextmanager
from functools import cache
from importlib.metadata import PackageNotFoundError, version
from types import ModuleType

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
# The local mode solver's eigen-solve is a small sparse problem: with OpenBLAS threads it ran
# 0.8-2.8 s instead of 0.37 s on the 2-core machine (measured, docs/tidy3d.md). numpy is already
# imported by the host, so environment variables are too late; threadpoolctl is used when
# installed, else the set_num_threads entry points of the OpenBLAS libraries already loaded
# (numpy's and scipy's wheels each bundle one) are called through ctypes.

_SETTERS = ("scipy_openblas_set_num_threads64_", "scipy_openblas_set_num_threads",
            "openblas_set_num_threads64_", "openblas_set_num_threads")
_GETTERS = ("scipy_openblas_get_num_threads64_", "scipy_openblas_get_num_threads",
            "openblas_get_num_threads64_", "openblas_get_num_threads")


@cache
def _openblas_handles() -> tuple[tuple[object, object], ...]:
    try:
        with open("/proc/self/maps", encoding="utf-8") as fh:
            paths = sorted(set(re.findall(r"(/\S*openblas\S*\.so\S*)", fh.read())))
    except OSError:  # not Linux
        return ()
    out = []
    for path in paths:
        try:
            lib = ctypes.CDLL(path)
        except OSError:
            continue
        setter = next((getattr(lib, s) for s in _SETTERS if hasattr(lib, s)), None)
        getter = next((getattr(lib, g) for g in _GETTERS if hasattr(lib, g)), None)
        if setter is not None and getter is not None:
            getter.restype = ctypes.c_int
            out.append((setter, getter))
    return tuple(out)


@contextmanager
def blas_threads(n: int = 1) -> Iterator[None]:
    """Limit BLAS threads to ``n`` inside the block (restored afterwards)."""
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:
        threadpool_limits = None
    if threadpool_limits is not None:
        with threadpool_limits(limits=n, user_api="blas"):
            yield
        return
    handles = _openblas_handles()
    saved = []
    for setter, getter in handles:
        try:
            saved.append((setter, int(getter())))
            setter(ctypes.c_int(n))
        except Exception:  # noqa: BLE001
            continue
    try:
        yield
    finally:
        for setter, old in saved:
            try:
                setter(ctypes.c_int(old))
            except Exception:  # noqa: BLE001
                pass
