"""The ``outcoupling`` analysis on the TMM kernels: how lateral ASE leaves the top surface.

Model (semi-analytic, documented in docs/outcoupling.md):

1. The guided mode (TE0, TM0, ...) is solved with the gain layer bleached; its loss is
   alpha_abs. Scattering by the particulate QD film adds alpha_sca = gamma_P * alpha_bulk, with
   alpha_bulk = N sigma_sca = 3 f Q_sca / (4 a) for spheres of radius a at volume fraction f
   (Mie via ``miepython``, or Rayleigh) in the host medium, or alpha_sca given directly.
   (gamma_P turns the local intensity n_h |E|^2 into a fraction of the guided power flow.)
2. Each scattering event radiates like a dipole in the gain layer along the mode's E field:
   TE -> in-plane (horizontal) dipole; TM -> horizontal (Ex) and vertical (Ez) dipoles, added
   incoherently (their cross term vanishes in the azimuthal average). Dipole heights are the
   Gauss-Legendre nodes of the layer, weighted by |E_i(z)|^2 of the mode. The dipole machinery
   gives the share of the re-radiated power that escapes to air (``escape_fraction``), goes to
   the substrate, back into guided modes or SPPs, or is absorbed, and the far-field pattern in
   air, I(theta) = dP/dOmega, azimuthally averaged.
3. VSL stripe of length L pumped uniformly: spontaneous emission couples a fraction ``beta`` into
   the mode, which grows with g = gamma_P G_mat - alpha_abs - alpha_sca:
   lateral(L) = beta (e^{gL} - 1)/g  (the VSL form A (e^{gL}-1)/g with A = beta), and
   vertical(L) = eta alpha_sca beta [(e^{gL} - 1)/g - L]/g + eta_sp L (scattered ASE that
   escapes, plus direct spontaneous emission into air: the B L term), both per unit
   spontaneous emission rate per unit length.

``geometry = "2d"`` (the y-invariant world of a 2D full-wave cell, compared with Meep):

* particles are infinite cylinders along y (radius a, area fraction f, number density
  N = f / (pi a^2) per unit area of the layer); sigma_sca per unit length from the exact 2D Mie
  series at normal incidence (Bohren & Huffman, "Absorption and Scattering of Light by Small
  Particles", 1983, sec. 8.4: case I, E parallel to the axis, for TE modes; case II, E
  perpendicular, for TM modes) or its Rayleigh limit (case I:
  sigma = pi^2/4 k^3 a^4 (m^2 - 1)^2, k the host wavenumber);
* each scatterer re-radiates as a LINE dipole (:mod:`.dipole2d`): y line current for TE, x and z
  for TM (incoherent in total power: their cross term is odd in kx); centres uniform over
  [a, d - a] (a cylinder lies inside the layer), weighted by |E_i(z)|^2 of the mode;
* the power a scatterer takes from the mode is its line dipole's power in the stack, F times
  the bulk value (extinction = radiation of the induced dipole; F the 2D Purcell factor), and
  a fraction phi of it goes back into the FORWARD direction of the same mode (a line dipole
  radiates into kx = +-beta only; :func:`.dipole2d.mode_emission_fraction`) and stays in the
  guided power, so the guided power decays by
  alpha_sca = alpha_bulk n_h int_{a}^{d-a} |E|^2 F (1 - phi) dz d / (d - 2a) / int S_x dz
  (= gamma_P alpha_bulk <F (1 - phi)> for a uniform layer average), the decay a full-wave
  cell measures. In 3D phi -> 0 (a point dipole's emission into one in-plane direction is of
  measure zero) and the 3D path keeps alpha_sca = gamma_P alpha_bulk;
* ``scattered_fraction`` is over the power scattered OUT of the forward mode (the forward
  share removed from ``waveguide``); ``escape_fraction`` its air share;
  ``angular_pattern`` is dP/dtheta in the superstrate's x-z plane (+-theta together),
  normalized to max 1;
* ``beta`` and ``spontaneous_air_fraction`` stay the 3D point-dipole values: the QDs'
  spontaneous emission is not y-invariant.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import xarray as xr

from qdcavity.analyses import OutcouplingAnalysis
from qdcavity.contracts import CHANNELS, with_units
from qdcavity.errors import ConfigError
from qdcavity.materials import material_from_spec
from qdcavity.stack import Stack

from .dipole import dipole_emission
from .dipole2d import line_dipole_emission, mode_emission_fraction
from .fields import confinement, mode_profile
from .modes import Mode, find_modes

MAX_EXPONENT = 700.0  # exp(700) ~ 1e304: beyond it float64 overflows


def particle_alpha_bulk_cm(radius_nm: float, volume_fraction: float, n_particle: float,
                           n_host: float, wavelength_nm: float, model: str) -> float:
    """Scattering coefficient N sigma_sca (cm^-1) of spheres in a host medium."""
    x = 2 * np.pi * radius_nm * n_host / wavelength_nm
    m = n_particle / n_host
    if model == "rayleigh":
        q_sca = 8.0 / 3.0 * x**4 * abs((m**2 - 1) / (m**2 + 2)) ** 2
    else:
        import miepython

        _, q_sca, _, _ = miepython.efficiencies(n_particle, 2 * radius_nm, wavelength_nm,
                                                n_env=n_host)
        q_sca = float(q_sca)
    return 3 * volume_fraction * q_sca / (4 * radius_nm * 1e-7)


def cylinder_q_sca(m: complex, x: float, case: str) -> float:
    """Scattering efficiency of an infinite cylinder at normal incidence (exact series).

    Bohren & Huffman (1983), sec. 8.4, eqs. (8.30)-(8.32) with zeta = 90 deg:
    case "I" (E parallel to the axis) b_n = [J_n(mx) J_n'(x) - m J_n'(mx) J_n(x)] /
    [J_n(mx) H_n'(x) - m J_n'(mx) H_n(x)], Q = (2/x) [|b_0|^2 + 2 sum_{n>=1} |b_n|^2];
    case "II" (E perpendicular) a_n = [m J_n'(x) J_n(mx) - J_n(x) J_n'(mx)] /
    [m J_n(mx) H_n'(x) - J_n'(mx) H_n(x)], Q likewise; H_n = J_n + i Y_n (exp(-i omega t)).
    x = k a (host wavenumber), m = n_particle / n_host. C_sca per unit length = 2 a Q.
    Rayleigh limits: Q_I = pi^2 x^3 (m^2 - 1)^2 / 8, Q_II = Q_I 2 / (m^2 + 1)^2.
    """
    from scipy.special import h1vp, hankel1, jv, jvp

    if case not in ("I", "II"):
        raise ValueError("case must be 'I' (E parallel to the axis) or 'II'")
    nmax = int(abs(x) + 4 * abs(x) ** (1 / 3) + 4)
    order = np.arange(nmax + 1)
    mx = m * x
    jm, djm = jv(order, mx), jvp(order, mx)
    jx, djx = jv(order, x), jvp(order, x)
    hx, dhx = hankel1(order, x), h1vp(order, x)
    if case == "I":
        coef = (jm * djx - m * djm * jx) / (jm * dhx - m * djm * hx)
    else:
        coef = (m * djx * jm - jx * djm) / (m * jm * dhx - djm * hx)
    weight = np.where(order == 0, 1.0, 2.0)
    return float(2.0 / x * np.sum(weight * np.abs(coef) ** 2))


def cylinder_alpha_bulk_cm(radius_nm: float, area_fraction: float, n_particle: float,
                           n_host: float, wavelength_nm: float, model: str,
                           polarization: str = "TE") -> float:
    """Scattering coefficient N sigma_sca (cm^-1) of parallel cylinders in a host medium for
    light travelling normal to their axes: N = f / (pi a^2) per unit area, sigma = 2 a Q_sca
    per unit length (:func:`cylinder_q_sca`); TE (E along the axes) is case I, TM case II."""
    x = 2 * np.pi * radius_nm * n_host / wavelength_nm
    m = n_particle / n_host
    case = "I" if polarization == "TE" else "II"
    if model == "rayleigh":
        q_sca = np.pi**2 * x**3 * (m**2 - 1) ** 2 / 8
        if case == "II":
            q_sca *= 2 / (m**2 + 1) ** 2
    else:
        q_sca = cylinder_q_sca(complex(m), x, case)
    sigma_nm = 2 * radius_nm * q_sca
    return area_fraction / (np.pi * radius_nm**2) * sigma_nm * 1e7


def pick_mode(n: np.ndarray, d: np.ndarray, lam: float, label: str) -> tuple[Mode, list[Mode]]:
    """The mode called ``label`` (e.g. "TE0") and all modes of its polarization; ConfigError
    naming the modes found if there is none (the full-wave backends use it too)."""
    modes = find_modes(n, d, lam, label[:2])
    for mode in modes:
        if mode.label == label:
            return mode, modes
    raise ConfigError(f"no mode '{label}' at {lam:g} nm; found "
                      f"{[m.label for m in modes] or 'none'}", field="mode")


def _scatter_dipoles(n, d, lam, mode: Mode, pos: int, count: int, u: np.ndarray):
    """Mode-weighted dipole results: (fractions (5,), P_top on u, total power)."""
    z0 = float(np.sum(d[: pos - 1]))
    nodes, weights = np.polynomial.legendre.leggauss(count)
    heights = (nodes + 1) / 2 * d[pos - 1]
    profile = mode_profile(n, d, lam, mode, z0 + np.clip(heights, 1e-9, d[pos - 1] - 1e-9))
    if mode.polarization == "TE":
        w_h, w_v = np.abs(profile["Ey"]) ** 2, np.zeros(count)
    else:
        w_h, w_v = np.abs(profile["Ex"]) ** 2, np.abs(profile["Ez"]) ** 2
    w_h, w_v = w_h * weights, w_v * weights
    power = np.zeros(5)
    p_top = np.zeros_like(u)
    total = 0.0
    for z, wh, wv in zip(heights, w_h, w_v, strict=True):
        res = dipole_emission(n, d, lam, pos, float(z), u=u, rtol=1e-6)
        for row, w in ((0, wh), (1, wv)):  # horizontal, vertical rows
            if w > 0:
                power += w * res.purcell[row] * res.fractions[row]
                p_top += w * res.P_top[row]
                total += w * res.purcell[row]
    return power / total, p_top / total


def _scatter_line_dipoles(n, d, lam, mode: Mode, pos: int, count: int, u: np.ndarray,
                          margin_nm: float) -> dict:
    """2D geometry: mode-weighted LINE dipoles at Gauss-Legendre heights in [margin, d - margin]
    of the layer (cylinder centres). Returns the fractions (5,) of the power scattered out of
    the forward mode, P_top on u (same weights), and the brackets that turn the bulk
    scattering coefficient into the mode's decay (see module docstring)."""
    thick = float(d[pos - 1])
    z0 = float(np.sum(d[: pos - 1]))
    nodes, weights = np.polynomial.legendre.leggauss(count)
    heights = margin_nm + (nodes + 1) / 2 * (thick - 2 * margin_nm)
    heights = np.clip(heights, 1e-9, thick - 1e-9)
    fine, fine_w = np.polynomial.legendre.leggauss(24)  # int_0^d |E|^2 (smooth in a layer)
    fine_z = np.clip((fine + 1) / 2 * thick, 1e-9, thick - 1e-9)
    prof = mode_profile(n, d, lam, mode, z0 + np.concatenate([heights, fine_z]))
    tm = mode.polarization == "TM"
    comps = (prof["Ex"], prof["Ez"]) if tm else (prof["Ey"],)
    e2_parts = [np.abs(c[:count]) ** 2 for c in comps]  # (orientations) x heights
    e2_all = np.abs(prof["E_abs2"][count:])
    int_e2 = float(np.sum(fine_w * e2_all) * thick / 2)
    rows = (1, 2) if tm else (0,)  # LineDipoleResult rows: y, x, z
    power = np.zeros(5)
    p_top = np.zeros_like(u)
    ext = forward = 0.0
    ext_br = dec_br = 0.0  # int |E|^2 F and int |E|^2 F (1 - phi), GL-weighted
    purcells = []
    for i, z in enumerate(heights):
        res = line_dipole_emission(n, d, lam, pos, float(z), u=u, rtol=1e-6)
        f_rows = np.array([res.purcell[r] for r in rows])
        purcells.append(f_rows)
        dip = np.array([e2[i] for e2 in e2_parts]) * f_rows  # power of each line dipole
        phi = float(mode_emission_fraction(
            n, d, lam, mode, np.array([z0 + z]),
            f_rows[:, None] if tm else f_rows[:1])[0])
        w = weights[i]
        for k, r in enumerate(rows):
            power += w * dip[k] * res.fractions[r]
            p_top += w * np.array([e2[i] for e2 in e2_parts])[k] * res.P_top[r]
        total = float(dip.sum())
        ext += w * total
        forward += w * total * phi
        ext_br += w * total
        dec_br += w * total * (1 - phi)
    power[2] -= forward
    out = ext - forward
    e2_nodes = sum(e2_parts)
    scale = thick / 2 / int_e2  # (d/2) sum w (...) / int_0^d |E|^2, margin factor included
    return {
        "fractions": power / out,
        "p_top": p_top / out,
        "extinction_bracket": ext_br * scale,
        "decay_bracket": dec_br * scale,
        "purcell_mean": ext / float(np.sum(weights * e2_nodes)),
        "forward_fraction": forward / ext,
    }


