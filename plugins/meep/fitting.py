"""Drude-Lorentz fits of the project's material tables for Meep (host side: numpy + scipy).

Meep needs a causal, passive permittivity model it can time-step. Each medium of a stack is
fitted over the simulated band (not one wavelength) from exactly the n + ik data the TMM
backend uses (``Stack.indices``), in Meep's units (length unit 1 um, frequency f = 1/lambda_um,
time dependence exp(-i omega t), Im(eps) > 0 absorbing)::

    eps(f) = eps_inf
             + sum_j sigma_j f_j^2 / (f_j^2 - f^2 - i f gamma_j)      (Lorentz poles)
             - sigma_D / (f^2 + i f gamma_D)                          (optional Drude pole)

which is exactly ``mp.Medium(epsilon=eps_inf, E_susceptibilities=[LorentzianSusceptibility(
frequency=f_j, gamma=gamma_j, sigma=sigma_j), DrudeSusceptibility(frequency=1, gamma=gamma_D,
sigma=sigma_D)])``.

Constraints keep the model passive and stable in Meep: eps_inf >= 1, sigma >= 0, gamma >= 0,
pole frequencies between 0.02 f_lo and 8 f_hi. The residual minimised is the complex index
error Delta N ~ Delta eps / (2 N) at every band sample; models of increasing size are tried
(1 Lorentz, Drude, Drude + 1 Lorentz, 2 Lorentz, Drude + 2 Lorentz, 3 Lorentz) and the first
whose worst |Delta N| over the band is below ``tolerance`` is kept (else the best one). A fit
whose worst error exceeds ``fail_tolerance``, or data with gain (k < 0), raise :class:`FitError`.
The fit error is reported per medium (``max_dn`` = max |Delta N|, ``max_dk_rel``).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

__all__ = ["FitError", "MeepMedium", "Pole", "fit_medium", "harmonic_mean_index"]

_MODELS: tuple[tuple[bool, int], ...] = (
    (False, 1), (True, 0), (True, 1), (False, 2), (True, 2), (False, 3),
)


class FitError(ValueError):
    """The data of a medium cannot be represented by a passive Drude-Lorentz model."""


@dataclass(frozen=True)
class Pole:
    """One susceptibility term in Meep units (frequencies in 1/um)."""

    kind: str  # "lorentz" | "drude"
    frequency: float
    gamma: float
    sigma: float

    def chi(self, f: np.ndarray) -> np.ndarray:
        f = np.asarray(f, dtype=float)
        if self.kind == "drude":
            return -self.sigma * self.frequency**2 / (f**2 + 1j * f * self.gamma)
        return self.sigma * self.frequency**2 / (self.frequency**2 - f**2 - 1j * f * self.gamma)


@dataclass(frozen=True)
class MeepMedium:
    """A fitted medium: ``eps_inf`` + ``poles``, with the fit error over ``band_nm``."""

    name: str
    eps_inf: float
    poles: tuple[Pole, ...] = ()
    band_nm: tuple[float, float] = (0.0, 0.0)
    max_dn: float = 0.0
    max_dk_rel: float = 0.0
    model: str = "constant"
    notes: tuple[str, ...] = field(default=())

    def eps(self, f: np.ndarray | float) -> np.ndarray:
        f = np.asarray(f, dtype=float)
        out = np.full(f.shape, self.eps_inf, dtype=complex)
        for p in self.poles:
            out = out + p.chi(f)
        return out

    def index(self, f: np.ndarray | float) -> np.ndarray:
        n = np.sqrt(self.eps(f))
        return np.where(n.imag < 0, -n, n)

    def to_json(self) -> dict:
        return {
            "name": self.name,
            "eps_inf": float(self.eps_inf),
            "poles": [{"kind": p.kind, "frequency": float(p.frequency), "gamma": float(p.gamma),
                       "sigma": float(p.sigma)} for p in self.poles],
        }

    def summary(self) -> dict:
        return {"name": self.name, "model": self.model, "band_nm": list(self.band_nm),
                "max_dn": float(self.max_dn), "max_dk_rel": float(self.max_dk_rel),
                **self.to_json()}


def _eps_model(x: np.ndarray, f: np.ndarray, drude: bool, nl: int) -> np.ndarray:
    eps = np.full(f.shape, x[0], dtype=complex)
    i = 1
    if drude:
        sd, gd = x[1], math.exp(x[2])
        eps = eps - sd / (f**2 + 1j * f * gd)
        i = 3
    for _ in range(nl):
        fj, gj, sj = math.exp(x[i]), math.exp(x[i + 1]), x[i + 2]
        eps = eps + sj * fj**2 / (fj**2 - f**2 - 1j * f * gj)
        i += 3
    return eps


def _to_medium(name: str, x: np.ndarray, drude: bool, nl: int) -> tuple[float, tuple[Pole, ...]]:
    poles = []
    i = 1
    if drude:
        poles.append(Pole("drude", 1.0, math.exp(x[2]), float(x[1])))
        i = 3
    for _ in range(nl):
        poles.append(Pole("lorentz", math.exp(x[i]), math.exp(x[i + 1]), float(x[i + 2])))
        i += 3
    return float(x[0]), tuple(poles)


def _errors(eps_fit: np.ndarray, n_data: np.ndarray) -> tuple[float, float]:
    n_fit = np.sqrt(eps_fit)
    n_fit = np.where(n_fit.imag < 0, -n_fit, n_fit)
    dn = np.abs(n_fit - n_data)
    dk = np.abs(n_fit.imag - n_data.imag) / np.maximum(np.abs(n_data.imag), 1e-3)
    return float(dn.max()), float(dk.max())


def _fit_model(f: np.ndarray, n_data: np.ndarray, drude: bool, nl: int,
               starts: list[np.ndarray]) -> tuple[np.ndarray, float]:
    from scipy.optimize import least_squares

    eps_data = n_data**2
    f_lo, f_hi = float(f.min()), float(f.max())
    lo, hi = [1.0], [60.0]
    if drude:
        lo += [0.0, math.log(1e-5)]
        hi += [1e4, math.log(5 * f_hi)]
    for _ in range(nl):
        lo += [math.log(0.02 * f_lo), math.log(1e-4 * f_lo), 0.0]
        hi += [math.log(8 * f_hi), math.log(5 * f_hi), 1e4]
    lo_a, hi_a = np.array(lo), np.array(hi)
    w = 1.0 / (2.0 * np.abs(n_data))

    def resid(x: np.ndarray) -> np.ndarray:
        d = (_eps_model(x, f, drude, nl) - eps_data) * w
        return np.concatenate([d.real, d.imag])

    best_x, best_err = None, math.inf
    for x0 in starts:
        x0 = np.clip(x0, lo_a + 1e-9, hi_a - 1e-9)
        try:
            res = least_squares(resid, x0, bounds=(lo_a, hi_a), x_scale="jac",
                                xtol=1e-13, ftol=1e-13, gtol=1e-13, max_nfev=4000)
        except (ValueError, FloatingPointError):  # pragma: no cover - defensive
            continue
        err, _ = _errors(_eps_model(res.x, f, drude, nl), n_data)
        if np.isfinite(err) and err < best_err:
            best_x, best_err = res.x, err
    if best_x is None:
        raise FitError("no start converged")
    return best_x, best_err


def _starts(f: np.ndarray, eps_data: np.ndarray, drude: bool, nl: int,
            previous: np.ndarray | None) -> list[np.ndarray]:
    """Initial guesses: poles on a grid (or the smaller model's fit plus one pole)."""
    f_lo, f_hi = float(f.min()), float(f.max())
    fc = 0.5 * (f_lo + f_hi)
    ec = complex(eps_data[len(eps_data) // 2])
    guesses: list[np.ndarray] = []
    drude_part: list[float] = []
    if drude:
        # exact single-frequency Drude match at the band centre: 1 - eps = s / (f^2 + i f g)
        one_minus = 1 - ec if ec.real < 1 else 1.0 + 1j * 0.1
        z = 1 / one_minus
        s = max(fc**2 / max(z.real, 1e-6), 1e-3)
        g = max(z.imag * s / fc, 1e-4)
        drude_part = [s, math.log(min(g, 4 * f_hi))]
    pole_freqs = [0.3 * f_lo, 0.7 * f_lo, fc, 1.5 * f_hi, 3 * f_hi, 6 * f_hi]
    pole_gammas = [0.02 * fc, 0.3 * fc, 2 * fc]
    if previous is not None:
        # extend the previous (one pole smaller) best fit by one pole at several places
        for fp in pole_freqs:
            for gp in pole_gammas:
                guesses.append(np.array([*previous, math.log(fp), math.log(gp), 0.05]))
        return guesses
    eps_inf = max(1.0, abs(ec.real) if ec.real > 1 else 1.0)
    if drude and nl == 0:
        guesses.append(np.array([1.0, *drude_part]))
        guesses.append(np.array([3.0, *drude_part]))
        return guesses
    for fp in pole_freqs:
        for gp in pole_gammas:
            sig = max((ec.real - 1.0) * 0.5, 0.05)
            x = [1.0 if drude else max(1.0, eps_inf - sig), *drude_part]
            for _ in range(nl):
                x += [math.log(fp), math.log(gp), sig / max(nl, 1)]
            guesses.append(np.array(x))
    return guesses


def fit_medium(name: str, wavelength_nm: Sequence[float], n_data: Sequence[complex],
               tolerance: float = 2e-4, fail_tolerance: float = 2e-2) -> MeepMedium:
    """Fit ``n_data`` (complex index at ``wavelength_nm``) with a passive Drude-Lorentz model.

    Raises :class:`FitError` (naming ``name``) when the data have gain or no model reaches
    ``fail_tolerance`` in max |Delta N|.
    """
    lam = np.asarray(wavelength_nm, dtype=float)
    n = np.asarray(n_data, dtype=complex)
    if lam.shape != n.shape or lam.ndim != 1 or lam.size == 0:
        raise FitError(f"{name}: wavelength and index arrays must be 1-D of equal length")
    if not np.all(np.isfinite(n)):
        raise FitError(f"{name}: the index data contain NaN or inf")
    band = (float(lam.min()), float(lam.max()))
    if np.any(n.imag < -1e-9):
        raise FitError(
            f"material '{name}' has gain (k = {n.imag.min():.3g} < 0) in {band[0]:g}-{band[1]:g}"
            " nm; Meep's passive Drude-Lorentz media cannot represent it")
    if np.any(n.real <= 0):
        raise FitError(f"material '{name}' has n <= 0; cannot fit")
    if np.ptp(n.real) < 1e-12 and np.max(np.abs(n.imag)) < 1e-12:
        eps = float(n.real[0] ** 2)
        if eps < 1.0:
            raise FitError(f"material '{name}': a lossless eps = {eps:.4g} < 1 is not "
                           "representable stably in Meep")
        return MeepMedium(name, eps, (), band, 0.0, 0.0, "constant")
    f = 1000.0 / lam
    order = np.argsort(f)
    f, n = f[order], n[order]
    if f.size < 8:  # sample densely enough to constrain the poles
        f_fine = np.linspace(f[0], f[-1], 8) if f[-1] > f[0] else np.full(8, f[0])
        n = np.interp(f_fine, f, n.real) + 1j * np.interp(f_fine, f, n.imag)
        f = f_fine
    if np.ptp(f) < 1e-9 * f[0]:
        # a single frequency: widen artificially (a constant index over +-1 %)
        f = f[0] * np.linspace(0.99, 1.01, 9)
        n = np.full(9, n[0])
    eps_data = n**2
    best = None
    fitted: dict[tuple[bool, int], np.ndarray] = {}
    for drude, nl in _MODELS:
        starts = _starts(f, eps_data, drude, nl, None)
        if nl > 0 and (drude, nl - 1) in fitted:
            starts += _starts(f, eps_data, drude, nl, fitted[(drude, nl - 1)])
        try:
            x, err = _fit_model(f, n, drude, nl, starts)
        except FitError:
            continue
        fitted[(drude, nl)] = x
        label = "+".join((["Drude"] if drude else []) + ([f"{nl}xLorentz"] if nl else []))
        if best is None or err < 0.8 * best[1]:
            best = (x, err, drude, nl, label)
        if err <= tolerance:
            best = (x, err, drude, nl, label)
            break
    if best is None:
        raise FitError(f"material '{name}': no Drude-Lorentz model could be fitted")
    x, err, drude, nl, label = best
    if err > fail_tolerance:
        raise FitError(
            f"material '{name}': the best Drude-Lorentz fit over {band[0]:g}-{band[1]:g} nm "
            f"misses the data by |dN| = {err:.3g} (> fail tolerance {fail_tolerance:g}); "
            "narrow the band or use a smoother dataset")
    eps_inf, poles = _to_medium(name, x, drude, nl)
    dn, dk = _errors(_eps_model(x, f, drude, nl), n)
    return MeepMedium(name, eps_inf, poles, band, dn, dk, label)


def harmonic_mean_index(n_a: np.ndarray, n_b: np.ndarray) -> np.ndarray:
    """Index of the harmonic-mean permittivity 2 e_a e_b / (e_a + e_b) (Im >= 0 branch).

    Used for the normal E component on an interface node (second-order subpixel treatment
    of dispersive interfaces, see docs/meep.md).
    """
    ea, eb = np.asarray(n_a) ** 2, np.asarray(n_b) ** 2
    eh = 2 * ea * eb / (ea + eb)
    nh = np.sqrt(eh)
    return np.where(nh.imag < 0, -nh, nh)
