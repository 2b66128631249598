#!/usr/bin/env python3
"""qdcavity Meep worker for the ``outcoupling`` analysis (scattering of a guided mode).

Standalone like ``worker.py`` (meep + numpy + standard library, run under Debian's
``/usr/bin/python3``); it reuses ``worker.py`` from the same folder for the media
(``_medium``), the stack layout (``Layout``: interfaces half-way between grid points),
``planar_blocks``, the NaN/time guard and the JSON-in / .npz-out protocol (``worker.main``)::

    python3 outcoupling_worker.py JOB.json RESULT.npz

Cell (2D, docs/outcoupling.md): Meep's x is the propagation direction, Meep's y the stack normal
(stack z), Meep's z the invariant direction (stack y). A TE mode (stack E_y) is Meep's Ez
polarization: fields Ez, Hx (Meep; the stack's longitudinal H) and Hy (Meep; the stack's H_z).
PML above and below (through the substrate and the superstrate), absorbers (``x_boundary``:
"pml" or "absorber") at both x ends. An Ez line current whose amplitude along the stack
normal is the TMM mode profile (computed on the host, ``job["source"]``) launches the mode in
both directions at ``x_src``; scatterers sit in the window [x1, x2] of the gain layer.

Scatterers: infinite cylinders (radius a, permittivity eps_p) in a host eps_h. Each Ez grid
point of the gain layer inside the window gets eps_h + (eps_p - eps_h) c, c = the area
fraction of its pixel covered by the cylinders (supersampled 16 x 16, overlaps ADDED: a pair
of overlapping cylinders is two independent scatterers, as in the independent-scattering
model). For Ez (parallel to every cylinder surface) this arithmetic pixel average is the exact
subpixel treatment to first order: every cylinder keeps its exact polarizability. Outside the
window and in the reference run the gain layer is the mean (effective) medium
eps_h + (eps_p - eps_h) f_window, so the scatterers add no mean-field change and the decay
difference is the scattering loss alone.

Every run records the DFT (at f0) of Ez, Hx, Hy on (a) the stack region (for the guided-mode
amplitude along x), (b) a line ``flux_height_um`` above the stack (upward flux and far field)
and (c) a line ``flux_depth_um`` below it in the substrate (downward flux), over the inner x
range. Post-processing (mode overlap, decay fits, fluxes) is on the host
(``outcoupling.py``).
"""

from __future__ import annotations

import math
import os
import sys
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import worker as base  # noqa: E402  (same folder; standalone worker helpers)

SUPERSAMPLE = 16


def _coverage(xs, ys, dx, centers, radius):
    """Summed area fraction of each pixel (centred on grid points xs x ys, side dx) covered by
    the disks (overlaps added). Returns (len(xs), len(ys))."""
    cov = np.zeros((xs.size, ys.size))
    s = (np.arange(SUPERSAMPLE) + 0.5) / SUPERSAMPLE - 0.5
    for cx, cy in centers:
        ix = np.nonzero(np.abs(xs - cx) <= radius + dx)[0]
        iy = np.nonzero(np.abs(ys - cy) <= radius + dx)[0]
        if ix.size == 0 or iy.size == 0:
            continue
        px = xs[ix][:, None] + dx * s[None, :]  # (nx, S)
        py = ys[iy][:, None] + dx * s[None, :]  # (ny, S)
        inside = ((px[:, None, :, None] - cx) ** 2 + (py[None, :, None, :] - cy) ** 2
                  <= radius * radius)
        cov[np.ix_(ix, iy)] += inside.mean(axis=(2, 3))
    return cov


