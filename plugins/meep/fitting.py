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

#: damping (relative to the band centre) of the poles of a lossless medium's fit (k ~ 1e-7)
_GAMMA_LOSSLESS = 1e-6
#: smallest damping of a Lorentz pole of an absorbing medium (relative): Q <= 50, so that no
#: fitted resonance rings for hundreds of periods in the simulation
_GAMMA_MIN = 0.02

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


def _lorentz_cols(f: np.ndarray, fj: np.ndarray, gj: np.ndarray) -> np.ndarray:
    """Columns f_j^2 / (f_j^2 - f^2 - i f gamma_j) (shape (F, J)): Lorentz chi per unit sigma."""
    f = f[:, None]
    return fj**2 / (fj**2 - f**2 - 1j * f * gj)


def _drude_cols(f: np.ndarray, gd: np.ndarray) -> np.ndarray:
    """Columns -1 / (f^2 + i f gamma_D): Drude chi per unit sigma (Meep frequency = 1)."""
    f = f[:, None]
    return -1.0 / (f**2 + 1j * f * gd)


def _unpack(x: np.ndarray, kinds: tuple[str, ...]) -> tuple[float, tuple[Pole, ...]]:
    poles = []
    for i, kind in enumerate(kinds):
        fr, g, s = x[1 + 3 * i: 4 + 3 * i]
        if kind == "drude":
            poles.append(Pole("drude", 1.0, math.exp(g), float(s)))
        else:
            poles.append(Pole("lorentz", math.exp(fr), math.exp(g), float(s)))
    return float(x[0]), tuple(poles)


def _model_eps(x: np.ndarray, kinds: tuple[str, ...], f: np.ndarray) -> np.ndarray:
    eps_inf, poles = _unpack(x, kinds)
    out = np.full(f.shape, eps_inf, dtype=complex)
    for p in poles:
        out = out + p.chi(f)
    return out




def _tolerances(n: np.ndarray, rtol: float) -> tuple[np.ndarray, np.ndarray]:
    """Per-sample tolerances on Re eps and Im eps.

    Re eps: ``rtol |eps|`` (|dn|/n ~ rtol/2); Im eps (the loss): the larger of ``20 rtol`` of
    Im eps and ``0.2 rtol |N|`` (an absolute k error of 1e-4 at the default rtol = 1e-3).
    """
    eps = n**2
    tol_re = rtol * np.abs(eps)
    tol_im = np.maximum(20 * rtol * np.abs(eps.imag), 0.2 * rtol * np.abs(n))
    return tol_re, tol_im


def _errors(eps_fit: np.ndarray, n_data: np.ndarray, rtol: float) -> tuple[float, float, float]:
    """(normalised error (<= 1 meets the tolerance), max |dN|, max relative d Im(eps))."""
    n_fit = np.sqrt(eps_fit)
    n_fit = np.where(n_fit.imag < 0, -n_fit, n_fit)
    tol_re, tol_im = _tolerances(n_data, rtol)
    de = eps_fit - n_data**2
    norm = max(float(np.max(np.abs(de.real) / tol_re)), float(np.max(np.abs(de.imag) / tol_im)))
    eps_im = np.abs((n_data**2).imag)
    rel_im = np.abs(de.imag) / np.maximum(eps_im, 2e-3 * np.abs(n_data))
    return norm, float(np.max(np.abs(n_fit - n_data))), float(rel_im.max())


def _rows(cols: np.ndarray, n: np.ndarray, wt: np.ndarray, rtol: float) -> np.ndarray:
    """Real rows of the weighted permittivity residual, scaled by the tolerances."""
    tol_re, tol_im = _tolerances(n, rtol)
    return np.concatenate([cols.real * (wt / tol_re)[:, None],
                           cols.imag * (wt / tol_im)[:, None]])


