"""Plane-wave reflectance with Meep (host side).

Method (docs/meep.md): broadband Gaussian pulse, DFT flux planes, a normalization run in the
homogeneous incidence medium (incident flux, and its fields subtracted from the reflection
plane). Normal incidence runs in a 1D cell; oblique incidence in a 2D cell of zero x size with
a Bloch k_point kx = k0 Re(n_inc) sin(theta). A run at fixed kx sees a different angle at every
frequency, so a fixed angle needs one run per frequency; with more wavelengths than
``angle_k_points`` the runs are made on a kx grid and R, T are interpolated (cubic) in kx at
each frequency. The band is split into sub-bands (f_hi / f_lo <= ``max_band_ratio``), each with
its own material fits. T is the flux entering the exit medium (measured half a pixel below the
interface and corrected for the exit medium's absorption over that distance), A = 1 - R - T.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from typing import Any

import numpy as np
import xarray as xr

from qdcavity.analyses import ReflectanceAnalysis
from qdcavity.contracts import with_units
from qdcavity.errors import ConfigError
from qdcavity.stack import Stack

from .runner import run_job
from .structure import band_samples, build_structure


def sub_bands(f: np.ndarray, ratio: float) -> list[np.ndarray]:
    """Indices of ``f`` grouped into contiguous bands with f_max / f_min <= ratio."""
    order = np.argsort(f)
    groups: list[list[int]] = []
    for i in order:
        if groups and f[i] <= f[groups[-1][0]] * ratio:
            groups[-1].append(int(i))
        else:
            groups.append([int(i)])
    return [np.array(g) for g in groups]


def _interp_kx(kx_grid: np.ndarray, values: np.ndarray, kx: float) -> float:
    """Cubic (or linear with < 4 points) interpolation in kx over the finite samples."""
    ok = np.isfinite(values)
    x, y = kx_grid[ok], values[ok]
    if x.size == 0:
        return float("nan")
    if x.size < 4:
        return float(np.interp(kx, x, y))
    from scipy.interpolate import CubicSpline

    return float(CubicSpline(x, y)(kx))


def run_reflectance(stack: Stack, analysis: ReflectanceAnalysis,
                    opts: Mapping[str, Any]) -> xr.Dataset:
    lam = np.asarray(analysis.wavelength_nm, dtype=float)
    angles = np.asarray(analysis.angle_deg, dtype=float)
    pols = list(analysis.polarizations)
    n = stack.indices(lam)
    inc_top = analysis.incidence == "superstrate"
    inc = n[:, -1] if inc_top else n[:, 0]
    if np.any(np.abs(inc.imag) > 1e-3):
        raise ConfigError(
            f"the {analysis.incidence} absorbs (k up to {np.max(inc.imag):.3g}); plane-wave "
            "incidence needs a transparent incidence medium", field="incidence")
    f = 1000.0 / lam
    W, A = lam.size, angles.size
    R = np.full((W, A, 2), np.nan)
    T = np.full((W, A, 2), np.nan)
    oblique = bool(np.any(angles > 0))
    need_p = "p" in pols
    fits: dict[str, Any] = {}
    notes: list[str] = []
    runs: list[dict] = []
    K = int(opts["angle_k_points"])
    for idx in sub_bands(f, float(opts["max_band_ratio"])):
        fg = f[idx]
        f_lo, f_hi = float(fg.min()), float(fg.max())
        lam_fit = band_samples(f_lo / 1.01, f_hi * 1.01, stack)
        struct = build_structure(stack, lam_fit, opts,
                                 interfaces=oblique and need_p and bool(opts["interface_media"]),
                                 what=f"reflectance {1000 / f_hi:.4g}-{1000 / f_lo:.4g} nm: ")
        fits[f"{1000 / f_hi:.6g}-{1000 / f_lo:.6g} nm"] = struct.fits
        notes += struct.notes
        n_inc = inc[idx].real
        kx_list: list[float] = []
        windows: list[list[float]] = []
        plan: dict[float, tuple[str, np.ndarray]] = {}
        if np.any(angles == 0):
            kx_list.append(0.0)
            windows.append([f_lo, f_hi])
        n_ref = float(np.mean(n_inc))
        for a in angles[angles > 0]:
            s_a = math.sin(math.radians(a))
            need = n_inc * fg * s_a
            if need.size <= K:
                grid = need.copy()
                plan[float(a)] = ("exact", np.arange(len(kx_list), len(kx_list) + need.size))
                # each run serves one frequency: a narrow window around it
                windows += [[float(v) * 0.97, float(v) * 1.03] for v in fg]
            else:
                grid = np.linspace(need.min(), need.max(), K)
                plan[float(a)] = ("grid", np.arange(len(kx_list), len(kx_list) + K))
                step = grid[1] - grid[0]
                # a grid run serves the frequencies whose kx lies within 2.5 grid steps
                windows += [[float(max(f_lo, (k - 2.5 * step) / (n_ref * s_a))),
                             float(min(f_hi, (k + 2.5 * step) / (n_ref * s_a)))] for k in grid]
            kx_list += [float(k) for k in grid]
        job = {
            "task": "reflectance",
            "structure": struct.spec,
            "frequencies": [float(v) for v in fg],
            "kx": kx_list,
            "windows": windows,
            "n_incidence": float(np.min(n_inc)),
            "polarizations": [p for p in ("s", "p") if p in pols] or ["s"],
            "incidence": analysis.incidence,
            "numerics": {"resolution": float(opts["resolution"]), "pml": float(opts["pml_um"]),
                         "padding": float(opts["padding_um"]),
                         "decay_by": float(opts["decay_by"]),
                         "max_time": float(opts["max_time"])},
        }
        out = run_job(job, opts, f"meep reflectance {1000 / f_hi:.4g}-{1000 / f_lo:.4g} nm")
        Rk, Tk, kxs = out.arrays["R"], out.arrays["T"], out.arrays["kx"]
        runs.append({"band_nm": [1000 / f_hi, 1000 / f_lo], "kx": kxs.tolist(),
                     "wall_s": out.wall_s, "snap_um": out.meta.get("snap_um"),
                     "cell_um": out.meta.get("cell_um")})
        for ia, a in enumerate(angles):
            if a == 0:
                R[idx, ia] = Rk[0]
                T[idx, ia] = Tk[0]
                continue
            how, rows = plan[float(a)]
            if how == "exact":
                for j, i in enumerate(idx):
                    R[i, ia], T[i, ia] = Rk[rows[j], j], Tk[rows[j], j]
            else:
                grid = kxs[rows]
                for j, i in enumerate(idx):
                    kx = n_inc[j] * fg[j] * math.sin(math.radians(a))
                    for c in (0, 1):
                        R[i, ia, c] = _interp_kx(grid, Rk[rows, j, c], kx)
                        T[i, ia, c] = _interp_kx(grid, Tk[rows, j, c], kx)
                notes.append(f"{a:g} deg: R, T interpolated in kx over {K} runs per sub-band")
    pol_index = [("s", "p").index(p) for p in pols]
    dims = ("wavelength_nm", "angle_deg", "polarization")
    Rp, Tp = R[..., pol_index], T[..., pol_index]
    ds = xr.Dataset(
        {"R": (dims, Rp), "T": (dims, Tp), "A": (dims, 1.0 - Rp - Tp)},
        coords={"wavelength_nm": lam, "angle_deg": angles, "polarization": pols},
    )
    max_dn = max((m["max_dn"] for v in fits.values() for m in v
                  if m["max_dn"] == m["max_dn"]), default=0.0)
    ds.attrs.update({
        "incidence": analysis.incidence,
        "method": ("Meep FDTD: broadband pulse, DFT flux, normalization run; 1D cell at "
                   "normal incidence, Bloch-periodic 2D cell of zero width at oblique "
                   "incidence (docs/meep.md)"),
        "resolution_px_per_um": float(opts["resolution"]),
        "pml_um": float(opts["pml_um"]),
        "padding_um": float(opts["padding_um"]),
        "decay_by": float(opts["decay_by"]),
        "material_fits": json.dumps(fits, sort_keys=True),
        "fit_max_dn": float(max_dn),
        "runs": json.dumps(runs, sort_keys=True),
        "notes": "; ".join(dict.fromkeys(notes)),
    })
    return with_units(ds, "reflectance")
