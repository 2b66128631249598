"""Options of the tidy3d backend, validated with one clear error naming each bad key.

``options`` is the study's ``backend_options`` table (or ``solve(..., options={...})``).
``work_dir``, ``dry_run`` and ``timeout_s`` steer where and how jobs run and never change an
answer (the orchestrator leaves them out of cache keys); the other keys do.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from qdcavity.validation import validated

# Default cell size inside the layers for the local mode solver, from the convergence study in
# docs/tidy3d.md (second order): at 2 nm the worst errors against TMM over every mode of the four
# paper stacks at 630 nm are |dneff| 3e-4 (photonic) / 4.8e-4 (SPPs), |dalpha| <= 2.3 cm^-1,
# |dgamma| <= 7.6e-4, at ~1 s per wavelength; 1 nm is 4x more accurate at about the same time.
DEFAULT_MODE_RESOLUTION_NM = 2.0
# FDTD cell inside the layers (Tidy3D cloud solver, no local check possible: see docs).
DEFAULT_FDTD_RESOLUTION_NM = 2.0


class Tidy3DOptions(BaseModel):
    """Every option of the backend. One table serves all analyses (a study's
    ``backend_options``); each analysis reads the keys it needs, unknown keys are errors."""

    model_config = ConfigDict(frozen=True, extra="forbid")
    resolution_nm: float | None = Field(
        None, gt=0, le=50, allow_inf_nan=False,
        description="largest cell inside the layers (nm); default per analysis")
    blas_threads: int = Field(1, ge=1, le=256)
    # ---- local mode solver (modes)
    interface_averaging: bool = Field(
        True, description="average eps_tangential on interface nodes (second-order convergence)")
    pml_cells: int = Field(12, ge=4, le=64)
    search_modes: int | None = Field(None, ge=2, le=200,
                                     description="eigenvalues requested per solve")
    max_padding_nm: float = Field(15000.0, gt=0, allow_inf_nan=False,
                                  description="cap of the cladding window for slow tails")
    tail_efolds: float = Field(8.0, ge=3, le=30, allow_inf_nan=False,
                               description="bound-cladding window in field decay lengths")
    # ---- FDTD on Tidy3D's cloud (reflectance, dipole_emission, outcoupling)
    work_dir: str | None = Field(None, description="directory for simulations, task ids, data")
    dry_run: bool = False
    timeout_s: float | None = Field(None, gt=0, description="give up polling after this long")
    poll_interval_s: float = Field(15.0, ge=0, le=3600)
    max_cost_fc: float | None = Field(
        None, gt=0, description="refuse to start simulations whose estimated cost exceeds this")
    estimate_cost: bool = Field(True, description="ask the web API for a cost estimate")
    folder_name: str = Field("qdcavity", min_length=1)
    resubmit_failed: bool = False
    run_time_fs: float | None = Field(None, gt=0)
    shutoff: float = Field(1e-6, gt=0, lt=1)
    fit_max_poles: int = Field(5, ge=1, le=20)
    fit_tolerance_rms: float = Field(1e-3, gt=0)
    pad_nm: float | None = Field(None, gt=0, description="cladding thickness in the FDTD domain")
    lateral_size_um: float = Field(8.0, gt=0.5, le=200, description="dipole: lateral domain")
    lateral_cell_nm: float = Field(20.0, gt=0, le=200, description="dipole: lateral cell")
    symmetry: bool = Field(True, description="dipole: use mirror symmetry (4x cheaper)")
    # ---- outcoupling (2D cell with scatterers; docs/tidy3d.md)
    realizations: int = Field(4, ge=1, le=50, description="outcoupling: seeded placements")
    seed: int = Field(1, ge=0, description="outcoupling: placement seed")
    window_um: float = Field(8.0, gt=0, le=500, allow_inf_nan=False,
                             description="outcoupling: length of the scatterer window")
    gap_um: float = Field(0.8, gt=0, le=50, allow_inf_nan=False,
                          description="outcoupling: source to window")
    tail_um: float = Field(0.6, gt=0, le=50, allow_inf_nan=False,
                           description="outcoupling: window to the cell end")
    source_margin_um: float = Field(0.3, gt=0, le=50, allow_inf_nan=False,
                                    description="outcoupling: cell start to the source")
    monitor_gap_um: float = Field(0.2, gt=0, le=50, allow_inf_nan=False,
                                  description="outcoupling: window ends to the mode monitors")
    flux_height_um: float = Field(0.2, gt=0, le=50, allow_inf_nan=False,
                                  description="outcoupling: flux line above the stack top")
    scatterer_cell_nm: float | None = Field(
        None, gt=0, le=50, allow_inf_nan=False,
        description="outcoupling: cell along x (default min(10, radius / 3))")
    x_boundary: Literal["absorber", "pml", "stable_pml"] = Field(
        "absorber", description="outcoupling: boundary at both ends of the guide")
    x_boundary_um: float = Field(0.8, gt=0, le=20, allow_inf_nan=False,
                                 description="outcoupling: absorber / stable PML thickness")
    verbose: bool = False

    def mode_resolution(self) -> float:
        return self.resolution_nm or DEFAULT_MODE_RESOLUTION_NM

    def fdtd_resolution(self) -> float:
        return self.resolution_nm or DEFAULT_FDTD_RESOLUTION_NM


def parse_options(options: Mapping[str, Any]) -> Tidy3DOptions:
    return validated(lambda: Tidy3DOptions.model_validate(dict(options)),
                     "tidy3d backend options")


def work_dir_path(opts: Tidy3DOptions) -> Path | None:
    return Path(opts.work_dir).expanduser() if opts.work_dir else None
