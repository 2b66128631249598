"""Finite-difference slab-mode solver (independent check of the transfer-matrix modes).

Pure numpy/scipy, no qdcavity imports. Conventions as in qdcavity's docs/conventions.md:
exp(-i omega t), N = n + i k (k > 0 absorbing), z = 0 at the substrate top, media
``n = [substrate, layer_1 .. layer_L, superstrate]``, thicknesses ``d_nm = [d_1 .. d_L]``,
fields ~ exp(i (beta x - omega t)), neff = beta / k0, vacuum impedance 1.

Equations (psi = Ey for TE, Hy for TM; p = 1 for TE, eps for TM; w = eps (TE) or 1 (TM),
u = 1 (TE) or 1/eps (TM)):  d/dz (1/p dpsi/dz) + k0^2 w psi = beta^2 u psi.

Discretisation: 1D finite volumes on a non-uniform grid with every interface on a node; each cell
holds one material, so the flux (1/p) dpsi/dz is taken cell by cell and the dual-cell averages of
w and u are split at interface nodes (the standard conservative scheme, second order). The
claddings are truncated by perfectly matched layers made by complex coordinate stretching,
z -> z + i Phi(z) with dPhi/dz >= 0 (outgoing waves exp(+-i kz z) decay in the PML for
exp(-i omega t)), and Dirichlet walls behind them. The grid is refined by halving every cell
(levels h, h/2, h/4) and neff and gamma_E are Richardson-extrapolated (error ~ h^2 + h^4).
The generalised eigenproblem A psi = neff^2 B psi (B diagonal) is solved with
scipy.sparse.linalg.eigs in shift-invert mode around each guess.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
import scipy.sparse as sp
from scipy.sparse.linalg import eigs

__all__ = ["FDGrid", "FDMode", "solve_modes_fd"]


@dataclass(frozen=True)
class FDGrid:
    """Grid options (base level; each refinement halves every cell).

    ``points_per_wavelength``: cells per local wavelength 2 pi / |kz| in every layer;
    ``min_cells``: minimum cells per layer; ``cladding_nm``: physical cladding thickness kept on
    each side (None: 10 field decay lengths, between lambda/2 and 5 lambda); ``pml_nm``: real
    thickness of each PML; ``pml_phi_nm``: total imaginary stretch Phi at the PML end
    (None: 2 lambda); ``levels``: grids used for Richardson extrapolation (1 = none, 2 or 3).
    """

    points_per_wavelength: float = 30.0
    min_cells: int = 6
    cladding_nm: float | None = None
    pml_nm: float | None = None
    pml_phi_nm: float | None = None
    levels: int = 3


@dataclass
class FDMode:
    """An FD mode: Richardson-extrapolated ``neff`` and ``gamma_E`` (per medium, shape (L+2,)),
    ``z`` (nm, physical nodes of the finest grid, PML excluded) and ``field`` (Ey or Hy there,
    max |field| = 1); ``neff_levels``: raw neff per grid level; ``error``: |last two estimates|."""

    neff: complex
    z: np.ndarray
    field: np.ndarray
    gamma_E: np.ndarray
    polarization: str
    neff_levels: list[complex] = field(default_factory=list)
    error: float = float("nan")


@dataclass
class _Mesh:
    zt: np.ndarray  # complex node coordinates (stretched), size N+1
    cell_medium: np.ndarray  # medium index of each cell, size N
    physical: np.ndarray  # bool per cell: outside the PMLs


def _segments(n: np.ndarray, d: np.ndarray, wl: float, nref: complex, g: FDGrid
              ) -> list[tuple[int, float, int, str]]:
    """(medium, length, base cells, kind) bottom to top; kind in {pml_bot, clad, layer, pml_top}."""
    k0 = 2 * math.pi / wl
    eps = n * n

    def cells(j: int, length: float, extra: float = 1.0) -> int:
        kz = abs(np.sqrt(eps[j] - nref**2 + 0j))
        q = max(kz, abs(n[j]), 0.5) * extra
        return max(g.min_cells, math.ceil(length * q * g.points_per_wavelength / wl))

    def clad_len(j: int) -> float:
        if g.cladding_nm is not None:
            return g.cladding_nm
        ki = abs(np.sqrt(eps[j] - nref**2 + 0j).imag)
        return float(np.clip(10.0 / (k0 * max(ki, 1e-9)), wl / 2, 5 * wl))

    pml = g.pml_nm if g.pml_nm is not None else wl / 2
    phi = g.pml_phi_nm if g.pml_phi_nm is not None else 2 * wl
    stretch = math.hypot(pml, phi) / pml
    last = len(n) - 1
    cs = clad_len(0)
    segs = [(0, pml, cells(0, pml, stretch), "pml_bot"), (0, cs, cells(0, cs), "clad")]
    segs += [(j, float(d[j - 1]), cells(j, float(d[j - 1])), "layer") for j in range(1, last)]
    cl = clad_len(last)
    segs += [(last, cl, cells(last, cl), "clad"), (last, pml, cells(last, pml, stretch), "pml_top")]
    return segs


def _mesh(segs: list[tuple[int, float, int, str]], level: int, wl: float, g: FDGrid) -> _Mesh:
    """Nodes of refinement ``level`` (every base cell split in 2**level); PML nodes are complex:
    z + i Phi with Phi = -+ phi_end u^3 (u: depth into the PML, 0..1), dPhi/dz >= 0."""
    phi = g.pml_phi_nm if g.pml_phi_nm is not None else 2 * wl
    zs: list[np.ndarray] = []
    med: list[np.ndarray] = []
    phys: list[np.ndarray] = []
    sub_clad = segs[1][1]
    z = -sub_clad
    for j, length, base, kind in segs:
        m = base * 2**level
        u = np.linspace(0.0, 1.0, m + 1)
        if kind == "pml_bot":
            pts = -sub_clad - length * u[::-1] - 1j * phi * u[::-1] ** 3
        elif kind == "pml_top":
            pts = z + length * u + 1j * phi * u**3
        else:
            pts = z + length * u
        zs.append(pts if not zs else pts[1:])
        med.append(np.full(m, j))
        phys.append(np.full(m, not kind.startswith("pml")))
        z = pts[-1].real
    return _Mesh(zt=np.concatenate(zs), cell_medium=np.concatenate(med),
                 physical=np.concatenate(phys))


def _operator(mesh: _Mesh, eps: np.ndarray, k0: float, tm: bool) -> sp.csc_matrix:
    """C = B^-1 A for interior nodes (Dirichlet walls), eigenvalues neff^2."""
    h = np.diff(mesh.zt)
    e = eps[mesh.cell_medium]
    p = e if tm else np.ones_like(e)
    w = np.ones_like(e) if tm else e
    u = 1.0 / e if tm else np.ones_like(e)
    c = 1.0 / (p * h) / k0**2  # flux coefficient of each cell
    diag = -(c[:-1] + c[1:]) + 0.5 * (h[:-1] * w[:-1] + h[1:] * w[1:])
    bdiag = 0.5 * (h[:-1] * u[:-1] + h[1:] * u[1:])
    off = c[1:-1]
    a = sp.diags([off, diag, off], [-1, 0, 1], format="csc")
    return sp.diags(1.0 / bdiag) @ a


def _gamma_e(mesh: _Mesh, psi_full: np.ndarray, neff: complex, eps: np.ndarray, k0: float,
             tm: bool, n_media: int) -> np.ndarray:
    """int |E|^2 per medium over the physical cells (trapezoid / midpoint), plus analytic tails
    beyond the physical claddings (exp decay with the cladding kz)."""
    zt = mesh.zt
    h = np.diff(zt).real
    e = eps[mesh.cell_medium]
    a2 = np.abs(psi_full) ** 2
    node_avg = 0.5 * (a2[:-1] + a2[1:])
    if tm:
        dpsi = np.diff(psi_full) / np.diff(zt)
        cell = (np.abs(dpsi) ** 2 / k0**2 + abs(neff) ** 2 * node_avg) / np.abs(e) ** 2
    else:
        cell = node_avg
    contrib = np.where(mesh.physical, cell * h, 0.0)
    out = np.bincount(mesh.cell_medium, weights=contrib, minlength=n_media)
    phys_idx = np.nonzero(mesh.physical)[0]
    for side, node in ((0, phys_idx[0]), (n_media - 1, phys_idx[-1] + 1)):
        kz = k0 * np.sqrt(eps[side] - neff**2 + 0j)
        ki = abs(kz.imag)
        fac = 1.0
        if tm:
            fac = (abs(kz) ** 2 + k0**2 * abs(neff) ** 2) / (k0**2 * abs(eps[side]) ** 2)
        if ki > 0:
            out[side] += fac * a2[node] / (2 * ki)
    return out / out.sum()


def _solve_level(mesh: _Mesh, eps: np.ndarray, k0: float, tm: bool, guess: complex
                 ) -> tuple[complex, np.ndarray]:
    C = _operator(mesh, eps, k0, tm)
    vals, vecs = eigs(C, k=1, sigma=guess**2, which="LM")
    nn = complex(vals[0])
    neff = np.sqrt(nn)  # principal root: Re(neff) >= 0
    psi = np.concatenate([[0], vecs[:, 0], [0]])
    return complex(neff), psi


def _richardson(vals: list[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """Extrapolate values at h, h/2, h/4 assuming errors c2 h^2 + c4 h^4."""
    v = [np.asarray(x) for x in vals]
    if len(v) == 1:
        return v[0], np.full_like(np.abs(v[0]), np.nan, dtype=float)
    r1 = [(4 * v[i + 1] - v[i]) / 3 for i in range(len(v) - 1)]
    if len(r1) == 1:
        return r1[0], np.abs(r1[0] - v[-1])
    r2 = (16 * r1[1] - r1[0]) / 15
    return r2, np.abs(r2 - r1[1])


def solve_modes_fd(n: np.ndarray, d_nm: np.ndarray, wavelength_nm: float, polarization: str,
                   guesses: list[complex] | None = None, n_modes: int = 1,
                   grid: FDGrid | None = None) -> list[FDMode]:
    """FD modes near each of ``guesses`` (neff), or the ``n_modes`` eigenvalues nearest
    neff = max Re n of the layers when no guess is given.

    Each mode is solved on ``grid.levels`` nested grids (the previous level's neff is the next
    shift, so the same mode is followed) and neff, gamma_E are Richardson-extrapolated.
    Without guesses the nearest eigenvalues are returned as they come: they include discretised
    radiation/PML continuum states, recognisable by a large ``error`` and by moving when
    ``pml_phi_nm`` changes. gamma_E integrates |E|^2 over the physical cells (trapezoid for
    nodal values, midpoint for Ex of TM on cells) plus the analytic tail exp(-2 Im(kz) |z|)
    beyond the physical claddings.
    """
    n = np.asarray(n, dtype=complex).ravel()
    d = np.asarray(d_nm, dtype=float).ravel()
    if n.size != d.size + 2:
        raise ValueError("n must have L+2 entries for L thicknesses")
    pol = polarization.upper()
    if pol not in ("TE", "TM"):
        raise ValueError("polarization must be 'TE' or 'TM'")
    tm = pol == "TM"
    g = grid or FDGrid()
    wl = float(wavelength_nm)
    k0 = 2 * math.pi / wl
    eps = n * n
    if guesses is None:
        guesses = _initial_guesses(n, d, wl, tm, n_modes, g, k0)
    modes = []
    for guess in guesses:
        segs = _segments(n, d, wl, complex(guess), g)
        neffs, gams = [], []
        cur = complex(guess)
        psi, mesh = None, None
        for level in range(g.levels):
            mesh = _mesh(segs, level, wl, g)
            cur, psi = _solve_level(mesh, eps, k0, tm, cur)
            neffs.append(cur)
            gams.append(_gamma_e(mesh, psi, cur, eps, k0, tm, n.size))
        neff_x, err = _richardson([np.array(x) for x in neffs])
        gam_x, _ = _richardson(gams)
        assert mesh is not None and psi is not None
        nodes = np.concatenate([[False], mesh.physical]) | np.concatenate([mesh.physical, [False]])
        z = mesh.zt[nodes].real
        f = psi[nodes]
        f = f / f[np.argmax(np.abs(f))]
        modes.append(FDMode(neff=complex(neff_x), z=z, field=f, gamma_E=np.asarray(gam_x),
                            polarization=pol, neff_levels=neffs, error=float(err)))
    return modes


def _initial_guesses(n: np.ndarray, d: np.ndarray, wl: float, tm: bool, n_modes: int,
                     g: FDGrid, k0: float) -> list[complex]:
    layers = n[1:-1]
    diel = layers[(layers * layers).real > 0]
    nmax = float(diel.real.max()) if diel.size else float(np.abs(n).real.max())
    segs = _segments(n, d, wl, nmax, g)
    mesh = _mesh(segs, 0, wl, g)
    C = _operator(mesh, n * n, k0, tm)
    vals = eigs(C, k=n_modes, sigma=nmax**2, which="LM", return_eigenvectors=False)
    out = [complex(np.sqrt(complex(v))) for v in vals]
    return sorted(out, key=lambda x: -x.real)