def _dictionary(f: np.ndarray, exclude: tuple[float, float] | None = None,
                lossless: bool = False) -> tuple[np.ndarray, list[tuple[str, float, float]]]:
    f_lo, f_hi = float(f.min()), float(f.max())
    fc = 0.5 * (f_lo + f_hi)
    fj = np.geomspace(0.05 * f_lo, 8 * f_hi, 48)
    if exclude is not None or lossless:  # no resonance inside (or next to) the band
        lo, hi = exclude if exclude is not None else (f_lo / 1.2, f_hi * 1.2)
        fj = fj[(fj < lo) | (fj > hi)]
    gj = np.array([_GAMMA_LOSSLESS * fc]) if lossless else np.geomspace(
        _GAMMA_MIN * fc, 4 * f_hi, 14)
    FJ, GJ = (a.ravel() for a in np.meshgrid(fj, gj, indexing="ij"))
    gd = np.array([]) if lossless else np.geomspace(1e-4 * fc, 4 * f_hi, 20)
    cols = np.concatenate([_lorentz_cols(f, FJ, GJ), _drude_cols(f, gd)], axis=1)
    meta = [("lorentz", float(a), float(b)) for a, b in zip(FJ, GJ, strict=True)]
    meta += [("drude", 1.0, float(g)) for g in gd]
    return cols, meta


def _next_pole(f: np.ndarray, eps_data: np.ndarray, n: np.ndarray, wt: np.ndarray, rtol: float,
               theta: np.ndarray, kinds: tuple[str, ...], cols: np.ndarray, meta: list
               ) -> tuple[str, float, float, float]:
    """The dictionary pole whose addition (all sigma >= 0 and eps_inf >= 1 re-solved by NNLS)
    leaves the smallest residual."""
    from scipy.optimize import nnls

    base = _columns(theta, kinds, f)
    A0 = _rows(base, n, wt, rtol)
    Ad = _rows(cols, n, wt, rtol)
    b = _rows((eps_data - 1.0)[:, None], n, wt, rtol)[:, 0]
    best, best_r = 0, math.inf
    for i in range(Ad.shape[1]):
        A = np.concatenate([A0, Ad[:, i:i + 1]], axis=1)
        scale = np.linalg.norm(A, axis=0)
        scale[scale == 0] = 1.0
        _, r = nnls(A / scale, b, maxiter=100 * A.shape[1])
        if r < best_r:
            best, best_r = i, r
    kind, fr, g = meta[best]
    return kind, fr, g, 0.0


def _columns(theta: np.ndarray, kinds: tuple[str, ...], f: np.ndarray) -> np.ndarray:
    """Basis columns [1, chi_1/sigma_1, ...] for fixed pole frequencies and dampings."""
    cols = [np.ones(f.size, complex)]
    for k, kind in enumerate(kinds):
        fr, g = math.exp(theta[2 * k]), math.exp(theta[2 * k + 1])
        if kind == "drude":
            cols.append(_drude_cols(f, np.array([g]))[:, 0])
        else:
            cols.append(_lorentz_cols(f, np.array([fr]), np.array([g]))[:, 0])
    return np.stack(cols, axis=1)


def _theta(poles: list[tuple[str, float, float, float]]) -> np.ndarray:
    th: list[float] = []
    for kind, fr, g, _ in poles:
        th += [0.0 if kind == "drude" else math.log(fr), math.log(g)]
    return np.array(th)


def _linear_part(theta: np.ndarray, kinds: tuple[str, ...], f: np.ndarray, eps_data: np.ndarray,
                 n: np.ndarray, wt: np.ndarray, rtol: float) -> tuple[np.ndarray, np.ndarray]:
    """Best eps_inf >= 1 and sigma >= 0 for fixed pole frequencies and dampings (NNLS).

    Returns (x, weighted residual) with x in the layout of :func:`_unpack`."""
    from scipy.optimize import nnls

    A = _rows(_columns(theta, kinds, f), n, wt, rtol)
    b = _rows((eps_data - 1.0)[:, None], n, wt, rtol)[:, 0]
    scale = np.linalg.norm(A, axis=0)
    scale[scale == 0] = 1.0
    sol, _ = nnls(A / scale, b, maxiter=100 * A.shape[1])
    sol = sol / scale
    x = [1.0 + sol[0]]
    for k, kind in enumerate(kinds):
        x += [0.0 if kind == "drude" else theta[2 * k], theta[2 * k + 1], sol[1 + k]]
    return np.array(x), A @ sol - b