def spontaneous_emission(n: np.ndarray, d: np.ndarray, lam: float, pos: int, count: int,
                         mode: Mode, others: list[Mode]) -> tuple[float, float]:
    """(beta, air fraction) of isotropic QD emission averaged over the gain layer (``count``
    Gauss-Legendre heights): beta is the share into ``mode`` (all in-plane directions); the
    full-wave backends take these two from here (they do not simulate spontaneous emission)."""
    nodes, weights = np.polynomial.legendre.leggauss(count)
    heights = (nodes + 1) / 2 * d[pos - 1]
    n_e = n[pos].real
    u_m = mode.neff.real / n_e
    gaps = [abs(o.neff.real / n_e - u_m) for o in others if o is not mode]
    half = min([0.05, *[g / 2 for g in gaps if g > 0]])
    u = np.linspace(u_m - half, u_m + half, 4001)
    beta = air = 0.0
    for z, w in zip(heights, weights / 2, strict=True):
        res = dipole_emission(n, d, lam, pos, float(z), u=u, rtol=1e-6)
        beta += w * np.trapezoid(res.K[2], u) / res.purcell[2]
        air += w * res.fractions[2][0]
    return beta, air


def angular_pattern(p_top: np.ndarray, u: np.ndarray, theta: np.ndarray, n_e: float,
                    n_air: float) -> np.ndarray:
    """dP/dOmega in air (normalized to max 1) from P_top(u): u = n_air sin(theta) / n_e."""
    safe = np.where(u > 0, u, 1.0)
    per_solid_angle = np.where(u > 0, p_top / safe, 0.0) * np.cos(theta)
    if u[0] == 0 and len(u) > 1:  # the limit theta -> 0 from the next point
        per_solid_angle[0] = p_top[1] / u[1]
    peak = per_solid_angle.max()
    return per_solid_angle / peak if peak > 0 else per_solid_angle


