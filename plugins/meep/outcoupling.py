"""Scattering-driven vertical outcoupling with Meep (host side): the full-wave check of the
TMM ``outcoupling`` model in its ``geometry = "2d"`` form (docs/outcoupling.md). Reached
through the backend: ``qdcavity.solve(stack, "outcoupling", backend="meep", geometry="2d",
...)`` -> ``MeepBackend.run`` -> :func:`run_outcoupling`; options in
``backend.ANALYSIS_DEFAULTS["outcoupling"]``.

A 2D cell of the stack (Meep x = propagation, Meep y = stack normal z, Meep z = the invariant
stack y; TE = Meep's Ez) with infinite cylinders placed at random (seeded) in the gain layer:
radius and area fraction from the analysis' particle model, particle and host permittivities
from the real parts of their indices (pumped QDs: bleached). The worker
(``outcoupling_worker.py``) launches the guided mode with an Ez line current whose profile is
the TMM mode (MPB cannot handle Ag), and records the DFT fields at f0; this module measures:

* the guided power P(x) = |a(x)|^2 P_m from the projection of (Ez, Hy) on the forward mode,
  a(x) = int E_m (neff Ez - Hy) dy / (2 neff int E_m^2 dy) (the TE form of the unconjugated
  reciprocity overlap; a backward wave gives 0), with P_m = Re(neff) int |E_m|^2 dy;
* ``alpha_abs_cm`` (plain stack) and ``alpha_abs_effective_cm`` (reference run: gain layer =
  the mean medium of host + cylinders, so the cylinders add no mean-field change) from a
  least-squares fit of ln P over the window (``fit_margin_um`` in from its ends);
* per realization, alpha_sca = (D_before - D_after) / L, D the mean of ln(P_r / P_ref) over
  scatterer-free stretches just before and after the window: the absorption cancels exactly
  and no fit runs through the cylinders' near fields;
* alpha_up = F_up / int_window P_r dx, F_up = int Re(Ez_s Hx_s*) dx the upward flux of the
  SCATTERED field (realization minus reference) through a line ``flux_height_um`` above the
  stack; the escape fraction = sum alpha_up / sum alpha_sca over the realizations (pooled);
  likewise alpha_down through a line ``flux_depth_um`` below the stack in the substrate, and
  the substrate share sum alpha_down / sum alpha_sca;
* the angular pattern dP/dtheta ~ cos^2(theta) |E~_s(k0 sin theta)|^2 from the Fourier
  transform of the scattered field along that line (+-theta folded, summed over realizations,
  smoothed over one speckle grain, lambda / (n L_line) in sin(theta), max 1), and its half
  width;
* neff (phase slope and decay of a(x)) and gamma_P (Re(n) int_QD |Ez|^2 / int S_x over the
  window's columns) of the plain stack;
* diagnostics: ``flux_check`` (direct flux / projected power, 1 for a clean mode) and
  ``top_check`` (|Ez|^2 just above the top electrode per unit mode amplitude, Meep / TMM: the
  grid error of a thin top metal, which scales the escape; 1.17 at 50 px/um, 1.04 at 100 for
  TE-DIZO's 20 nm Ag).

Why the realization spread is large (docs/outcoupling.md): in 2D about 60 % of the power
scattered out of the mode goes into the counter-propagating mode, one channel that adds
coherently over the window like a random Bragg grating, so alpha_sca of one realization
varies by ~50 %; the upward flux spreads over ~L / lambda angular channels (~25 %).

Means over the realizations go into the contract's variables, the standard deviations into
``*_std`` variables, every realization into ``*_realizations`` (dim ``realization``).
``beta`` and ``spontaneous_air_fraction`` (QD spontaneous emission, a 3D point-dipole
quantity Meep does not measure here) come from the TMM model; ``scattered_fraction`` has the
measured air and substrate shares and the rest (guided back-scatter, other guided modes,
absorption; no SPP exists for TE) in ``waveguide``: Meep does not split them. Each such
variable has a ``source`` attribute and the dataset's ``not_measured`` attribute lists them.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import xarray as xr

from qdcavity.analyses import OutcouplingAnalysis
from qdcavity.contracts import REALIZATION_DESCRIPTIONS, outcoupling_dataset
from qdcavity.errors import ConfigError, SolverError
from qdcavity.materials import material_from_spec
from qdcavity.stack import Stack

from . import runner
from .backend import positive_option
from .structure import build_structure

SCRIPT = Path(__file__).with_name("outcoupling_worker.py")


def check_options(opts: Mapping[str, Any]) -> dict[str, Any]:
    """What ``backend.resolve_options("outcoupling", ...)`` leaves unchecked (it merges
    ``ANALYSIS_DEFAULTS["outcoupling"]``, rejects unknown keys and checks resolution,
    timeout_s, max_time): the cell lengths, the realizations, the x boundary."""
    opts = dict(opts)
    for key in ("window_um", "pml_um", "x_boundary_um", "flux_height_um", "flux_depth_um",
                "pad_lo_um", "source_fwidth", "realizations"):
        opts[key] = positive_option(opts, key)
    for key, room in (("flux_depth_um", "pad_lo_um"), ("flux_height_um", "pad_hi_um")):
        if not opts[key] < opts[room]:
            raise ConfigError(f"option '{key}' must be < {room} (the flux line lies between "
                              "the stack and the PML)", field="options")
    if not -float(opts["pad_lo_um"]) <= float(opts["region_below_um"]) <= 0 <= float(
            opts["region_above_um"]) <= float(opts["pad_hi_um"]):
        raise ConfigError("need -pad_lo_um <= region_below_um <= 0 <= region_above_um "
                          "<= pad_hi_um (the overlap region stays outside the PML)",
                          field="options")
    if opts["realizations"] != int(opts["realizations"]):
        raise ConfigError("option 'realizations' must be a whole number", field="options")
    opts["realizations"] = int(opts["realizations"])
    if opts["x_boundary"] not in ("pml", "absorber"):
        raise ConfigError("option 'x_boundary' must be 'pml' or 'absorber'", field="options")
    if 2 * float(opts["fit_margin_um"]) >= 0.8 * opts["window_um"]:
        raise ConfigError("fit_margin_um leaves less than 20 % of the window for the decay fit",
                          field="options")
    return opts


def resolved(options: Mapping[str, Any]) -> dict[str, Any]:
    """User options -> the options ``MeepBackend.run`` hands to :func:`run_outcoupling`."""
    from .backend import resolve_options

    return check_options(resolve_options("outcoupling", options))


# ------------------------------------------------------------------------------- launching


# ------------------------------------------------------------------------------- geometry


def snapped_thicknesses_nm(thicknesses_nm: np.ndarray, resolution: float) -> np.ndarray:
    """Layer thicknesses as Meep's Layout places them (cumulative edges rounded to pixels)."""
    edges = np.concatenate([[0.0], np.cumsum(thicknesses_nm)]) / 1000.0 * resolution
    return np.diff(np.round(edges)) / resolution * 1000.0


