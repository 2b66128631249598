"""Turn a Stack into the worker's structure description, with fitted media (host side).

A structure is ``{"media": [medium...], "substrate": i, "layers": [i...], "superstrate": i,
"thicknesses": [um...], "interfaces": [i | None ...]}`` where every medium is a fitted
Drude-Lorentz model (:mod:`.fitting`) of the project's own material data over the band, or a
Meep library material when the study maps a material to one (``meep_materials``).
``interfaces`` (one per interface, bottom to top) are the harmonic-mean media put on the
interface nodes of the normal E component (see worker docstring and docs/meep.md).
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any

import numpy as np

from qdcavity.errors import SolverError
from qdcavity.stack import Stack

from .fitting import FitError, MeepMedium, fit_medium, harmonic_mean_index


@dataclass
class Structure:
    spec: dict[str, Any]
    media: list[MeepMedium]
    fits: list[dict[str, Any]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def medium_of(self, position: int) -> MeepMedium:
        """Fitted medium of ``stack.media_names[position]``."""
        if position == 0:
            return self.media[self.spec["substrate"]]
        if position == len(self.spec["layers"]) + 1:
            return self.media[self.spec["superstrate"]]
        return self.media[self.spec["layers"][position - 1]]


def usable_range(stack: Stack) -> tuple[float, float]:
    lo, hi = 0.0, np.inf
    for m in stack.materials():
        lo, hi = max(lo, m.range_nm[0]), min(hi, m.range_nm[1])
    return lo, hi


def band_samples(f_lo: float, f_hi: float, stack: Stack, num: int = 41) -> np.ndarray:
    """Vacuum wavelengths (nm) uniformly spaced in frequency over [f_lo, f_hi] (1/um),
    clipped to the wavelength range every material of the stack covers."""
    lo, hi = usable_range(stack)
    lam = 1000.0 / np.linspace(f_lo, f_hi, num)
    return np.clip(lam, lo, hi)


@lru_cache(maxsize=512)
def _fit_cached(key: str, lam: tuple[float, ...], nre: tuple[float, ...], nim: tuple[float, ...],
                weights: tuple[float, ...] | None, rtol: float, fail_rtol: float,
                max_poles: int, pole_free: float | None) -> MeepMedium:
    name = json.loads(key)["label"]
    return fit_medium(name, lam, np.array(nre) + 1j * np.array(nim), rtol=rtol,
                      fail_rtol=fail_rtol, max_poles=max_poles, weights=weights,
                      pole_free=pole_free)


def _fit(label: str, ident: str, lam: np.ndarray, n: np.ndarray, weights: np.ndarray | None,
         opts: Mapping[str, Any], fail_rtol: float | None = None,
         pole_free: float | None = None) -> MeepMedium:
    key = json.dumps({"label": label, "id": ident}, sort_keys=True)
    return _fit_cached(key, tuple(np.round(lam, 9)), tuple(n.real), tuple(n.imag),
                       None if weights is None else tuple(weights), float(opts["fit_rtol"]),
                       float(fail_rtol if fail_rtol is not None else opts["fit_fail_rtol"]),
                       int(opts["fit_max_poles"]), pole_free)


def build_structure(stack: Stack, lam_nm: np.ndarray, opts: Mapping[str, Any], *,
                    zero_k: Sequence[str] = (), weights: np.ndarray | None = None,
                    interfaces: bool = False, fail_rtol: float | None = None,
                    pole_free: float | None = None, what: str = "") -> Structure:
    """Fit every distinct medium of ``stack`` over ``lam_nm`` (nm) and build the structure.

    Raises SolverError naming the material when a fit fails (gain, or data a passive
    Drude-Lorentz model cannot follow within ``fit_fail_rtol``)."""
    lam = np.asarray(lam_nm, dtype=float)
    n_all = stack.indices(lam, zero_k=zero_k)  # (W, L+2)
    mats = stack.materials()
    library = dict(opts.get("meep_materials") or {})
    zero = set(zero_k)
    names = stack.media_names
    media: list[MeepMedium] = []
    specs: list[dict[str, Any]] = []
    index_of: dict[str, int] = {}
    slot: list[int] = []
    for pos, (mat, name) in enumerate(zip(mats, names, strict=True)):
        bleached = name in zero
        ident = json.dumps({"m": mat.canonical(), "k0": bleached}, sort_keys=True, default=str)
        if ident not in index_of:
            label = mat.name + (" (k=0)" if bleached else "")
            if mat.name in library and not bleached:
                med = MeepMedium(label, 1.0, (), (float(lam.min()), float(lam.max())),
                                 float("nan"), float("nan"), f"meep.materials.{library[mat.name]}")
                spec = {"library": str(library[mat.name]), "name": label}
            else:
                try:
                    med = _fit(label, ident, lam, n_all[:, pos], weights, opts, fail_rtol,
                               pole_free)
                except FitError as exc:
                    raise SolverError(f"{what}stack '{stack.name}' cannot be represented in "
                                      f"Meep: {exc}") from None
                spec = med.to_json()
            index_of[ident] = len(media)
            media.append(med)
            specs.append(spec)
        slot.append(index_of[ident])
    notes: list[str] = []
    iface: list[int | None] = []
    if interfaces:
        for j in range(len(names) - 1):
            a, b = slot[j], slot[j + 1]
            if a == b or "library" in specs[a] or "library" in specs[b]:
                iface.append(None)
                continue
            nh = harmonic_mean_index(n_all[:, j], n_all[:, j + 1])
            label = f"interface {names[j]}|{names[j + 1]}"
            ident = json.dumps({"iface": [a, b], "m": [specs[a], specs[b]]}, sort_keys=True)
            try:
                med = _fit(label, ident, lam, nh, weights, opts, fail_rtol=0.2,
                           pole_free=pole_free)
            except FitError as exc:
                notes.append(f"no interface medium at {names[j]}|{names[j + 1]} ({exc})")
                iface.append(None)
                continue
            iface.append(len(media))
            media.append(med)
            specs.append(med.to_json())
    spec = {
        "media": specs,
        "substrate": slot[0],
        "layers": slot[1:-1],
        "superstrate": slot[-1],
        "thicknesses": [float(t) / 1000.0 for t in stack.thicknesses_nm],
        "interfaces": iface,
    }
    fits = [m.summary() for m in media]
    return Structure(spec, media, fits, notes)
