"""Guided modes with Meep (host side): jobs for the worker and the post-processing.

Method (details and accuracy in docs/meep.md): a Bloch-periodic 2D cell of zero width along
the propagation direction x (Meep's y is the stack normal), broadband point sources inside the
stack and Harminv. A coarse scan over kx (below the lower cladding's light line) finds the
resonances; each is refined, in a cell whose cladding padding suits its evanescent tail and
whose sides end in a PML (radiating cladding), an absorber (evanescent cladding: a PML there
lets glancing waves grow) or nothing (metal), by a secant iteration on kx until Re f = f0;
then

* neff = kx / f0 (kx and f in Meep units, 1/um),
* Im(neff) = -Im(f) / (v_g f0) with v_g = df/dkx from the last two runs (first-order
  conversion of the temporal decay of the Bloch resonance into spatial decay; exact to
  O((Im neff / Re neff)^2)),
* field profiles from the DFT of the ringing fields at f0 (accumulated after the sources are
  off), and gamma_E / gamma_P from them within ``padding_um`` of the outer interfaces, with
  the cladding tails beyond integrated analytically (far out the DFT also holds the slowly
  decaying radiation continuum).
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from typing import Any

import numpy as np
import xarray as xr

from qdcavity.analyses import ModesAnalysis
from qdcavity.modeset import ModeRecord, field_grid, mode_labels, modes_dataset
from qdcavity.stack import Stack

from .runner import run_job
from .structure import Structure, band_samples, build_structure


def _kz(eps_c: complex, neff: complex, f0: float, outgoing: bool) -> complex:
    """k0 sqrt(eps_c - neff^2) (1/um) on the outgoing (Re >= 0) or proper (Im >= 0) sheet."""
    q = complex(np.sqrt(complex(eps_c - neff * neff)))
    if outgoing:
        if q.real < 0:
            q = -q
    elif q.imag < 0:
        q = -q
    return 2 * math.pi * f0 * q


def classify(neff: complex, n_media: np.ndarray, f0: float) -> tuple[str, str, dict]:
    """(kind, branch, kz) following docs/conventions.md and the TMM backend's rules."""
    eps = n_media**2
    kz = {}
    for name, e in (("substrate", eps[0]), ("superstrate", eps[-1])):
        outgoing = neff.real < math.sqrt(max(e.real, 0.0)) if e.real > 0 else False
        kz[name] = _kz(e, neff, f0, outgoing)
    scale = 1e-9 * (1 + abs(neff)) * 2 * math.pi * f0
    if any(k.imag < -scale for k in kz.values()):
        branch = "leaky"
    elif any((e - neff * neff).real > 0 and kz[c].real > scale
             for c, e in (("substrate", eps[0]), ("superstrate", eps[-1]))):
        branch = "substrate-radiating"
    else:
        branch = "bound"
    layers = eps[1:-1]
    diel = layers[layers.real > 0]
    nmax = float(np.sqrt(diel).real.max()) if diel.size else 0.0
    kind = "plasmonic" if neff.real > nmax else "photonic"
    return kind, branch, kz


def label_modes(entries: list[dict]) -> None:
    """Labels by the rule every backend shares (:func:`qdcavity.modeset.mode_labels`)."""
    labels = mode_labels([e["neff"] for e in entries], [e["pol"] for e in entries],
                         [e["kind"] for e in entries], [e["branch"] for e in entries])
    for e, label in zip(entries, labels, strict=True):
        e["label"] = label


