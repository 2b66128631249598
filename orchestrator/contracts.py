"""Result contracts: the dataset every backend returns for each analysis.

A contract lists, per variable, its dimensions, its dtype kind (``c`` complex, ``f`` float,
``i`` integer, ``U`` string) and its unit. :func:`check_dataset` rejects a dataset that
violates it with a message naming the backend and the violation, so results of two backends
can always be aligned and subtracted.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import xarray as xr

from .errors import ContractError

if TYPE_CHECKING:
    from .analyses import OutcouplingAnalysis

CONVENTIONS = (
    "time dependence exp(-i omega t); N = n + ik, k > 0 absorbing; z normal to the stack, "
    "z = 0 at the substrate top; modes ~ exp(i beta x), neff = beta/k0, Im(neff) >= 0 decaying; "
    "alpha = 4 pi Im(neff)/lambda; gamma_E = field-energy ratio, gamma_P = power-flow ratio "
    "(vacuum impedance 1); u = kx/(k0 n_emitter); see docs/conventions.md"
)


@dataclass(frozen=True)
class Var:
    dims: tuple[str, ...]
    kind: str
    units: str


@dataclass(frozen=True)
class Contract:
    coords: dict[str, Var]
    variables: dict[str, Var]


_MODE = ("wavelength_nm", "polarization", "mode")
_FIELD = (*_MODE, "z_nm")

CONTRACTS: dict[str, Contract] = {
    "modes": Contract(
        coords={
            "wavelength_nm": Var(("wavelength_nm",), "f", "nm"),
            "polarization": Var(("polarization",), "U", ""),
            "mode": Var(("mode",), "i", ""),
            "layer": Var(("layer",), "U", ""),
            "z_nm": Var(("z_nm",), "f", "nm"),
        },
        variables={
            "neff": Var(_MODE, "c", "1"),
            "alpha_cm": Var(_MODE, "f", "cm^-1"),
            "gamma_E": Var((*_MODE, "layer"), "f", "1"),
            "gamma_P": Var((*_MODE, "layer"), "f", "1"),
            "modal_gain_cm": Var(_MODE, "f", "cm^-1"),
            "net_gain_cm": Var(_MODE, "f", "cm^-1"),
            "label": Var(_MODE, "U", ""),
            "kind": Var(_MODE, "U", ""),
            "branch": Var(_MODE, "U", ""),
            "n_modes": Var(("wavelength_nm", "polarization"), "i", "1"),
            "field_Ey": Var(_FIELD, "c", "max|E| = 1"),
            "field_Hy": Var(_FIELD, "c", "max|E| = 1, vacuum impedance 1"),
            "field_Ex": Var(_FIELD, "c", "max|E| = 1"),
            "field_Ez": Var(_FIELD, "c", "max|E| = 1"),
        },
    ),
    "reflectance": Contract(
        coords={
            "wavelength_nm": Var(("wavelength_nm",), "f", "nm"),
            "angle_deg": Var(("angle_deg",), "f", "deg"),
            "polarization": Var(("polarization",), "U", ""),
        },
        variables={
            name: Var(("wavelength_nm", "angle_deg", "polarization"), "f", "1")
            for name in ("R", "T", "A")
        },
    ),
    "dipole_emission": Contract(
        coords={
            "wavelength_nm": Var(("wavelength_nm",), "f", "nm"),
            "orientation": Var(("orientation",), "U", ""),
            "channel": Var(("channel",), "U", ""),
            "u": Var(("u",), "f", "1"),
        },
        variables={
            "K": Var(("orientation", "wavelength_nm", "u"), "f", "1"),
            "fraction": Var(("orientation", "wavelength_nm", "channel"), "f", "1"),
            "purcell": Var(("orientation", "wavelength_nm"), "f", "1"),
        },
    ),
    # A quantity a backend does not measure keeps a finite value from a stated source (e.g. the
    # TMM model) with a "source" attribute, listed in attrs["not_measured"] (docs/outcoupling.md)
    "outcoupling": Contract(
        coords={
            "wavelength_nm": Var(("wavelength_nm",), "f", "nm"),
            "material_gain_cm": Var(("material_gain_cm",), "f", "cm^-1"),
            "stripe_length_um": Var(("stripe_length_um",), "f", "um"),
            "angle_deg": Var(("angle_deg",), "f", "deg"),
            "channel": Var(("channel",), "U", ""),
        },
        variables={
            "neff": Var(("wavelength_nm",), "c", "1"),
            "gamma_P": Var(("wavelength_nm",), "f", "1"),
            "alpha_abs_cm": Var(("wavelength_nm",), "f", "cm^-1"),
            "alpha_sca_cm": Var(("wavelength_nm",), "f", "cm^-1"),
            "net_gain_cm": Var(("wavelength_nm", "material_gain_cm"), "f", "cm^-1"),
            "escape_fraction": Var(("wavelength_nm",), "f", "1"),
            "scattered_fraction": Var(("wavelength_nm", "channel"), "f", "1"),
            "beta": Var(("wavelength_nm",), "f", "1"),
            "spontaneous_air_fraction": Var(("wavelength_nm",), "f", "1"),
            "angular_pattern": Var(("wavelength_nm", "angle_deg"), "f", "1"),
            "half_width_deg": Var(("wavelength_nm",), "f", "deg"),
            "lateral_output": Var(("wavelength_nm", "material_gain_cm", "stripe_length_um"),
                                  "f", "spontaneous emission per unit stripe length x cm"),
            "vertical_output": Var(("wavelength_nm", "material_gain_cm", "stripe_length_um"),
                                   "f", "spontaneous emission per unit stripe length x cm"),
        },
    ),
}

ORIENTATIONS = ("horizontal", "vertical", "isotropic")
CHANNELS = ("air", "substrate", "waveguide", "spp", "absorbed")


def _check_var(ds: xr.Dataset, name: str, spec: Var, where: str) -> None:
    if name not in ds.variables:
        raise ContractError(f"{where}: missing '{name}'")
    var = ds[name]
    if tuple(var.dims) != spec.dims:
        raise ContractError(f"{where}: '{name}' has dims {tuple(var.dims)}, expected {spec.dims}")
    kind = var.dtype.kind
    ok = {"c": kind == "c", "f": kind == "f", "i": kind in "iu", "U": kind in "UO"}[spec.kind]
    if not ok:
        raise ContractError(f"{where}: '{name}' has dtype {var.dtype}, expected kind {spec.kind}")
    if spec.units and var.attrs.get("units") != spec.units:
        raise ContractError(
            f"{where}: '{name}' has units {var.attrs.get('units')!r}, expected {spec.units!r}"
        )


def check_dataset(ds: xr.Dataset, analysis_kind: str, backend: str) -> xr.Dataset:
    """Raise :class:`ContractError` naming ``backend`` if ``ds`` violates the contract."""
    if analysis_kind not in CONTRACTS:
        return ds
    contract = CONTRACTS[analysis_kind]
    where = f"backend '{backend}', analysis '{analysis_kind}'"
    if not isinstance(ds, xr.Dataset):
        raise ContractError(f"{where}: returned {type(ds).__name__}, not an xarray.Dataset")
    for name, spec in {**contract.coords, **contract.variables}.items():
        _check_var(ds, name, spec, where)
    if analysis_kind in ("dipole_emission", "outcoupling") and "channel" in ds.coords:
        if list(ds.channel.values) != list(CHANNELS):
            raise ContractError(f"{where}: channel must be {CHANNELS}")
    if analysis_kind == "dipole_emission":
        if list(ds.orientation.values) != list(ORIENTATIONS):
            raise ContractError(f"{where}: orientation must be {ORIENTATIONS}")
        if list(ds.channel.values) != list(CHANNELS):
            raise ContractError(f"{where}: channel must be {CHANNELS}")
    for name in contract.variables:
        if ds[name].dtype.kind in "fc" and name not in _NAN_ALLOWED.get(analysis_kind, ()):
            if not np.all(np.isfinite(ds[name].values)):
                raise ContractError(f"{where}: '{name}' contains NaN or inf")
    return ds


# Variables padded with NaN where a slot does not exist (fewer modes than ``mode`` entries,
# TE-only fields of TM modes and vice versa); ``n_modes`` says how many are real.
_NAN_ALLOWED = {
    "modes": ("neff", "alpha_cm", "gamma_E", "gamma_P", "modal_gain_cm", "net_gain_cm",
              "field_Ey", "field_Hy", "field_Ex", "field_Ez"),
}


def with_units(ds: xr.Dataset, analysis_kind: str) -> xr.Dataset:
    """Set the contract's ``units`` attribute on every coordinate and variable present."""
    contract = CONTRACTS[analysis_kind]
    for name, spec in {**contract.coords, **contract.variables}.items():
        if name in ds.variables and spec.units:
            ds[name].attrs["units"] = spec.units
    ds.attrs.setdefault("conventions", CONVENTIONS)
    return ds


