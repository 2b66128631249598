"""Outcoupling from downloaded Tidy3D data: decays, escape, far field -> the contract dataset.

Per wavelength, from the reference simulation (gain layer = mean medium, no cylinders) and
each realization r (:mod:`.outcoupling` builds them):

* guided power at the two mode planes x_in < window < x_out: the reference's flux there is
  the launched mode's power P_ref(x) (nothing else travels in the reference); a realization
  carries P_r(x) = |a_r(x) / a_ref(x)|^2 P_ref(x), a the forward amplitude of the
  ``ModeMonitor`` (unconjugated overlap: blind to the backward wave, to other guided modes
  and to radiation), so Tidy3D's amplitude normalization cancels;
* alpha_sca_r = [ln(P_r / P_ref)(x_in) - ln(P_r / P_ref)(x_out)] / L_window: the reference's
  own decay (absorption) cancels exactly, nothing is fitted through the cylinders;
* the guided power over the window, int P_r dx, from the exponential between the window ends
  (P_r carried from the planes to the window ends with the reference decay):
  L (P_a - P_b) / ln(P_a / P_b);
* alpha_up_r = F_up,r / int P_r dx with F_up,r the upward flux of the SCATTERED field
  (realization minus reference fields on the line above the stack, Tidy3D's own flux of that
  difference); escape = sum_r alpha_up / sum_r alpha_sca (pooled, as for Meep);
* far field: dP/dtheta ~ cos^2(theta) |psi~(k0 n sin theta)|^2, psi the scattered Ey (TE) or
  Hy (TM) on the line, summed over the realizations, smoothed over one speckle grain
  (lambda / (n L_line) in sin theta), +-theta folded, max 1;
* neff, alpha_abs and gamma_P of the plain stack come from the local mode solver (the
  ``modes`` analysis of this backend); beta and spontaneous_air_fraction from the TMM model
  (QD spontaneous emission, not measured by the cell); scattered_fraction holds the measured
  air share and the rest in ``waveguide`` (not split), as for Meep. Each such variable says
  so in its ``source`` attribute.
"""

from __future__ import annotations

import json
import math
from typing import Any

import numpy as np
import xarray as xr

from qdcavity import contracts
from qdcavity.analyses import OutcouplingAnalysis
from qdcavity.contracts import REALIZATION_DESCRIPTIONS
from qdcavity.errors import SolverError
from qdcavity.stack import Stack

from .outcoupling import WavelengthPlan


def _forward_amp(sim_data: Any, name: str) -> complex:
    amps = sim_data[name].amps.sel(direction="+").isel(mode_index=0, f=0)
    return complex(np.asarray(amps.values).reshape(()))


def _flux(sim_data: Any, name: str) -> float:
    return float(np.asarray(sim_data[name].flux.values).reshape(-1)[0])


def scattered_line(sim_data: Any, ref_data: Any) -> Any:
    """The line FieldData of a realization minus the reference's (the scattered field)."""
    mon, ref = sim_data["field_up"], ref_data["field_up"]
    comps = {c: getattr(mon, c) - getattr(ref, c) for c in ("Ex", "Ey", "Hx", "Hy")
             if getattr(mon, c, None) is not None}
    return mon.updated_copy(**comps)


def _line_psi(fd: Any, pol: str) -> tuple[np.ndarray, np.ndarray]:
    """x (um) and the scalar field of the polarization on the line (mean over y)."""
    arr = fd.Ey if pol == "TE" else fd.Hy
    arr = arr.isel(f=0)
    x = np.asarray(arr.coords["x"].values, dtype=float)
    vals = np.asarray(arr.transpose("x", ...).values).reshape(x.size, -1).mean(axis=1)
    return x, vals


def log_mean_integral(p_a: float, p_b: float, length: float) -> float:
    """int_0^L P dx for P decaying exponentially from p_a to p_b."""
    if p_a <= 0 or p_b <= 0:
        raise SolverError(f"non-positive guided power ({p_a:.3g}, {p_b:.3g}) at the window ends")
    r = math.log(p_a / p_b)
    return length * p_a if abs(r) < 1e-12 else length * (p_a - p_b) / r


