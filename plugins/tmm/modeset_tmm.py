"""The ``modes`` analysis on the TMM kernels: every mode, its gammas and fields, one dataset."""

from __future__ import annotations

import numpy as np
import xarray as xr

from qdcavity.analyses import ModesAnalysis
from qdcavity.modeset import ModeRecord, field_grid, modes_dataset
from qdcavity.stack import Stack

from .fields import confinements, confinements_and_profiles
from .modes import Mode, continue_modes, find_modes

FIELDS = {"TE": ("Ey",), "TM": ("Hy", "Ex", "Ez")}


def bleached_layers(stack: Stack, analysis: ModesAnalysis) -> list[str]:
    """The gain layer's k is zeroed unless the analysis keeps the tabulated absorption."""
    return [stack.gain_layer] if stack.gain_layer and analysis.gain_layer_k == "bleached" else []


def _records(n: np.ndarray, d: np.ndarray, lam: float, modes: list[Mode],
             z: np.ndarray) -> list[ModeRecord]:
    out = []
    both = (confinements_and_profiles(n, d, lam, modes, z) if z.size
            else [(conf, {}) for conf in confinements(n, d, lam, modes)])
    for mode, (conf, profile) in zip(modes, both, strict=True):
        out.append(ModeRecord(
            neff=complex(mode.neff), label=mode.label, kind=mode.kind_material,
            branch=mode.kind_branch, gamma_E=np.asarray(conf.gamma_E),
            gamma_P=np.asarray(conf.gamma_P),
            fields={name: profile[name] for name in FIELDS[mode.polarization] if name in profile},
        ))
    return out


def _solve_wavelength(n: np.ndarray, d: np.ndarray, lam: float, pols: tuple[str, ...],
                      previous: dict[str, list[Mode]]) -> dict[str, list[Mode]]:
    """Global search of every requested polarization in one contour evaluation; with
    ``previous`` (the neighbouring wavelength's modes) the result is checked against the
    continued roots so that no tracked mode is lost between wavelengths."""
    found = find_modes(n, d, lam, "both" if len(set(pols)) > 1 else pols[0])
    prev = [m for pol in pols for m in previous.get(pol, [])]
    tracked = [m for m in continue_modes(n, d, lam, prev, fallback=False) if m] if prev else []
    out: dict[str, list[Mode]] = {}
    for pol in pols:
        mine = [m for m in found if m.polarization == pol]
        for mode in tracked:
            if mode.polarization == pol and all(
                    abs(mode.neff - f.neff) > 1e-7 * (1 + abs(f.neff)) for f in mine):
                mine.append(mode)
        mine.sort(key=lambda m: -m.neff.real)
        out[pol] = mine
    return out


def solve_modes(stack: Stack, analysis: ModesAnalysis) -> xr.Dataset:
    lams = list(analysis.wavelength_nm)
    n_all = stack.indices(lams, zero_k=bleached_layers(stack, analysis))
    d = stack.thicknesses_nm
    z = field_grid(stack.interfaces_nm, analysis.field_padding_nm, analysis.field_points) \
        if analysis.fields else np.empty(0)
    pols = tuple(analysis.polarizations)
    records: dict[tuple[float, str], list[ModeRecord]] = {}
    previous: dict[str, list[Mode]] = {}
    for lam, n in zip(lams, n_all, strict=True):
        modes = _solve_wavelength(n, d, lam, pols, previous)
        flat = [m for pol in pols for m in modes[pol]]
        recs = _records(n, d, lam, flat, z)
        i = 0
        for pol in pols:
            records[(lam, pol)] = recs[i:i + len(modes[pol])]
            i += len(modes[pol])
        previous = modes
    ds = modes_dataset(records, lams, analysis.polarizations, stack.media_names, z,
                       stack.gain_layer, analysis.material_gain_cm, analysis.max_modes)
    ds.attrs["gain_layer_k"] = analysis.gain_layer_k
    ds.attrs["method"] = ("argument-principle search of the TMM dispersion function, Newton "
                          "polish; closed-form field integrals (plugins/tmm/modes.py)")
    return ds
