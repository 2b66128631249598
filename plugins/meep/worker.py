#!/usr/bin/env python3
"""qdcavity Meep worker: runs MIT Meep simulations described by a JSON job.

Standalone on purpose: it imports only ``meep``, ``numpy`` and the standard library, so it runs
under Debian's ``/usr/bin/python3`` with ``python3-meep`` (numpy 1.x) while the host process
uses numpy 2. Usage::

    [launcher...] python3 worker.py JOB.json RESULT.npz

The job is written by ``qdcavity.plugins.meep.backend``; the result is an ``.npz`` file with
the arrays and a ``meta`` entry (a JSON string). On failure the worker writes
``RESULT.npz.error.json`` = {"kind": ..., "message": ...} and exits with status 3. Kinds:
``meep-import`` (Meep missing or broken), ``diverged`` (NaN/inf fields), ``time-limit``
(simulated time exceeded the job's ``max_time``), ``bad-job``, ``internal``.

Units: length 1 um, frequency f = 1/lambda_um (c = 1), time dependence exp(-i omega t) (Meep's
own), Im(eps) > 0 absorbing. Planar stacks are along Meep's z axis in 1D and cylindrical
cells and along Meep's y axis in 2D cells (2D cells with zero x size and a Bloch k_point give
oblique incidence and guided modes at 1D cost). Layer interfaces sit half-way between the
integer grid points (exact staircase for the tangential E components); for the normal E
component an interface node gets the harmonic-mean permittivity of its two media (a block
half a pixel thick), which restores second-order convergence for TM fields on metals.

With an MPI launcher every rank runs the job and only the master rank writes files.
"""

from __future__ import annotations

import json
import math
import os
import sys
import time
import traceback

import numpy as np

PROTOCOL = 1


WALL = {"deadline": None}


class WorkerError(Exception):
    def __init__(self, kind, message):
        super().__init__(message)
        self.kind = kind


# ----------------------------------------------------------------------------------- media


def _medium(mp, spec, **extra):
    """``mp.Medium`` from {"eps_inf", "poles": [{"kind", "frequency", "gamma", "sigma"}]} or
    {"library": "Ag"} (Meep's own material library, only when the study asks for it);
    ``extra`` (e.g. B_conductivity) is passed to mp.Medium."""
    if "library" in spec:
        import meep.materials as mats

        try:
            med = getattr(mats, spec["library"])
        except AttributeError:
            name = spec["library"]
            raise WorkerError("bad-job", f"meep.materials has no material '{name}'") from None
        if extra:
            med = mp.Medium(epsilon_diag=med.epsilon_diag,
                            E_susceptibilities=med.E_susceptibilities, **extra)
        return med
    sus = []
    for p in spec.get("poles", []):
        if p["sigma"] <= 0:
            continue
        if p["kind"] == "drude":
            sus.append(mp.DrudeSusceptibility(frequency=p["frequency"], gamma=p["gamma"],
                                              sigma=p["sigma"]))
        else:
            sus.append(mp.LorentzianSusceptibility(frequency=p["frequency"], gamma=p["gamma"],
                                                   sigma=p["sigma"]))
    return mp.Medium(epsilon=spec["eps_inf"], E_susceptibilities=sus, **extra)


def eps_of(spec, f):
    """Permittivity of a fitted medium at frequencies f (numpy, for post-processing)."""
    f = np.asarray(f, dtype=float)
    out = np.full(f.shape, spec.get("eps_inf", 1.0), dtype=complex)
    for p in spec.get("poles", []):
        if p["kind"] == "drude":
            out = out - p["sigma"] * p["frequency"] ** 2 / (f ** 2 + 1j * f * p["gamma"])
        else:
            out = out + p["sigma"] * p["frequency"] ** 2 / (
                p["frequency"] ** 2 - f ** 2 - 1j * f * p["gamma"])
    return out


# ----------------------------------------------------------------------------------- geometry


class Layout:
    """Positions along the stack axis of a cell [PML | pad_lo | stack | pad_hi | PML].

    ``z0`` (substrate top) and every interface sit half-way between integer grid points
    (grid points at -S/2 + i/res). ``snap`` reports how far interfaces were moved to get
    there (0 when the thicknesses are multiples of the pixel).
    """

    def __init__(self, thicknesses, res, pml, pad_lo, pad_hi):
        self.res = float(res)
        dx = 1.0 / self.res
        edges_px = np.concatenate([[0.0], np.cumsum(thicknesses)]) * self.res
        rounded = np.round(edges_px)
        self.snap = float(np.max(np.abs(rounded - edges_px)) * dx) if len(edges_px) else 0.0
        n_pml = int(math.ceil(pml * self.res))
        n_lo = int(math.ceil(pad_lo * self.res))
        n_hi = int(math.ceil(pad_hi * self.res))
        n_stack = int(rounded[-1])
        n_total = 2 * n_pml + n_lo + n_stack + n_hi + 1
        n_total += n_total % 2
        self.n_total = n_total
        self.size = n_total * dx
        self.pml = n_pml * dx
        lo = -self.size / 2
        self.z0 = lo + (n_pml + n_lo + 0.5) * dx
        self.interfaces = self.z0 + rounded * dx
        self.top = self.interfaces[-1]
        self.lo, self.hi = lo, self.size / 2
        self.inner_lo = lo + self.pml
        self.inner_hi = self.hi - self.pml

    def integer_points(self, a, b):
        dx = 1.0 / self.res
        i0 = int(math.ceil((a - self.lo) * self.res - 1e-9))
        i1 = int(math.floor((b - self.lo) * self.res + 1e-9))
        return self.lo + np.arange(i0, i1 + 1) * dx