def half_width_deg(pattern: np.ndarray, theta_deg: np.ndarray) -> float:
    """Angle from the normal where the pattern first drops below half its maximum."""
    below = np.nonzero(pattern < 0.5)[0]
    below = below[below > int(np.argmax(pattern))]
    if not below.size:
        return float(theta_deg[-1])
    i = below[0]
    t0, t1, p0, p1 = theta_deg[i - 1], theta_deg[i], pattern[i - 1], pattern[i]
    return float(t0 + (0.5 - p0) * (t1 - t0) / (p1 - p0))


def vsl_outputs(g: np.ndarray, length_cm: np.ndarray, beta: float, eta: float, alpha_sca: float,
                eta_sp: float) -> tuple[np.ndarray, np.ndarray]:
    """Lateral and vertical VSL output; exact series near g = 0, no overflow (checked)."""
    gl = np.multiply.outer(g, length_cm)
    if np.any(gl > MAX_EXPONENT):
        worst = np.unravel_index(np.argmax(gl), gl.shape)
        raise ConfigError(
            f"net gain {g[worst[0]]:.4g} cm^-1 x stripe {length_cm[worst[1]] * 1e4:.4g} um "
            f"= {gl[worst]:.4g} overflows exp(); shorten the stripe or lower the gain",
            field="stripe_length_um")
    g2 = g[:, None] * np.ones_like(gl)
    small = np.abs(gl) < 1e-6
    safe_g = np.where(small, 1.0, g2)
    L = np.broadcast_to(length_cm, gl.shape)
    grow = np.where(small, L * (1 + gl / 2), np.expm1(gl) / safe_g)           # (e^{gL}-1)/g
    excess = np.where(small, L**2 / 2 * (1 + gl / 3), (np.expm1(gl) - gl) / safe_g**2)
    lateral = beta * grow
    vertical = eta * alpha_sca * beta * excess + eta_sp * L
    return lateral, vertical


