"""Scattering-driven outcoupling as Tidy3D FDTD simulations: the build (cloud run, 2D cell).

The same full-wave experiment as the Meep backend (docs/outcoupling.md), set up for Tidy3D:

* **Cell** (``geometry = "2d"``): Tidy3D x = propagation, z = the stack normal (z = 0 at the
  substrate top), zero size in y (the y-invariant world of the TMM ``geometry = "2d"`` model).
  Layers as in :mod:`.fdtd` (interface-aligned z grid, substrate through the bottom PML),
  uniform cells ``scatterer_cell_nm`` along x, ``x_boundary`` (default the adiabatic
  absorber, ``x_boundary_um`` = 0.8 thick, robust with the dispersive Ag model crossing it)
  at both x ends, PML in z. Along x: source | ``gap_um`` | scatterer window (``window_um``)
  | ``tail_um``, the source ``source_margin_um`` from the left end.
* **Scatterers**: infinite cylinders along y (``td.Cylinder(axis=1)``) of the analysis'
  radius and the particle material, placed by random sequential addition (numpy Generator,
  ``seed``; no overlaps, every cylinder inside the gain layer and the window) at
  round(f L d / (pi a^2)) per realization; the window's gain layer is the host medium around
  them. Outside the window the gain layer is the mean medium eps_h + f (eps_p - eps_h) of the
  realized fraction, so the launched mode enters the window unchanged (as in Meep).
  Particle and host permittivities are the real parts of their indices (pumped QDs).
* **Source**: a ``ModeSource`` (direction "+") of the mode of the reference stack (gain
  layer = the mean medium): Tidy3D's cloud mode solver picks it by ``ModeSortSpec`` (TE or TM
  by ``TE_fraction``, then the n_eff nearest the local mode solver's value of the mode).
* **Monitors**: a ``ModeMonitor`` (same mode spec, unconjugated overlap so it ignores the
  backward wave) and a ``FluxMonitor`` on x-normal planes ``monitor_gap_um`` before and after
  the window; a ``FluxMonitor`` and a tangential ``FieldMonitor`` on a line
  ``flux_height_um`` above the top electrode spanning the cell (upward escape, far field).
* **Batch**: per wavelength one reference simulation (no cylinders) and ``realizations``
  seeded placements, submitted together through :mod:`.jobs` (resumable task ids).

Post-processing of the downloaded data: :mod:`.outcoupling_post`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from qdcavity.analyses import ModesAnalysis, OutcouplingAnalysis
from qdcavity.errors import ConfigError, SolverError
from qdcavity.materials import material_from_spec
from qdcavity.stack import Stack

from ._runtime import tidy3d
from .fdtd import PML_LAYERS, Layout, _run_time, _structures, _z_grid, build_media
from .jobs import SimJob
from .media import freq_hz
from .options import Tidy3DOptions

# rejection attempts per cylinder before random sequential addition gives up (jamming)
MAX_TRIES = 2000


@dataclass
class WavelengthPlan:
    """What the post-processing needs to know about the simulations of one wavelength."""

    wavelength_nm: float
    polarization: str                     # "TE" or "TM" (the launched mode)
    x_window_um: tuple[float, float]      # scatterer window
    x_monitors_um: tuple[float, float]    # mode / flux planes before and after it
    z_line_um: float                      # upward flux and far-field line
    n_superstrate: float
    radius_um: float
    layer_um: tuple[float, float]         # gain layer bottom, top
    eps_particle: float
    eps_host: float
    fraction_realized: float              # cylinders' area fraction of the window's layer
    centres_um: list[np.ndarray]          # (count, 2) x, z per realization
    reference_key: str
    realization_keys: list[str]
    local: dict[str, Any] = field(default_factory=dict)  # local mode solves (plain, ref.)


def check(stack: Stack, analysis: OutcouplingAnalysis) -> None:
    """Refuse what the Tidy3D outcoupling cell cannot represent, naming the field."""
    stack.indices(list(analysis.wavelength_nm))   # range errors name the material first
    if not stack.gain_layer:
        raise ConfigError("the stack names no gain_layer (the scattering QD film)",
                          field="gain_layer")
    if analysis.particle_radius_nm is None or analysis.volume_fraction is None:
        raise ConfigError("the Tidy3D outcoupling cell places particles: give "
                          "particle_radius_nm and volume_fraction, not alpha_sca_cm",
                          field="alpha_sca_cm")
    if analysis.geometry != "2d":
        raise ConfigError("the Tidy3D outcoupling cell is 2D (infinite cylinders along y, "
                          "y-invariant mode): set geometry = '2d' and compare with the tmm "
                          "backend at geometry '2d'", field="geometry")
    d_nm = float(stack.thicknesses_nm[stack.layer_position(stack.gain_layer) - 1])
    if 2 * analysis.particle_radius_nm >= d_nm:
        raise ConfigError(f"a cylinder of radius {analysis.particle_radius_nm:g} nm does not "
                          f"fit in the {d_nm:g} nm gain layer", field="particle_radius_nm")


def cylinder_count(volume_fraction: float, window_um: float, layer_um: float,
                   radius_um: float) -> int:
    """Cylinders per realization: the area fraction of the window's share of the layer."""
    return int(round(volume_fraction * window_um * layer_um / (math.pi * radius_um**2)))