def planar_blocks(mp, struct, lay, axis, interfaces=True, transverse=None):
    """Blocks for substrate, layers and (optionally) interface media along ``axis``."""
    media = [_medium(mp, m) for m in struct["media"]]
    big = mp.inf if transverse is None else transverse

    def block(a, b, med, center_t=0.0):
        if b <= a:
            return None
        if axis == "z":
            size = mp.Vector3(big, big, b - a)
            center = mp.Vector3(center_t, 0, 0.5 * (a + b))
        else:
            size = mp.Vector3(big, b - a, big)
            center = mp.Vector3(center_t, 0.5 * (a + b), 0)
        return mp.Block(size=size, center=center, material=med)

    ct = 0.0 if transverse is None else 0.5 * transverse
    blocks = [block(lay.lo, lay.z0, media[struct["substrate"]], ct)]
    for j, m in enumerate(struct["layers"]):
        blocks.append(block(lay.interfaces[j], lay.interfaces[j + 1], media[m], ct))
    if interfaces:
        half = 0.25 / lay.res
        for zi, m in zip(lay.interfaces, struct.get("interfaces", []), strict=False):
            if m is not None:
                blocks.append(block(zi - half, zi + half, media[m], ct))
    default = media[struct["superstrate"]]
    return [b for b in blocks if b is not None], default


# ----------------------------------------------------------------------------------- runs


class Guard:
    """Stop condition: raises on NaN/inf fields and on exceeding the simulated-time cap."""

    def __init__(self, mp, component, point, max_time, inner=None, check_every=5.0):
        self.mp, self.c, self.pt = mp, component, point
        self.max_time, self.inner, self.every = max_time, inner, check_every
        self.next = 0.0

    def __call__(self, sim):
        t = sim.meep_time()
        if t >= self.next:
            self.next = t + self.every
            v = sim.get_field_point(self.c, self.pt)
            if not (np.isfinite(v.real) and np.isfinite(v.imag)):
                raise WorkerError("diverged", f"Meep fields became NaN/inf at t = {t:.4g} "
                                  "(unstable material fit or PML/absorber in a metal)")
        if t > self.max_time:
            raise WorkerError("time-limit", f"simulated time exceeded max_time = "
                              f"{self.max_time:g} Meep units (raise options['max_time'] or "
                              "loosen decay_by)")
        if WALL["deadline"] is not None and time.time() > WALL["deadline"]:
            raise WorkerError("time-limit", "wall-clock limit reached (options['timeout_s'])")
        return self.inner(sim) if self.inner is not None else False


def _new_sim(mp, **kw):
    sim = mp.Simulation(**kw)
    return sim


def _source_time(mp, fcen, df, cutoff=5.0):
    return mp.GaussianSource(fcen, fwidth=df, cutoff=cutoff)


def reflectance(mp, job):
    """R, T of a planar stack for plane waves with fixed in-plane wavevectors kx.

    kx = 0: 1D cell (Ex, Hy along z). kx > 0: 2D cell of zero x size along y with a Bloch
    k_point (kx, 0, 0); polarization s = Ez source, p = Hz source. A normalization run in the
    homogeneous incidence medium gives the incident flux and fields (subtracted from the
    reflection plane with load_minus_flux_data).
    """
    num = job["numerics"]
    struct = job["structure"]
    freqs = np.asarray(job["frequencies"], dtype=float)
    res = num["resolution"]
    inc_top = job["incidence"] == "superstrate"
    pad = num["padding"]
    lay = Layout(struct["thicknesses"], res, num["pml"], pad, pad)
    dx = 1.0 / res
    fmin, fmax = float(freqs.min()), float(freqs.max())
    fcen = 0.5 * (fmin + fmax)
    df = max(1.5 * (fmax - fmin), 0.2 * fcen)
    if inc_top:
        z_src = lay.top + 0.7 * pad
        z_ref = lay.top + 0.35 * pad
        z_tra = lay.z0 - 0.5 * dx
        inc_medium, exit_medium = struct["superstrate"], struct["substrate"]
        d_exit = lay.z0 - z_tra
    else:
        z_src = lay.z0 - 0.7 * pad
        z_ref = lay.z0 - 0.35 * pad
        z_tra = lay.top + 0.5 * dx
        inc_medium, exit_medium = struct["substrate"], struct["superstrate"]
        d_exit = z_tra - lay.top
    eps_exit = eps_of(struct["media"][exit_medium], freqs)
    out_R, out_T, out_kx = [], [], []
    timings = []
    windows = job.get("windows") or [[fmin, fmax]] * len(job["kx"])
    for kx, (w_lo, w_hi) in zip(job["kx"], windows, strict=False):
        pols = ["s"] if kx == 0 else list(job["polarizations"])
        R = np.full((freqs.size, 2), np.nan)
        T = np.full((freqs.size, 2), np.nan)
        if kx == 0:
            fc, dfw = fcen, df
        else:
            # the source spectrum stays above the cutoff kx / n_inc of the incidence medium:
            # near it waves graze along the PML, decay slowly and are absorbed poorly
            w_lo = max(w_lo, kx / job["n_incidence"] * 1.04)
            if w_hi <= w_lo:
                out_R.append(R)
                out_T.append(T)
                out_kx.append(kx)
                continue
            fc = 0.5 * (w_lo + w_hi)
            dfw = max(w_hi - w_lo, 0.04 * fc)
            dfw = min(dfw, 2 * (fc - kx / job["n_incidence"] * 1.02))
        valid = (freqs >= w_lo - 1e-9) & (freqs <= w_hi + 1e-9)
        for pol in pols:
            t0 = time.time()
            r, t = _rt_run(mp, struct, lay, kx, pol, freqs, fc, dfw, z_src, z_ref, z_tra,
                           inc_medium, inc_top, num)
            r, t = np.where(valid, r, np.nan), np.where(valid, t, np.nan)
            kz = 2 * np.pi * np.sqrt(eps_exit * freqs ** 2 - kx ** 2 + 0j)
            kz = np.where(kz.imag < 0, -kz, kz)
            t = t * np.exp(2 * kz.imag * d_exit)
            col = 0 if pol == "s" else 1
            R[:, col], T[:, col] = r, t
            if kx == 0:
                R[:, 1], T[:, 1] = r, t
            timings.append(time.time() - t0)
        out_R.append(R)
        out_T.append(T)
        out_kx.append(kx)
    return {"R": np.array(out_R), "T": np.array(out_T), "kx": np.array(out_kx),
            "frequencies": freqs}, {"snap_um": lay.snap, "cell_um": lay.size,
                                    "run_wall_s": timings}


