"""Interface-aligned explicit grids along the stack normal (pure numpy, no tidy3d import).

Every interface of the stack is a cell boundary (Tidy3D ``CustomGridBoundaries``). Inside each
layer the cells are uniform, at most ``resolution_nm`` and at least ``MIN_CELLS_PER_LAYER`` per
layer; in the claddings they grow geometrically (ratio ``GROWTH``) up to ``h_max``.

On Tidy3D's Yee grid the tangential E components (Ex, Ey) and Hz sit on cell boundaries and
Ez, Hx, Hy on cell centres. With interfaces on boundaries, every centre lies inside one medium
(eps_zz exact) and only the tangential samples on an interface are ambiguous: they get the
arithmetic mean of the two media weighted by the adjacent half cells (the correct average for
field components tangential to a planar interface; see :func:`interface_eps`). This restores
second-order convergence, which plain staircasing (no subpixel averaging in the local solver)
does not have for TM modes of thin Ag (docs/tidy3d.md, convergence study).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

MIN_CELLS_PER_LAYER = 4
GROWTH = 1.2


@dataclass(frozen=True)
class ZGrid:
    """Cell boundaries ``z_nm`` (ascending) and bookkeeping about the stack's interfaces."""

    z_nm: np.ndarray            # all cell boundaries, including padding and PML cells
    interfaces_nm: np.ndarray   # z of the stack's interfaces (0 ... total thickness)
    interface_index: np.ndarray  # index into z_nm of every interface
    n_pml: int                  # cells at each end reserved for PML (mode solver)

    @property
    def centers_nm(self) -> np.ndarray:
        return 0.5 * (self.z_nm[1:] + self.z_nm[:-1])

    @property
    def cells(self) -> int:
        return self.z_nm.size - 1

    @property
    def min_cell_nm(self) -> float:
        return float(np.min(np.diff(self.z_nm)))


def _cladding(pad_nm: float, h0: float, h_max: float, n_pml: int,
              fine: tuple[float, float] | None = None) -> np.ndarray:
    """Distances (> 0) of cell boundaries from an interface: optionally uniform cells
    ``fine = (h, extent)`` next to the interface, then graded cells, then PML cells."""
    out, z, h = [], 0.0, h0
    if fine is not None:
        h = min(h0, fine[0])
        while z < min(fine[1], pad_nm) - 1e-9:
            z += h
            out.append(z)
    while z < pad_nm - 1e-9:
        h = min(h * GROWTH, h_max)
        z += h
        out.append(z)
    for _ in range(n_pml):
        z += h
        out.append(z)
    return np.asarray(out)


def build_zgrid(thicknesses_nm: np.ndarray, resolution_nm: float | np.ndarray,
                pad_below_nm: float, pad_above_nm: float, h_max_below_nm: float,
                h_max_above_nm: float, n_pml: int = 0,
                fine_below: tuple[float, float] | None = None,
                fine_above: tuple[float, float] | None = None) -> ZGrid:
    """An interface-aligned grid for layers ``thicknesses_nm`` (bottom to top);
    ``resolution_nm`` is the largest cell, one value or one per layer; ``fine_*`` = (cell,
    extent) keeps cladding cells uniform next to the stack (tightly bound SPPs)."""
    d = np.asarray(thicknesses_nm, dtype=float)
    res = np.broadcast_to(np.asarray(resolution_nm, dtype=float), d.shape)
    interfaces = np.concatenate([[0.0], np.cumsum(d)])
    core, cell_sizes = [], []
    for a, b, h in zip(interfaces[:-1], interfaces[1:], res, strict=True):
        n = max(MIN_CELLS_PER_LAYER, int(np.ceil((b - a) / h - 1e-9)))
        core.append(np.linspace(a, b, n + 1)[:-1])
        cell_sizes.append((b - a) / n)
    core.append([interfaces[-1]])
    core_z = np.concatenate(core)
    below = _cladding(pad_below_nm, cell_sizes[0], max(h_max_below_nm, cell_sizes[0]), n_pml,
                      fine_below)
    above = _cladding(pad_above_nm, cell_sizes[-1], max(h_max_above_nm, cell_sizes[-1]), n_pml,
                      fine_above)
    z = np.concatenate([-below[::-1], core_z, interfaces[-1] + above])
    index = np.searchsorted(z, interfaces - 1e-9)
    return ZGrid(z_nm=z, interfaces_nm=interfaces, interface_index=index, n_pml=n_pml)


def interface_eps(grid: ZGrid, eps_media: np.ndarray) -> np.ndarray:
    """Tangential permittivity at every interface node: half-cell weighted arithmetic mean.

    ``eps_media`` is ordered ``[substrate, layers..., superstrate]``; returns one value per
    interface (bottom to top).
    """
    z = grid.z_nm
    out = []
    for k, i in enumerate(grid.interface_index):
        h_lo, h_hi = z[i] - z[i - 1], z[i + 1] - z[i]
        out.append((h_lo * eps_media[k] + h_hi * eps_media[k + 1]) / (h_lo + h_hi))
    return np.asarray(out, dtype=complex)


def medium_index_at(z_nm: np.ndarray, interfaces_nm: np.ndarray) -> np.ndarray:
    """Index into ``[substrate, layers..., superstrate]`` of the medium containing each z.

    Points exactly on an interface are assigned to the medium above (callers that care use
    cell centres or handle interface nodes separately).
    """
    return np.searchsorted(interfaces_nm, np.asarray(z_nm, dtype=float) + 1e-9, side="right")
