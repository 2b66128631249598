"""What every ``modes`` backend shares: labels, plasmon estimates, field normalization, and
the contract dataset built from per-mode records.

A backend solves each (wavelength, polarization) and hands a list of :class:`ModeRecord`,
sorted by Re(neff) descending, to :func:`modes_dataset`, which pads to ``max_modes`` slots
(``n_modes`` says how many are real), computes alpha, modal and net gain, and sets units.
Labels follow one rule for every backend (:func:`mode_labels`), so that ``TE0`` of one solver
is compared with ``TE0`` of another.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np
import xarray as xr

from .contracts import with_units
from .errors import ConfigError

FIELD_NAMES = ("Ey", "Hy", "Ex", "Ez")


@dataclass
class ModeRecord:
    """One solved mode. ``gamma_*`` are per medium, ordered like ``Stack.media_names``."""

    neff: complex
    label: str
    kind: str
    branch: str
    gamma_E: np.ndarray
    gamma_P: np.ndarray
    fields: Mapping[str, np.ndarray] = field(default_factory=dict)


def alpha_cm(neff: complex | np.ndarray, wavelength_nm: float | np.ndarray) -> np.ndarray:
    """Intensity loss coefficient alpha = 4 pi Im(neff) / lambda in cm^-1."""
    return 4 * np.pi * np.imag(neff) / (np.asarray(wavelength_nm) * 1e-7)


def mode_labels(neff: Sequence[complex], polarization: Sequence[str], kind: Sequence[str],
                branch: Sequence[str]) -> list[str]:
    """Labels of a set of modes (one wavelength): per polarization, photonic modes are ``TE0``,
    ``TE1``... (``TM0``...) and plasmonic ones ``SPP0``..., each in descending Re(neff); leaky
    modes are numbered apart, ``TE-leaky0``, ``SPP-leaky0``. ``kind`` is "photonic" or
    "plasmonic", ``branch`` "bound", "substrate-radiating" or "leaky"."""
    labels = [""] * len(neff)
    groups: dict[tuple[str, str, bool], list[int]] = {}
    for i, (pol, k, b) in enumerate(zip(polarization, kind, branch, strict=True)):
        groups.setdefault((pol, k, b == "leaky"), []).append(i)
    for (pol, k, leaky), members in groups.items():
        members.sort(key=lambda i: -complex(neff[i]).real)
        base = pol if k == "photonic" else "SPP"
        infix = "-leaky" if leaky else ""
        for rank, i in enumerate(members):
            labels[i] = f"{base}{infix}{rank}"
    return labels


def plasmon_estimates(eps: np.ndarray, k0_d: np.ndarray) -> np.ndarray:
    """Rough neff of every surface or film plasmon a stack can carry (to bound mode searches).

    ``eps``: (L+2,) permittivities, substrate first; ``k0_d``: (L,) k0 times layer thickness.
    Single interfaces between media of opposite sign of Re eps: sqrt(e1 e2 / (e1 + e2)) (the
    denominator kept away from zero); a layer between media of the opposite sign (a thin metal
    film or a dielectric gap): the short-range / gap-plasmon asymptote
    neff**2 ~ e_d + (2 e_d / (|e_m| k0 d))**2.
    """
    est: list[complex] = []
    for a, b in zip(eps[:-1], eps[1:], strict=True):
        if a.real * b.real < 0:
            s = a + b
            if abs(s) < 1e-3 * max(abs(a), abs(b)):
                s = 1e-3 * max(abs(a), abs(b))
            est.append(complex(np.sqrt(a * b / s)))
    for j in range(1, eps.size - 1):
        ej = eps[j]
        opp = [e for e in (eps[j - 1], eps[j + 1]) if e.real * ej.real < 0]
        if not opp:
            continue
        if ej.real < 0:
            ed, em = max(e.real for e in opp), abs(ej)
        else:
            ed, em = ej.real, min(abs(e) for e in opp)
        est.append(complex(np.sqrt(ed + (2 * ed / (em * k0_d[j - 1])) ** 2 + 0j)))
    return np.asarray(est, dtype=complex)


def radiating_claddings(eps: np.ndarray) -> list[int]:
    """The claddings (0: substrate, -1 as ``eps.size - 1``: superstrate) that are dielectric
    (Re eps > 0), into which a mode can radiate."""
    return [c for c in (0, eps.size - 1) if eps[c].real > 0]


def guided_re_floor(eps: np.ndarray) -> float:
    """Lowest Re(neff) of the modes a search reports, before its margin: the largest Re(N) of
    the radiating claddings not shielded by an adjacent metal (Re eps < 0); when all of them
    are shielded, the smallest of them; 0 without a radiating cladding."""
    n = np.sqrt(np.asarray(eps, dtype=complex))
    last = eps.size - 1
    radiating = radiating_claddings(eps)
    unshielded = [c for c in radiating if eps[1 if c == 0 else last - 1].real > 0]
    if unshielded:
        return float(max(n[c].real for c in unshielded))
    if radiating:
        return float(min(n[c].real for c in radiating))
    return 0.0


def mode_branch(eps_claddings: Mapping[str, complex], kz: Mapping[str, complex],
                neff: complex) -> str:
    """How a mode meets its claddings, from each cladding's eps and normalized kz (kz / k0,
    on the mode's sheet): "leaky" if some kz grows away from the stack (Im kz < 0),
    "substrate-radiating" if it propagates into a cladding whose Re(eps) exceeds Re(neff^2),
    else "bound" (to 1e-12 relative)."""
    nn = neff * neff
    scale = 1e-12 * (1 + abs(neff))
    if any(k.imag < -scale for k in kz.values()):
        return "leaky"
    if any((eps_claddings[c] - nn).real > 0 and kz[c].real > scale for c in kz):
        return "substrate-radiating"
    return "bound"


def mode_material_kind(eps: np.ndarray, neff: complex) -> str:
    """"plasmonic" above the largest Re(n) of the dielectric layers (of the dielectric media
    if no layer is one), else "photonic"."""
    layers = eps[1:-1]
    diel = layers[layers.real > 0]
    if diel.size == 0:
        diel = eps[eps.real > 0]
    nmax = float(np.sqrt(diel).real.max()) if diel.size else 0.0
    return "plasmonic" if neff.real > nmax else "photonic"


def peak_e_scale(components: Mapping[str, np.ndarray], e_names: Sequence[str], i: int
                 ) -> complex | None:
    """The complex factor that makes |E| = 1 at sample ``i`` of ``components``, with the
    dominant E component real and positive there (None where E vanishes)."""
    e2 = sum(abs(components[k][i]) ** 2 for k in e_names)
    if not e2 > 0:
        return None
    dom = max(e_names, key=lambda k: abs(components[k][i]))
    return abs(components[dom][i]) / (math.sqrt(e2) * components[dom][i])


def normalize_to_peak_e(components: Mapping[str, np.ndarray], e_names: Sequence[str]
                        ) -> dict[str, np.ndarray]:
    """Field components scaled so that max |E| = 1 on the grid, with the dominant E component
    real and positive there (the convention of every backend's ``field_*`` variables)."""
    comps = dict(components)
    e2 = sum(np.abs(comps[k]) ** 2 for k in e_names)
    scale = peak_e_scale(comps, e_names, int(np.argmax(e2)))
    return comps if scale is None else {k: v * scale for k, v in comps.items()}


def modes_dataset(
    records: Mapping[tuple[float, str], Sequence[ModeRecord]],
    wavelengths_nm: Sequence[float],
    polarizations: Sequence[str],
    media_names: Sequence[str],
    z_nm: np.ndarray,
    gain_layer: str | None,
    material_gain_cm: float | Sequence[float],
    max_modes: int,
) -> xr.Dataset:
    """Assemble the contract dataset; modal gain = gamma_P * G_mat of the gain layer."""
    nw, npol, nl, nz = len(wavelengths_nm), len(polarizations), len(media_names), len(z_nm)
    gmat = np.broadcast_to(np.asarray(material_gain_cm, dtype=float), (nw,))
    neff = np.full((nw, npol, max_modes), np.nan + 0j)
    gam_e = np.full((nw, npol, max_modes, nl), np.nan)
    gam_p = np.full_like(gam_e, np.nan)
    labels = np.full((nw, npol, max_modes), "", dtype=object)
    kinds = labels.copy()
    branches = labels.copy()
    n_modes = np.zeros((nw, npol), dtype=np.int64)
    fields = {name: np.full((nw, npol, max_modes, nz), np.nan + 0j) for name in FIELD_NAMES}
    for i, lam in enumerate(wavelengths_nm):
        for j, pol in enumerate(polarizations):
            found = list(records.get((lam, pol), ()))[:max_modes]
            n_modes[i, j] = len(found)
            for m, rec in enumerate(found):
                neff[i, j, m] = rec.neff
                gam_e[i, j, m] = rec.gamma_E
                gam_p[i, j, m] = rec.gamma_P
                labels[i, j, m], kinds[i, j, m], branches[i, j, m] = rec.label, rec.kind, \
                    rec.branch
                for name, values in rec.fields.items():
                    fields[name][i, j, m] = values
    alpha = alpha_cm(neff, np.asarray(wavelengths_nm)[:, None, None])
    if gain_layer is not None:
        if gain_layer not in media_names:
            raise ConfigError(f"gain layer '{gain_layer}' is not in the stack", field="gain_layer")
        gamma_gain = gam_p[..., list(media_names).index(gain_layer)]
        modal = gamma_gain * gmat[:, None, None]
    else:
        modal = np.zeros_like(alpha)
    dims = ("wavelength_nm", "polarization", "mode")
    ds = xr.Dataset(
        {
            "neff": (dims, neff),
            "alpha_cm": (dims, alpha),
            "gamma_E": ((*dims, "layer"), gam_e),
            "gamma_P": ((*dims, "layer"), gam_p),
            "modal_gain_cm": (dims, modal),
            "net_gain_cm": (dims, modal - alpha),
            "label": (dims, labels.astype(str)),
            "kind": (dims, kinds.astype(str)),
            "branch": (dims, branches.astype(str)),
            "n_modes": (("wavelength_nm", "polarization"), n_modes),
            "material_gain_cm": (("wavelength_nm",), gmat.copy()),
            **{f"field_{k}": ((*dims, "z_nm"), v) for k, v in fields.items()},
        },
        coords={
            "wavelength_nm": np.asarray(wavelengths_nm, dtype=float),
            "polarization": list(polarizations),
            "mode": np.arange(max_modes),
            "layer": list(media_names),
            "z_nm": np.asarray(z_nm, dtype=float),
        },
    )
    ds["material_gain_cm"].attrs["units"] = "cm^-1"
    ds.attrs["gain_layer"] = gain_layer or ""
    ds.attrs["modal_gain_definition"] = "modal_gain_cm = gamma_P[gain_layer] * material_gain_cm"
    return with_units(ds, "modes")


def field_grid(interfaces_nm: np.ndarray, padding_nm: float, points: int) -> np.ndarray:
    """A z grid covering the stack plus ``padding_nm`` into each cladding, every interface on
    a node."""
    lo, hi = interfaces_nm[0] - padding_nm, interfaces_nm[-1] + padding_nm
    grid = np.linspace(lo, hi, max(points - len(interfaces_nm), 2))
    return np.unique(np.concatenate([grid, interfaces_nm]))