def draw_cylinders(rng: np.random.Generator, count: int, window_um: float, layer_um: float,
                   radius_um: float) -> np.ndarray:
    """(count, 2) centres (x from the window start, y from the layer bottom), uniform over
    [a, L - a] x [a, d - a]: independent positions, each cylinder inside window and layer."""
    x = rng.uniform(radius_um, window_um - radius_um, count)
    y = rng.uniform(radius_um, layer_um - radius_um, count)
    return np.stack([x, y], axis=1)


def effective_stack(stack: Stack, analysis: OutcouplingAnalysis, resolution: float,
                    f_effective: float | None = None) -> Stack:
    """The stack Meep's reference run sees: thicknesses snapped to the grid, the gain layer
    the mean medium of host + cylinders (area fraction ``f_effective``, default the
    analysis' volume_fraction) at the first wavelength. The TMM ``geometry = "2d"`` model run on
    this stack is the like-for-like prediction of the Meep measurement."""
    lam = analysis.wavelength_nm[0]
    f = analysis.volume_fraction if f_effective is None else f_effective
    n_p = float(material_from_spec(analysis.particle_material).nk(lam).real)
    n_h = float(material_from_spec(analysis.host_material).nk(lam).real)
    n_eff = math.sqrt(n_h**2 + f * (n_p**2 - n_h**2))
    d = snapped_thicknesses_nm(stack.thicknesses_nm, resolution)
    over: dict[str, Any] = {f"{name}.thickness_nm": float(t)
                            for name, t in zip(stack.layer_names, d, strict=True)}
    over[f"{stack.gain_layer}.material"] = {"n": n_eff, "name": "effective gain layer"}
    return stack.with_overrides(over)