def _std(values: np.ndarray) -> float:
    return float(np.std(values, ddof=1)) if len(values) > 1 else 0.0


def measured_row(stack: Stack, analysis: OutcouplingAnalysis, lam: float, theta: np.ndarray, *,
                 neff: complex, gamma_p: float, alpha_abs_cm: float, alpha_sca_cm: np.ndarray,
                 alpha_up_cm: np.ndarray, escape: np.ndarray, escape_pooled: float,
                 far_field: np.ndarray, substrate_fraction: float = 0.0) -> dict[str, Any]:
    """One wavelength's outcoupling quantities from a simulation of scatterer realizations
    (Meep, Tidy3D FDTD): its measured mode (``neff``, ``gamma_p``, ``alpha_abs_cm``), the
    per-realization ``alpha_sca_cm``, ``alpha_up_cm`` and ``escape`` fraction, the pooled
    escape and far field; beta and the direct air share of spontaneous emission come from this
    TMM model. Backends add their own extra variables to the returned row."""
    zero_k = [stack.gain_layer] if analysis.gain_layer_k == "bleached" else []
    n_lam = stack.indices([lam], zero_k=zero_k)[0]
    pos = stack.layer_position(stack.gain_layer)
    tmm_mode, tmm_modes = pick_mode(n_lam, stack.thicknesses_nm, lam, analysis.mode)
    beta, eta_sp = spontaneous_emission(n_lam, stack.thicknesses_nm, lam, pos,
                                        analysis.positions, tmm_mode, tmm_modes)
    alpha_sca = float(np.mean(alpha_sca_cm))
    g_net = gamma_p * np.asarray(analysis.gain_scan_cm) - alpha_abs_cm - alpha_sca
    lateral, vertical = vsl_outputs(g_net, np.asarray(analysis.stripe_length_um) * 1e-4,
                                    beta, escape_pooled, alpha_sca, eta_sp)
    fractions = np.zeros(len(CHANNELS))
    fractions[CHANNELS.index("air")] = escape_pooled
    fractions[CHANNELS.index("substrate")] = substrate_fraction
    fractions[CHANNELS.index("waveguide")] = 1.0 - escape_pooled - substrate_fraction
    return {
        "neff": neff, "gamma_P": gamma_p, "alpha_abs_cm": alpha_abs_cm,
        "alpha_sca_cm": alpha_sca, "net_gain_cm": g_net, "escape_fraction": escape_pooled,
        "scattered_fraction": fractions, "beta": beta, "spontaneous_air_fraction": eta_sp,
        "angular_pattern": far_field, "half_width_deg": half_width_deg(far_field, theta),
        "lateral_output": lateral, "vertical_output": vertical,
        "material_gain_nominal_cm": analysis.gain_at(lam),
        "alpha_sca_cm_std": _std(alpha_sca_cm), "escape_fraction_std": _std(escape),
        "alpha_up_cm": float(np.mean(alpha_up_cm)), "alpha_up_cm_std": _std(alpha_up_cm),
        "alpha_sca_cm_realizations": alpha_sca_cm, "alpha_up_cm_realizations": alpha_up_cm,
        "escape_fraction_realizations": escape,
    }