def place_cylinders(rng: np.random.Generator, count: int, window_um: float, layer_um: float,
                    radius_um: float, gap_um: float = 0.0) -> np.ndarray:
    """(count, 2) centres (x from the window start, z from the layer bottom) by random
    sequential addition: uniform in [a, L - a] x [a, d - a], a candidate closer than
    2 a + ``gap_um`` to a placed centre is redrawn. Raises ConfigError when the layer is too
    crowded to place them (jamming)."""
    a = radius_um
    if 2 * a >= layer_um:
        raise ConfigError(f"a cylinder of radius {a * 1e3:g} nm does not fit in the "
                          f"{layer_um * 1e3:g} nm gain layer", field="particle_radius_nm")
    min_d2 = (2 * a + gap_um) ** 2
    out = np.empty((count, 2))
    for i in range(count):
        for _ in range(MAX_TRIES):
            c = (rng.uniform(a, window_um - a), rng.uniform(a, layer_um - a))
            if i == 0 or np.min(np.sum((out[:i] - c) ** 2, axis=1)) >= min_d2:
                out[i] = c
                break
        else:
            raise ConfigError(f"cannot place {count} non-overlapping cylinders of radius "
                              f"{a * 1e3:g} nm in the gain layer (placed {i}); lower "
                              "volume_fraction", field="volume_fraction")
    return out


def _local_mode(stack: Stack, lam: float, label: str, gain_layer_k: str,
                opts: Tidy3DOptions) -> dict[str, Any]:
    """neff, alpha and gamma_P (gain layer) of mode ``label`` from the local mode solver."""
    from .modesolver import solve_modes

    pol = label[:2]
    ds = solve_modes(stack, ModesAnalysis(wavelength_nm=(lam,), polarizations=(pol,),
                                          fields=False, gain_layer_k=gain_layer_k,
                                          max_modes=max(10, int(label[2:]) + 4)), opts)
    labels = [str(v) for v in ds.label.sel(wavelength_nm=lam, polarization=pol).values]
    if label not in labels:
        raise ConfigError(f"no mode '{label}' in stack '{stack.name}' at {lam:g} nm "
                          f"(tidy3d local mode solver found {[v for v in labels if v]})",
                          field="mode")
    m = labels.index(label)
    sel = ds.sel(wavelength_nm=lam, polarization=pol, mode=m)
    return {"neff": complex(sel.neff.values), "alpha_cm": float(sel.alpha_cm.values),
            "gamma_P": float(sel.gamma_P.sel(layer=stack.gain_layer).values)}


def reference_stack(stack: Stack, eps_mean: float) -> Stack:
    """The stack with its gain layer replaced by the mean medium (lossless)."""
    return stack.with_overrides({f"{stack.gain_layer}.material": {
        "n": math.sqrt(eps_mean), "name": "mean medium of host + particles"}})