def measure(plan: WavelengthPlan, data: dict[str, Any], theta_deg: np.ndarray
            ) -> dict[str, Any]:
    """Decays (1/um), escape and far field of one wavelength (module docstring)."""
    ref = data[plan.reference_key]
    x_in, x_out = plan.x_monitors_um
    x_w1, x_w2 = plan.x_window_um
    length = x_w2 - x_w1
    p_in, p_out = _flux(ref, "flux_in"), _flux(ref, "flux_out")
    a_in, a_out = _forward_amp(ref, "mode_in"), _forward_amp(ref, "mode_out")
    if not (p_in > 0 and p_out > 0 and abs(a_in) > 0 and abs(a_out) > 0):
        raise SolverError(f"outcoupling at {plan.wavelength_nm:g} nm: the reference carries no "
                          f"forward power (flux {p_in:.3g}, {p_out:.3g}); the mode source did "
                          "not launch the guided mode")
    alpha_ref = math.log(p_in / p_out) / (x_out - x_in)
    alpha_ref_amp = math.log(abs(a_in / a_out) ** 2) / (x_out - x_in)
    k0 = 2 * math.pi / (plan.wavelength_nm * 1e-3)
    n_sup = plan.n_superstrate
    theta = np.radians(np.concatenate([-theta_deg[::-1], theta_deg]))
    kx = k0 * n_sup * np.sin(theta)
    alpha_sca, alpha_up, ff = [], [], np.zeros(theta.size)
    x_line = None
    for key in plan.realization_keys:
        sim = data[key]
        d_in = math.log(abs(_forward_amp(sim, "mode_in") / a_in) ** 2)
        d_out = math.log(abs(_forward_amp(sim, "mode_out") / a_out) ** 2)
        alpha_sca.append((d_in - d_out) / length)
        p_a = p_in * math.exp(d_in - alpha_ref * (x_w1 - x_in))
        p_b = p_out * math.exp(d_out + alpha_ref * (x_out - x_w2))
        guided = log_mean_integral(p_a, p_b, length)
        line = scattered_line(sim, ref)
        f_up = float(np.asarray(line.flux.values).reshape(-1)[0])
        alpha_up.append(f_up / guided)
        x_line, psi = _line_psi(line, plan.polarization)
        dx = np.gradient(x_line)
        spec = np.exp(-1j * np.outer(kx, x_line)) @ (psi * dx)
        ff += np.cos(theta) ** 2 * np.abs(spec) ** 2
    grain = 1.0 / (k0 / (2 * math.pi) * n_sup * float(x_line[-1] - x_line[0]))
    s = np.sin(theta)
    kern = np.exp(-0.5 * ((s[:, None] - s[None, :]) / grain) ** 2)
    ff = kern @ ff / kern.sum(axis=1)
    half = theta_deg.size
    folded = 0.5 * (ff[half:] + ff[:half][::-1])
    a_s, a_u = np.asarray(alpha_sca), np.asarray(alpha_up)
    total = float(a_s.sum())
    return {
        "alpha_sca": a_s, "alpha_up": a_u,
        "eta": a_u / np.where(a_s > 0, a_s, np.nan),
        "eta_pooled": float(a_u.sum() / total) if total > 0 else math.nan,
        "alpha_ref": alpha_ref, "decay_check": alpha_ref_amp / alpha_ref,
        "far_field": folded / folded.max() if folded.max() > 0 else folded,
        "neff_fdtd": complex(np.asarray(ref["mode_in"].n_complex.isel(f=0, mode_index=0)
                                        .values).reshape(())),
    }


EXTRA_VARS: dict[str, tuple[str, str]] = {
    "material_gain_nominal_cm": ("cm^-1", "G_mat of the analysis at this wavelength"),
    "alpha_sca_cm_std": ("cm^-1", "standard deviation of alpha_sca over the realizations"),
    "escape_fraction_std": ("1", "standard deviation of the per-realization escape fraction"),
    "alpha_up_cm": ("cm^-1", "upward flux of the scattered field per unit guided power and "
                    "length (= escape_fraction * alpha_sca_cm), mean over the realizations"),
    "alpha_up_cm_std": ("cm^-1", "standard deviation of alpha_up over the realizations"),
    "alpha_abs_effective_cm": ("cm^-1", "decay of the reference run (flux planes): gain layer "
                               "= mean medium of host + cylinders"),
    "area_fraction_realized": ("1", "cylinder area fraction of the window's gain layer"),
    "decay_check": ("1", "reference decay from the mode amplitudes / from the flux planes "
                    "(1 = a clean guided mode)"),
    "neff_fdtd_reference": ("1", "Re n_eff of the launched mode (Tidy3D's cloud mode solver, "
                            "reference stack)"),
}
REALIZATION_VARS = {"alpha_sca_cm_realizations": "cm^-1", "alpha_up_cm_realizations": "cm^-1",
                    "escape_fraction_realizations": "1"}