class _Profile:
    """Yee-grid DFT samples of one mode along the stack, with integration helpers."""

    def __init__(self, pol: str, fields: Mapping[str, np.ndarray], y_int: np.ndarray,
                 res: float, interfaces: np.ndarray, inner: tuple[float, float],
                 eps_media: np.ndarray, eps_iface: list[complex | None], kx: float,
                 window: tuple[float, float] | None = None) -> None:
        self.pol = pol
        self.dx = 1.0 / res
        self.y_int = y_int
        self.y_half = np.concatenate([[y_int[0] - 0.5 * self.dx], y_int + 0.5 * self.dx])
        self.interfaces = np.asarray(interfaces)
        self.inner = inner
        self.eps = eps_media  # per media position (substrate, layers, superstrate)
        self.eps_iface = eps_iface
        phase = np.exp(-1j * math.pi * kx * self.dx)  # H at x = dx/2 back to x = 0
        if pol == "TE":
            self.Et = self._fit_len(fields["Ez"], y_int)          # tangential E (Meep Ez)
            self.Hn = self._fit_len(fields["Hy"], y_int) * phase  # Meep Hy (stack Hz)
            self.Ht = self._fit_len(fields["Hx"], self.y_half)
        else:
            self.Ht = self._fit_len(fields["Hz"], self.y_half) * phase  # Meep Hz (-stack Hy)
            self.Et = self._fit_len(fields["Ex"], y_int)
            self.En = self._fit_len(fields["Ey"], self.y_half)  # normal E (stack Ez)
        if window is not None:
            self._trim(*window)

    def _trim(self, lo: float, hi: float) -> None:
        """Keep the samples within [lo, hi] (the cladding tails beyond are analytic: far
        from the stack the DFT also holds the slowly decaying radiation continuum)."""
        keep = np.flatnonzero((self.y_int >= lo - 1e-9) & (self.y_int <= hi + 1e-9))
        if keep.size < 3:
            return
        i0, i1 = int(keep[0]), int(keep[-1])
        self.y_int = self.y_int[i0:i1 + 1]
        self.y_half = self.y_half[i0:i1 + 2]
        self.inner = (float(self.y_int[0]), float(self.y_int[-1]))
        for name in ("Et", "Hn", "Ht", "En"):  # Ht and En live on the half grid
            if hasattr(self, name):
                sl = slice(i0, i1 + 2) if name in ("Ht", "En") else slice(i0, i1 + 1)
                setattr(self, name, getattr(self, name)[sl])

    @staticmethod
    def _fit_len(a: np.ndarray, pos: np.ndarray) -> np.ndarray:
        a = np.asarray(a).ravel()
        if a.size == pos.size:
            return a
        if a.size == pos.size + 2:
            return a[1:-1]
        if a.size == pos.size - 2:
            return np.concatenate([[a[0]], a, [a[-1]]])
        raise ValueError(f"DFT array of {a.size} samples on {pos.size} grid points")

    def medium_at(self, y: np.ndarray) -> np.ndarray:
        return np.searchsorted(self.interfaces, y)

    def iface_index(self, y: float) -> int | None:
        d = np.abs(self.interfaces - y)
        i = int(np.argmin(d))
        return i if d[i] < 1e-6 * self.dx + 1e-12 else None

    def samples(self) -> list[tuple[float, int, float, complex, complex]]:
        """Integration samples (y, medium, weight, |E|^2 part, Sx part) on the Yee grids."""
        out = []
        y0, y1 = self.inner
        n_int = self.y_int.size
        for i, y in enumerate(self.y_int):
            w = self.dx * (0.5 if i in (0, n_int - 1) else 1.0)
            med = int(self.medium_at(np.array([y]))[0])
            e2 = abs(self.Et[i]) ** 2
            sx = -(self.Et[i] * np.conj(self.Hn[i])).real if self.pol == "TE" else 0.0
            out.append((y, med, w, e2, sx))
        if self.pol == "TM":
            for k, y in enumerate(self.y_half):
                if y <= y0 or y >= y1:
                    continue
                en, ht = self.En[k], self.Ht[k]
                j = self.iface_index(y)
                if j is None:
                    med = int(self.medium_at(np.array([y]))[0])
                    out.append((y, med, self.dx, abs(en) ** 2, (en * np.conj(ht)).real))
                    continue
                eh = self.eps_iface[j] if self.eps_iface[j] is not None else \
                    2 * self.eps[j] * self.eps[j + 1] / (self.eps[j] + self.eps[j + 1])
                for side in (j, j + 1):
                    e_side = eh * en / self.eps[side]
                    out.append((y, side, 0.5 * self.dx, abs(e_side) ** 2,
                                (e_side * np.conj(ht)).real))
        return out

    def edge_e2(self, which: int) -> float:
        i = 0 if which == 0 else -1
        e2 = abs(self.Et[i]) ** 2
        if self.pol == "TM":
            e2 += abs(self.En[1 if which == 0 else -2]) ** 2
        return float(e2)

    def edge_sx(self, which: int) -> float:
        if self.pol == "TE":
            i = 0 if which == 0 else -1
            return float(-(self.Et[i] * np.conj(self.Hn[i])).real)
        k = 1 if which == 0 else -2
        return float((self.En[k] * np.conj(self.Ht[k])).real)