def _mode_spec(pol: str, neff: complex):
    td = tidy3d()
    return td.ModeSpec(
        num_modes=4, target_neff=float(neff.real), precision="double",
        # the wanted polarization first (TE_fraction = share of Ey), then the n_eff nearest
        # the local solver's value of the requested mode (sort_spec, not the deprecated
        # filter_pol / track_freq of ModeSpec)
        sort_spec=td.ModeSortSpec(filter_key="TE_fraction", filter_reference=0.5,
                                  filter_order="over" if pol == "TE" else "under",
                                  sort_key="n_eff", sort_reference=float(neff.real),
                                  sort_order="ascending", track_freq=None))


def _boundary(kind: str, thickness_um: float, cell_um: float):
    """The x boundary: the adiabatic absorber or stable PML ``thickness_um`` thick (a thin
    absorber reflects the guided mode back through the window), or a standard PML."""
    td = tidy3d()
    layers = max(PML_LAYERS, int(math.ceil(thickness_um / cell_um - 1e-9)))
    if kind == "absorber":
        return td.Boundary.absorber(num_layers=layers)
    if kind == "stable_pml":
        return td.Boundary.stable_pml(num_layers=layers)
    return td.Boundary.pml(num_layers=PML_LAYERS)


def outcoupling_jobs(stack: Stack, analysis: OutcouplingAnalysis, opts: Tidy3DOptions,
                     local_modes: bool = True) -> tuple[list[SimJob], list[WavelengthPlan]]:
    """Every simulation of the analysis (all wavelengths) and the plans to post-process them.

    ``local_modes``: run the local mode solver (plain stack: neff, alpha_abs, gamma_P;
    reference stack: the n_eff the ModeSource selects by); without it the TMM indices of the
    reference stack are used as the selection target (tests of the geometry only).
    """
    td = tidy3d()
    check(stack, analysis)
    gain = stack.gain_layer
    pos = stack.layer_position(gain)
    zero_k = [gain] if analysis.gain_layer_k == "bleached" else []
    a_um = float(analysis.particle_radius_nm) * 1e-3
    inter = stack.interfaces_nm * 1e-3
    z_g = (float(inter[pos - 1]), float(inter[pos]))
    layer_um = z_g[1] - z_g[0]
    window = opts.window_um
    count = cylinder_count(float(analysis.volume_fraction), window, layer_um, a_um)
    if count < 1:
        raise ConfigError("the window holds no cylinder at this volume fraction; lengthen "
                          "window_um", field="volume_fraction")
    if not opts.monitor_gap_um < min(opts.gap_um, opts.tail_um):
        raise ConfigError("monitor_gap_um must be smaller than gap_um and tail_um (the mode "
                          "monitors sit between the source, the window and the cell end)",
                          field="monitor_gap_um")
    cell_nm = opts.scatterer_cell_nm or min(10.0, analysis.particle_radius_nm / 3)
    x_w1 = opts.source_margin_um + opts.gap_um
    x_w2 = x_w1 + window
    length = x_w2 + opts.tail_um
    x_m = (x_w1 - opts.monitor_gap_um, x_w2 + opts.monitor_gap_um)
    rng = np.random.default_rng(opts.seed)
    f_real = count * math.pi * a_um**2 / (window * layer_um)
    jobs: list[SimJob] = []
    plans: list[WavelengthPlan] = []
    for lam in analysis.wavelength_nm:
        eps_p = float(material_from_spec(analysis.particle_material).nk(lam).real) ** 2
        eps_h = float(material_from_spec(analysis.host_material).nk(lam).real) ** 2
        eps_mean = eps_h + f_real * (eps_p - eps_h)
        ref_stack = reference_stack(stack, eps_mean)
        pol = analysis.mode[:2]
        local: dict[str, Any] = {}
        if local_modes:
            local["plain"] = _local_mode(stack, lam, analysis.mode, analysis.gain_layer_k, opts)
            local["reference"] = _local_mode(ref_stack, lam, analysis.mode, "bleached", opts)
            target = local["reference"]["neff"]
        else:
            target = complex(max(np.real(ref_stack.indices([lam])[0, 1:-1])))
        layout: Layout = build_media(stack, np.array([lam]), opts, zero_k=zero_k)
        mean = td.Medium(permittivity=eps_mean, name="gain layer mean medium")
        layout.media[pos] = mean
        n_sup = float(np.real(stack.indices([lam])[0, -1]))
        pad = opts.pad_nm or max(lam / 2, 300.0)
        if not opts.flux_height_um * 1e3 < pad - 4 * opts.fdtd_resolution():
            raise ConfigError(f"flux_height_um = {opts.flux_height_um:g} leaves the flux line "
                              f"outside the {pad:g} nm of superstrate in the cell; raise pad_nm",
                              field="flux_height_um")
        z = _z_grid(layout, opts, pad, pad).z_nm * 1e-3
        lo, hi = float(z[0]), float(z[-1])
        zc, lz = 0.5 * (lo + hi), hi - lo
        z_line = float(inter[-1]) + opts.flux_height_um
        f0 = float(freq_hz(lam))
        spec = _mode_spec(pol, target)
        source = td.ModeSource(center=(opts.source_margin_um, 0, zc), size=(0, td.inf, lz),
                               source_time=td.GaussianPulse(freq0=f0, fwidth=0.1 * f0),
                               direction="+", mode_spec=spec, mode_index=0, name="mode")
        monitors = []
        for tag, xm in zip(("in", "out"), x_m, strict=True):
            monitors.append(td.ModeMonitor(center=(xm, 0, zc), size=(0, td.inf, lz),
                                           freqs=[f0], mode_spec=spec,
                                           conjugated_dot_product=False, name=f"mode_{tag}"))
            monitors.append(td.FluxMonitor(center=(xm, 0, zc), size=(0, td.inf, lz),
                                           freqs=[f0], name=f"flux_{tag}"))
        monitors.append(td.FluxMonitor(center=(0.5 * length, 0, z_line),
                                       size=(length, td.inf, 0), freqs=[f0], name="flux_up"))
        monitors.append(td.FieldMonitor(center=(0.5 * length, 0, z_line),
                                        size=(length, td.inf, 0), freqs=[f0],
                                        fields=["Ex", "Ey", "Hx", "Hy"], name="field_up"))
        dl = cell_nm * 1e-3
        base = td.Simulation(
            size=(length, 0, lz), center=(0.5 * length, 0, zc),
            grid_spec=td.GridSpec(grid_x=td.UniformGrid(dl=dl), grid_y=td.UniformGrid(dl=dl),
                                  grid_z=td.CustomGridBoundaries(coords=list(z))),
            structures=_structures(layout, lo - 10.0), medium=layout.media[-1],
            sources=[source], monitors=monitors, run_time=_run_time(opts),
            shutoff=opts.shutoff,
            boundary_spec=td.BoundarySpec(x=_boundary(opts.x_boundary, opts.x_boundary_um, dl),
                                          y=td.Boundary.periodic(),
                                          z=td.Boundary.pml(num_layers=PML_LAYERS)))
        tag = f"oc-{lam:g}nm"
        jobs.append(SimJob(f"{tag}-reference", base))
        host = td.Structure(geometry=td.Box.from_bounds((x_w1, -td.inf, z_g[0]),
                                                        (x_w2, td.inf, z_g[1])),
                            medium=td.Medium(permittivity=eps_h, name="host"), name="host")
        particle = td.Medium(permittivity=eps_p, name="particle")
        centres, keys = [], []
        for r in range(opts.realizations):
            c = place_cylinders(rng, count, window, layer_um, a_um)
            c_abs = c + np.array([x_w1, z_g[0]])
            group = td.GeometryGroup(geometries=[
                td.Cylinder(center=(float(x), 0.0, float(zz)), radius=a_um, length=td.inf,
                            axis=1) for x, zz in c_abs])
            cyl = td.Structure(geometry=group, medium=particle, name="particles")
            sim = base.updated_copy(structures=[*base.structures, host, cyl])
            keys.append(f"{tag}-r{r}")
            jobs.append(SimJob(keys[-1], sim))
            centres.append(c_abs)
        plans.append(WavelengthPlan(
            wavelength_nm=float(lam), polarization=pol, x_window_um=(x_w1, x_w2),
            x_monitors_um=x_m, z_line_um=z_line, n_superstrate=n_sup, radius_um=a_um,
            layer_um=z_g, eps_particle=eps_p, eps_host=eps_h, fraction_realized=f_real,
            centres_um=centres, reference_key=f"{tag}-reference", realization_keys=keys,
            local=local))
    if not jobs:
        raise SolverError("outcoupling: no simulation was built")
    return jobs, plans