def cylinder_count(analysis: OutcouplingAnalysis, layer_um: float, window_um: float) -> int:
    """Cylinders per realization: the area fraction times the window's share of the layer."""
    a = analysis.particle_radius_nm / 1000.0
    return int(round(analysis.volume_fraction * window_um * layer_um / (math.pi * a * a)))


def tmm_counterpart(stack: Stack, analysis: OutcouplingAnalysis,
                    options: Mapping[str, Any]) -> tuple[Stack, OutcouplingAnalysis]:
    """The like-for-like TMM problem of a Meep run: the snapped effective-medium stack of
    :func:`effective_stack` and the analysis at geometry '2d' with the area fraction the
    whole number of cylinders really gives. Solve it with the tmm backend
    (``qdcavity.solve(stack, analysis, backend="tmm")``) to compare."""
    opts = resolved(options)
    res = float(opts["resolution"])
    d_snap = snapped_thicknesses_nm(stack.thicknesses_nm, res)
    layer_um = d_snap[stack.layer_position(stack.gain_layer) - 1] / 1000.0
    window = float(opts["window_um"])
    count = cylinder_count(analysis, layer_um, window)
    a = analysis.particle_radius_nm / 1000.0
    f = count * math.pi * a * a / (window * layer_um)
    params = {**analysis.model_dump(), "geometry": "2d", "volume_fraction": f}
    return (effective_stack(stack, analysis, res, f),
            type(analysis).model_validate(params))


# ------------------------------------------------------------------------------- analysis


def _check(stack: Stack, analysis: OutcouplingAnalysis) -> None:
    if analysis.geometry != "2d":
        raise ConfigError("the Meep outcoupling cell is 2D (cylinders, line dipoles): set "
                          "geometry = '2d' and compare with the tmm backend at geometry '2d'",
                          field="geometry")
    if analysis.particle_radius_nm is None:
        raise ConfigError("Meep measures the scattering of placed particles: give "
                          "particle_radius_nm and volume_fraction, not alpha_sca_cm",
                          field="alpha_sca_cm")
    if not analysis.mode.startswith("TE"):
        raise ConfigError("the Meep outcoupling cell launches TE modes only (Ez)", field="mode")
    if not stack.gain_layer:
        raise ConfigError("the stack names no gain_layer", field="gain_layer")


def _mode_of(n: np.ndarray, d: np.ndarray, lam: float, label: str):
    from qdcavity.plugins.tmm.modes import find_modes

    for m in find_modes(n, d, lam, label[:2]):
        if m.label == label:
            return m
    raise SolverError(f"no mode '{label}' in the Meep reference stack at {lam:g} nm")


#: largest |E| at an end of the overlap region / source line, relative to the mode's peak
TAIL_LIMIT = 0.05


def _check_tails(amplitude: np.ndarray, label: str, lam: float,
                 opts: Mapping[str, Any]) -> None:
    """The source line and the overlap region must hold the mode's cladding tails: a
    truncated tail launches radiation and biases the projection (a dielectric substrate such
    as BE's glass needs region_below_um ~ -0.8 with pad_lo_um and flux_depth_um beyond)."""
    for end, key, pad in ((0, "region_below_um", "pad_lo_um"), (-1, "region_above_um",
                                                                 "pad_hi_um")):
        share = float(amplitude[end] / amplitude.max())
        if share > TAIL_LIMIT:
            raise ConfigError(
                f"{label} at {lam:g} nm: the mode's field at the end of the overlap region "
                f"({key} = {opts[key]:g} um) is still {100 * share:.0f} % of its peak; extend "
                f"{key} (and {pad}, which must contain it)", field="options")