def confinement(prof: _Profile, neff: complex, f0: float, n_media: np.ndarray,
                branch_kz: Mapping[str, complex]) -> tuple[np.ndarray, np.ndarray, dict]:
    """gamma_E and gamma_P per medium (substrate, layers, superstrate), tails analytic."""
    n_pos = n_media.size
    e2 = np.zeros(n_pos)
    sx = 0.0
    for _, med, w, a, s in prof.samples():
        e2[med] += w * a
        sx += w * s
    info = {}
    for which, pos, name in ((0, 0, "substrate"), (1, n_pos - 1, "superstrate")):
        kz = branch_kz[name]
        if kz.imag > 1e-9:
            e2[pos] += prof.edge_e2(which) / (2 * kz.imag)
            sx += prof.edge_sx(which) / (2 * kz.imag)
            info[f"tail_{name}"] = "analytic"
        else:
            info[f"tail_{name}"] = "omitted (field does not decay: leaky)"
    total = e2.sum()
    gamma_e = e2 / total
    gamma_p = n_media.real * e2 / abs(sx)
    return gamma_e, gamma_p, info


def _interp_piecewise(y_out: np.ndarray, pos: np.ndarray, val: np.ndarray) -> np.ndarray:
    return np.interp(y_out, pos, val.real) + 1j * np.interp(y_out, pos, val.imag)


def profiles(prof: _Profile, z_nm: np.ndarray, z0: float, kz: Mapping[str, complex]
             ) -> dict[str, np.ndarray]:
    """Stack-frame fields on the analysis grid, max|E| = 1 (tails extended analytically)."""
    y = z0 + z_nm / 1000.0
    y0, y1 = prof.inner
    yc = np.clip(y, prof.y_int[0], prof.y_int[-1])
    below, above = y < prof.y_int[0], y > prof.y_int[-1]
    ext = np.ones(y.shape, complex)
    ext[below] = np.exp(1j * kz["substrate"] * (prof.y_int[0] - y[below]))
    ext[above] = np.exp(1j * kz["superstrate"] * (y[above] - prof.y_int[-1]))
    out: dict[str, np.ndarray] = {}
    if prof.pol == "TE":
        ey = -_interp_piecewise(yc, prof.y_int, prof.Et) * ext
        emax = np.max(np.abs(ey))
        i = int(np.argmax(np.abs(ey)))
        ph = np.conj(ey[i]) / abs(ey[i]) if abs(ey[i]) > 0 else 1.0
        out["Ey"] = ey * ph / emax
        return out
    ex = _interp_piecewise(yc, prof.y_int, prof.Et) * ext
    # normal component: piecewise per medium, interface nodes split into side values
    half = prof.y_half
    keep = (half > y0) & (half < y1)
    hp, hv, hh = half[keep], prof.En[keep], prof.Ht[keep]
    med_out = prof.medium_at(yc)
    ez = np.zeros(y.shape, complex)
    for m in np.unique(med_out):
        lo = prof.interfaces[m - 1] if m > 0 else -np.inf
        hi = prof.interfaces[m] if m < prof.interfaces.size else np.inf
        sel = (hp >= lo - 1e-9) & (hp <= hi + 1e-9)
        pts, vals = hp[sel].copy(), hv[sel].astype(complex).copy()
        for k, p in enumerate(pts):
            j = prof.iface_index(p)
            if j is not None:
                eh = prof.eps_iface[j] if prof.eps_iface[j] is not None else \
                    2 * prof.eps[j] * prof.eps[j + 1] / (prof.eps[j] + prof.eps[j + 1])
                vals[k] = eh * vals[k] / prof.eps[m]
        if pts.size == 0:
            continue
        idx = med_out == m
        ez[idx] = _interp_piecewise(yc[idx], pts, vals)
    ez = ez * ext
    hy = -_interp_piecewise(yc, hp, hh) * ext
    e_abs = np.sqrt(np.abs(ex) ** 2 + np.abs(ez) ** 2)
    i = int(np.argmax(e_abs))
    dom = ex[i] if abs(ex[i]) >= abs(ez[i]) else ez[i]
    ph = np.conj(dom) / abs(dom) if abs(dom) > 0 else 1.0
    scale = ph / e_abs[i]
    out["Ex"], out["Ez"], out["Hy"] = ex * scale, ez * scale, hy * scale
    return out