def _rt_run(mp, struct, lay, kx, pol, freqs, fcen, df, z_src, z_ref, z_tra, inc_medium,
            inc_top, num):
    one_d = kx == 0
    axis = "z" if one_d else "y"

    def vec(z):
        return mp.Vector3(0, 0, z) if one_d else mp.Vector3(0, z, 0)

    comp = mp.Ex if one_d else (mp.Ez if pol == "s" else mp.Hz)
    if one_d:
        cell = mp.Vector3(0, 0, lay.size)
        kw = {"dimensions": 1, "boundary_layers": [mp.PML(lay.pml)]}
    else:
        cell = mp.Vector3(0, lay.size, 0)
        kw = {"dimensions": 2, "boundary_layers": [mp.PML(lay.pml, direction=mp.Y)],
              "k_point": mp.Vector3(kx, 0, 0)}
    src = [mp.Source(_source_time(mp, fcen, df), component=comp, center=vec(z_src))]
    fr = mp.FluxRegion(center=vec(z_ref))
    ft = mp.FluxRegion(center=vec(z_tra))
    media = struct["media"]
    check = vec(z_ref)
    decay = num["decay_by"]
    dt_chk = max(20.0 / fcen, 10.0)

    # normalization run: homogeneous incidence medium
    sim = _new_sim(mp, cell_size=cell, resolution=lay.res, sources=src,
                   default_material=_medium(mp, media[inc_medium]), eps_averaging=False, **kw)
    refl = sim.add_flux(freqs, fr)
    cond = mp.stop_when_fields_decayed(dt_chk, comp, check, decay)
    sim.run(until_after_sources=Guard(mp, comp, check, num["max_time"], cond))
    inc_flux = np.array(mp.get_fluxes(refl))
    inc_data = sim.get_flux_data(refl)
    sim.reset_meep()

    blocks, default = planar_blocks(mp, struct, lay, axis, interfaces=not one_d and pol == "p")
    sim = _new_sim(mp, cell_size=cell, resolution=lay.res, sources=src, geometry=blocks,
                   default_material=default, eps_averaging=False, **kw)
    refl = sim.add_flux(freqs, fr)
    tran = sim.add_flux(freqs, ft)
    sim.load_minus_flux_data(refl, inc_data)
    cond = mp.stop_when_fields_decayed(dt_chk, comp, check, decay)
    sim.run(until_after_sources=Guard(mp, comp, check, num["max_time"], cond))
    r_flux = np.array(mp.get_fluxes(refl))
    t_flux = np.array(mp.get_fluxes(tran))
    if not (np.all(np.isfinite(r_flux)) and np.all(np.isfinite(t_flux))):
        raise WorkerError("diverged", "flux spectra are NaN/inf")
    # Meep's flux is along +z: the incident and transmitted fluxes share a sign, the
    # reflected one (after subtracting the incident fields) has the opposite sign
    R = -r_flux / inc_flux
    T = t_flux / inc_flux
    sim.reset_meep()
    del sim
    return R, T


# ----------------------------------------------------------------------------------- modes


def _mode_sim(mp, struct, lay, kx, comp, res, sources, interfaces):
    blocks, default = planar_blocks(mp, struct, lay, "y", interfaces=interfaces)
    layers = []
    for side, kind in zip((mp.Low, mp.High), getattr(lay, "sides", ("pml", "pml")),
                          strict=True):
        if kind == "pml":
            layers.append(mp.PML(lay.pml, direction=mp.Y, side=side))
        elif kind == "absorber":
            layers.append(mp.Absorber(lay.pml, direction=mp.Y, side=side))
    return _new_sim(mp, cell_size=mp.Vector3(0, lay.size, 0), dimensions=2, resolution=res,
                    geometry=blocks, default_material=default, sources=sources,
                    boundary_layers=layers, k_point=mp.Vector3(kx, 0, 0), eps_averaging=False)


def cladding_eps(struct, f0):
    """Re(eps) of the substrate and the superstrate at frequency ``f0`` (Meep units)."""
    return [float(eps_of(struct["media"][idx], f0).real)
            for idx in (struct["substrate"], struct["superstrate"])]


def mode_cell(struct, f0, neff, num, res):
    """Layout of the Bloch cell for modes of index about ``neff``, with per side the cladding
    padding (:func:`tail_padding`) and the boundary layer: a PML where the mode radiates into
    the cladding (it absorbs propagating waves well), a scalar absorber where its tail is
    evanescent (a PML there lets glancing waves near the cladding light line grow: a Bloch
    resonance with Im f > 0 that swamps the mode's DFT), nothing in a metal cladding (it
    absorbs by itself: the padding is many skin depths)."""
    lay = Layout(struct["thicknesses"], res, num["pml"],
                 *[max(tail_padding(struct, f0, neff, num))] * 2)
    lay.sides = tuple("none" if eps < 0 else "absorber" if eps < neff * neff else "pml"
                      for eps in cladding_eps(struct, f0))
    return lay


def _mode_sources(mp, lay, comp, fcen, df, seed=1):
    rng = np.random.RandomState(seed)
    d = lay.top - lay.z0
    zs = lay.z0 + d * (0.05 + 0.9 * rng.rand(6))
    amps = rng.randn(6)
    return [mp.Source(_source_time(mp, fcen, df), component=comp, center=mp.Vector3(0, z, 0),
                      amplitude=float(a)) for z, a in zip(zs, amps, strict=False)]


