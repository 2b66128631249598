"""The ``modes`` analysis on the TMM kernels: every mode, its gammas and fields, one dataset."""

from __future__ import annotations

import numpy as np
import xarray as xr

from qdcavity.analyses import ModesAnalysis
from qdcavity.modeset import ModeRecord, field_grid, modes_dataset
from qdcavity.stack import Stack

from .fields import confinement, mode_profile
from .modes import Mode, continue_modes, find_modes

FIELDS = {"TE": ("Ey",), "TM": ("Hy", "Ex", "Ez")}


def bleached_layers(stack: Stack, analysis: ModesAnalysis) -> list[str]:
    """The gain layer's k is zeroed unless the analysis keeps the tabulated absorption."""
    return [stack.gain_layer] if stack.gain_layer and analysis.gain_layer_k == "bleached" else []


def _record(n: np.ndarray, d: np.ndarray, lam: float, mode: Mode, z: np.ndarray) -> ModeRecord:
    conf = confinement(n, d, lam, mode)
    profile = mode_profile(n, d, lam, mode, z) if z.size else {}
    return ModeRecord(
        neff=complex(mode.neff), label=mode.label, kind=mode.kind_material,
        branch=mode.kind_branch, gamma_E=np.asarray(conf.gamma_E),
        gamma_P=np.asarray(conf.gamma_P),
        fields={name: profile[name] for name in FIELDS[mode.polarization] if name in profile},
    )


def _solve_wavelength(n: np.ndarray, d: np.ndarray, lam: float, pol: str,
                      previous: list[Mode] | None) -> list[Mode]:
    """Global search; with ``previous`` (the neighbouring wavelength) the result is checked
    against the continued roots so that no tracked mode is lost between wavelengths."""
    found = find_modes(n, d, lam, pol)
    if previous:
        tracked = [m for m in continue_modes(n, d, lam, previous, fallback=False) if m]
        for mode in tracked:
            if all(abs(mode.neff - f.neff) > 1e-7 * (1 + abs(f.neff)) for f in found):
                found.append(mode)
        found.sort(key=lambda m: -m.neff.real)
    return found


def solve_modes(stack: Stack, analysis: ModesAnalysis) -> xr.Dataset:
    lams = list(analysis.wavelength_nm)
    n_all = stack.indices(lams, zero_k=bleached_layers(stack, analysis))
    d = stack.thicknesses_nm
    z = field_grid(stack.interfaces_nm, analysis.field_padding_nm, analysis.field_points) \
        if analysis.fields else np.empty(0)
    records: dict[tuple[float, str], list[ModeRecord]] = {}
    for pol in analysis.polarizations:
        previous: list[Mode] | None = None
        for lam, n in zip(lams, n_all, strict=True):
            modes = _solve_wavelength(n, d, lam, pol, previous)
            records[(lam, pol)] = [_record(n, d, lam, m, z) for m in modes]
            previous = modes
    ds = modes_dataset(records, lams, analysis.polarizations, stack.media_names, z,
                       stack.gain_layer, analysis.material_gain_cm, analysis.max_modes)
    ds.attrs["gain_layer_k"] = analysis.gain_layer_k
    ds.attrs["method"] = ("argument-principle search of the TMM dispersion function, Newton "
                          "polish; closed-form field integrals (plugins/tmm/modes.py)")
    return ds