def _polish(f: np.ndarray, eps_data: np.ndarray, n: np.ndarray, wt: np.ndarray, rtol: float,
            poles: list[tuple[str, float, float, float]],
            exclude: tuple[float, float] | None = None,
            lossless: bool = False) -> tuple[np.ndarray, tuple[str, ...]]:
    """Variable projection: nonlinear least squares on the pole frequencies and dampings, the
    linear eps_inf >= 1 and sigma >= 0 solved exactly (NNLS) at every step (passive model)."""
    from scipy.optimize import least_squares

    f_lo, f_hi = float(f.min()), float(f.max())
    kinds = tuple(p[0] for p in poles)
    th0, lo, hi = [], [], []
    for kind, fr, g, _ in poles:
        if kind == "drude":
            th0 += [0.0, math.log(g)]
            lo += [-1e-9, math.log(1e-6 * f_lo)]
            hi += [1e-9, math.log(5 * f_hi)]
        else:
            f_min, f_max = 0.02 * f_lo, 8 * f_hi
            if exclude is not None:  # keep the pole on its side of the excluded interval
                f_min, f_max = (f_min, exclude[0]) if fr < exclude[0] else (exclude[1], f_max)
            elif lossless:
                f_min, f_max = (f_min, f_lo / 1.2) if fr < f_lo else (f_hi * 1.2, f_max)
            th0 += [math.log(fr), math.log(g)]
            if lossless:
                lo += [math.log(f_min), math.log(g) - 1e-9]
                hi += [math.log(f_max), math.log(g) + 1e-9]
            else:
                lo += [math.log(f_min), math.log(_GAMMA_MIN * f_lo)]
                hi += [math.log(f_max), math.log(5 * f_hi)]
    lo_a, hi_a = np.array(lo), np.array(hi)
    th0_a = np.clip(np.array(th0), lo_a + 1e-12, hi_a - 1e-12)

    def resid(th: np.ndarray) -> np.ndarray:
        return _linear_part(th, kinds, f, eps_data, n, wt, rtol)[1]

    try:
        th = least_squares(resid, th0_a, bounds=(lo_a, hi_a), diff_step=1e-6,
                           max_nfev=25 * len(th0), xtol=1e-10, ftol=1e-10).x
    except ValueError:  # pragma: no cover - defensive
        th = th0_a
    if np.linalg.norm(resid(th)) > np.linalg.norm(resid(th0_a)):
        th = th0_a
    return _linear_part(th, kinds, f, eps_data, n, wt, rtol)[0], kinds


def _pole_list(x: np.ndarray, kinds: tuple[str, ...]) -> list[tuple[str, float, float, float]]:
    _, poles = _unpack(x, kinds)
    return [(p.kind, p.frequency, p.gamma, p.sigma) for p in poles]