def _harminv_run(mp, struct, lay, kx, comp, fcen, df, res, t_after, num, interfaces,
                 dft_freq=None):
    """One Bloch run; returns harminv modes [(f, decay, |amp|, Q, err)] and optional DFT."""
    srcs = _mode_sources(mp, lay, comp, fcen, df)
    sim = _mode_sim(mp, struct, lay, kx, comp, res, srcs, interfaces)
    d = lay.top - lay.z0
    probes = [lay.z0 + d * q for q in (0.23, 0.51, 0.77)]
    hs = [mp.Harminv(comp, mp.Vector3(0, z, 0), fcen, df) for z in probes]
    guard = Guard(mp, comp, mp.Vector3(0, probes[1], 0), num["max_time"])
    sim.init_sim()
    t_src = sim.fields.last_source_time()
    sim.run(until=lambda s: guard(s) or s.meep_time() >= t_src)  # until the sources are off
    dft = None
    if dft_freq is not None:
        # the region reaches a quarter pixel beyond the end points: Meep then returns a
        # predictable n + 2 (integer-grid) / n + 1 (half-grid) samples, free of rounding
        cs = [mp.Ez, mp.Hx, mp.Hy] if comp == mp.Ez else [mp.Hz, mp.Ex, mp.Ey]
        span = lay.inner_hi - lay.inner_lo + 0.5 / res
        dft = sim.add_dft_fields(cs, [float(dft_freq)], center=mp.Vector3(0, 0.5 * (
            lay.inner_lo + lay.inner_hi), 0), size=mp.Vector3(0, span, 0),
            yee_grid=True, decimation_factor=1)
    end = sim.meep_time() + t_after
    sim.run(*hs, until=lambda s: guard(s) or s.meep_time() >= end)
    found = []
    for h in hs:
        for m in h.modes:
            found.append((m.freq, m.decay, abs(m.amp), m.Q, abs(m.err)))
    fields = None
    if dft is not None:
        cs = [mp.Ez, mp.Hx, mp.Hy] if comp == mp.Ez else [mp.Hz, mp.Ex, mp.Ey]
        names = ["Ez", "Hx", "Hy"] if comp == mp.Ez else ["Hz", "Ex", "Ey"]
        fields = {n: np.asarray(sim.get_dft_array(dft, c, 0)).ravel().astype(complex)
                  for n, c in zip(names, cs, strict=False)}
    sim.reset_meep()
    return _merge_harminv(found, fcen, df), fields


def _merge_harminv(found, fcen, df):
    """Merge the modes seen by several probes (same frequency within 1e-5 relative)."""
    lo, hi = fcen - 0.5 * df, fcen + 0.5 * df
    # a lossless mode comes back with |decay| ~ 1e-12 f of either sign (|Q| ~ 1e11): keep it
    # (as lossless); a clearly growing resonance (PML artefact near a light line) is dropped
    found = [(m[0], min(m[1], 0.0), m[2], abs(m[3]), m[4]) for m in found
             if lo <= m[0] <= hi and m[1] < LOSSLESS_DECAY * m[0] and np.isfinite(m[0])]
    found.sort(key=lambda m: -m[2])
    out = []
    for m in found:
        for k, o in enumerate(out):
            if abs(o[0] - m[0]) < 1e-5 * m[0]:
                if m[4] < o[4]:
                    out[k] = (o[0], o[1], max(o[2], m[2]), o[3], o[4])
                break
        else:
            out.append(m)
    return out


LOSSLESS_DECAY = 1e-7  # |Im f| / Re f below which Harminv's decay is numerical noise
SCAN_MARGIN = 0.03  # the scan's padding suits modes with neff >= n_lo (1 + SCAN_MARGIN)
TAIL_DECAYS = 4.0  # cladding padding: the mode field decays by exp(-TAIL_DECAYS) before the PML


def tail_padding(struct, f0, neff, num):
    """(below, above) padding (um) so that a mode of index ``neff`` has decayed by
    exp(-TAIL_DECAYS) in each dielectric cladding before the PML (a truncated evanescent tail
    perturbs the mode; a PML it reaches can even make the Bloch resonance grow). Between
    ``padding`` and ``max_padding``; claddings the mode radiates into keep ``padding``."""
    pads = []
    for eps in cladding_eps(struct, f0):
        pad = float(num["padding"])
        if 0 < eps < neff * neff:
            q = 2 * math.pi * f0 * math.sqrt(neff * neff - eps)
            pad = max(pad, TAIL_DECAYS / q)
        pads.append(min(pad, max(float(num.get("max_padding", 3.0)), float(num["padding"]))))
    return pads


GLANCING = 0.02  # resonances this close below a cladding's index are continuum (see below)


def _continuum(neff, n_lo, struct, f0):
    """Why a refined resonance is not a mode, or "" if it is one. Below the lower-index
    cladding's light line it is a resonance of the truncated radiation continuum; within
    GLANCING below a dielectric cladding's index it would radiate into that cladding at a
    glancing angle, which neither PML nor absorber can absorb in a 1D Bloch cell, so the cell
    boundaries, not the stack, set its frequency and decay."""
    if neff <= n_lo:
        return f"neff {neff:.5f} below the light line of the lower cladding ({n_lo:.5f})"
    for eps in cladding_eps(struct, f0):
        if eps > 0 and math.sqrt(eps) * (1 - GLANCING) < neff < math.sqrt(eps):
            return f"neff {neff:.5f} glancing below a cladding index {math.sqrt(eps):.5f}"
    return ""