def _decay(x: np.ndarray, p: np.ndarray, lo: float, hi: float) -> tuple[float, float]:
    """(alpha in 1/um, ln P at x = lo) of a least-squares fit ln P = c - alpha (x - lo)."""
    sel = (x >= lo) & (x <= hi) & (p > 0)
    if sel.sum() < 5:
        raise SolverError("too few samples for the decay fit (window too short)")
    slope, icpt = np.polyfit(x[sel] - lo, np.log(p[sel]), 1)
    return float(-slope), float(icpt)


def _flux_y(ez: np.ndarray, hx: np.ndarray, dx: float) -> float:
    """Flux through a line of constant Meep y (+y = up): int Re(Ez Hx*) dx."""
    return float(np.sum((ez * np.conj(hx)).real) * dx)


def measure(arrays: Mapping[str, np.ndarray], meta: Mapping[str, Any], mode_ez: np.ndarray,
            neff: complex, f0: float, n_sup: float, theta_deg: np.ndarray,
            opts: Mapping[str, Any], n_layer: Mapping[str, float],
            layer_rows: np.ndarray) -> dict[str, Any]:
    """Decays, escape fractions and far field from the worker's DFT fields (pure numpy).

    ``mode_ez``: the forward mode's Ez on the region's y grid (any scale). Per realization r:

    * alpha_sca = (D_before - D_after) / L with D = the mean of ln(P_r / P_ref) over a
      scatterer-free stretch before and after the window (``ratio_length_um`` long,
      ``ratio_margin_um`` from the window): the reference's absorption cancels exactly and no
      fit runs through the cylinders' near fields;
    * alpha_up = F_up / int_window P_r dx, the upward flux of the scattered field per unit
      guided power (what the vertical VSL output needs: alpha_up = escape * alpha_sca);
    * alpha_down: the same through the substrate line (downward flux);
    * escape = alpha_up / alpha_sca.
    """
    x = np.asarray(arrays["x_region"])
    y = np.asarray(arrays["y_region"])
    dy = float(np.mean(np.diff(y)))
    xl = np.asarray(arrays["x_line"])
    dxl = float(np.mean(np.diff(xl)))
    em = np.asarray(mode_ez, dtype=complex)
    norm = 2 * neff * np.sum(em * em) * dy
    p_m = neff.real * np.sum(np.abs(em) ** 2) * dy
    x1, x2 = float(meta["x1"]), float(meta["x2"])
    margin = float(opts["fit_margin_um"])
    lo, hi = x1 + margin, x2 - margin
    gap_m, gap_l = float(opts["ratio_margin_um"]), float(opts["ratio_length_um"])
    before = (x >= x1 - gap_m - gap_l) & (x <= x1 - gap_m)
    after = (x >= x2 + gap_m) & (x <= x2 + gap_m + gap_l)
    inside = (x >= x1) & (x <= x2)
    if before.sum() < 3 or after.sum() < 3:
        raise SolverError("the cell leaves no scatterer-free stretch before/after the window "
                          "(raise gap_um / tail_um or lower ratio_length_um)")
    tags = ["plain"] if "plain_Ez_region" in arrays else []
    tags.append("reference")
    realizations = sorted({k.split("_")[0] for k in arrays if k.endswith("_Ez_region")
                           and k.split("_")[0][1:].isdigit()}, key=lambda t: int(t[1:]))
    out: dict[str, Any] = {"x": x, "power": {}, "alpha": {}}
    for t in [*tags, *realizations]:
        ez, hy = arrays[f"{t}_Ez_region"], arrays[f"{t}_Hy_region"]
        a = np.sum(em[None, :] * (neff * ez - hy), axis=1) * dy / norm
        out["power"][t] = np.abs(a) ** 2 * p_m
        if t in tags:
            out["alpha"][t], _ = _decay(x, out["power"][t], lo, hi)
            if "amplitude" not in out:
                out["amplitude"] = (t, a)
    # neff and gamma_P of the plain stack (or of the reference)
    t0, a0 = out["amplitude"]
    sel = (x >= lo) & (x <= hi)
    beta = np.polyfit(x[sel], np.unwrap(np.angle(a0[sel])), 1)[0]
    k0 = 2 * math.pi * f0
    out["neff"] = complex(beta / k0, out["alpha"][t0] / (2 * k0))
    ez0, hy0 = arrays[f"{t0}_Ez_region"][sel], arrays[f"{t0}_Hy_region"][sel]
    sx = np.sum(-(ez0 * np.conj(hy0)).real, axis=1) * dy
    # the DFT grid (voxel centres) holds the layer's two interfaces: trapezoid weights
    w_rows = np.full(layer_rows.size, dy)
    w_rows[[0, -1]] *= 0.5
    in_layer = np.abs(ez0[:, layer_rows]) ** 2 @ w_rows
    out["gamma_P"] = float(np.mean(n_layer[t0] * in_layer / sx))
    out["gamma_P_run"] = t0
    out["flux_check"] = float(np.mean(sx / out["power"][t0][sel]))
    # top-electrode check: |Ez / a|^2 just above the stack top against the TMM mode (the
    # same field attenuation through the top metal that radiation escaping to air sees)
    top = int(np.argmin(np.abs(y - (float(meta["interfaces"][-1]) + 0.05))))
    ez_r, hy_r = arrays["reference_Ez_region"][sel], arrays["reference_Hy_region"][sel]
    a_r = np.sum(em[None, :] * (neff * ez_r - hy_r), axis=1) * dy / norm
    shape = np.mean(ez_r[:, top] / a_r)  # the reference run: the stack em was computed for
    out["top_check"] = float(abs(shape / em[top]) ** 2)
    # scattered field on the flux line: escape and far field
    theta = np.radians(np.concatenate([-theta_deg[::-1], theta_deg]))
    kx = k0 * n_sup * np.sin(theta)
    ez_ref, hx_ref = arrays["reference_Ez_line"], arrays["reference_Hx_line"]
    p_ref = out["power"]["reference"]
    alpha_sca, alpha_up, alpha_down, ff = [], [], [], np.zeros(theta.size)
    for t in realizations:
        ratio = np.log(out["power"][t] / p_ref)
        alpha_sca.append((ratio[before].mean() - ratio[after].mean()) / (x2 - x1))
        guided = float(np.trapezoid(out["power"][t][inside], x[inside]))
        es = arrays[f"{t}_Ez_line"] - ez_ref
        alpha_up.append(_flux_y(es, arrays[f"{t}_Hx_line"] - hx_ref, dxl) / guided)
        alpha_down.append(-_flux_y(arrays[f"{t}_Ez_sub"] - arrays["reference_Ez_sub"],
                                   arrays[f"{t}_Hx_sub"] - arrays["reference_Hx_sub"],
                                   dxl) / guided)
        spec = np.exp(-1j * np.outer(kx, xl)) @ es * dxl
        ff += np.cos(theta) ** 2 * np.abs(spec) ** 2
    # speckle: smooth over the grain, a Gaussian of width lambda / (n L_line) in sin(theta)
    s = np.sin(theta)
    grain = 1.0 / (f0 * n_sup * (xl[-1] - xl[0]))
    kern = np.exp(-0.5 * ((s[:, None] - s[None, :]) / grain) ** 2)
    ff = kern @ ff / kern.sum(axis=1)
    half = theta_deg.size
    folded = 0.5 * (ff[half:] + ff[:half][::-1])
    alpha_sca, alpha_up = np.array(alpha_sca), np.array(alpha_up)
    out.update({"alpha_sca": alpha_sca, "alpha_up": alpha_up, "alpha_down": np.array(alpha_down),
                "eta": alpha_up / np.where(alpha_sca > 0, alpha_sca, np.nan),
                "eta_pooled": float(alpha_up.sum() / alpha_sca.sum()),
                "substrate_pooled": float(np.sum(alpha_down) / alpha_sca.sum()),
                "far_field": folded / folded.max() if folded.max() > 0 else folded,
                "speckle_grain_sin": grain, "realizations": realizations})
    return out