def solve_outcoupling(stack: Stack, analysis: OutcouplingAnalysis) -> xr.Dataset:
    gain_layer = stack.gain_layer
    if not gain_layer:
        raise ConfigError("the stack names no gain_layer (the scattering QD film)",
                          field="gain_layer")
    pos = stack.layer_position(gain_layer)
    lams = list(analysis.wavelength_nm)
    zero_k = [gain_layer] if analysis.gain_layer_k == "bleached" else []
    n_all = stack.indices(lams, zero_k=zero_k)
    d = stack.thicknesses_nm
    theta = np.linspace(0.0, 89.5, analysis.angle_points)
    gains = np.asarray(analysis.gain_scan_cm, dtype=float)
    length_cm = np.asarray(analysis.stripe_length_um) * 1e-4
    out: dict[str, list] = {k: [] for k in (
        "neff", "gamma_P", "alpha_abs_cm", "alpha_sca_cm", "net_gain_cm", "escape_fraction",
        "scattered_fraction", "beta", "spontaneous_air_fraction", "angular_pattern",
        "half_width_deg", "lateral_output", "vertical_output", "material_gain_nominal_cm")}
    two_d = analysis.geometry == "2d"
    margin = 0.0
    if two_d and analysis.particle_radius_nm is not None:
        margin = float(analysis.particle_radius_nm)
        if 2 * margin >= d[pos - 1]:
            raise ConfigError(
                f"a cylinder of radius {margin:g} nm does not fit in the {d[pos - 1]:g} nm "
                f"'{gain_layer}' layer (geometry 2d puts the cylinders inside the layer)",
                field="particle_radius_nm")
    extra: dict[str, list] = {k: [] for k in (
        "alpha_ext_cm", "purcell_mean", "forward_fraction")} if two_d else {}
    for lam, n in zip(lams, n_all, strict=True):
        mode, modes = pick_mode(n, d, lam, analysis.mode)
        gamma_p = float(confinement(n, d, lam, mode).gamma_P[pos])
        alpha_bulk = None
        if analysis.alpha_sca_cm is None:
            n_p = float(material_from_spec(analysis.particle_material).nk(lam).real)
            n_h = float(material_from_spec(analysis.host_material).nk(lam).real)
            if two_d:
                alpha_bulk = cylinder_alpha_bulk_cm(
                    analysis.particle_radius_nm, analysis.volume_fraction, n_p, n_h, lam,
                    analysis.scattering_model, mode.polarization)
            else:
                alpha_bulk = particle_alpha_bulk_cm(
                    analysis.particle_radius_nm, analysis.volume_fraction, n_p, n_h, lam,
                    analysis.scattering_model)
        n_e, n_air = n[pos].real, n[-1].real
        u = n_air * np.sin(np.radians(theta)) / n_e
        if two_d:
            sc = _scatter_line_dipoles(n, d, lam, mode, pos, analysis.positions, u, margin)
            fractions = sc["fractions"]
            if alpha_bulk is None:
                alpha_sca = float(analysis.alpha_sca_cm)
                alpha_ext = alpha_sca * sc["extinction_bracket"] / sc["decay_bracket"]
            else:
                alpha_sca = gamma_p * alpha_bulk * sc["decay_bracket"]
                alpha_ext = gamma_p * alpha_bulk * sc["extinction_bracket"]
            extra["alpha_ext_cm"].append(alpha_ext)
            extra["purcell_mean"].append(sc["purcell_mean"])
            extra["forward_fraction"].append(sc["forward_fraction"])
            jac = n_air * np.cos(np.radians(theta)) / n_e
            per_angle = sc["p_top"] * jac
            pattern = per_angle / per_angle.max() if per_angle.max() > 0 else per_angle
        else:
            alpha_sca = (float(analysis.alpha_sca_cm) if alpha_bulk is None
                         else gamma_p * alpha_bulk)
            fractions, p_top = _scatter_dipoles(n, d, lam, mode, pos, analysis.positions, u)
            pattern = angular_pattern(p_top, u, np.radians(theta), n_e, n_air)
        beta, eta_sp = spontaneous_emission(n, d, lam, pos, analysis.positions, mode, modes)
        g_net = gamma_p * gains - mode.alpha_cm - alpha_sca
        lateral, vertical = vsl_outputs(g_net, length_cm, beta, fractions[0], alpha_sca, eta_sp)
        for key, value in (
            ("neff", mode.neff), ("gamma_P", gamma_p), ("alpha_abs_cm", mode.alpha_cm),
            ("alpha_sca_cm", alpha_sca), ("net_gain_cm", g_net),
            ("escape_fraction", fractions[0]), ("scattered_fraction", fractions),
            ("beta", beta), ("spontaneous_air_fraction", eta_sp), ("angular_pattern", pattern),
            ("half_width_deg", half_width_deg(pattern, theta)), ("lateral_output", lateral),
            ("vertical_output", vertical),
            ("material_gain_nominal_cm", analysis.gain_at(lam)),
        ):
            out[key].append(value)
    wl = ("wavelength_nm",)
    ds = xr.Dataset(
        {
            "neff": (wl, np.asarray(out["neff"], dtype=complex)),
            **{k: (wl, np.asarray(out[k], dtype=float)) for k in (
                "gamma_P", "alpha_abs_cm", "alpha_sca_cm", "escape_fraction", "beta",
                "spontaneous_air_fraction", "half_width_deg", "material_gain_nominal_cm")},
            "net_gain_cm": ((*wl, "material_gain_cm"), np.asarray(out["net_gain_cm"])),
            "scattered_fraction": ((*wl, "channel"), np.asarray(out["scattered_fraction"])),
            "angular_pattern": ((*wl, "angle_deg"), np.asarray(out["angular_pattern"])),
            "lateral_output": ((*wl, "material_gain_cm", "stripe_length_um"),
                               np.asarray(out["lateral_output"])),
            "vertical_output": ((*wl, "material_gain_cm", "stripe_length_um"),
                                np.asarray(out["vertical_output"])),
        },
        coords={"wavelength_nm": np.asarray(lams), "material_gain_cm": gains,
                "stripe_length_um": np.asarray(analysis.stripe_length_um, dtype=float),
                "angle_deg": theta, "channel": list(CHANNELS)},
    )
    ds["material_gain_nominal_cm"].attrs["units"] = "cm^-1"
    ds["net_gain_nominal_cm"] = ds.gamma_P * ds.material_gain_nominal_cm - ds.alpha_abs_cm \
        - ds.alpha_sca_cm
    ds["net_gain_nominal_cm"].attrs["units"] = "cm^-1"
    for key, (units, text) in {
        "alpha_ext_cm": ("cm^-1", "power taken from the mode by the scatterers (extinction, "
                         "incl. the part scattered back into the forward mode)"),
        "purcell_mean": ("1", "|E|^2-weighted 2D Purcell factor of the scatterers' line "
                         "dipoles"),
        "forward_fraction": ("1", "share of the scatterers' power re-radiated into the "
                             "forward mode (stays guided)"),
    }.items():
        if key in extra:
            ds[key] = (wl, np.asarray(extra[key], dtype=float))
            ds[key].attrs.update({"units": units, "description": text})
    shape = "cylinders" if two_d else "spheres"
    ds.attrs.update({"mode": analysis.mode, "gain_layer": gain_layer,
                     "geometry": analysis.geometry,
                     "scattering": "given alpha_sca_cm" if analysis.alpha_sca_cm is not None
                     else f"{analysis.scattering_model} {shape} r={analysis.particle_radius_nm} "
                     f"nm f={analysis.volume_fraction} {analysis.particle_material} in "
                     f"{analysis.host_material}",
                     "model": "plugins/tmm/outcoupling_tmm.py docstring; docs/outcoupling.md"})
    if two_d:
        ds["angular_pattern"].attrs["description"] = (
            "dP/dtheta in the x-z plane of the superstrate (2d geometry), max 1")
    return with_units(ds, "outcoupling")
