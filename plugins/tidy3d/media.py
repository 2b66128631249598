"""Tidy3D media from the project's material tables.

* Single wavelength (mode solves, single-wavelength FDTD): the complex index n + ik of the
  table at that wavelength becomes a non-dispersive medium (``td.medium_from_nk``; it returns a
  one-pole Lorentz medium where Re eps < 1, e.g. Ag, which ``td.Medium.from_nk`` refuses).
* Broadband FDTD: Tidy3D's ``FastDispersionFitter`` (pole-residue model) fitted to the table over
  the analysis band; the weighted RMS error of the fit and the worst relative error of eps over
  the band are recorded in the result attributes. Fits are slow (5-60 s per material on 2
  cores), so they are cached in memory and, when a ``work_dir`` is given, on disk.

Conventions: exp(-i omega t), N = n + ik with k > 0 absorbing, eps = N**2 (Im eps > 0). Tidy3D
uses the same convention. A gain medium (k < 0) is refused.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from qdcavity.errors import ConfigError
from qdcavity.materials import Material

from ._runtime import tidy3d

C_UM_PER_S = 299792458.0e6  # speed of light in um/s (tidy3d's C_0)


def freq_hz(wavelength_nm: float | np.ndarray) -> float | np.ndarray:
    return C_UM_PER_S / (np.asarray(wavelength_nm, dtype=float) * 1e-3)


def check_passive(name: str, nk: np.ndarray) -> None:
    nk = np.atleast_1d(nk)
    if np.any(nk.imag < 0):
        raise ConfigError(f"medium '{name}' has k < 0 (gain); the tidy3d backend represents "
                          "passive media only (use gain_layer_k='bleached' for gain analyses)",
                          field="stack")
    if np.any(nk.real <= 0):
        raise ConfigError(f"medium '{name}' has n <= 0, which Tidy3D cannot represent",
                          field="stack")


def medium_from_eps(eps: complex, wavelength_nm: float, name: str = "") -> Any:
    """A non-dispersive (at this wavelength) Tidy3D medium with permittivity ``eps``."""
    td = tidy3d()
    nk = np.sqrt(complex(eps))
    if nk.imag < 0:
        nk = -nk
    kwargs = {"name": name} if name else {}
    if abs(nk.imag) < 1e-14 and nk.real**2 >= 1:
        return td.Medium(permittivity=float(nk.real**2), **kwargs)
    return td.medium_from_nk(n=float(nk.real), k=float(max(nk.imag, 0.0)),
                             freq=float(freq_hz(wavelength_nm)), **kwargs)


# ----- broadband fits ----------------------------------------------------------------------

@dataclass(frozen=True)
class FitResult:
    medium: Any                 # td.PoleResidue (or td.Medium for a constant lossless index)
    rms_error: float            # the fitter's weighted RMS error
    max_rel_eps_error: float    # max |eps_fit - eps_table| / |eps_table| over the band
    poles: int
    band_nm: tuple[float, float]

    def summary(self) -> dict[str, Any]:
        return {"rms_error": self.rms_error, "max_rel_eps_error": self.max_rel_eps_error,
                "poles": self.poles, "band_nm": list(self.band_nm)}


_FITS: dict[str, FitResult] = {}


def _fit_key(material: Material, band: tuple[float, float], samples: int, max_poles: int,
             tolerance_rms: float) -> str:
    text = json.dumps({"m": material.canonical(), "band": band, "samples": samples,
                       "poles": max_poles, "tol": tolerance_rms}, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:20]


def fit_material(material: Material, band_nm: tuple[float, float], *, max_poles: int = 5,
                 tolerance_rms: float = 1e-3, samples: int = 40,
                 cache_dir: Path | None = None, zero_k: bool = False) -> FitResult:
    """Fit ``material`` over ``band_nm`` with Tidy3D's fast dispersion fitter (cached)."""
    td = tidy3d()
    lo, hi = float(min(band_nm)), float(max(band_nm))
    band = (lo, hi)
    if zero_k:
        material = material.with_zero_k("gain layer bleached")
    key = _fit_key(material, band, samples, max_poles, tolerance_rms)
    if key in _FITS:
        return _FITS[key]
    path = cache_dir / f"fit-{key}.json" if cache_dir is not None else None
    if path is not None and path.exists():
        data = json.loads(path.read_text())
        medium = td.PoleResidue.model_validate_json(data["medium"]) if data["kind"] == "pole" \
            else td.Medium.model_validate_json(data["medium"])
        result = FitResult(medium, data["rms_error"], data["max_rel_eps_error"], data["poles"],
                           tuple(data["band_nm"]))
        _FITS[key] = result
        return result

    lam = np.linspace(lo, hi, samples) if hi > lo else np.array([lo])
    nk = material.nk(lam)
    check_passive(material.name, nk)
    eps = nk**2
    if np.all(np.abs(nk.imag) < 1e-12) and np.ptp(nk.real) < 1e-12 and nk.real[0] >= 1:
        medium = td.Medium(permittivity=float(nk.real[0] ** 2), name=material.name)
        result = FitResult(medium, 0.0, 0.0, 0, band)
    else:
        from tidy3d.plugins.dispersion import AdvancedFastFitterParam, FastDispersionFitter

        if lam.size < 3:  # the fitter needs a band; widen a single wavelength by +-1 %
            lam = np.linspace(lo * 0.99, hi * 1.01, 5)
            nk = material.nk(lam)
            eps = nk**2
        fitter = FastDispersionFitter(wvl_um=lam * 1e-3, n_data=nk.real, k_data=nk.imag)
        medium, rms = fitter.fit(max_num_poles=max_poles, tolerance_rms=tolerance_rms,
                                 advanced_param=AdvancedFastFitterParam(show_progress=False))
        medium = medium.updated_copy(name=material.name)
        eps_fit = medium.eps_model(freq_hz(lam))
        rel = float(np.max(np.abs(eps_fit - eps) / np.abs(eps)))
        result = FitResult(medium, float(rms), rel, len(medium.poles), band)
    _FITS[key] = result
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        kind = "pole" if isinstance(result.medium, td.PoleResidue) else "medium"
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps({"kind": kind, "medium": result.medium.model_dump_json(),
                                   **result.summary()}))
        tmp.replace(path)
    return result