def outcoupling(mp, job):
    num = job["numerics"]
    struct = job["structure"]
    res = float(num["resolution"])
    dx = 1.0 / res
    f0 = float(job["frequency"])
    lay = base.Layout(struct["thicknesses"], res, num["pml_um"], num["pad_lo_um"],
                      num["pad_hi_um"])
    gain = int(job["gain_layer"])  # 1-based layer position
    y_lo, y_hi = lay.interfaces[gain - 1], lay.interfaces[gain]
    # x layout: [boundary | src_gap | x_src | gap | window | tail | boundary], integer pixels
    n_bnd = int(math.ceil(num["x_boundary_um"] * res))
    n_pre = int(math.ceil(num["source_margin_um"] * res))
    n_gap = int(math.ceil(num["gap_um"] * res))
    n_win = int(math.ceil(num["window_um"] * res))
    n_tail = int(math.ceil(num["tail_um"] * res))
    n_x = 2 * n_bnd + n_pre + n_gap + n_win + n_tail
    n_x += n_x % 2
    sx = n_x * dx
    x_lo = -sx / 2
    x_src = x_lo + (n_bnd + n_pre) * dx
    x1 = x_src + n_gap * dx
    x2 = x1 + n_win * dx
    cell = mp.Vector3(sx, lay.size, 0)

    eps_p, eps_h = float(job["particles"]["eps_particle"]), float(job["particles"]["eps_host"])
    radius = float(job["particles"]["radius_um"])
    realizations = job["particles"]["realizations"]  # [[[x, y], ...], ...] (window, layer)

    # grid points of Ez (integer points) inside the window and the gain layer
    xs = x_lo + np.arange(n_x + 1) * dx
    xs = xs[(xs > x1 - 0.5 * dx) & (xs < x2 - 0.5 * dx)]
    ys = lay.integer_points(y_lo, y_hi)
    covs = [_coverage(xs, ys, dx, [(x1 + c[0], y_lo + c[1]) for c in r], radius)
            for r in realizations]
    f_real = [float(c.mean()) for c in covs]
    f_mean = float(np.mean(f_real)) if covs else 0.0
    eps_eff = eps_h + (eps_p - eps_h) * (f_mean if job.get("effective_fraction") is None
                                         else float(job["effective_fraction"]))

    media = [dict(m) for m in struct["media"]]
    media.append({"name": "effective gain layer", "eps_inf": eps_eff, "poles": []})
    eff_struct = dict(struct, media=media)
    layers = list(struct["layers"])
    layers[gain - 1] = len(media) - 1
    eff_struct["layers"] = layers
    plain_struct = struct

    # source: Ez line current with the TMM mode profile along the stack normal
    src = job["source"]
    zs = np.asarray(src["z_um"], dtype=float) + lay.z0
    amp = np.asarray(src["re"], dtype=float) + 1j * np.asarray(src["im"], dtype=float)

    y_src0, y_src1 = float(zs.min()), float(zs.max())
    y_srcc = 0.5 * (y_src0 + y_src1)

    def amp_func(p):  # Meep passes the position relative to the source centre
        y = p.y + y_srcc
        return complex(np.interp(y, zs, amp.real, 0.0, 0.0), np.interp(y, zs, amp.imag, 0.0, 0.0))

    fwidth = float(num["source_fwidth"]) * f0
    sources = [mp.Source(mp.GaussianSource(f0, fwidth=fwidth, cutoff=num["source_cutoff"]),
                         component=mp.Ez, center=mp.Vector3(x_src, y_srcc),
                         size=mp.Vector3(0, y_src1 - y_src0), amp_func=amp_func)]
    if num["x_boundary"] == "absorber":
        xb = mp.Absorber(n_bnd * dx, direction=mp.X)
    else:
        xb = mp.PML(n_bnd * dx, direction=mp.X)
    boundaries = [mp.PML(lay.pml, direction=mp.Y), xb]

    # DFT regions: stack (overlap) and flux line (above the top)
    x_in0, x_in1 = x_lo + n_bnd * dx, x_lo + (n_x - n_bnd) * dx
    r_lo = lay.interfaces[0] + float(num["region_below_um"])
    r_hi = lay.top + float(num["region_above_um"])
    y_line = lay.top + float(num["flux_height_um"])
    y_sub = lay.interfaces[0] - float(num["flux_depth_um"])
    comps = [mp.Ez, mp.Hx, mp.Hy]
    names = ["Ez", "Hx", "Hy"]

    runs = [("plain", plain_struct, None)] if job.get("plain_reference", True) else []
    runs.append(("reference", eff_struct, None))
    runs += [(f"r{i}", eff_struct, c) for i, c in enumerate(covs)]
    arrays = {}
    timings = []
    for tag, st, cov in runs:
        t0 = time.time()
        blocks, default = base.planar_blocks(mp, st, lay, "y", interfaces=False)
        if cov is not None:
            delta = (eps_p - eps_h) * cov
            # the window's gain-layer pixels: the host everywhere, plus the covered share
            med_h = mp.Medium(epsilon=eps_h)
            blocks.append(mp.Block(size=mp.Vector3(n_win * dx, y_hi - y_lo, mp.inf),
                                   center=mp.Vector3(0.5 * (x1 + x2) - 0.5 * dx,
                                                     0.5 * (y_lo + y_hi)),
                                   material=med_h))
            for i, j in zip(*np.nonzero(delta > 1e-12), strict=True):
                blocks.append(mp.Block(size=mp.Vector3(dx, dx, mp.inf),
                                       center=mp.Vector3(xs[i], ys[j]),
                                       material=mp.Medium(epsilon=eps_h + float(delta[i, j]))))
        sim = mp.Simulation(cell_size=cell, resolution=res, geometry=blocks,
                            default_material=default, sources=sources,
                            boundary_layers=boundaries, eps_averaging=False,
                            force_complex_fields=False)
        dft_r = sim.add_dft_fields(comps, [f0], center=mp.Vector3(0.5 * (x_in0 + x_in1),
                                                                  0.5 * (r_lo + r_hi)),
                                   size=mp.Vector3(x_in1 - x_in0, r_hi - r_lo), yee_grid=False)
        dft_l = sim.add_dft_fields(comps, [f0], center=mp.Vector3(0.5 * (x_in0 + x_in1), y_line),
                                   size=mp.Vector3(x_in1 - x_in0, 0), yee_grid=False)
        dft_s = sim.add_dft_fields(comps, [f0], center=mp.Vector3(0.5 * (x_in0 + x_in1), y_sub),
                                   size=mp.Vector3(x_in1 - x_in0, 0), yee_grid=False)
        probe = mp.Vector3(x2 - 0.2, 0.5 * (y_lo + y_hi))
        cond = mp.stop_when_fields_decayed(float(num["decay_dt"]), mp.Ez, probe,
                                           float(num["decay_by"]))
        sim.run(until_after_sources=base.Guard(mp, mp.Ez, probe, num["max_time"], cond))
        for n, c in zip(names, comps, strict=True):
            arrays[f"{tag}_{n}_region"] = np.asarray(sim.get_dft_array(dft_r, c, 0))
            arrays[f"{tag}_{n}_line"] = np.asarray(sim.get_dft_array(dft_l, c, 0))
            arrays[f"{tag}_{n}_sub"] = np.asarray(sim.get_dft_array(dft_s, c, 0))
        if "x_region" not in arrays:  # the same DFT grids in every run
            x_r, y_r, _, _ = sim.get_array_metadata(dft_cell=dft_r)
            arrays["x_region"] = np.asarray(x_r)
            arrays["y_region"] = np.asarray(y_r)
            x_l, _, _, _ = sim.get_array_metadata(dft_cell=dft_l)
            arrays["x_line"] = np.asarray(x_l)
        timings.append({"run": tag, "wall_s": time.time() - t0, "meep_time": sim.meep_time()})
        for key in arrays:
            if not np.all(np.isfinite(arrays[key])):
                raise base.WorkerError("diverged", f"DFT fields of run {tag} are NaN/inf")
        sim.reset_meep()
        del sim
    arrays["f_realized"] = np.asarray(f_real)
    meta = {"runs": timings, "z0": lay.z0, "interfaces": lay.interfaces.tolist(),
            "snap_um": lay.snap, "cell_um": [sx, lay.size], "x_src": x_src, "x1": x1, "x2": x2,
            "x_inner": [x_in0, x_in1], "y_line": y_line, "y_sub": y_sub, "eps_eff": eps_eff,
            "f_realized": f_real, "pixels_x": n_x, "pixels_y": lay.n_total}
    return arrays, meta


base.TASKS["outcoupling"] = outcoupling

if __name__ == "__main__":
    sys.exit(base.main(sys.argv))