#: Per-wavelength variables beyond the contract: units, description.
EXTRA_VARS: dict[str, tuple[str, str]] = {
    "material_gain_nominal_cm": ("cm^-1", "G_mat of the analysis at this wavelength"),
    "alpha_sca_cm_std": ("cm^-1", "standard deviation of alpha_sca over the realizations"),
    "escape_fraction_std": ("1", "standard deviation of the per-realization escape fraction"),
    "alpha_up_cm": ("cm^-1", "upward flux of the scattered field per unit guided power and "
                    "length (= escape_fraction * alpha_sca_cm; its realization spread is "
                    "smaller), mean over the realizations"),
    "alpha_up_cm_std": ("cm^-1", "standard deviation of alpha_up over the realizations"),
    "alpha_down_cm": ("cm^-1", "downward flux of the scattered field into the substrate per "
                      "unit guided power and length, mean over the realizations"),
    "alpha_abs_effective_cm": ("cm^-1", "decay of the reference run: gain layer = mean medium "
                               "of host + cylinders"),
    "area_fraction_realized": ("1", "cylinder area fraction of the window's gain layer, pixel "
                               "coverage, mean over the realizations"),
    "flux_check": ("1", "int S_x dy / (|a|^2 P_m) of the plain run: the mode projection vs "
                   "the direct flux"),
    "top_check": ("1", "|Ez|^2 50 nm above the stack top per unit mode amplitude, Meep / TMM "
                  "(reference): how well the grid renders the top electrode (1 = exact)"),
}
#: Per-realization variables (dims wavelength_nm, realization): units.
REALIZATION_VARS = {"alpha_sca_cm_realizations": "cm^-1", "alpha_up_cm_realizations": "cm^-1",
                    "alpha_down_cm_realizations": "cm^-1", "escape_fraction_realizations": "1"}