SOURCES = {
    "neff": "tidy3d local mode solver (plain stack, gain layer per gain_layer_k)",
    "alpha_abs_cm": "tidy3d local mode solver (plain stack)",
    "gamma_P": "tidy3d local mode solver (plain stack)",
    "beta": "tmm model (3D point-dipole QD emission; not measured by the cell)",
    "spontaneous_air_fraction": "tmm model (3D point-dipole QD emission; not measured)",
    "scattered_fraction": "measured: 'air' only; 'waveguide' holds 1 - air (guided "
                          "back-scatter, other modes, absorption, substrate: not split); "
                          "'substrate', 'spp', 'absorbed' are 0 (not measured)",
}


def _row(stack: Stack, analysis: OutcouplingAnalysis, plan: WavelengthPlan,
         m: dict[str, Any], theta: np.ndarray) -> dict[str, Any]:
    from qdcavity.plugins.tmm.outcoupling_tmm import measured_row

    plain = plan.local["plain"]
    row = measured_row(stack, analysis, plan.wavelength_nm, theta, neff=plain["neff"],
                       gamma_p=plain["gamma_P"], alpha_abs_cm=plain["alpha_cm"],
                       alpha_sca_cm=m["alpha_sca"] * 1e4, alpha_up_cm=m["alpha_up"] * 1e4,
                       escape=m["eta"], escape_pooled=m["eta_pooled"],
                       far_field=m["far_field"])
    row.update({
        "alpha_abs_effective_cm": m["alpha_ref"] * 1e4,
        "area_fraction_realized": plan.fraction_realized, "decay_check": m["decay_check"],
        "neff_fdtd_reference": m["neff_fdtd"].real,
    })
    return row


def outcoupling_dataset(stack: Stack, analysis: OutcouplingAnalysis,
                        plans: list[WavelengthPlan], data: dict[str, Any],
                        attrs: dict[str, Any] | None = None) -> xr.Dataset:
    """The ``outcoupling`` contract dataset (plus extras) from the simulations' data."""
    theta = np.linspace(0.0, 89.5, analysis.angle_points)
    rows = [_row(stack, analysis, p, measure(p, data, theta), theta) for p in plans]

    ds = contracts.outcoupling_dataset(rows, analysis, theta, extra=EXTRA_VARS,
                                       per_realization=REALIZATION_VARS, sources=SOURCES,
                                       descriptions=REALIZATION_DESCRIPTIONS)
    p0 = plans[0]
    ds.attrs.update({
        "mode": analysis.mode, "gain_layer": stack.gain_layer, "geometry": "2d",
        "scattering": f"tidy3d cylinders r={analysis.particle_radius_nm} nm "
                      f"f={analysis.volume_fraction} {analysis.particle_material} in "
                      f"{analysis.host_material}",
        "cylinders_per_realization": int(len(p0.centres_um[0])),
        "window_um": float(p0.x_window_um[1] - p0.x_window_um[0]),
        "cylinder_centres_um": json.dumps({p.wavelength_nm: [c.round(6).tolist()
                                                             for c in p.centres_um]
                                           for p in plans}),
        "model": "plugins/tidy3d/outcoupling.py and outcoupling_post.py; docs/tidy3d.md",
        **(attrs or {}),
    })
    return ds


def run_outcoupling(stack: Stack, analysis: OutcouplingAnalysis, opts: Any) -> xr.Dataset:
    """Build, submit (or resume), download and post-process the outcoupling batch."""
    from .jobs import JobRunner
    from .outcoupling import check, outcoupling_jobs

    check(stack, analysis)  # bad input is named first, then the missing work_dir / key,
    runner = JobRunner(opts, f"outcoupling of '{stack.name}'")  # before the local solves
    jobs, plans = outcoupling_jobs(stack, analysis, opts)
    data = runner.run(jobs)
    return outcoupling_dataset(stack, analysis, plans, data, {
        "realizations": opts.realizations, "seed": opts.seed,
        "scatterer_cell_nm": opts.scatterer_cell_nm or min(10.0,
                                                           analysis.particle_radius_nm / 3),
        "resolution_nm": opts.fdtd_resolution(), "x_boundary": opts.x_boundary,
        "simulations": json.dumps([j.key for j in jobs])})
