"""Result files: netCDF4 with complex values, strings and units round-tripping exactly."""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path

import xarray as xr

from .errors import QdcavityError

ENGINE = "netcdf4"


def write_netcdf(ds: xr.Dataset, path: str | Path) -> Path:
    """Write atomically (temporary file, then rename): a crash never leaves half a file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        ds.to_netcdf(tmp, engine=ENGINE, auto_complex=True)
        os.replace(tmp, path)
    except Exception as exc:
        Path(tmp).unlink(missing_ok=True)
        if isinstance(exc, OSError):
            raise QdcavityError(f"cannot write {path}: {exc.strerror or exc}") from None
        raise
    return path


def read_netcdf(path: str | Path) -> xr.Dataset:
    """Read a result file fully into memory (complex values restored)."""
    try:
        with xr.open_dataset(path, engine=ENGINE, auto_complex=True) as ds:
            return ds.load()
    except FileNotFoundError:
        raise QdcavityError(f"no such result file: {path}") from None


def analysis_view(ds: xr.Dataset, name: str) -> xr.Dataset:
    """The plain contract dataset of analysis ``name`` inside a study result."""
    names = json.loads(ds.attrs.get("analyses", "[]"))
    if names == [name]:
        return ds
    if name not in names:
        raise QdcavityError(f"no analysis '{name}' in this result; it has {names}")
    prefix = f"{name}."
    keep = [v for v in ds.variables if str(v).startswith(prefix)]
    sub = ds[[v for v in keep if v not in ds.dims]]
    return sub.rename({v: str(v)[len(prefix):] for v in [*sub.variables, *sub.dims]
                       if str(v).startswith(prefix)})