def run_modes(stack: Stack, analysis: ModesAnalysis, opts: Mapping[str, Any]) -> xr.Dataset:
    lam_list = list(analysis.wavelength_nm)
    pols = list(analysis.polarizations)
    zero_k = [stack.gain_layer] if (analysis.gain_layer_k == "bleached" and stack.gain_layer) \
        else []
    res = float(opts["resolution"])
    pad = max(float(opts["padding_um"]), analysis.field_padding_nm / 1000.0)
    z_nm = field_grid(stack.interfaces_nm, analysis.field_padding_nm, analysis.field_points) \
        if analysis.fields else np.empty(0)
    results: dict[tuple[int, str], list[dict]] = {}
    fits_all: dict[str, Any] = {}
    notes: list[str] = []
    runs_meta: list[dict] = []
    for iw, lam0 in enumerate(lam_list):
        f0 = 1000.0 / lam0
        hw, sw = float(opts["fit_halfwidth"]), float(opts["scan_halfwidth"])
        lam_b = band_samples(f0 / (1 + hw), f0 * (1 + hw), stack)
        fb = 1000.0 / lam_b
        weights = 1.0 + 9.0 * np.exp(-(((fb - f0) / (0.01 * f0)) ** 2))
        n0 = stack.indices([lam0], zero_k=zero_k)[0]
        for pol in pols:
            solve = build_structure(stack, lam_b, opts, zero_k=zero_k, weights=weights,
                                    interfaces=pol == "TM" and opts["interface_media"],
                                    what=f"modes at {lam0:g} nm: ")
            lam_s = band_samples(f0 / (1 + sw), f0 * (1 + sw), stack)
            try:
                scan = build_structure(stack, lam_s, {**opts, "fit_max_poles": 3}, zero_k=zero_k,
                                       interfaces=pol == "TM" and opts["interface_media"],
                                       fail_rtol=0.2, pole_free=1.3, what="scan: ")
                f_band = [float(1000.0 / lam_s.max()), float(1000.0 / lam_s.min())]
            except Exception:  # noqa: BLE001  fall back to the accurate narrow-band media
                scan = solve
                f_band = [float(fb.min()), float(fb.max())]
            notes += solve.notes
            fits_all[f"{lam0:g} nm {pol}"] = solve.fits
            diel = n0[1:-1][(n0[1:-1] ** 2).real > 0].real
            n_max = float(diel.max()) if diel.size else float(n0.real.max())
            n_lo = max(1.0, float(min(n0[0].real, n0[-1].real)))
            n_hi = n_max * (1.02 if pol == "TE" else float(opts["spp_search_factor"]))
            job = {
                "task": "modes",
                "frequency": f0,
                "polarization": pol,
                "max_modes": int(analysis.max_modes),
                "structure": solve.spec,
                "scan": {**scan.spec, "resolution": float(opts["scan_resolution"]),
                         "f_band": f_band, "n_lo": n_lo, "n_hi": n_hi},
                "numerics": _numerics(opts, res, pad),
            }
            out = run_job(job, opts, f"meep modes {lam0:g} nm {pol}")
            runs_meta.append({"wavelength_nm": lam0, "polarization": pol,
                              "wall_s": out.wall_s, "worker": {
                                  k: out.meta[k] for k in ("snap_um", "cell_um", "wall_s",
                                                           "scan_kx")}})
            results[(iw, pol)] = _post(stack, out, solve, pol, f0, n0, z_nm, res,
                                       analysis, lam0, max(float(opts["padding_um"]), 2 / res))
    return _dataset(stack, analysis, results, lam_list, pols, z_nm, opts, fits_all, notes,
                    runs_meta)


def _numerics(opts: Mapping[str, Any], res: float, pad: float) -> dict[str, Any]:
    return {"resolution": res, "pml": float(opts["pml_um"]), "padding": pad,
            "harminv_time": float(opts["harminv_time"]), "scan_time": float(opts["scan_time"]),
            "q_min": float(opts["q_min"]), "ftol": float(opts["ftol"]),
            "max_refine": int(opts["max_refine"]),
            "refine_bandwidth": float(opts["refine_bandwidth"]),
            "max_time": float(opts["max_time"]), "max_padding": float(opts["max_padding_um"]),
            "interface_media": bool(opts["interface_media"])}


