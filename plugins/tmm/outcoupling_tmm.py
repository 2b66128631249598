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
"""

from __future__ import annotations

import numpy as np
import xarray as xr

from qdcavity.analyses import OutcouplingAnalysis
from qdcavity.contracts import CHANNELS, with_units
from qdcavity.errors import ConfigError
from qdcavity.materials import material_from_spec
from qdcavity.stack import Stack

from .dipole import dipole_emission
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


def _pick_mode(n: np.ndarray, d: np.ndarray, lam: float, label: str) -> tuple[Mode, list[Mode]]:
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


def _spontaneous(n, d, lam, pos: int, count: int, mode: Mode, others: list[Mode]):
    """(beta, air fraction) of isotropic QD emission averaged over the layer."""
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
    for lam, n in zip(lams, n_all, strict=True):
        mode, modes = _pick_mode(n, d, lam, analysis.mode)
        gamma_p = float(confinement(n, d, lam, mode).gamma_P[pos])
        if analysis.alpha_sca_cm is not None:
            alpha_sca = analysis.alpha_sca_cm
        else:
            n_p = material_from_spec(analysis.particle_material).nk(lam).real
            n_h = material_from_spec(analysis.host_material).nk(lam).real
            alpha_sca = gamma_p * particle_alpha_bulk_cm(
                analysis.particle_radius_nm, analysis.volume_fraction, float(n_p), float(n_h),
                lam, analysis.scattering_model)
        n_e, n_air = n[pos].real, n[-1].real
        u = n_air * np.sin(np.radians(theta)) / n_e
        fractions, p_top = _scatter_dipoles(n, d, lam, mode, pos, analysis.positions, u)
        beta, eta_sp = _spontaneous(n, d, lam, pos, analysis.positions, mode, modes)
        g_net = gamma_p * gains - mode.alpha_cm - alpha_sca
        lateral, vertical = vsl_outputs(g_net, length_cm, beta, fractions[0], alpha_sca, eta_sp)
        pattern = angular_pattern(p_top, u, np.radians(theta), n_e, n_air)
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
    ds.attrs.update({"mode": analysis.mode, "gain_layer": gain_layer,
                     "scattering": "given alpha_sca_cm" if analysis.alpha_sca_cm is not None
                     else f"{analysis.scattering_model} spheres r={analysis.particle_radius_nm} nm"
                     f" f={analysis.volume_fraction} {analysis.particle_material} in "
                     f"{analysis.host_material}",
                     "model": "plugins/tmm/outcoupling_tmm.py docstring; docs/outcoupling.md"})
    return with_units(ds, "outcoupling")