def fit_medium(name: str, wavelength_nm: Sequence[float], n_data: Sequence[complex],
               rtol: float = 1e-3, fail_rtol: float = 2e-2, max_poles: int = 4,
               weights: Sequence[float] | None = None,
               pole_free: float | None = None) -> MeepMedium:
    """Fit ``n_data`` (complex index at ``wavelength_nm``) with a passive Drude-Lorentz model.

    Poles are added greedily: at each step a non-negative least-squares fit over a dictionary
    of ~700 candidate Lorentz and Drude poles picks the one that best reduces the residual,
    then eps_inf and all poles are polished by bounded nonlinear least squares. It stops at
    the first model meeting the tolerance at every sample (|d Re eps| <= rtol |eps| and
    |d Im eps| <= max(20 rtol Im eps, 0.2 rtol |N|): 0.1 % and 2 % of the loss, or a k error of
    1e-4, at the default rtol = 1e-3) or at ``max_poles``, keeping the best.
    ``weights`` (per sample, default 1) emphasise part of the band. Raises :class:`FitError`
    (naming ``name``) when the data have gain or the best fit misses |N| by more than
    ``fail_rtol`` (relative). ``pole_free`` = x keeps Lorentz pole frequencies out of
    [f_lo / x, f_hi x] (smooth, resonance-free media in the band, for coarse mode scans).
    Data with k = 0 everywhere (a bleached gain or emitter layer) get a lossless model (pole
    dampings 1e-6 of the frequency, no Drude term, no pole within a factor 1.2 of the band:
    a lossless resonance near the band would ring for ever).
    """
    lam = np.asarray(wavelength_nm, dtype=float)
    n = np.asarray(n_data, dtype=complex)
    if lam.shape != n.shape or lam.ndim != 1 or lam.size == 0:
        raise FitError(f"{name}: wavelength and index arrays must be 1-D of equal length")
    if not np.all(np.isfinite(n)):
        raise FitError(f"material '{name}': the index data contain NaN or inf")
    band = (float(lam.min()), float(lam.max()))
    if np.any(n.imag < -1e-9):
        raise FitError(
            f"material '{name}' has gain (k = {n.imag.min():.3g} < 0) in {band[0]:g}-{band[1]:g}"
            " nm; Meep's passive Drude-Lorentz media cannot represent it")
    if np.any(n.real <= 0):
        raise FitError(f"material '{name}' has n <= 0 in {band[0]:g}-{band[1]:g} nm")
    wt = np.ones(lam.size) if weights is None else np.asarray(weights, dtype=float)
    if np.ptp(n.real) < 1e-12 and np.max(np.abs(n.imag)) < 1e-12:
        eps = float(n.real[0] ** 2)
        if eps < 1.0:
            raise FitError(f"material '{name}': a lossless eps = {eps:.4g} < 1 is not "
                           "representable stably in Meep")
        return MeepMedium(name, eps, (), band, 0.0, 0.0, "constant")
    f = 1000.0 / lam
    order = np.argsort(f)
    f, n, wt = f[order], n[order], wt[order]
    if np.ptp(f) < 1e-6 * f[0]:
        # a single frequency: fit a constant index over +-2 % around it
        f = f[0] * np.linspace(0.98, 1.02, 9)
        n = np.full(9, n[0])
        wt = np.ones(9)
    elif f.size < 12:  # sample densely enough to constrain the poles
        f_fine = np.linspace(f[0], f[-1], 12)
        n = np.interp(f_fine, f, n.real) + 1j * np.interp(f_fine, f, n.imag)
        wt = np.interp(f_fine, f, wt)
        f = f_fine
    eps_data = n**2
    exclude = None if pole_free is None else (float(f.min()) / pole_free,
                                              float(f.max()) * pole_free)
    lossless = bool(np.all(np.abs(n.imag) < 1e-12))  # e.g. a bleached gain/emitter layer
    cols, meta = _dictionary(f, exclude, lossless)
    poles: list[tuple[str, float, float, float]] = []
    best = None
    for _ in range(max(1, max_poles)):
        kinds_now = tuple(p[0] for p in poles)
        poles = poles + [_next_pole(f, eps_data, n, wt, rtol, _theta(poles), kinds_now,
                                    cols, meta)]
        x, kinds = _polish(f, eps_data, n, wt, rtol, poles, exclude, lossless)
        poles = _pole_list(x, kinds)
        norm, _, _ = _errors(_model_eps(x, kinds, f), n, rtol)
        if best is None or norm < best[1]:
            best = (x, norm, kinds)
        if norm <= 1.0:
            break
    x, norm, kinds = best
    n_fit = np.sqrt(_model_eps(x, kinds, f))
    err_rel = float(np.max(np.abs(np.where(n_fit.imag < 0, -n_fit, n_fit) - n) / np.abs(n)))
    if err_rel > fail_rtol:
        raise FitError(
            f"material '{name}': the best Drude-Lorentz fit over {band[0]:g}-{band[1]:g} nm "
            f"misses the data by {100 * err_rel:.2g} % in N (> {100 * fail_rtol:g} %); "
            "narrow the band or use a smoother dataset")
    eps_inf, poles_t = _unpack(x, kinds)
    poles_t = tuple(p for p in poles_t if p.sigma > 0)
    _, dn, dk = _errors(_model_eps(x, kinds, f), n, rtol)
    kinds_s = "+".join(sorted({p.kind for p in poles_t})) or "constant"
    label = f"{kinds_s} ({len(poles_t)} poles)" + ("" if norm <= 1 else ", above tolerance")
    return MeepMedium(name, eps_inf, poles_t, band, dn, dk, label)


def harmonic_mean_index(n_a: np.ndarray, n_b: np.ndarray) -> np.ndarray:
    """Index of the harmonic-mean permittivity 2 e_a e_b / (e_a + e_b) (Im >= 0 branch).

    Used for the normal E component on an interface node (second-order subpixel treatment
    of dispersive interfaces, see docs/meep.md).
    """
    ea, eb = np.asarray(n_a) ** 2, np.asarray(n_b) ** 2
    eh = 2 * ea * eb / (ea + eb)
    nh = np.sqrt(eh)
    return np.where(nh.imag < 0, -nh, nh)
