"""netCDF4 result files: complex values, strings, units and attributes round-trip exactly."""

from __future__ import annotations

import numpy as np
import pytest
import xarray as xr

from qdcavity.contracts import with_units
from qdcavity.errors import QdcavityError
from qdcavity.results import analysis_view, read_netcdf, write_netcdf


def _modes_like() -> xr.Dataset:
    rng = np.random.default_rng(1)
    neff = rng.normal(size=(2, 2, 3)) + 1j * rng.random((2, 2, 3))
    neff[0, 1, 2] = np.nan + 0j  # an empty mode slot
    ds = xr.Dataset(
        {
            "neff": (("wavelength_nm", "polarization", "mode"), neff),
            "label": (("wavelength_nm", "polarization", "mode"),
                      np.array([[["TE0", "TE1", "SPP0"], ["TM0", "TM1", ""]]] * 2)),
            "n_modes": (("wavelength_nm", "polarization"), np.array([[3, 2], [3, 3]])),
        },
        coords={"wavelength_nm": [620.0, 630.0], "polarization": ["TE", "TM"],
                "mode": [0, 1, 2]},
        attrs={"study": "name = 'x'\n[[analyses]]\nkind = 'modes'\n", "n_failed": 0},
    )
    return with_units(ds, "modes")


def test_round_trip_is_exact(tmp_path) -> None:
    ds = _modes_like()
    back = read_netcdf(write_netcdf(ds, tmp_path / "r.nc"))
    xr.testing.assert_identical(back, ds)
    assert back.neff.dtype == np.complex128
    assert back.neff.attrs["units"] == "1"
    assert back.label.values[0, 0, 2] == "SPP0"


def test_write_is_atomic_and_errors_are_clean(tmp_path) -> None:
    ds = _modes_like()
    path = write_netcdf(ds, tmp_path / "sub" / "r.nc")
    assert [p.name for p in path.parent.iterdir()] == ["r.nc"]  # no temp files left
    with pytest.raises(QdcavityError, match="no such result file"):
        read_netcdf(tmp_path / "missing.nc")


def test_analysis_view_strips_prefixes() -> None:
    ds = _modes_like()
    multi = ds.rename({v: f"modes.{v}" for v in [*ds.variables]})
    multi.attrs["analyses"] = '["modes", "reflectance"]'
    view = analysis_view(multi, "modes")
    assert set(view.data_vars) == set(ds.data_vars)
    with pytest.raises(QdcavityError, match="no analysis 'dipole'"):
        analysis_view(multi, "dipole")
