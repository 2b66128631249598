"""Run the FD eigen-solves with one BLAS thread.

The matrices are small (a few thousand unknowns) and ARPACK calls BLAS on short vectors: with
OpenBLAS threads on a loaded 2-core machine one TE-DIZO wavelength took 9-40 s instead of 1.2 s.
numpy is already imported by the host, so environment variables come too late: threadpoolctl is
used when installed, else the ``*_set_num_threads`` entry points of the OpenBLAS libraries
already loaded (numpy's and scipy's wheels each bundle one) through ctypes. Results do not
depend on the thread count.
"""

from __future__ import annotations

import ctypes
import re
from collections.abc import Iterator
from contextlib import contextmanager
from functools import cache

_SETTERS = ("scipy_openblas_set_num_threads64_", "scipy_openblas_set_num_threads",
            "openblas_set_num_threads64_", "openblas_set_num_threads")
_GETTERS = ("scipy_openblas_get_num_threads64_", "scipy_openblas_get_num_threads",
            "openblas_get_num_threads64_", "openblas_get_num_threads")


@cache
def _openblas() -> tuple[tuple[object, object], ...]:
    try:
        with open("/proc/self/maps", encoding="utf-8") as fh:
            paths = sorted(set(re.findall(r"(/\S*openblas\S*\.so\S*)", fh.read())))
    except OSError:  # not Linux: leave the threads alone
        return ()
    found = []
    for path in paths:
        try:
            lib = ctypes.CDLL(path)
        except OSError:
            continue
        setter = next((getattr(lib, s) for s in _SETTERS if hasattr(lib, s)), None)
        getter = next((getattr(lib, g) for g in _GETTERS if hasattr(lib, g)), None)
        if setter is not None and getter is not None:
            getter.restype = ctypes.c_int
            found.append((setter, getter))
    return tuple(found)


@contextmanager
def single_blas_thread() -> Iterator[None]:
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:
        threadpool_limits = None
    if threadpool_limits is not None:
        with threadpool_limits(limits=1, user_api="blas"):
            yield
        return
    saved = []
    for setter, getter in _openblas():
        try:
            saved.append((setter, int(getter())))
            setter(ctypes.c_int(1))
        except Exception:  # noqa: BLE001  best effort: never fail a solve over threads
            continue
    try:
        yield
    finally:
        for setter, old in saved:
            try:
                setter(ctypes.c_int(old))
            except Exception:  # noqa: BLE001
                pass