def modes(mp, job):
    """Guided modes by Harminv on a Bloch-periodic 2D cell of zero x size.

    1. Scan: a few runs at kx = f0 n_j (n_j geometric from n_hi down to n_lo) with broadband
       sources on the coarse ``scan`` structure/resolution, excited and analysed only below
       the light line of the lower cladding (f < kx / n_lo); every Harminv resonance gives an
       estimate neff ~ kx / f.
    2. Refine each candidate (highest neff first, until ``max_modes`` distinct modes) on the
       accurate structure in a cell made for it (:func:`mode_cell`: cladding padding for its
       tail, PML / absorber / nothing per side): run at kx, find the resonance near f0,
       secant on kx (steps of at most 10 %) until Re f = f0 (|f - f0| < ftol f0);
       neff = kx / f0, Im(neff) = -Im(f) / (v_g f0) with v_g = df/dkx from the last two
       runs. Continuum resonances are rejected (:func:`_continuum`).
    3. The last run accumulates the DFT of the fields along the stack (after the sources
       are off, so the ringing mode dominates) for the profiles and confinement factors;
       each mode's cell geometry goes back in its ``layout`` (arrays ``m{i}_*``).
    """
    num = job["numerics"]
    f0 = float(job["frequency"])
    pol = job["polarization"]
    comp = mp.Ez if pol == "TE" else mp.Hz
    interfaces = pol == "TM" and num.get("interface_media", True)
    pad = num["padding"]
    scan = job["scan"]
    solve = job["structure"]
    # the scan sees every mode down to n_lo (1 + SCAN_MARGIN): pad for the slowest tail
    lay_s = mode_cell(scan, f0, scan["n_lo"] * (1 + SCAN_MARGIN), num, scan["resolution"])
    lay = Layout(solve["thicknesses"], num["resolution"], num["pml"], pad, pad)
    t0 = time.time()
    log = []
    # 1. scan
    f_lo, f_hi = scan["f_band"]
    n_hi, n_lo = scan["n_hi"], scan["n_lo"]
    ratio = f_hi / f_lo
    cands = []
    n_j = n_hi * (f_hi / f0)
    kxs = []
    while True:
        kx = f0 * n_j / ratio ** 0.5
        kxs.append(kx)
        if kx / f_hi <= n_lo:
            break
        n_j = n_j / ratio * 1.02
        if len(kxs) > 20:
            break
    for kx in kxs:
        t_run = time.time()
        # excite and analyse only below the light line of the lower-index cladding: above it
        # lies the radiation continuum, whose resonances (cell and absorber reflections)
        # would crowd Harminv and are rejected anyway
        f_top = min(f_hi, kx / (n_lo * (1 + 1e-3)))
        if f_top - f_lo < 0.02 * f0:
            continue
        found, _ = _harminv_run(mp, scan, lay_s, kx, comp, 0.5 * (f_lo + f_top), f_top - f_lo,
                                scan["resolution"], num["scan_time"], num, interfaces)
        log.append({"stage": "scan", "kx": kx, "found": [list(m) for m in found],
                    "wall_s": time.time() - t_run})
        for f, dec, amp, q, _err in found:
            if q < num["q_min"]:
                continue
            cands.append((kx / f, kx, f, dec, amp, q))
    # initial kx at f0 for each resonance: at its phase index kx / f (the secant corrects
    # the dispersion; interpolating between resonances of different scans mixed branches)
    cands = [c for c in cands if n_lo <= c[0] <= n_hi * 1.05]
    cands.sort(key=lambda c: -c[0])
    merged = []
    for c in cands:
        if all(abs(m[0] - c[0]) > 0.01 * c[0] for m in merged):
            merged.append(c)
    # 2. refine
    results = []
    for c in merged:
        if len(results) >= job["max_modes"]:
            break
        # a scan resonance already explained by a refined mode (same dispersion branch)
        if any(abs(r["kx"] + (c[2] - f0) / r["vg"] - c[1]) < 0.04 * c[1] for r in results):
            continue
        lay_c = mode_cell(solve, f0, c[0], num, num["resolution"])
        try:
            r = _refine(mp, job, solve, lay_c, comp, f0, c, num, interfaces, log)
            r["layout"] = {"z0": lay_c.z0, "boundaries": list(lay_c.sides),
                           "interfaces": lay_c.interfaces.tolist(),
                           "inner": [lay_c.inner_lo, lay_c.inner_hi], "cell_um": lay_c.size,
                           "y_int": lay_c.integer_points(lay_c.inner_lo, lay_c.inner_hi)}
            why = _continuum(r["kx"] / f0, n_lo, solve, f0)
            if why:
                log.append({"stage": "rejected-continuum", "neff": r["kx"] / f0, "why": why})
                continue
            if all(abs(r["kx"] - u["kx"]) > 2e-4 * r["kx"] for u in results):
                results.append(r)  # (two candidates may converge to one mode)
        except WorkerError as exc:
            if exc.kind in ("diverged", "time-limit"):
                raise
            log.append({"stage": "refine-failed", "neff_guess": c[0], "reason": str(exc)})
    uniq = sorted(results, key=lambda r: -r["kx"])  # distinct already (checked when added)
    arrays = {"n_found": np.array(len(uniq))}
    meta_modes = []
    for i, r in enumerate(uniq):
        for name, arr in r.pop("fields").items():
            arrays[f"m{i}_{name}"] = arr
        arrays[f"m{i}_y_int"] = r["layout"].pop("y_int")
        meta_modes.append(r)
    # each mode carries its own cell's layout; snap and cell here are the scan's
    return arrays, {"modes": meta_modes, "log": log, "snap_um": lay.snap, "cell_um": lay.size,
                    "wall_s": time.time() - t0, "scan_kx": kxs}


VG_SPAN = 0.01  # a final secant step longer than this (relative) gets a centred v_g run
Q_WEIGHT = 0.05  # first pick: weight of |ln(Q / Q_scan)| against |f - f0| / f0


def _pick(found, f_target, q_ref=None):
    """The resonance nearest ``f_target``; with ``q_ref`` (the scan resonance's Q, for the
    first run of a secant, whose frequency estimate ignores dispersion) a resonance of
    similar Q is preferred: branches of different loss cross the band close together."""
    if not found:
        return None

    def cost(m):
        c = abs(m[0] - f_target) / f_target
        if q_ref and m[3] > 0:
            c += Q_WEIGHT * abs(math.log(m[3] / q_ref))
        return c

    return min(found, key=cost)