#: What this backend does not measure (the values come from the TMM model or are not split).
NOT_MEASURED = {
    "beta": "tmm model (3D point-dipole QD emission; not measured by meep)",
    "spontaneous_air_fraction": "tmm model (3D point-dipole QD emission; not measured by meep)",
    "scattered_fraction": "measured: 'air' and 'substrate' (pooled like escape_fraction); "
                          "'waveguide' holds 1 - air - substrate (guided back-scatter, other "
                          "guided modes and absorption: not split by the 2D cell); 'spp' and "
                          "'absorbed' are 0 (not measured)",
}


def run_outcoupling(stack: Stack, analysis: OutcouplingAnalysis,
                    opts: Mapping[str, Any]) -> xr.Dataset:
    """The ``outcoupling`` contract measured with Meep in a 2D cell (module docstring).
    ``opts``: resolved by ``backend.resolve_options("outcoupling", ...)``."""
    _check(stack, analysis)
    opts = check_options(opts)
    theta = np.linspace(0.0, 89.5, analysis.angle_points)
    rng = np.random.default_rng(int(opts["seed"]))
    rows, runs_meta = [], []
    for lam in analysis.wavelength_nm:
        row, meta = _one_wavelength(stack, analysis, opts, lam, theta, rng)
        rows.append(row)
        runs_meta.append(meta)
    return _dataset(analysis, stack.gain_layer, opts, theta, rows, runs_meta)


