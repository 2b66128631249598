"""Dipole emission with Meep (host side): jobs for the worker and the post-processing.

Method (docs/meep.md): one cylindrical (r, z) run per orientation with the dipole on the
axis (vertical: Ez, m = 0; horizontal: Er, m = +1, a circular in-plane dipole whose power is
the azimuthal average of a linear one), PML along z in the claddings and a graded absorber at
large r (matched electric + magnetic conductivity in dielectrics, magnetic conductivity plus
extra Drude damping in metals: a PML or an electric conductivity in Drude Ag diverges), and a
second run on the identical grid filled with the (lossless) emitter medium.

What Meep measures, at f0, and what the dataset reports:

* ``purcell`` = LDOS(stack) / LDOS(bulk), both from ``dft_ldos`` on the same grid;
* ``fraction[air]`` / ``fraction[substrate]``: the z-flux through a disk of radius R just above
  / below the stack, over the total power (Purcell x the bulk run's closed-box flux);
* the power crossing the cylinder r = R between the disks (still guided at R: photonic modes
  and SPPs together, plus radiation crossing it at near-grazing angles, a geometric share
  ~ disk separation / R: 8.4 % of a vertical dipole in a homogeneous medium at R = 3 um,
  4.2 % at the default R = 6 um) and the power absorbed within r < R (the rest).

What real-space Meep cannot separate: guided power in photonic modes vs SPPs (both propagate
along the layers), and absorption of guided power vs absorption of the escape cone (both
happen in the same layers). So, for this backend, ``fraction[waveguide]`` is the power still
guided at r = R (photonic + plasmonic), ``fraction[spp]`` is 0 (not separable), and
``fraction[absorbed]`` is the power absorbed within r < R; they sum to one with air and
substrate. As R grows, guided power is absorbed and moves from ``waveguide`` to ``absorbed``;
the TMM backend's waveguide + spp + absorbed equals this backend's waveguide + absorbed.
``K(u)`` (an angular spectrum) is not produced: real-space fields truncated at R, with
Meep's E/H staggering, gave no trustworthy Hankel transform; ``K`` is zero and
``attrs["K_available"]`` is "no" (use the TMM backend for K(u)).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

import numpy as np
import xarray as xr

from qdcavity.analyses import DipoleEmissionAnalysis
from qdcavity.contracts import CHANNELS, ORIENTATIONS, with_units
from qdcavity.errors import ConfigError
from qdcavity.stack import Stack

from .runner import run_job
from .structure import band_samples, build_structure


def emitter_of(stack: Stack) -> str:
    name = stack.emitter_layer or stack.gain_layer
    if not name:
        raise ConfigError("the stack names no emitter_layer (nor gain_layer) for the dipoles",
                          field="emitter_layer")
    return name


def run_dipole(stack: Stack, analysis: DipoleEmissionAnalysis,
               opts: Mapping[str, Any]) -> xr.Dataset:
    emitter = emitter_of(stack)
    pos = stack.layer_position(emitter)
    lams = list(analysis.wavelength_nm)
    d = stack.thicknesses_nm
    z_in = analysis.position * d[pos - 1]
    z_dip_nm = float(stack.interfaces_nm[pos - 1] + z_in)
    u = np.linspace(0.0, analysis.u_max, analysis.u_points)
    K = np.zeros((3, len(lams), u.size))  # not available from real-space runs (docs)
    fractions = np.zeros((3, len(lams), len(CHANNELS)))
    purcell = np.zeros((3, len(lams)))
    extra = {name: np.zeros((3, len(lams))) for name in ("lateral", "absorbed_within_R",
                                                         "guided_or_absorbed")}
    fits_all: dict[str, Any] = {}
    runs_meta: list[dict] = []
    notes: list[str] = []
    for iw, lam0 in enumerate(lams):
        f0 = 1000.0 / lam0
        hw = float(opts["fit_halfwidth"])
        lam_b = band_samples(f0 / (1 + hw), f0 * (1 + hw), stack)
        fb = 1000.0 / lam_b
        weights = 1.0 + 9.0 * np.exp(-(((fb - f0) / (0.01 * f0)) ** 2))
        struct = build_structure(stack, lam_b, opts, zero_k=[emitter], weights=weights,
                                 interfaces=bool(opts["interface_media"]),
                                 what=f"dipole emission at {lam0:g} nm: ")
        fits_all[f"{lam0:g} nm"] = struct.fits
        notes += struct.notes
        job = {
            "task": "dipole",
            "structure": struct.spec,
            "frequency": f0,
            "z_dipole": z_dip_nm / 1000.0,
            "orientations": ["vertical", "horizontal"],
            "emitter_position": pos,
            "numerics": {"resolution": float(opts["resolution"]), "pml": float(opts["pml_um"]),
                         "padding": float(opts["padding_um"]),
                         "radius": float(opts["radius_um"]),
                         "absorber": float(opts["absorber_um"]),
                         "absorber_sigma": float(opts["absorber_sigma"]),
                         "flux_height": float(opts["flux_height_um"]),
                         "decay_by": float(opts["decay_by"]),
                         "max_time": float(opts["max_time"])},
        }
        out = run_job(job, opts, f"meep dipole emission {lam0:g} nm")
        meta = out.meta
        runs_meta.append({"wavelength_nm": lam0, "wall_s": out.wall_s, **meta["runs"]})
        power = {}
        for o, orient in enumerate(("horizontal", "vertical")):
            run = meta["runs"][orient]
            pf = run["ldos"] / run["ldos_bulk"]
            P = pf * run["p_bulk"]
            air = run["flux_top"] / P
            sub = -run["flux_bottom"] / P
            lateral = run["flux_side"] / P
            absorbed = 1.0 - air - sub - lateral
            purcell[o, iw] = pf
            fractions[o, iw] = [air, sub, lateral, 0.0, absorbed]
            extra["lateral"][o, iw] = lateral
            extra["absorbed_within_R"][o, iw] = absorbed
            extra["guided_or_absorbed"][o, iw] = 1.0 - air - sub
            power[orient] = pf
        # isotropic: (2 horizontal + vertical) / 3, fractions weighted by power
        ph, pv = power["horizontal"], power["vertical"]
        purcell[2, iw] = (2 * ph + pv) / 3
        fractions[2, iw] = (2 * ph * fractions[0, iw] + pv * fractions[1, iw]) / (2 * ph + pv)
        for name in extra:
            extra[name][2, iw] = (2 * ph * extra[name][0, iw] + pv * extra[name][1, iw]) / (
                2 * ph + pv)
    ds = xr.Dataset(
        {
            "K": (("orientation", "wavelength_nm", "u"), K),
            "fraction": (("orientation", "wavelength_nm", "channel"), fractions),
            "purcell": (("orientation", "wavelength_nm"), purcell),
            "lateral_fraction": (("orientation", "wavelength_nm"), extra["lateral"]),
            "absorbed_within_R_fraction": (("orientation", "wavelength_nm"),
                                           extra["absorbed_within_R"]),
            "guided_or_absorbed_fraction": (("orientation", "wavelength_nm"),
                                            extra["guided_or_absorbed"]),
        },
        coords={"orientation": list(ORIENTATIONS), "wavelength_nm": np.asarray(lams),
                "channel": list(CHANNELS), "u": u},
    )
    ds["lateral_fraction"].attrs["description"] = (
        "power crossing the cylinder r = R inside the stack (still guided at R), measured "
        "directly by Meep")
    ds["absorbed_within_R_fraction"].attrs["description"] = (
        "1 - air - substrate - lateral: absorbed in the layers within r < R, measured directly")
    ds["guided_or_absorbed_fraction"].attrs["description"] = (
        "1 - air - substrate: everything that neither leaves into the superstrate nor into the "
        "substrate (the TMM backend's waveguide + spp + absorbed)")
    ds.attrs.update({
        "emitter_layer": emitter, "position": analysis.position, "z_in_layer_nm": z_in,
        "normalization": "int K du = total power / power in the bulk emitter (Purcell)",
        "method": ("Meep FDTD in cylindrical coordinates (vertical m=0, horizontal m=+1); "
                   "Purcell from the LDOS ratio to a bulk run on the same grid; air and "
                   "substrate from flux disks; guided at r = R from the flux through the "
                   "cylinder r = R; absorbed within R the rest (docs/meep.md)"),
        "channel_semantics": ("meep: waveguide = power still guided at r = R (photonic modes "
                              "and SPPs: not separable in real space); spp = 0 (not "
                              "separable); absorbed = absorbed within r < R. air and substrate "
                              "have the TMM meaning."),
        "K_available": "no",
        "K_note": ("K(u) is not produced by the Meep backend (zeros): see docs/meep.md; use "
                   "the TMM backend for the angular spectrum"),
        "emitter_k_ignored": "the emitter layer is lossless (k = 0), as in the TMM backend",
        "resolution_px_per_um": float(opts["resolution"]),
        "radius_um": float(opts["radius_um"]), "absorber_um": float(opts["absorber_um"]),
        "pml_um": float(opts["pml_um"]), "padding_um": float(opts["padding_um"]),
        "material_fits": json.dumps(fits_all, sort_keys=True),
        "runs": json.dumps(runs_meta, sort_keys=True),
        "notes": "; ".join(dict.fromkeys(notes)),
    })
    return with_units(ds, "dipole_emission")