def _post(stack: Stack, out, solve: Structure, pol: str, f0: float, n0: np.ndarray,
          z_nm: np.ndarray, res: float, analysis: ModesAnalysis, lam0: float,
          window_um: float) -> list[dict]:
    """Dataset entries of the modes the worker found; the simulated fields are used within
    ``window_um`` of the outer interfaces, the cladding tails beyond are analytic."""
    meta = out.meta
    entries = []
    n_pos = n0.size
    eps_media = np.array([solve.medium_of(p).eps(f0) for p in range(n_pos)]).ravel()
    eps_iface = [None if m is None else complex(solve.media[m].eps(f0))
                 for m in solve.spec["interfaces"]] or [None] * (n_pos - 1)
    for i, m in enumerate(meta["modes"]):
        fields = {k.split("_", 1)[1]: v for k, v in out.arrays.items()
                  if k.startswith(f"m{i}_")}
        neff = complex(m["kx"] / f0, -m["decay"] / (m["vg"] * f0))
        kind, branch, kz = classify(neff, n0, f0)
        lay = m["layout"]  # each mode's cell has its own cladding padding
        y_int = out.arrays[f"m{i}_y_int"]
        ifs = np.array(lay["interfaces"])
        prof = _Profile(pol, fields, y_int, res, ifs, tuple(lay["inner"]), eps_media,
                        eps_iface, m["dft_kx"], window=(ifs[0] - window_um, ifs[-1] + window_um))
        ge, gp, tails = confinement(prof, neff, f0, n0, kz)
        prof_fields = profiles(prof, z_nm, lay["z0"], kz) if z_nm.size else {}
        entries.append({
            "pol": pol, "neff": neff, "alpha": 4 * math.pi * neff.imag / (lam0 * 1e-7),
            "kind": kind, "branch": branch, "gamma_E": ge, "gamma_P": gp,
            "fields": prof_fields, "Q": m["Q"], "vg": m["vg"], "runs": m["runs"],
            "tails": tails,
        })
    label_modes(entries)
    entries.sort(key=lambda e: -e["neff"].real)
    return entries[: analysis.max_modes]


def _dataset(stack: Stack, analysis: ModesAnalysis, results, lam_list, pols, z_nm, opts,
             fits_all, notes, runs_meta) -> xr.Dataset:
    records = {}
    for (iw, pol), entries in results.items():
        records[(lam_list[iw], pol)] = [
            ModeRecord(neff=e["neff"], label=e["label"], kind=e["kind"], branch=e["branch"],
                       gamma_E=e["gamma_E"], gamma_P=e["gamma_P"], fields=e["fields"])
            for e in entries]
    ds = modes_dataset(records, lam_list, pols, stack.media_names, z_nm, stack.gain_layer,
                       analysis.material_gain_cm, analysis.max_modes)
    q = np.full(ds.neff.shape, np.nan)
    runs = np.zeros(ds.neff.shape, dtype=np.int64)
    for (iw, pol), entries in results.items():
        ip = pols.index(pol)
        for im, e in enumerate(entries[: analysis.max_modes]):
            q[iw, ip, im] = e["Q"]
            runs[iw, ip, im] = e["runs"]
    ds["Q"] = (("wavelength_nm", "polarization", "mode"), q)
    ds["Q"].attrs["description"] = "quality factor of the Bloch resonance (Harminv)"
    ds["meep_runs"] = (("wavelength_nm", "polarization", "mode"), runs)
    ds["meep_runs"].attrs["description"] = "refinement runs of the secant on kx"
    ds.attrs.update({
        "method": ("Meep FDTD: Bloch-periodic 2D cell of zero x size, Harminv, secant on kx "
                   "to Re f = f0; Im neff from the decay rate and group velocity; profiles "
                   "from the DFT of the ringing fields (docs/meep.md)"),
        "gain_layer_k": analysis.gain_layer_k,
        "resolution_px_per_um": float(opts["resolution"]),
        "pml_um": float(opts["pml_um"]),
        "padding_um": float(opts["padding_um"]),
        "numerics": json.dumps({k: opts[k] for k in (
            "resolution", "pml_um", "padding_um", "harminv_time", "scan_time",
            "scan_resolution", "q_min", "ftol", "interface_media", "max_padding_um")},
            sort_keys=True),
        "material_fits": json.dumps(fits_all, sort_keys=True),
        "fit_max_dn": float(max((f["max_dn"] for v in fits_all.values() for f in v
                                 if f["max_dn"] == f["max_dn"]), default=0.0)),
        "runs": json.dumps(runs_meta, sort_keys=True),
        "limitations": ("Harminv finds the resonances it can resolve: very lossy SPPs "
                        "(Q below ~20-40) and modes not excited by the sources can be missed; "
                        "n_modes says how many were found, labels count only found modes"),
        "notes": "; ".join(dict.fromkeys(notes)),
    })
    return ds