def _one_wavelength(stack: Stack, analysis: OutcouplingAnalysis, opts: Mapping[str, Any],
                    lam: float, theta: np.ndarray, rng: np.random.Generator
                    ) -> tuple[dict[str, Any], dict[str, Any]]:
    """One worker call (plain, reference, realizations) and its measurements at ``lam``."""
    from qdcavity.plugins.tmm.fields import mode_profile
    from qdcavity.plugins.tmm.outcoupling_tmm import measured_row

    res = float(opts["resolution"])
    pos = stack.layer_position(stack.gain_layer)
    zero_k = [stack.gain_layer] if analysis.gain_layer_k == "bleached" else []
    d_snap = snapped_thicknesses_nm(stack.thicknesses_nm, res)
    a_um = analysis.particle_radius_nm / 1000.0
    d_layer_um = d_snap[pos - 1] / 1000.0
    if 2 * a_um >= d_layer_um:
        raise ConfigError(f"a cylinder of radius {analysis.particle_radius_nm:g} nm does not "
                          f"fit in the {d_snap[pos - 1]:g} nm gain layer at resolution {res:g}",
                          field="particle_radius_nm")
    window = float(opts["window_um"])
    count = cylinder_count(analysis, d_layer_um, window)
    if count < 1:
        raise ConfigError("the window holds no cylinder at this volume fraction; lengthen "
                          "window_um", field="volume_fraction")
    f0 = 1000.0 / lam
    bw = float(opts["fit_band"])
    lam_band = 1000.0 / np.linspace(f0 * (1 - bw), f0 * (1 + bw), 11)
    snapped = stack.with_overrides({f"{nm}.thickness_nm": float(t) for nm, t in
                                    zip(stack.layer_names, d_snap, strict=True)})
    struct = build_structure(snapped, lam_band, opts, zero_k=zero_k, what="outcoupling: ")
    eps_p = float(material_from_spec(analysis.particle_material).nk(lam).real) ** 2
    eps_h = float(material_from_spec(analysis.host_material).nk(lam).real) ** 2
    cyl = [draw_cylinders(rng, count, window, d_layer_um, a_um)
           for _ in range(opts["realizations"])]
    f_nominal = count * math.pi * a_um**2 / (window * d_layer_um)
    # the reference stack as Meep sees it (fitted media at f0, snapped, effective layer)
    n_fit = np.array([complex(np.sqrt(struct.medium_of(j).eps(f0)))
                      for j in range(len(stack.media_names))])
    n_fit = np.where(n_fit.imag < 0, -n_fit, n_fit)
    n_eff = math.sqrt(eps_h + f_nominal * (eps_p - eps_h))
    n_ref = n_fit.copy()
    n_ref[pos] = n_eff
    mode = _mode_of(n_ref, d_snap, lam, analysis.mode)
    # the line source spans the overlap region (the mode's tails into the claddings)
    z_src = np.arange(1000.0 * float(opts["region_below_um"]),
                      float(d_snap.sum()) + 1000.0 * float(opts["region_above_um"]), 1.0)  # nm
    prof = mode_profile(n_ref, d_snap, lam, mode, z_src)["Ey"]
    _check_tails(np.abs(prof), analysis.mode, lam, opts)
    numerics = {k: opts[k] for k in (
        "pml_um", "pad_lo_um", "pad_hi_um", "x_boundary", "x_boundary_um", "source_margin_um",
        "gap_um", "window_um", "tail_um", "flux_height_um", "flux_depth_um", "region_below_um",
        "region_above_um", "source_fwidth", "source_cutoff", "decay_by", "decay_dt",
        "max_time")}
    job = {
        "task": "outcoupling", "frequency": f0, "gain_layer": pos, "structure": struct.spec,
        "source": {"z_um": (z_src / 1000.0).tolist(), "re": prof.real.tolist(),
                   "im": prof.imag.tolist()},
        "particles": {"radius_um": a_um, "eps_particle": eps_p, "eps_host": eps_h,
                      "realizations": [c.tolist() for c in cyl]},
        "effective_fraction": f_nominal, "plain_reference": bool(opts["plain_reference"]),
        "numerics": {"resolution": res, **numerics},
    }
    result = runner.run_job(job, opts, f"meep outcoupling at {lam:g} nm", script=SCRIPT)
    arr, meta = result.arrays, result.meta
    z_region = (np.asarray(arr["y_region"]) - meta["z0"]) * 1000.0
    mode_ez = mode_profile(n_ref, d_snap, lam, mode, z_region)["Ey"]
    z_if = np.concatenate([[0.0], np.cumsum(d_snap)])
    tol = 1e-3 * 1000.0 / res
    rows = np.nonzero((z_region > z_if[pos - 1] - tol) & (z_region < z_if[pos] + tol))[0]
    m = measure(arr, meta, mode_ez, complex(mode.neff), f0, float(n_fit[-1].real), theta,
                opts, {"plain": float(n_fit[pos].real), "reference": n_eff}, rows)
    alpha_abs = m["alpha"]["plain" if "plain" in m["alpha"] else "reference"] * 1e4
    # VSL curves from Meep's g and escape; beta and the direct air share from the TMM model
    row = measured_row(stack, analysis, lam, theta, neff=m["neff"], gamma_p=m["gamma_P"],
                       alpha_abs_cm=alpha_abs, alpha_sca_cm=m["alpha_sca"] * 1e4,
                       alpha_up_cm=m["alpha_up"] * 1e4, escape=m["eta"],
                       escape_pooled=m["eta_pooled"], far_field=m["far_field"],
                       substrate_fraction=m["substrate_pooled"])
    row.update({
        "alpha_down_cm": float(np.mean(m["alpha_down"])) * 1e4,
        "alpha_abs_effective_cm": m["alpha"]["reference"] * 1e4,
        "area_fraction_realized": float(np.mean(arr["f_realized"])),
        "flux_check": m["flux_check"], "top_check": m["top_check"],
        "alpha_down_cm_realizations": m["alpha_down"] * 1e4,
    })
    meta_out = {"wavelength_nm": lam, "wall_s": result.wall_s, "runs": meta["runs"],
                "cell_um": meta["cell_um"], "pixels": [meta["pixels_x"], meta["pixels_y"]],
                "cylinders": count, "eps_eff": meta["eps_eff"], "fits": struct.fits,
                "snap_um": meta["snap_um"]}
    return row, meta_out