def _refine(mp, job, solve, lay, comp, f0, cand, num, interfaces, log):
    """Secant iteration on kx until the resonance sits at f0 (|f - f0| < ftol f0)."""
    neff_g = cand[0]
    res = num["resolution"]
    ftol = num["ftol"]
    df_src = num["refine_bandwidth"] * f0
    hist = []
    kx = f0 * neff_g
    fields = None
    for _ in range(num["max_refine"]):
        t_run = time.time()
        found, flds = _harminv_run(mp, solve, lay, kx, comp, f0, df_src, res,
                                   num["harminv_time"], num, interfaces, dft_freq=f0)
        m = _pick([x for x in found if x[3] >= num["q_min"]], f0 if len(hist) < 1 else
                  hist[-1][1] + (kx - hist[-1][0]) * _vg(hist, f0, kx, (cand[1], cand[2])),
                  q_ref=cand[5] if len(hist) < 1 and cand[5] < 1e5 else None)
        log.append({"stage": "refine", "neff_guess": neff_g, "kx": kx,
                    "found": [list(x) for x in found], "wall_s": time.time() - t_run})
        if m is None:
            raise WorkerError("no-mode", f"Harminv found no resonance near f0 at kx = {kx:.6g}")
        hist.append((kx, m[0], m[1], m[3]))
        fields = (kx, m[0], flds)
        if len(hist) >= 2 and abs(m[0] - f0) < ftol * f0:
            break
        step = (f0 - hist[-1][1]) / _vg(hist, f0, hist[-1][0], prior=(cand[1], cand[2]))
        # at most 10 % per run: a flat branch (SPP) or a mis-picked resonance must not throw
        # the secant far away (or to kx < 0)
        kx = hist[-1][0] + float(np.clip(step, -0.1 * hist[-1][0], 0.1 * hist[-1][0]))
        if len(hist) == 1 and abs(kx - hist[-1][0]) < 2e-4 * kx:
            # already at f0: a small step gives the group velocity
            kx = hist[-1][0] * (1 + 2e-4 * (1 if f0 >= m[0] else -1))
    if len(hist) < 2:
        raise WorkerError("no-mode", "refinement needs at least two runs (max_refine)")
    (k1, fa, da, _), (k2, fb, db, qb) = hist[-2], hist[-1]
    vg = (fb - fa) / (k2 - k1)
    if not (np.isfinite(vg) and vg > 0):
        raise WorkerError("no-mode", "refinement gave a non-positive group velocity")
    kx_star = k2 + (f0 - fb) / vg
    if abs(k2 - k1) > VG_SPAN * k2:
        # the secant's last step was long: v_g (hence Im neff = -Im f / (v_g f0)) is off by
        # the branch's curvature (TM0 of TE-DIZO: alpha -1.2 % from a 2 % step). One more run
        # on the other side of kx*, VG_SPAN / 2 away, makes it a centred difference.
        k3 = kx_star * (1 - 0.5 * VG_SPAN if k2 > kx_star else 1 + 0.5 * VG_SPAN)
        t_run = time.time()
        found, flds = _harminv_run(mp, solve, lay, k3, comp, f0, df_src, res,
                                   num["harminv_time"], num, interfaces, dft_freq=f0)
        m = _pick([x for x in found if x[3] >= num["q_min"]], fb + (k3 - k2) * vg)
        log.append({"stage": "refine-vg", "neff_guess": neff_g, "kx": k3,
                    "found": [list(x) for x in found], "wall_s": time.time() - t_run})
        if m is not None and abs(m[0] - (fb + (k3 - k2) * vg)) < 0.2 * abs(k3 - k2) * vg:
            hist.append((k3, m[0], m[1], m[3]))
            if abs(m[0] - f0) < abs(fb - f0):
                fields = (k3, m[0], flds)
            (k1, fa, da, _), (k2, fb, db, qb) = hist[-2], hist[-1]
            vg = (fb - fa) / (k2 - k1)
            kx_star = k2 + (f0 - fb) / vg
    dec_star = db + (da - db) * (kx_star - k2) / (k1 - k2)
    return {"kx": kx_star, "decay": dec_star, "vg": vg, "f_last": fb, "kx_last": k2,
            "Q": qb, "neff_guess": neff_g, "runs": len(hist), "history": hist,
            "dft_kx": fields[0], "dft_f": fields[1], "fields": fields[2],
            "converged": bool(abs(fb - f0) < ftol * f0)}


def _vg(hist, f0, kx, prior=None):
    """Group velocity estimate: secant of the last two points; after one run, the secant
    through the scan resonance ``prior`` = (kx, f) of the same branch (a surface plasmon's
    v_g is well below its phase velocity) if it is a plausible 0 < v_g < 1; else the phase
    velocity."""
    pts = list(hist[-2:]) if len(hist) >= 2 else ([(*prior, 0, 0), hist[-1]] if prior else [])
    if len(pts) == 2:
        (k1, fa, _, _), (k2, fb, _, _) = pts
        if abs(k2 - k1) > 1e-3 * abs(k2):
            vg = (fb - fa) / (k2 - k1)
            if np.isfinite(vg) and 0 < vg < 1:
                return vg
    k, f = hist[-1][0], hist[-1][1]
    return f / k


# ----------------------------------------------------------------------------------- dipole


def _absorbing_copy(mp, spec, sigma, f0):
    """The medium with extra loss ``sigma`` (Meep conductivity units): matched electric and
    magnetic conductivities in a dielectric (no impedance step), magnetic conductivity plus
    extra pole damping in a metal (an electric conductivity on a negative permittivity is a
    gain and makes the run diverge, as does a PML through Drude Ag)."""
    if "library" in spec or eps_of(spec, f0).real > 0:
        return _medium(mp, spec, B_conductivity=sigma, D_conductivity=sigma) \
            if "library" not in spec else _medium(mp, spec, B_conductivity=sigma)
    damped = dict(spec)
    damped["poles"] = [dict(p, gamma=p["gamma"] + sigma) for p in spec.get("poles", [])]
    return _medium(mp, damped, B_conductivity=sigma)


METAL_DAMPING_LEVELS = 3


def _cyl_blocks(mp, struct, lay, sr, absorber, n_shells, sigma_max, f0):
    """Planar blocks for a cylindrical cell plus a graded absorber in r in [sr - absorber,
    sr] (cubic profile, ``n_shells`` shells; see :func:`_absorbing_copy`)."""
    blocks, default = planar_blocks(mp, struct, lay, "z", interfaces=True)
    if absorber <= 0:
        return blocks, default
    regions = [(lay.lo, lay.z0, struct["substrate"])]
    for j, m in enumerate(struct["layers"]):
        regions.append((lay.interfaces[j], lay.interfaces[j + 1], m))
    regions.append((lay.top, lay.hi, struct["superstrate"]))
    r0 = sr - absorber
    dr = absorber / n_shells
    levels = min(METAL_DAMPING_LEVELS, n_shells)
    for k in range(n_shells):
        sigma = sigma_max * ((k + 0.5) / n_shells) ** 3
        # a metal's damped copy is a new Meep susceptibility (a polarization field over the
        # whole cell, updated every step): a few damping levels, not one per shell (16 levels
        # made a TE-DIZO run 30-60x slower than the bulk run)
        level = (k * levels) // n_shells
        sigma_metal = sigma_max * ((level + 0.5) / levels) ** 3
        rc = r0 + (k + 0.5) * dr
        for a, b, m in regions:
            if b <= a:
                continue
            spec = struct["media"][m]
            metal = "library" not in spec and eps_of(spec, f0).real <= 0
            med = _absorbing_copy(mp, spec, sigma_metal if metal else sigma, f0)
            blocks.append(mp.Block(center=mp.Vector3(rc, 0, 0.5 * (a + b)),
                                   size=mp.Vector3(dr, mp.inf, b - a), material=med))
    return blocks, default


