"""Guided modes with Tidy3D's local finite-difference mode solver (no network, no API key).

Mapping of the planar stack onto Tidy3D
---------------------------------------
The stack normal is Tidy3D's z (as in the project), modes propagate along +x, and the mode
plane is the x-normal plane ``Box(size=(0, inf, Lz))`` of a simulation whose size in y is zero,
so the mode is exactly y-invariant (a slab mode). Tidy3D uses exp(-i omega t) like the project;
``n_complex = n_eff + i k_eff`` is ``neff`` directly, and with H scaled by Z0 (vacuum impedance
1) the solver's fields satisfy Hz = neff Ey for TE, as the conventions require.

Grid and media (see :mod:`.grid`): an explicit ``CustomGridBoundaries`` grid along z with every
interface on a cell boundary, uniform cells of at most ``resolution_nm`` inside the layers,
graded cells into the claddings, ``pml_cells`` PML cells at both ends. Every layer is a box of a
non-dispersive medium built from the table's n + ik at the wavelength; with
``interface_averaging`` (default) a thin box around every interface carries the half-cell
weighted mean permittivity so that the tangential E samples lying on interfaces see the correct
average. Tidy3D's local solver has no subpixel averaging; without this the TM modes of thin Ag
converge only to first order.

Which modes are reported
------------------------
Eigenvalues are requested around the largest index of the dielectric layers (photonic modes
and the SPPs of metal/dielectric interfaces close to it) and around the planar SPP index of
every metal/dielectric interface lying further out (e.g. Ag/Si, neff ~ 9.3). A candidate is
kept when (1) its cladding fields follow a physical branch: evanescent (``bound``), or
outgoing and still decaying (``substrate-radiating``, the Si heat-sink case); modes growing
into a cladding (``leaky``) are not represented by a finite window and are dropped; (2) at
least half of its |E|^2 lies in the layers or in the evanescent cladding tails (discards PML
and cladding-box modes). The cladding windows are widened until every kept mode's evanescent
tail spans ``tail_efolds`` decay lengths (up to ``max_padding_nm``; modes needing more, i.e.
closer to a light line, are dropped and counted in the attributes).

Confinement factors from Tidy3D's fields (docs/conventions.md): fields are taken on the Yee
grid (``colocate=False``): Ex, Ey, Hz on cell boundaries, Ez, Hx, Hy on cell centres. Per
cell, tangential terms are integrated by the trapezoid rule and normal terms by the midpoint
rule (every cell lies inside one medium). Cladding tails beyond the window are added
analytically, |E(edge)|^2 / (2 Im kz).
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import xarray as xr

from qdcavity.analyses import ModesAnalysis
from qdcavity.errors import SolverError
from qdcavity.modeset import (
    ModeRecord,
    field_grid,
    mode_labels,
    modes_dataset,
    normalize_to_peak_e,
)
from qdcavity.stack import Stack

from ._runtime import blas_threads, tidy3d, tidy3d_module
from .grid import ZGrid, build_zgrid, interface_eps, medium_index_at
from .media import check_passive, freq_hz, medium_from_eps
from .options import DEFAULT_MODE_RESOLUTION_NM, Tidy3DOptions

ETA0 = 376.730313668  # vacuum impedance (Ohm): H_normalized = Z0 * H_SI
FIELDS = {"TE": ("Ey",), "TM": ("Hy", "Ex", "Ez")}
LOCALIZED_MIN = 0.5      # share of |E|^2 in layers + evanescent tails for a mode to be kept
SPP_EXTRA_MARGIN = 0.3   # SPP targets closer than this to the primary target are not re-solved
CLADDING_CELLS = 5        # largest cladding cell, in units of resolution_nm
SPP_CELLS_PER_DECAY = 60  # cells per field decay length for the SPP-target solves
SPP_FINE_DECAYS = 6       # cladding extent (decay lengths) kept at the fine SPP cell
CROSS_GRID_DUPLICATE = 3e-2  # relative neff distance: same mode seen on two grids


# ----- cladding branches -------------------------------------------------------------------

@dataclass(frozen=True)
class Cladding:
    name: str
    state: str      # "bound" (evanescent), "radiating" (outgoing, decaying) or "leaky"
    kz: complex     # k0 sqrt(eps - neff^2) on the branch used (1/nm)


def cladding_branch(eps_c: complex, neff: complex, k0: float, name: str) -> Cladding:
    """Branch of a cladding for ``neff``: evanescent if Re(neff^2) > Re(eps_c) (proper sheet,
    Im kz > 0), else outgoing (Re kz >= 0), which decays only if Im kz > 0."""
    w = eps_c - neff * neff
    if w.real < 0:
        kz = 1j * np.sqrt(-w)          # Im >= 0
        return Cladding(name, "bound", complex(k0 * kz))
    kz = np.sqrt(w)                     # principal: Re >= 0, outgoing
    return Cladding(name, "radiating" if kz.imag > 0 else "leaky", complex(k0 * kz))


# ----- one mode ------------------------------------------------------------------------------

@dataclass
class FoundMode:
    neff: complex
    polarization: str
    kind: str
    branch: str
    gamma_E: np.ndarray
    gamma_P: np.ndarray
    fields: dict[str, np.ndarray] = field(default_factory=dict)
    label: str = ""


@dataclass
class _Problem:
    """One wavelength of one stack, in the units of the grid (nm)."""

    eps: np.ndarray           # [substrate, layers.., superstrate]
    nk: np.ndarray
    thicknesses: np.ndarray
    wavelength_nm: float
    media_names: list[str]

    @property
    def k0(self) -> float:
        return 2 * np.pi / self.wavelength_nm

    @property
    def interfaces(self) -> np.ndarray:
        return np.concatenate([[0.0], np.cumsum(self.thicknesses)])

    @property
    def n_dielectric_max(self) -> float:
        layers = self.eps[1:-1]
        diel = self.nk[1:-1][layers.real > 0]
        if diel.size:
            return float(np.max(diel.real))
        return float(max(self.nk[0].real, self.nk[-1].real))

    def spp_estimates(self) -> list[complex]:
        """Planar SPP index sqrt(e1 e2 / (e1 + e2)) of every metal/dielectric neighbour pair."""
        out = []
        for e1, e2 in zip(self.eps[:-1], self.eps[1:], strict=True):
            if (e1.real < 0) == (e2.real < 0) or (e1 + e2).real >= 0:
                continue
            n = np.sqrt(e1 * e2 / (e1 + e2))
            out.append(complex(n if n.imag >= 0 else -n))
        return out

    def search_window(self) -> tuple[float, float]:
        """Largest Re and Im of neff reported (the TMM backend's search rectangle): Re up to
        1.25 max(|N|, Re n_spp) + 0.5, Im up to max(1, 1.5 max Im n_spp + 0.25). Beyond it the
        FD solver only produces grid artefacts of the metal (very lossy, grid dependent)."""
        est = self.spp_estimates()
        top = max([float(np.max(np.abs(self.nk)))] + [abs(x.real) for x in est])
        im_hi = max(1.0, 1.5 * max([abs(x.imag) for x in est], default=0.0) + 0.25)
        return 1.25 * top + 0.5, im_hi

    def spp_targets(self) -> list[float]:
        """Planar SPP indices of metal/dielectric neighbours beyond the primary target."""
        out: list[float] = []
        base = self.n_dielectric_max
        for n in self.spp_estimates():
            if n.real > base + SPP_EXTRA_MARGIN and all(abs(n.real - t) > 0.2 for t in out):
                out.append(float(n.real))
        return out


def _pads(prob: _Problem, required: dict[str, float], opts: Tidy3DOptions
          ) -> tuple[float, float, float, float]:
    """Cladding windows (nm) and their largest cells, below and above."""
    lam = prob.wavelength_nm
    out = []
    for pos, name in ((0, "substrate"), (-1, "superstrate")):
        n_c = prob.nk[pos]
        eps_c = prob.eps[pos]
        if eps_c.real < 0:                       # metal cladding: a few skin depths
            pad = 12.0 / (prob.k0 * np.sqrt(-eps_c.real))
            h_max = max(1.0, pad / 20)
        elif n_c.real >= prob.n_dielectric_max:  # photonic modes radiate into it (Si)
            pad = max(150.0, lam / n_c.real)
            h_max = min(lam / (14 * n_c.real), CLADDING_CELLS * opts.mode_resolution())
        else:                                    # photonic modes are evanescent in it
            pad = 10 * lam                       # tails of modes down to neff ~ 1.01 n_c
            h_max = min(lam / (12 * n_c.real), 40.0, CLADDING_CELLS * opts.mode_resolution())
        pad = min(max(pad, required.get(name, 0.0)), opts.max_padding_nm)
        out += [pad, h_max]
    return out[0], out[2], out[1], out[3]


def _build(prob: _Problem, grid: ZGrid, opts: Tidy3DOptions, target: float, num_modes: int):
    td = tidy3d()
    mode_mod = tidy3d_module("tidy3d.plugins.mode")
    lam, f0 = prob.wavelength_nm, float(freq_hz(prob.wavelength_nm))
    z = grid.z_nm * 1e-3
    zmin, zmax = float(z[0]), float(z[-1])
    big = 10 * (zmax - zmin) + 10
    media = [medium_from_eps(e, lam, name) for e, name in zip(prob.eps, prob.media_names,
                                                                strict=True)]
    inter = prob.interfaces * 1e-3
    bounds = [(-big, inter[0])] + list(zip(inter[:-1], inter[1:], strict=True))
    structures = [
        td.Structure(geometry=td.Box.from_bounds((-td.inf, -td.inf, lo), (td.inf, td.inf, hi)),
                     medium=media[j], name=f"medium{j}")
        for j, (lo, hi) in enumerate(bounds)
    ]
    if opts.interface_averaging:
        eps_if = interface_eps(grid, prob.eps)
        for k, (zk, idx) in enumerate(zip(grid.interfaces_nm, grid.interface_index,
                                           strict=True)):
            h = min(grid.z_nm[idx] - grid.z_nm[idx - 1], grid.z_nm[idx + 1] - grid.z_nm[idx])
            lo, hi = (zk - 0.25 * h) * 1e-3, (zk + 0.25 * h) * 1e-3
            structures.append(td.Structure(
                geometry=td.Box.from_bounds((-td.inf, -td.inf, lo), (td.inf, td.inf, hi)),
                medium=medium_from_eps(eps_if[k], lam, f"interface{k}"), name=f"interface{k}"))
    zc, lz = 0.5 * (zmin + zmax), zmax - zmin
    grid_spec = td.GridSpec(grid_x=td.UniformGrid(dl=0.01), grid_y=td.UniformGrid(dl=0.01),
                            grid_z=td.CustomGridBoundaries(coords=list(z)))
    sim = td.Simulation(
        size=(0, 0, lz), center=(0, 0, zc), grid_spec=grid_spec, structures=structures,
        medium=media[-1], run_time=1e-12,
        boundary_spec=td.BoundarySpec(x=td.Boundary.periodic(), y=td.Boundary.periodic(),
                                      z=td.Boundary.pec()),
    )
    spec = td.ModeSpec(
        num_modes=num_modes, target_neff=float(target), num_pml=(0, grid.n_pml),
        precision="double",
        # TE first (Ey-dominated: TE_fraction is the share of the first plane axis, y), then
        # TM; each group by decreasing n_eff. (sort_spec replaces the deprecated filter_pol.)
        sort_spec=td.ModeSortSpec(filter_key="TE_fraction", filter_reference=0.5,
                                  filter_order="over", sort_key="n_eff",
                                  sort_order="descending", track_freq=None),
    )
    return mode_mod.ModeSolver(simulation=sim, plane=td.Box(center=(0, 0, zc),
                                                           size=(0, td.inf, lz)),
                               mode_spec=spec, freqs=[f0], colocate=False)


def _component(data, name: str, i: int, at_nm: np.ndarray) -> np.ndarray:
    """Field component ``name`` of mode ``i`` at the Yee positions ``at_nm`` (tidy3d's arrays
    carry one ghost sample beyond the grid at one end)."""
    arr = getattr(data, name)
    values = np.asarray(arr.isel(f=0, mode_index=i).values).reshape(-1)
    coords = np.asarray(arr.coords["z"].values, dtype=float) * 1e3
    idx = np.clip(np.searchsorted(coords, at_nm - 1e-6), 0, coords.size - 1)
    if not np.allclose(coords[idx], at_nm, atol=1e-6, rtol=0):
        raise SolverError(f"tidy3d returned '{name}' on an unexpected grid")
    return values[idx]


def _analyse(prob: _Problem, grid: ZGrid, data, i: int, z_out: np.ndarray, efolds: float
             ) -> tuple[FoundMode | None, str, dict[str, float]]:
    """Classify candidate ``i``; return (mode or None, reason, required cladding windows)."""
    neff = complex(np.asarray(data.n_complex.isel(f=0, mode_index=i).values))
    te = float(np.asarray(data.TE_fraction.isel(f=0, mode_index=i).values)) >= 0.5
    pol = "TE" if te else "TM"
    if not np.isfinite(neff) or neff.real <= 0:
        return None, "nonphysical", {}
    re_hi, im_hi = prob.search_window()
    if neff.real > re_hi or abs(neff.imag) > im_hi:
        return None, "outside search window", {}
    k0 = prob.k0
    clads = [cladding_branch(prob.eps[0], neff, k0, "substrate"),
             cladding_branch(prob.eps[-1], neff, k0, "superstrate")]
    if any(c.state == "leaky" for c in clads):
        return None, "leaky", {}

    z = grid.z_nm
    inter = prob.interfaces
    npml = grid.n_pml
    lo_edge, hi_edge = z[npml], z[-1 - npml]          # physical window (PML outside)
    required = {c.name: 0.0 for c in clads}
    for c, pad in zip(clads, (inter[0] - lo_edge, hi_edge - inter[-1]), strict=True):
        if c.state == "bound":
            need = efolds / max(c.kz.imag, 1e-30)
            required[c.name] = need
            if pad < need * 0.999:
                return None, "window", {c.name: need}

    zn, zc = z, grid.centers_nm
    ex, ey, hz = (_component(data, c, i, zn) for c in ("Ex", "Ey", "Hz"))
    ez, hy = (_component(data, c, i, zc) for c in ("Ez", "Hy"))
    h = np.diff(z)
    cell_med = medium_index_at(zc, inter)
    hy = hy * ETA0   # vacuum impedance 1 (tidy3d: E in V/um, H in A/um)
    hz = hz * ETA0
    tan2 = np.abs(ex) ** 2 + np.abs(ey) ** 2
    e_cell = 0.5 * h * (tan2[:-1] + tan2[1:]) + h * np.abs(ez) ** 2
    sn = (ey * np.conj(hz)).real
    s_cell = 0.5 * h * (sn[:-1] + sn[1:]) - h * (ez * np.conj(hy)).real
    n_media = prob.eps.size
    e_num = np.bincount(cell_med, weights=e_cell, minlength=n_media)
    # localisation: share of |E|^2 in the layers and in evanescent cladding windows, counting
    # the PML cells (a PML or cladding-box mode lives there)
    localized = float(np.sum(e_num[1:-1]))
    for c, pos in ((clads[0], 0), (clads[1], n_media - 1)):
        if c.state == "bound":
            localized += e_num[pos]
    if not localized >= LOCALIZED_MIN * float(np.sum(e_cell)):
        return None, "not localized", required

    # confinement: layers by quadrature on the Yee samples, claddings analytically from the
    # fields on the interface (exp(i kz |z|), Im kz > 0): int |E|^2 = |E(0)|^2 / (2 Im kz)
    layer = (cell_med > 0) & (cell_med < n_media - 1)
    e_med = np.bincount(cell_med[layer], weights=e_cell[layer], minlength=n_media)
    s_med = np.bincount(cell_med[layer], weights=s_cell[layer], minlength=n_media)
    ex_c = 0.5 * (ex[:-1] + ex[1:])
    slope = 1j * prob.k0 * prob.eps[cell_med] * ex_c       # dHy/dz inside each cell
    for c, node, cell, pos in ((clads[0], grid.interface_index[0],
                                grid.interface_index[0] - 1, 0),
                               (clads[1], grid.interface_index[-1],
                                grid.interface_index[-1], n_media - 1)):
        hy0 = hy[cell] + (z[node] - zc[cell]) * slope[cell]
        ez0 = -neff * hy0 / prob.eps[pos]
        e0 = np.abs(ex[node]) ** 2 + np.abs(ey[node]) ** 2 + np.abs(ez0) ** 2
        s0 = (ey[node] * np.conj(hz[node])).real - (ez0 * np.conj(hy0)).real
        e_med[pos] = e0 / (2 * c.kz.imag)
        s_med[pos] = s0 / (2 * c.kz.imag)
    e_total = float(np.sum(e_med))
    s_total = float(np.sum(s_med))
    gamma_e = e_med / e_total
    gamma_p = prob.nk.real * e_med / s_total if s_total != 0 else np.full(n_media, np.nan)

    kind = "plasmonic" if neff.real > prob.n_dielectric_max else "photonic"
    # as the TMM backend: a decaying outgoing cladding (in practice the substrate) makes the
    # mode "substrate-radiating" (leaky ones were dropped above)
    branch = "bound" if all(c.state == "bound" for c in clads) else "substrate-radiating"
    fields = _profiles(prob, grid, clads, neff, (zn, ex, ey), (zc, hy), z_out, pol)
    return FoundMode(neff, pol, kind, branch, gamma_e, gamma_p, fields), "ok", required


def _profiles(prob: _Problem, grid: ZGrid, clads: Sequence[Cladding], neff: complex, nodes,
              centres, z_out: np.ndarray, pol: str) -> dict[str, np.ndarray]:
    """Contract field profiles on ``z_out``, scaled to max |E| = 1 with the dominant E component
    real and positive there (as the TMM backend); points on an interface belong to the upper
    medium; beyond the solver window the cladding exponentials continue the fields.

    Tangential E (Ex, Ey) is sampled on interfaces and interpolated linearly. Hy (cell centres)
    has a kink at every interface, so inside each cell it is continued from the centre with its
    own slope dHy/dz = i k0 eps Ex, and Ez = -neff Hy / eps (exact per medium)."""
    zn, ex, ey = nodes
    zc, hy = centres
    npml = grid.n_pml
    inter = prob.interfaces
    lo, hi = zn[npml], zn[-1 - npml]
    inside = (z_out >= lo) & (z_out <= hi)
    med_out = medium_index_at(z_out, inter)
    eps_out = prob.eps[med_out]

    def continue_out(values: np.ndarray, at_edge) -> np.ndarray:
        out = values.copy()
        for c, edge, sign in ((clads[0], lo, -1.0), (clads[1], hi, 1.0)):
            beyond = sign * (z_out - edge) > 0
            if np.any(beyond):
                out[beyond] = at_edge(edge) * np.exp(1j * c.kz * np.abs(z_out[beyond] - edge))
        return out

    def lin(zs: np.ndarray, v: np.ndarray):
        return lambda zz: np.interp(zz, zs, v.real) + 1j * np.interp(zz, zs, v.imag)

    if pol == "TE":
        ey_out = continue_out(lin(zn, ey)(z_out), lin(zn, ey))
        comps = {"Ey": ey_out}
        e_names = ("Ey",)
    else:  # hy is already in vacuum-impedance-1 units
        ex_c = 0.5 * (ex[:-1] + ex[1:])
        eps_c = prob.eps[medium_index_at(zc, inter)]
        slope = 1j * prob.k0 * eps_c * ex_c

        def hy_at(zz):
            zz = np.atleast_1d(np.asarray(zz, dtype=float))
            cell = np.clip(np.searchsorted(zn, zz, side="right") - 1, 0, zc.size - 1)
            return hy[cell] + (zz - zc[cell]) * slope[cell]

        hy_out = np.where(inside, hy_at(z_out), 0)
        hy_out = continue_out(hy_out, lambda e: hy_at(e)[0])
        ex_out = continue_out(lin(zn, ex)(z_out), lin(zn, ex))
        comps = {"Hy": hy_out, "Ex": ex_out, "Ez": -neff * hy_out / eps_out}
        e_names = ("Ex", "Ez")
    comps = normalize_to_peak_e(comps, e_names)
    return {k: comps[k] for k in FIELDS[pol]}


@dataclass
class WavelengthResult:
    modes: list[FoundMode]
    solves: int
    seconds: float
    cells: int
    dropped: dict[str, int]


def _spp_grid(prob: _Problem, target: float, base: float) -> dict:
    """Grid settings for an SPP target: ``SPP_CELLS_PER_DECAY`` cells per field decay length
    in the layers and over ``SPP_FINE_DECAYS`` decay lengths of each cladding, since a
    single-interface SPP (Ag/Si: ~10 nm) is far tighter than the photonic modes the default
    resolution is chosen for."""
    kappa = prob.k0 * np.sqrt(target**2 - prob.eps + 0j).real
    # refining resolution_nm below the default refines these grids in proportion
    q = SPP_CELLS_PER_DECAY * max(1.0, DEFAULT_MODE_RESOLUTION_NM / base)
    res = np.full(prob.thicknesses.size, base)
    for j in range(prob.thicknesses.size):
        res[j] = min(base, 1.0 / (q * float(np.max(kappa[j:j + 3]))))

    def fine(pos: int) -> tuple[float, float]:
        delta = 1.0 / kappa[pos]
        return delta / q, SPP_FINE_DECAYS * delta

    return {"resolution_nm": res, "fine_below": fine(0), "fine_above": fine(-1)}


def _same_mode(a: FoundMode, b: FoundMode, rel: float) -> bool:
    return a.polarization == b.polarization and abs(a.neff - b.neff) < rel * abs(b.neff)


def solve_wavelength(prob: _Problem, opts: Tidy3DOptions, z_out: np.ndarray,
                     max_modes: int) -> WavelengthResult:
    """All kept modes of one wavelength (both polarizations), sorted by decreasing Re neff."""
    t0 = time.perf_counter()
    base = opts.mode_resolution()
    n_primary = opts.search_modes or min(2 * max_modes + 12, 60)
    # SPP targets first: their refined grids are the reference for those modes, and the
    # primary search then skips its own (coarser) copies of them
    targets = [(t, 4, _spp_grid(prob, t, base)) for t in prob.spp_targets()]
    targets += [(prob.n_dielectric_max, n_primary, {"resolution_nm": base})]
    required: dict[str, float] = {}
    solves, cells = 0, 0
    for _round in range(3):
        pad_lo, pad_hi, h_lo, h_hi = _pads(prob, required, opts)
        kept: list[FoundMode] = []
        origin: list[int] = []  # index of the target (grid) each kept mode comes from
        dropped: dict[str, int] = {}
        widen: dict[str, float] = {}
        for k, (target, num, settings) in enumerate(targets):
            grid = build_zgrid(prob.thicknesses, pad_below_nm=pad_lo, pad_above_nm=pad_hi,
                               h_max_below_nm=h_lo, h_max_above_nm=h_hi, n_pml=opts.pml_cells,
                               **settings)
            cells = max(cells, grid.cells)
            solver = _build(prob, grid, opts, target, num)
            with blas_threads(opts.blas_threads):
                try:
                    data = solver.solve()
                except Exception as exc:  # noqa: BLE001  report tidy3d's reason
                    raise SolverError(f"tidy3d mode solver failed at {prob.wavelength_nm:g} nm: "
                                      f"{type(exc).__name__}: {exc}") from exc
            solves += 1
            # within one grid identical modes coincide to solver precision; the primary search
            # also skips modes close to one found on an SPP target's refined grid
            for i in range(int(data.n_complex.sizes["mode_index"])):
                mode, reason, need = _analyse(prob, grid, data, i, z_out, opts.tail_efolds)
                if mode is None:
                    if reason == "window":
                        for name, v in need.items():
                            if v <= opts.max_padding_nm:
                                widen[name] = max(widen.get(name, 0.0), v * 1.05)
                            else:
                                dropped["beyond max_padding_nm"] = \
                                    dropped.get("beyond max_padding_nm", 0) + 1
                    else:
                        dropped[reason] = dropped.get(reason, 0) + 1
                    continue
                if not any(_same_mode(m, mode, 1e-6 if g == k else CROSS_GRID_DUPLICATE)
                           for m, g in zip(kept, origin, strict=True)):
                    kept.append(mode)
                    origin.append(k)
        grow = {k: v for k, v in widen.items() if v > required.get(k, 0.0) * 1.0001}
        if not grow:
            break
        required.update(grow)
    kept.sort(key=lambda m: -m.neff.real)
    return WavelengthResult(kept, solves, time.perf_counter() - t0, cells, dropped)


def _label(modes: list[FoundMode], pol: str) -> list[FoundMode]:
    """The modes of one polarization, labelled by the rule every backend shares."""
    out = [m for m in modes if m.polarization == pol]
    labels = mode_labels([m.neff for m in out], [m.polarization for m in out],
                         [m.kind for m in out], [m.branch for m in out])
    for m, label in zip(out, labels, strict=True):
        m.label = label
    return out


def problem(stack: Stack, nk: np.ndarray, wavelength_nm: float) -> _Problem:
    for name, value in zip(stack.media_names, nk, strict=True):
        check_passive(name, value)
    return _Problem(eps=nk**2, nk=nk, thicknesses=stack.thicknesses_nm,
                    wavelength_nm=float(wavelength_nm), media_names=list(stack.media_names))


def solve_modes(stack: Stack, analysis: ModesAnalysis, opts: Tidy3DOptions) -> xr.Dataset:
    """The ``modes`` contract dataset from Tidy3D's local mode solver."""
    lams = list(analysis.wavelength_nm)
    zero_k = [stack.gain_layer] if stack.gain_layer and analysis.gain_layer_k == "bleached" \
        else []
    nk_all = stack.indices(lams, zero_k=zero_k)
    z_out = field_grid(stack.interfaces_nm, analysis.field_padding_nm, analysis.field_points)
    records: dict[tuple[float, str], list[ModeRecord]] = {}
    stats = []
    for lam, nk in zip(lams, nk_all, strict=True):
        res = solve_wavelength(problem(stack, nk, lam), opts, z_out, analysis.max_modes)
        stats.append(res)
        for pol in analysis.polarizations:
            records[(lam, pol)] = [
                ModeRecord(neff=m.neff, label=m.label, kind=m.kind, branch=m.branch,
                           gamma_E=m.gamma_E, gamma_P=m.gamma_P, fields=m.fields)
                for m in _label(res.modes, pol)
            ]
    ds = modes_dataset(records, lams, analysis.polarizations, stack.media_names, z_out,
                       stack.gain_layer, analysis.material_gain_cm, analysis.max_modes)
    dropped: dict[str, int] = {}
    for s in stats:
        for k, v in s.dropped.items():
            dropped[k] = dropped.get(k, 0) + v
    ds.attrs.update({
        "tidy3d_method": "local FD mode solver, interface-aligned CustomGridBoundaries grid"
                         + (", interface eps averaging" if opts.interface_averaging else ""),
        "tidy3d_resolution_nm": opts.mode_resolution(),
        "tidy3d_grid_cells": int(max(s.cells for s in stats)),
        "tidy3d_mode_solves": int(sum(s.solves for s in stats)),
        "tidy3d_solve_seconds": float(sum(s.seconds for s in stats)),
        "tidy3d_candidates_dropped": ", ".join(f"{k}: {v}" for k, v in sorted(dropped.items()))
                                     or "none",
    })
    return ds