def outcoupling_dataset(rows: list[dict[str, Any]], analysis: OutcouplingAnalysis,
                        theta_deg: np.ndarray, *,
                        extra: dict[str, tuple[str, str]] | None = None,
                        per_realization: dict[str, str] | None = None,
                        sources: dict[str, str] | None = None,
                        descriptions: dict[str, str] | None = None) -> xr.Dataset:
    """An ``outcoupling`` dataset from one dict per wavelength holding every contract
    variable, plus ``extra`` per-wavelength variables ({name: (units, description)}) and
    ``per_realization`` ones ({name: units}, dims wavelength_nm x realization). ``sources``
    ({variable: where its value comes from}) marks what a backend does not measure: a
    ``source`` attribute on each, listed in ``attrs["not_measured"]``; ``descriptions``
    ({variable: text}) are set as their ``description`` attributes."""
    extra, per_realization, sources = extra or {}, per_realization or {}, sources or {}

    def stacked(name: str, kind: str = "f") -> np.ndarray:
        return np.asarray([r[name] for r in rows], dtype=complex if kind == "c" else float)

    wl = ("wavelength_nm",)
    data = {n: (s.dims, stacked(n, s.kind)) for n, s in CONTRACTS["outcoupling"].variables.items()}
    data.update({n: (wl, stacked(n)) for n in extra})
    data.update({n: ((*wl, "realization"), stacked(n)) for n in per_realization})
    coords = {"wavelength_nm": np.asarray(analysis.wavelength_nm, dtype=float),
              "material_gain_cm": np.asarray(analysis.gain_scan_cm, dtype=float),
              "stripe_length_um": np.asarray(analysis.stripe_length_um, dtype=float),
              "angle_deg": np.asarray(theta_deg, dtype=float), "channel": list(CHANNELS)}
    if per_realization:
        coords["realization"] = np.arange(len(rows[0][next(iter(per_realization))]))
    ds = xr.Dataset(data, coords=coords)
    for name, (units, text) in extra.items():
        ds[name].attrs.update({"units": units, "description": text})
    for name, units in per_realization.items():
        ds[name].attrs.update({"units": units, "description": "one value per realization"})
    for name, text in sources.items():
        ds[name].attrs["source"] = text
    for name, text in (descriptions or {}).items():
        ds[name].attrs["description"] = text
    if sources:
        ds.attrs["not_measured"] = (", ".join(sources) + ": see each variable's 'source' "
                                    "attribute")
    return with_units(ds, "outcoupling")


#: How a full-wave backend averages the outcoupling quantities over seeded realizations.
REALIZATION_DESCRIPTIONS = {
    "escape_fraction": "pooled over the realizations: sum alpha_up / sum alpha_sca",
    "alpha_sca_cm": "mean over the realizations",
    "angular_pattern": "dP/dtheta in the x-z plane of the superstrate, speckle-smoothed, summed "
                       "over the realizations, max 1",
}