def _cyl_components(mp):
    return [mp.Er, mp.Ep, mp.Ez, mp.Hr, mp.Hp, mp.Hz]


_CYL_NAMES = ["Er", "Ep", "Ez", "Hr", "Hp", "Hz"]


def _dipole_run(mp, cell, res, m, comp, z_src, f0, df, geometry, default, boundary, num,
                flux_specs, lines, probe):
    """One cylindrical run: LDOS at f0, fluxes, DFT field lines along r."""
    src = [mp.Source(_source_time(mp, f0, df), component=comp, center=mp.Vector3(0, 0, z_src))]
    sim = _new_sim(mp, cell_size=cell, dimensions=mp.CYLINDRICAL, m=m, resolution=res,
                   geometry=geometry, default_material=default, sources=src,
                   boundary_layers=boundary, eps_averaging=False)
    fluxes = {name: sim.add_flux([f0], mp.FluxRegion(center=c, size=sz))
              for name, (c, sz) in flux_specs.items()}
    dfts = {name: sim.add_dft_fields(_cyl_components(mp), [f0], center=c, size=sz,
                                     yee_grid=False) for name, (c, sz) in lines.items()}
    ldos = mp.dft_ldos(np.array([f0]))
    cond = mp.stop_when_fields_decayed(max(10.0, 10.0 / f0), comp, probe, num["decay_by"])
    sim.run(ldos, until_after_sources=Guard(mp, comp, probe, num["max_time"], cond))
    out = {"ldos": float(np.asarray(sim.ldos_data)[0]), "t_end": sim.meep_time()}
    jd = np.asarray(sim.ldos_Jdata).ravel()
    fd = np.asarray(sim.ldos_Fdata).ravel()
    out["j_dft"] = [float(jd[0].real), float(jd[0].imag)] if jd.size else [1.0, 0.0]
    out["e_dft"] = [float(fd[0].real), float(fd[0].imag)] if fd.size else [0.0, 0.0]
    for name, fl in fluxes.items():
        out["flux_" + name] = float(mp.get_fluxes(fl)[0])
    for name, d in dfts.items():
        for c, cn in zip(_cyl_components(mp), _CYL_NAMES, strict=False):
            out[f"{name}_{cn}"] = np.asarray(sim.get_dft_array(d, c, 0)).ravel().astype(
                complex)
    vals = [v for k, v in out.items() if k.startswith("flux_")] + [out["ldos"]]
    if not np.all(np.isfinite(vals)):
        raise WorkerError("diverged", "dipole run gave NaN/inf (fluxes or LDOS)")
    sim.reset_meep()
    return out


def dipole(mp, job):
    """Dipole emission in cylindrical coordinates (r, z), one run per orientation.

    vertical: Ez source on the axis, m = 0; horizontal: Er source on the axis, m = +1 (a
    circular in-plane dipole, whose power is the azimuthal average of a linear one). The
    stack cell has PML along z (in the claddings only) and a graded magnetic-conductivity
    absorber at large r (it crosses the metal layers). Measured at f0: the LDOS (dft_ldos),
    the z-fluxes through disks just above and below the stack (air, substrate), the r-flux
    through the cylinder r = R between them (power still guided at R). A bulk run in the same
    cell (same grid, same source position) filled with the emitter medium gives the
    normalization: Purcell = LDOS / LDOS_bulk, total power = Purcell x the bulk run's flux
    through the closed box. (``lines`` can add DFT field lines along r for later analyses.)
    """
    num = job["numerics"]
    struct = job["structure"]
    f0 = float(job["frequency"])
    res = float(num["resolution"])
    dx = 1.0 / res
    R, ab = float(num["radius"]), float(num["absorber"])
    sr = R + ab
    pad = num["padding"]
    lay = Layout(struct["thicknesses"], res, num["pml"], pad, pad)
    cell = mp.Vector3(sr, 0, lay.size)
    z_d = lay.z0 + float(job["z_dipole"])
    h = max(float(num["flux_height"]), 2 * dx)
    z_top = lay.top + h
    z_bot = lay.z0 - h
    # flux planes and lines on integer grid points
    z_top = lay.lo + round((z_top - lay.lo) * res) * dx
    z_bot = lay.lo + round((z_bot - lay.lo) * res) * dx
    df = float(num.get("source_bandwidth", 0.3)) * f0
    blocks, default = _cyl_blocks(mp, struct, lay, sr, ab, int(num.get("absorber_shells", 16)),
                                  float(num["absorber_sigma"]) * 2 * np.pi * f0, f0)
    em = struct["layers"][int(job["emitter_position"]) - 1]
    bulk_struct = dict(struct, substrate=em, superstrate=em, layers=[em] * len(struct["layers"]),
                       interfaces=[])
    bulk_blocks, bulk_default = _cyl_blocks(mp, bulk_struct, lay, sr, ab,
                                            int(num.get("absorber_shells", 16)),
                                            float(num["absorber_sigma"]) * 2 * np.pi * f0, f0)
    out_arrays = {}
    meta = {"z0": lay.z0, "top": lay.top, "z_top": z_top, "z_bot": z_bot, "z_dipole": z_d,
            "radius": R, "absorber": ab, "cell_um": [sr, lay.size], "snap_um": lay.snap,
            "runs": {}}
    for orient in job["orientations"]:
        m, comp = (0, mp.Ez) if orient == "vertical" else (1, mp.Er)
        r_min = 0.0 if m == 0 else 3 * dx
        flux_specs = {
            "top": (mp.Vector3(0.5 * (R + r_min), 0, z_top), mp.Vector3(R - r_min, 0, 0)),
            "bottom": (mp.Vector3(0.5 * (R + r_min), 0, z_bot), mp.Vector3(R - r_min, 0, 0)),
            "side": (mp.Vector3(R, 0, 0.5 * (z_top + z_bot)), mp.Vector3(0, 0, z_top - z_bot)),
        }
        lines = {}
        t0 = time.time()
        st = _dipole_run(mp, cell, res, m, comp, z_d, f0, df, blocks, default,
                         [mp.PML(lay.pml, direction=mp.Z)], num, flux_specs, lines,
                         mp.Vector3(0.5 * R, 0, z_d))
        t_stack = time.time() - t0
        # bulk normalization: the same cell, grid and source in the homogeneous (lossless)
        # emitter medium, so that the discrete near field of the source is identical
        t0 = time.time()
        bk = _dipole_run(mp, cell, res, m, comp, z_d, f0, df, bulk_blocks, bulk_default,
                         [mp.PML(lay.pml, direction=mp.Z)], num, flux_specs, {},
                         mp.Vector3(0.5 * R, 0, z_d))
        t_bulk = time.time() - t0
        p_bulk = bk["flux_top"] - bk["flux_bottom"] + bk["flux_side"]
        meta["runs"][orient] = {
            "ldos": st["ldos"], "ldos_bulk": bk["ldos"], "p_bulk": p_bulk,
            "flux_top": st["flux_top"], "flux_bottom": st["flux_bottom"],
            "flux_side": st["flux_side"], "t_end": st["t_end"], "t_end_bulk": bk["t_end"],
            "wall_s": t_stack, "wall_bulk_s": t_bulk, "r_min": r_min, "j_dft": st["j_dft"],
            "e_dft": st["e_dft"], "j_dft_bulk": bk["j_dft"], "e_dft_bulk": bk["e_dft"],
        }
        for k, v in st.items():
            if isinstance(v, np.ndarray):
                out_arrays[f"{orient}_{k}"] = v
        for k, v in bk.items():
            if isinstance(v, np.ndarray):
                out_arrays[f"{orient}_bulk_{k}"] = v
    return out_arrays, meta