def _dataset(analysis: OutcouplingAnalysis, gain_layer: str, opts: Mapping[str, Any],
             theta: np.ndarray, rows: list[dict[str, Any]], runs_meta: list[dict[str, Any]]
             ) -> xr.Dataset:
    """The contract's variables, the extras and the realization spread, with attributes."""
    ds = outcoupling_dataset(rows, analysis, theta, extra=EXTRA_VARS,
                             per_realization=REALIZATION_VARS, sources=NOT_MEASURED,
                             descriptions=REALIZATION_DESCRIPTIONS)
    ds["net_gain_nominal_cm"] = (ds.gamma_P * ds.material_gain_nominal_cm - ds.alpha_abs_cm
                                 - ds.alpha_sca_cm)
    ds["net_gain_nominal_cm"].attrs["units"] = "cm^-1"
    ds.attrs.update({
        "mode": analysis.mode, "gain_layer": gain_layer, "geometry": "2d",
        "scattering": f"meep cylinders r={analysis.particle_radius_nm} nm "
                      f"f={analysis.volume_fraction} {analysis.particle_material} in "
                      f"{analysis.host_material}",
        "plain_run": "alpha_abs_cm, neff, gamma_P from the plain stack" if opts[
            "plain_reference"] else "alpha_abs_cm, neff, gamma_P from the effective-medium "
        "reference (plain_reference = false)",
        "resolution": float(opts["resolution"]), "realizations": opts["realizations"],
        "seed": int(opts["seed"]), "cell_um": json.dumps(runs_meta[0]["cell_um"]),
        "window_um": float(opts["window_um"]),
        "cylinders_per_realization": runs_meta[0]["cylinders"],
        "wall_s": float(sum(r["wall_s"] for r in runs_meta)),
        "meep_runs": json.dumps(runs_meta, default=str),
        "model": "plugins/meep/outcoupling.py docstring; docs/outcoupling.md",
    })
    return ds
