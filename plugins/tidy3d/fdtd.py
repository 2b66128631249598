"""Reflectance and dipole emission as Tidy3D FDTD simulations (run on Tidy3D's cloud).

Both are built and validated offline (``Simulation.validate_pre_upload``) and run through
:mod:`.jobs` (``tidy3d.web``) when an API key is configured; ``dry_run`` stops after building.
Geometry as everywhere in the project: z is the stack normal, z = 0 at the substrate top, the
substrate is a box reaching through the bottom PML, the superstrate is the background medium.
Along z the grid is the interface-aligned explicit grid of :mod:`.grid` (Tidy3D adds the PML
cells outside the domain); the cloud solver does its own subpixel averaging.

Media: one wavelength -> n + ik of the tables (non-dispersive); several -> Tidy3D's pole-residue
fit of every material over the band, its error recorded in the attributes (``tidy3d_fits``).

Reflectance (contract ``reflectance``): a ``PlaneWave`` from the incidence side, a 1D domain
(zero size in x and y). Normal incidence: periodic (= Bloch with k = 0) transverse boundaries,
one broadband run serves s and p (identical at normal incidence). Oblique incidence:
``oblique = "fixed-angle"`` (default): ``FixedAngleSpec`` with periodic boundaries, one
broadband run per angle and polarization at a constant angle; ``oblique = "bloch"``: Bloch
boundaries from the source (fixed in-plane k), which fixes the angle at one frequency only, so
one narrow-band run per wavelength, angle and polarization. R is the flux of a monitor behind
the source, T the flux into the far cladding just beyond the stack (Tidy3D normalises plane-wave
fluxes to the injected power), A = 1 - R - T.

Dipole emission (contract ``dipole_emission``): a ``PointDipole`` in the emitter layer at the
requested height, horizontal (Ex; mirror symmetry (-1, 1, 0)) and vertical (Ez; (1, 1, 0)), in
a laterally finite domain (``lateral_size_um``, uniform lateral cells ``lateral_cell_nm``) with
PML on all sides. Monitors: a closed flux box around the dipole (total power), flux planes and
tangential-field planes just above and below the dipole, in the superstrate just above the
stack and in the substrate just below it. A small bulk simulation (the emitter medium
everywhere, same box) gives the power of the dipole in the unbounded emitter. Post-processing:
the plane fields are Fourier transformed; (E x H*)_z per in-plane wavevector, summed over the
azimuth, gives the power per u = k_par / (k0 n_e) through each plane (Parseval), calibrated on
the flux monitors of the same planes and normalised by the bulk power. K(u) is the net flux out
of the slab around the dipole, P_top(u) and P_bottom(u) the fluxes into the claddings, and the
channels follow docs/conventions.md. The u resolution is 2 pi / L (about 0.04 for 8 um).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import xarray as xr

from qdcavity.analyses import DipoleEmissionAnalysis, ReflectanceAnalysis
from qdcavity.contracts import CHANNELS, ORIENTATIONS, with_units
from qdcavity.errors import ConfigError, SolverError
from qdcavity.stack import Stack

from ._runtime import tidy3d
from .grid import build_zgrid
from .jobs import JobRunner, SimJob
from .media import FitResult, check_passive, fit_material, freq_hz, medium_from_eps
from .options import Tidy3DOptions
from .options import work_dir_path as _work_dir

DEFAULT_RUN_TIME_FS = 300.0
PML_LAYERS = 12


# ----- media and layout ------------------------------------------------------------------------

@dataclass
class Layout:
    """Tidy3D media and z grid of a stack over a band of wavelengths."""

    stack: Stack
    wavelengths_nm: np.ndarray
    media: list[Any]
    fits: dict[str, dict[str, Any]] = field(default_factory=dict)

    @property
    def interfaces_um(self) -> np.ndarray:
        return self.stack.interfaces_nm * 1e-3


def build_media(stack: Stack, wavelengths_nm: np.ndarray, opts: Tidy3DOptions,
                zero_k: list[str] | None = None) -> Layout:
    lams = np.asarray(wavelengths_nm, dtype=float)
    zero_k = zero_k or []
    nk = stack.indices(lams, zero_k=zero_k)
    for name, col in zip(stack.media_names, nk.T, strict=True):
        check_passive(name, col)
    if lams.size == 1:
        media = [medium_from_eps(v**2, float(lams[0]), name)
                 for v, name in zip(nk[0], stack.media_names, strict=True)]
        return Layout(stack, lams, media)
    band = (float(lams.min()), float(lams.max()))
    cache = _work_dir(opts)
    cache = cache / "tidy3d" / "fits" if cache is not None else None
    media, fits = [], {}
    for name, material in zip(stack.media_names, stack.materials(), strict=True):
        fit: FitResult = fit_material(material, band, max_poles=opts.fit_max_poles,
                                      tolerance_rms=opts.fit_tolerance_rms, cache_dir=cache,
                                      zero_k=name in zero_k)
        media.append(fit.medium.updated_copy(name=name))
        fits[name] = {"material": material.name, **fit.summary()}
    return Layout(stack, lams, media, fits)


def _structures(layout: Layout, z_lo_um: float) -> list[Any]:
    td = tidy3d()
    inter = layout.interfaces_um
    bounds = [(z_lo_um, inter[0])] + list(zip(inter[:-1], inter[1:], strict=True))
    return [td.Structure(geometry=td.Box.from_bounds((-td.inf, -td.inf, lo), (td.inf, td.inf, hi)),
                         medium=layout.media[j], name=layout.stack.media_names[j])
            for j, (lo, hi) in enumerate(bounds)]


def _pulse(freqs: np.ndarray):
    td = tidy3d()
    f_lo, f_hi = float(np.min(freqs)), float(np.max(freqs))
    f0 = 0.5 * (f_lo + f_hi)
    fwidth = max(0.5 * (f_hi - f_lo), 0.1 * f0)
    return td.GaussianPulse(freq0=f0, fwidth=fwidth)


def _z_grid(layout: Layout, opts: Tidy3DOptions, pad_lo: float, pad_hi: float):
    lam_min = float(layout.wavelengths_nm.min())
    nk = layout.stack.indices(layout.wavelengths_nm)
    n_sub, n_sup = float(np.max(np.abs(nk[:, 0]))), float(np.max(np.abs(nk[:, -1])))
    # propagating waves in the claddings: 20 cells per wavelength in the medium
    return build_zgrid(layout.stack.thicknesses_nm, opts.fdtd_resolution(), pad_lo, pad_hi,
                       lam_min / (20 * n_sub), lam_min / (20 * n_sup), n_pml=0)


def _run_time(opts: Tidy3DOptions) -> float:
    return (opts.run_time_fs or DEFAULT_RUN_TIME_FS) * 1e-15


# ----- reflectance -------------------------------------------------------------------------

def reflectance_jobs(stack: Stack, analysis: ReflectanceAnalysis, opts: Tidy3DOptions,
                     oblique: str = "fixed-angle") -> tuple[list[SimJob], Layout, list[dict]]:
    """The simulations of a reflectance analysis and what each one measures."""
    td = tidy3d()
    lams = np.asarray(analysis.wavelength_nm, dtype=float)
    nk = stack.indices(lams)
    side = analysis.incidence
    inc = nk[:, -1] if side == "superstrate" else nk[:, 0]
    if np.any(np.abs(inc.imag) > 1e-3):
        raise ConfigError(f"the {side} absorbs (k up to {np.max(inc.imag):.3g}); a plane wave "
                          "cannot be injected in an absorbing medium", field="incidence")
    layout = build_media(stack, lams, opts)
    lam_max = float(lams.max())
    pad = opts.pad_nm or max(lam_max / 2, 300.0)
    grid = _z_grid(layout, opts, pad, pad)
    z = grid.z_nm * 1e-3
    top = float(layout.interfaces_um[-1])
    lo, hi = float(z[0]), float(z[-1])
    cell = opts.fdtd_resolution() * 1e-3
    structures = _structures(layout, lo - 10.0)
    if side == "superstrate":
        z_src, z_r, z_t, direction = top + pad * 4e-4, top + pad * 7e-4, -2 * cell, "-"
    else:
        z_src, z_r, z_t, direction = -pad * 4e-4, -pad * 7e-4, top + 2 * cell, "+"
    freqs = freq_hz(lams)
    dl_x = 0.02
    base = td.Simulation(
        size=(0, 0, hi - lo), center=(0, 0, 0.5 * (lo + hi)),
        grid_spec=td.GridSpec(grid_x=td.UniformGrid(dl=dl_x), grid_y=td.UniformGrid(dl=dl_x),
                              grid_z=td.CustomGridBoundaries(coords=list(z))),
        structures=structures, medium=layout.media[-1], run_time=_run_time(opts),
        shutoff=opts.shutoff,
        boundary_spec=td.BoundarySpec(x=td.Boundary.periodic(), y=td.Boundary.periodic(),
                                      z=td.Boundary.pml(num_layers=PML_LAYERS)),
    )
    jobs, plan = [], []

    def add(key: str, a_deg: float, pol: str, f_sel: np.ndarray, spec) -> None:
        theta = float(np.deg2rad(a_deg))
        extra = {"angular_spec": spec} if spec is not None else {}
        source = td.PlaneWave(center=(0, 0, z_src), size=(td.inf, td.inf, 0),
                              source_time=_pulse(freqs[f_sel]), direction=direction,
                              angle_theta=theta, angle_phi=0.0,
                              pol_angle=0.0 if pol == "p" else np.pi / 2, **extra)
        monitors = [td.FluxMonitor(center=(0, 0, z_r), size=(td.inf, td.inf, 0),
                                   freqs=list(freqs[f_sel]), name="R"),
                    td.FluxMonitor(center=(0, 0, z_t), size=(td.inf, td.inf, 0),
                                   freqs=list(freqs[f_sel]), name="T")]
        sim = base.updated_copy(sources=[source], monitors=monitors)
        if theta > 0 and spec is None:  # Bloch boundaries fixing k_x at this frequency
            bloch = td.Boundary.bloch_from_source(source=source, domain_size=dl_x, axis=0,
                                                  medium=layout.media[-1 if side ==
                                                                      "superstrate" else 0])
            sim = sim.updated_copy(size=(dl_x, 0, hi - lo), boundary_spec=td.BoundarySpec(
                x=bloch, y=td.Boundary.periodic(), z=td.Boundary.pml(num_layers=PML_LAYERS)))
        jobs.append(SimJob(key, sim))
        plan.append({"key": key, "angle_deg": a_deg, "pol": pol,
                     "f_index": np.flatnonzero(f_sel)})

    all_f = np.ones(lams.size, dtype=bool)
    for a_deg in analysis.angle_deg:
        if a_deg == 0:
            add("R-0deg", 0.0, "p", all_f, None)
            continue
        for pol in analysis.polarizations:
            if oblique == "bloch":
                for i, lam in enumerate(lams):
                    sel = np.zeros(lams.size, dtype=bool)
                    sel[i] = True
                    add(f"R-{a_deg:g}deg-{pol}-{lam:g}nm", a_deg, pol, sel, None)
            else:
                add(f"R-{a_deg:g}deg-{pol}", a_deg, pol, all_f, td.FixedAngleSpec())
    return jobs, layout, plan


def reflectance(stack: Stack, analysis: ReflectanceAnalysis, opts: Tidy3DOptions,
                oblique: str = "fixed-angle") -> xr.Dataset:
    jobs, layout, plan = reflectance_jobs(stack, analysis, opts, oblique)
    data = JobRunner(opts, f"reflectance of '{stack.name}'").run(jobs)
    return reflectance_dataset(analysis, plan, data, layout)


def reflectance_dataset(analysis: ReflectanceAnalysis, plan: list[dict], data: dict[str, Any],
                        layout: Layout) -> xr.Dataset:
    """R, T, A from the flux monitors of every simulation of ``plan``."""
    lams = np.asarray(analysis.wavelength_nm, dtype=float)
    angles = list(analysis.angle_deg)
    pols = list(analysis.polarizations)
    shape = (lams.size, len(angles), len(pols))
    R, T = np.full(shape, np.nan), np.full(shape, np.nan)
    sign = 1.0 if analysis.incidence == "superstrate" else -1.0
    for item in plan:
        sim_data = data[item["key"]]
        r = sign * np.asarray(sim_data["R"].flux.values, dtype=float)
        t = -sign * np.asarray(sim_data["T"].flux.values, dtype=float)
        a = angles.index(item["angle_deg"])
        targets = range(len(pols)) if item["angle_deg"] == 0 else [pols.index(item["pol"])]
        for j in targets:
            R[item["f_index"], a, j] = r
            T[item["f_index"], a, j] = t
    if np.any(~np.isfinite(R)):
        raise SolverError("reflectance: some (wavelength, angle, polarization) have no result")
    dims = ("wavelength_nm", "angle_deg", "polarization")
    ds = xr.Dataset({"R": (dims, R), "T": (dims, T), "A": (dims, 1.0 - R - T)},
                    coords={"wavelength_nm": lams, "angle_deg": np.asarray(angles, dtype=float),
                            "polarization": pols})
    ds.attrs["incidence"] = analysis.incidence
    ds.attrs["tidy3d_fits"] = json.dumps(layout.fits, sort_keys=True)
    return with_units(ds, "reflectance")


# ----- dipole emission ---------------------------------------------------------------------------

ORIENTATION_SOURCES = {"horizontal": ("Ex", (-1, 1, 0)), "vertical": ("Ez", (1, 1, 0))}


def _lateral(size_um: float, cell_nm: float) -> np.ndarray:
    n = int(np.ceil(size_um * 1e3 / cell_nm / 2))
    return np.arange(-n, n + 1) * cell_nm * 1e-3


def dipole_jobs(stack: Stack, analysis: DipoleEmissionAnalysis, opts: Tidy3DOptions
                ) -> tuple[list[SimJob], Layout, dict[str, Any]]:
    td = tidy3d()
    if stack.emitter_layer is None:
        raise ConfigError(f"stack '{stack.name}' names no emitter_layer; dipole emission needs "
                          "one", field="emitter_layer")
    lams = np.asarray(analysis.wavelength_nm, dtype=float)
    layout = build_media(stack, lams, opts)
    e = stack.layer_position(stack.emitter_layer)
    inter = stack.interfaces_nm
    z_lo_e, z_hi_e = inter[e - 1], inter[e]
    z_d = z_lo_e + analysis.position * (z_hi_e - z_lo_e)
    res = opts.fdtd_resolution()
    gap = min(z_d - z_lo_e, z_hi_e - z_d)
    delta = min(2 * res, 0.4 * gap)
    if delta < 0.5 * res:
        raise ConfigError(f"the dipole sits {gap:.3g} nm from an interface of "
                          f"'{stack.emitter_layer}', closer than the FDTD cell ({res:g} nm) "
                          "allows; choose a position nearer the middle or a finer "
                          "resolution_nm", field="position")
    lam_max = float(lams.max())
    pad = opts.pad_nm or max(lam_max / 2, 300.0)
    grid = _z_grid(layout, opts, pad, pad)
    z = grid.z_nm * 1e-3
    lo, hi = float(z[0]), float(z[-1])
    xy = _lateral(opts.lateral_size_um, opts.lateral_cell_nm)
    half = float(xy[-1])
    freqs = list(freq_hz(lams))
    zd, dz = z_d * 1e-3, delta * 1e-3
    top = float(layout.interfaces_um[-1])
    box = 2 * dz
    planes = {"up": zd + dz, "down": zd - dz, "top": top + 2 * res * 1e-3,
              "bottom": -2 * res * 1e-3}
    grid_spec = td.GridSpec(grid_x=td.CustomGridBoundaries(coords=list(xy)),
                            grid_y=td.CustomGridBoundaries(coords=list(xy)),
                            grid_z=td.CustomGridBoundaries(coords=list(z)))
    monitors = [td.FluxMonitor(center=(0, 0, zd), size=(box, box, box), freqs=freqs,
                               name="box")]
    for name, zp in planes.items():
        monitors.append(td.FluxMonitor(center=(0, 0, zp), size=(2 * half, 2 * half, 0),
                                       freqs=freqs, name=f"flux_{name}"))
        monitors.append(td.FieldMonitor(center=(0, 0, zp), size=(2 * half, 2 * half, 0),
                                        freqs=freqs, fields=["Ex", "Ey", "Hx", "Hy"],
                                        colocate=True, name=f"field_{name}"))
    jobs = []
    for orient, (pol, sym) in ORIENTATION_SOURCES.items():
        source = td.PointDipole(center=(0, 0, zd), source_time=_pulse(np.asarray(freqs)),
                                polarization=pol)
        common = {"grid_spec": grid_spec, "run_time": _run_time(opts), "shutoff": opts.shutoff,
                  "sources": [source],
                  "symmetry": sym if opts.symmetry else (0, 0, 0),
                  "boundary_spec": td.BoundarySpec.all_sides(td.PML(num_layers=PML_LAYERS))}
        sim = td.Simulation(size=(2 * half, 2 * half, hi - lo), center=(0, 0, 0.5 * (lo + hi)),
                            structures=_structures(layout, lo - 10.0),
                            medium=layout.media[-1], monitors=monitors, **common)
        jobs.append(SimJob(f"dipole-{orient}", sim))
        # the same dipole and box in the unbounded emitter medium: the bulk power
        bulk_xy = xy[np.abs(xy) <= 0.5]
        bulk_z = z[np.abs(z - zd) <= 0.5]
        bulk_grid = td.GridSpec(grid_x=td.CustomGridBoundaries(coords=list(bulk_xy)),
                                grid_y=td.CustomGridBoundaries(coords=list(bulk_xy)),
                                grid_z=td.CustomGridBoundaries(coords=list(bulk_z)))
        bulk = td.Simulation(size=(float(bulk_xy[-1] - bulk_xy[0]),) * 2
                             + (float(bulk_z[-1] - bulk_z[0]),),
                             center=(0, 0, 0.5 * float(bulk_z[0] + bulk_z[-1])),
                             medium=layout.media[e], monitors=[monitors[0]],
                             **{**common, "grid_spec": bulk_grid})
        jobs.append(SimJob(f"bulk-{orient}", bulk))
    meta = {"z_dipole_nm": z_d, "planes_um": planes, "lateral_um": 2 * half,
            "n_emitter": np.real(stack.indices(lams)[:, e])}
    return jobs, layout, meta


def dipole_emission(stack: Stack, analysis: DipoleEmissionAnalysis, opts: Tidy3DOptions
                    ) -> xr.Dataset:
    jobs, layout, meta = dipole_jobs(stack, analysis, opts)
    data = JobRunner(opts, f"dipole emission of '{stack.name}'").run(jobs)
    return dipole_dataset(stack, analysis, data, layout, meta)


def k_cumulative(x_um: np.ndarray, y_um: np.ndarray, ex, ey, hx, hy, k_norm: float
                 ) -> tuple[np.ndarray, np.ndarray]:
    """Power through a plane per in-plane wavevector, as a cumulative function of u.

    ``ex``.. are complex (nx, ny) samples on a uniform grid; returns (u of every Fourier bin,
    sorted) and the cumulative sum of Re(E x H*)_z over those bins (Parseval: the last value is
    the sum over the plane of Re(E x H*)_z times the cell area). ``k_norm`` = k0 n_e (1/um).
    """
    dx, dy = float(x_um[1] - x_um[0]), float(y_um[1] - y_um[0])
    nx, ny = ex.shape
    f = [np.fft.fft2(c) for c in (ex, ey, hx, hy)]
    sz = (f[0] * np.conj(f[3]) - f[1] * np.conj(f[2])).real * dx * dy / (nx * ny)
    kx = 2 * np.pi * np.fft.fftfreq(nx, d=dx)
    ky = 2 * np.pi * np.fft.fftfreq(ny, d=dy)
    u = np.hypot(kx[:, None], ky[None, :]).ravel() / k_norm
    order = np.argsort(u, kind="stable")
    return u[order], np.cumsum(sz.ravel()[order])


def _density(u_native: np.ndarray, cum: np.ndarray, u_out: np.ndarray) -> np.ndarray:
    """d(cumulative)/du on ``u_out`` (power per du), conserving the total up to u_out[-1]."""
    edges = np.concatenate([[0.0], 0.5 * (u_out[1:] + u_out[:-1]), [u_out[-1]]])
    c = np.interp(edges, u_native, cum, left=0.0)
    return np.diff(c) / np.diff(edges)


def _plane(sim_data, name: str, f_index: int):
    mon = sim_data[f"field_{name}"]
    comps = []
    for c in ("Ex", "Ey", "Hx", "Hy"):
        arr = getattr(mon, c).isel(f=f_index)
        comps.append(np.asarray(arr.squeeze(drop=True).values))
    x = np.asarray(mon.Ex.coords["x"].values)
    y = np.asarray(mon.Ex.coords["y"].values)
    return x, y, comps


def dipole_dataset(stack: Stack, analysis: DipoleEmissionAnalysis, data: dict[str, Any],
                   layout: Layout, meta: dict[str, Any]) -> xr.Dataset:
    lams = np.asarray(analysis.wavelength_nm, dtype=float)
    u = np.linspace(0.0, analysis.u_max, analysis.u_points)
    nk = stack.indices(lams)
    n_e = meta["n_emitter"]
    K = np.zeros((len(ORIENTATIONS), lams.size, u.size))
    frac = np.zeros((len(ORIENTATIONS), lams.size, len(CHANNELS)))
    purcell = np.zeros((len(ORIENTATIONS), lams.size))
    box_check = np.zeros((2, lams.size))
    layers = nk[:, 1:-1]
    for o, orient in enumerate(("horizontal", "vertical")):
        sim_data, bulk_data = data[f"dipole-{orient}"], data[f"bulk-{orient}"]
        for i, lam in enumerate(lams):
            k_norm = 2 * np.pi / (lam * 1e-3) * n_e[i]
            p_bulk = float(np.asarray(bulk_data["box"].flux.values)[i])
            spectra = {}
            for name in ("up", "down", "top", "bottom"):
                x, y, comps = _plane(sim_data, name, i)
                un, cum = k_cumulative(x, y, *comps, k_norm=k_norm)
                flux = float(np.asarray(sim_data[f"flux_{name}"].flux.values)[i])
                scale = flux / cum[-1] if cum[-1] != 0 else 0.0  # Tidy3D's flux convention
                spectra[name] = _density(un, cum * scale, u) / p_bulk
            k_u = spectra["up"] - spectra["down"]
            p_top, p_bot = spectra["top"], -spectra["bottom"]
            K[o, i] = k_u
            total = float(np.trapezoid(k_u, u))
            purcell[o, i] = total
            box_check[o, i] = float(np.asarray(sim_data["box"].flux.values)[i]) / p_bulk
            rest = k_u - p_top - p_bot
            diel = layers[i][(layers[i] ** 2).real > 0].real
            n_max = float(np.max(diel)) if diel.size else n_e[i]
            u_air = nk[i, -1].real / n_e[i]
            u_wg = n_max / n_e[i]
            u_esc = max(u_air, nk[i, 0].real / n_e[i]) if nk[i, 0].real < n_max else u_air
            parts = {
                "air": np.trapezoid(p_top, u), "substrate": np.trapezoid(p_bot, u),
                "waveguide": np.trapezoid(np.where((u >= u_esc) & (u < u_wg), rest, 0), u),
                "spp": np.trapezoid(np.where(u >= u_wg, rest, 0), u),
                "absorbed": np.trapezoid(np.where(u < u_esc, rest, 0), u),
            }
            frac[o, i] = [parts[c] / total if total else np.nan for c in CHANNELS]
    K[2] = (2 * K[0] + K[1]) / 3
    purcell[2] = (2 * purcell[0] + purcell[1]) / 3
    frac[2] = (2 * frac[0] * purcell[0][:, None] + frac[1] * purcell[1][:, None]) / (
        3 * purcell[2][:, None])
    ds = xr.Dataset(
        {"K": (("orientation", "wavelength_nm", "u"), K),
         "fraction": (("orientation", "wavelength_nm", "channel"), frac),
         "purcell": (("orientation", "wavelength_nm"), purcell)},
        coords={"orientation": list(ORIENTATIONS), "wavelength_nm": lams,
                "channel": list(CHANNELS), "u": u},
    )
    ds.attrs["tidy3d_fits"] = json.dumps(layout.fits, sort_keys=True)
    ds.attrs["tidy3d_box_purcell"] = json.dumps(box_check.tolist())
    # Fourier resolution of the finite lateral window: du = lambda / (L n_e)
    ds.attrs["tidy3d_u_resolution"] = float(lams.max() * 1e-3 / (meta["lateral_um"]
                                                                 * n_e.min()))
    return with_units(ds, "dipole_emission")