# ----------------------------------------------------------------------------------- main


def probe(mp, job):
    info = {"meep": getattr(mp, "__version__", "?"), "numpy": np.__version__,
            "python": sys.version.split()[0], "mpi": bool(mp.with_mpi()),
            "protocol": PROTOCOL}
    try:
        info["harminv"] = bool(hasattr(mp, "Harminv"))
    except Exception:  # pragma: no cover
        pass
    return {"ok": np.array(1)}, info


TASKS = {"probe": probe, "reflectance": reflectance, "modes": modes, "dipole": dipole}


def _write_error(out, kind, message):
    try:
        with open(out + ".error.json", "w") as fh:
            json.dump({"kind": kind, "message": message}, fh)
    except OSError:
        pass


def _watchdog(deadline_s):
    """Exit when the host process dies (orphaned worker) or the wall-clock limit passes."""
    import threading

    parent = os.getppid()
    t_end = time.time() + deadline_s if deadline_s else None

    def watch():
        while True:
            time.sleep(2.0)
            if os.getppid() != parent:
                os._exit(4)
            if t_end is not None and time.time() > t_end + 30.0:
                os._exit(5)

    threading.Thread(target=watch, daemon=True).start()


def main(argv):
    if len(argv) != 3:
        sys.stderr.write("usage: worker.py JOB.json RESULT.npz\n")
        return 2
    job_path, out = argv[1], argv[2]
    try:
        with open(job_path) as fh:
            job = json.load(fh)
    except (OSError, ValueError) as exc:
        _write_error(out, "bad-job", f"cannot read job {job_path}: {exc}")
        return 3
    _watchdog(float(job.get("deadline_s", 0)) or None)
    WALL["deadline"] = time.time() + float(job.get("deadline_s", 0)) if job.get(
        "deadline_s") else None
    try:
        import meep as mp
    except Exception as exc:  # ImportError, or a broken binary module
        _write_error(out, "meep-import", f"cannot import meep under {sys.executable}: "
                     f"{type(exc).__name__}: {exc}")
        return 3
    master = mp.am_master()
    mp.verbosity(int(job.get("verbosity", 0)))
    if job.get("protocol", PROTOCOL) != PROTOCOL:
        if master:
            _write_error(out, "bad-job", "protocol mismatch: job {}, worker {}".format(
                job.get("protocol"), PROTOCOL))
        return 3
    task = TASKS.get(job.get("task"))
    if task is None:
        if master:
            _write_error(out, "bad-job", "unknown task {!r}".format(job.get("task")))
        return 3
    t0 = time.time()
    try:
        arrays, meta = task(mp, job)
    except WorkerError as exc:
        if master:
            _write_error(out, exc.kind, str(exc))
        return 3
    except Exception as exc:  # noqa: BLE001
        msg = f"{type(exc).__name__}: {exc}"
        if "NaN" in str(exc) or "nan" in str(exc).lower() and "field" in str(exc).lower():
            kind = "diverged"
        else:
            kind = "internal"
        if master:
            _write_error(out, kind, msg + "\n" + traceback.format_exc(limit=6))
        return 3
    meta = dict(meta)
    meta["worker_wall_s"] = time.time() - t0
    meta["meep_version"] = getattr(mp, "__version__", "?")
    if master:
        arrays = dict(arrays)
        arrays["meta"] = np.array(json.dumps(meta, default=_json_default))
        tmp = out + ".part.npz"
        np.savez(tmp, **arrays)
        os.replace(tmp, out)
    return 0


def _json_default(o):
    if isinstance(o, (np.integer,)):
        return int(o)
    if isinstance(o, (np.floating,)):
        return float(o)
    if isinstance(o, np.ndarray):
        return o.tolist()
    if isinstance(o, complex):
        return [o.real, o.imag]
    raise TypeError(type(o).__name__)


if __name__ == "__main__":
    sys.exit(main(sys.argv))
