"""Solver-agnostic analyses: the questions asked of a stack, with validated parameters.

Each analysis is a frozen pydantic model with a ``kind``; its result contract (the dataset every
backend returns) lives in :mod:`qdcavity.contracts`. Build one with :func:`make_analysis`.
"""

from __future__ import annotations

import math
from functools import cached_property
from typing import Annotated, Any, Literal

import numpy as np
from pydantic import ConfigDict, Field, field_validator, model_validator

from .errors import ConfigError
from .identity import CachedIdentity, canonical_dumps
from .validation import validated

PositiveFloat = Annotated[float, Field(gt=0, allow_inf_nan=False)]


def _expand_range(value: dict) -> np.ndarray:
    """``{start, stop, step}`` or ``{start, stop, num}`` -> the inclusive grid."""
    unknown = set(value) - {"start", "stop", "step", "num"}
    if unknown or not {"start", "stop"} <= set(value) or ("step" in value) == ("num" in value):
        raise ValueError("a range needs start, stop and exactly one of step or num")
    start, stop = float(value["start"]), float(value["stop"])
    if not stop >= start:
        raise ValueError(f"range stop {stop} is below start {start}")
    if "num" in value:
        num = int(value["num"])
    else:
        step = float(value["step"])
        if not step > 0:
            raise ValueError("range step must be > 0")
        num = int(math.floor((stop - start) / step + 1e-9)) + 1
        stop = start + (num - 1) * step
    if not 1 <= num <= 1_000_000:
        raise ValueError(f"a range must have 1 to 1e6 points, got {num}")
    return np.linspace(start, stop, num)


def _numbers(value: Any) -> np.ndarray:
    """A number, a list, or a range table -> a 1D float array (not empty, finite)."""
    if isinstance(value, dict):
        value = _expand_range(value)
    if isinstance(value, str | bytes):
        raise ValueError(f"expected numbers, got {value!r}")
    try:
        values = np.atleast_1d(np.asarray(value, dtype=float))
    except (TypeError, ValueError):
        raise ValueError(f"expected a number or a list of numbers, got {value!r}") from None
    if values.ndim != 1 or values.size == 0 or not np.all(np.isfinite(values)):
        raise ValueError(f"expected a non-empty list of finite numbers, got {value!r}")
    return values


def _wavelengths(value: Any) -> tuple[float, ...]:
    """Wavelengths in nm: a number, a list, or ``{start, stop, step | num}`` (inclusive)."""
    values = _numbers(value)
    if np.any(values <= 0):
        raise ValueError("wavelengths must be finite and > 0 nm")
    return tuple(float(v) for v in values)


def _nonnegative_numbers(value: Any) -> tuple[float, ...]:
    values = _numbers(value)
    if np.any(values < 0):
        raise ValueError("values must be finite and >= 0")
    return tuple(float(v) for v in values)


class Analysis(CachedIdentity):
    """Common base: frozen, no unknown keys."""

    model_config = ConfigDict(frozen=True, extra="forbid")
    kind: str

    def canonical(self) -> dict[str, Any]:
        return self.model_dump(mode="json")

    @cached_property
    def canonical_json(self) -> str:
        """``canonical_dumps(self.canonical())``, computed once per analysis object."""
        return canonical_dumps(self.canonical())


class ModesAnalysis(Analysis):
    """Guided modes at each wavelength: neff, loss, confinement, gain, field profiles."""

    kind: Literal["modes"] = "modes"
    wavelength_nm: tuple[float, ...] = (630.0,)
    polarizations: tuple[Literal["TE", "TM"], ...] = ("TE", "TM")
    material_gain_cm: float = Field(690.0, ge=0, allow_inf_nan=False)
    gain_layer_k: Literal["bleached", "tabulated"] = "bleached"
    max_modes: int = Field(10, ge=1, le=100)
    fields: bool = Field(True, description="field profiles; false for large sweeps")
    field_points: int = Field(600, ge=10, le=100_000)
    field_padding_nm: float = Field(300.0, ge=0, allow_inf_nan=False)

    _wl = field_validator("wavelength_nm", mode="before")(lambda cls, v: _wavelengths(v))


class ReflectanceAnalysis(Analysis):
    """Plane-wave reflectance, transmittance and absorptance."""

    kind: Literal["reflectance"] = "reflectance"
    wavelength_nm: tuple[float, ...] = _wavelengths({"start": 400, "stop": 800, "step": 1})
    angle_deg: tuple[float, ...] = (0.0,)
    polarizations: tuple[Literal["s", "p"], ...] = ("s", "p")
    incidence: Literal["superstrate", "substrate"] = "superstrate"

    _wl = field_validator("wavelength_nm", mode="before")(lambda cls, v: _wavelengths(v))

    @field_validator("angle_deg", mode="before")
    @classmethod
    def _angles(cls, v: Any) -> tuple[float, ...]:
        values = np.atleast_1d(np.asarray(v, dtype=float))
        if values.size == 0 or np.any(~np.isfinite(values)) or np.any(values < 0) or np.any(
            values >= 90
        ):
            raise ValueError("angles must be in [0, 90) degrees")
        return tuple(float(a) for a in values)


class DipoleEmissionAnalysis(Analysis):
    """Power dissipation of oscillating dipoles in the emitter layer versus u = kx/(k0 n_e)."""

    kind: Literal["dipole_emission"] = "dipole_emission"
    wavelength_nm: tuple[float, ...] = (630.0,)
    position: float = Field(0.5, gt=0, lt=1, allow_inf_nan=False,
                            description="dipole height as a fraction of the emitter thickness")
    u_max: PositiveFloat = 3.0
    u_points: int = Field(1500, ge=10, le=1_000_000)
    rtol: float = Field(1e-6, gt=0, lt=1e-1)

    _wl = field_validator("wavelength_nm", mode="before")(lambda cls, v: _wavelengths(v))


class OutcouplingAnalysis(Analysis):
    """Scattering-driven vertical outcoupling of lateral (guided) ASE.

    A guided mode with net gain g_net = gamma_P G_mat - alpha_abs - alpha_sca is scattered by
    the particulate QD film; each scattering event radiates like a dipole along the mode's E
    field in the gain layer. ``alpha_sca_cm`` is given directly, or computed from a particle
    model (radius, volume fraction, particle and host materials; Mie or Rayleigh).
    ``geometry = "2d"`` makes the particles infinite cylinders (area fraction
    ``volume_fraction``) and the dipoles line dipoles: the y-invariant world of a 2D full-wave
    cell, for comparison with Meep.
    ``material_gain_cm`` is a number or a spectrum ``{wavelength_nm = [...], gain_cm = [...]}``
    (linear interpolation); ``gain_scan_cm`` are the G_mat values of the VSL curves.
    """

    kind: Literal["outcoupling"] = "outcoupling"
    wavelength_nm: tuple[float, ...] = (630.0,)
    mode: str = Field("TE0", pattern=r"^(TE|TM)\d+$")
    material_gain_cm: float | dict[str, tuple[float, ...]] = 690.0
    gain_scan_cm: tuple[float, ...] = tuple(float(g) for g in range(0, 1401, 70))
    gain_layer_k: Literal["bleached", "tabulated"] = "bleached"
    alpha_sca_cm: float | None = Field(None, ge=0, allow_inf_nan=False)
    particle_radius_nm: float | None = Field(None, gt=0, allow_inf_nan=False)
    volume_fraction: float | None = Field(None, gt=0, le=0.74,
                                          description="<= 0.74, close packing of spheres")
    particle_material: str = "CdSe/Ninomiya-cubic"
    host_material: str = "QD"
    scattering_model: Literal["mie", "rayleigh"] = "mie"
    stripe_length_um: tuple[float, ...] = tuple(float(x) for x in range(0, 2001, 100))
    angle_points: int = Field(91, ge=3, le=10_000)
    positions: int = Field(5, ge=1, le=50, description="dipole heights averaged in the layer")
    geometry: Literal["3d", "2d"] = Field(
        "3d", description="3d: spherical particles re-radiating as point dipoles; 2d: a "
        "y-invariant world (infinite cylinders re-radiating as line dipoles), the geometry of "
        "a 2D full-wave cell (docs/outcoupling.md)")

    _wl = field_validator("wavelength_nm", mode="before")(lambda cls, v: _wavelengths(v))

    @field_validator("material_gain_cm")
    @classmethod
    def _gain(cls, v: Any) -> Any:
        if isinstance(v, dict):
            if set(v) != {"wavelength_nm", "gain_cm"} or len(v["wavelength_nm"]) != len(
                    v["gain_cm"]) or len(v["gain_cm"]) < 2:
                raise ValueError("a gain spectrum needs equal-length wavelength_nm and gain_cm "
                                 "lists (>= 2 points)")
            if not np.all(np.diff(v["wavelength_nm"]) > 0):
                raise ValueError("gain spectrum wavelengths must increase")
            values = np.asarray(v["gain_cm"], dtype=float)
        else:
            values = np.asarray([v], dtype=float)
        if not np.all(np.isfinite(values)) or np.any(values < 0):
            raise ValueError("material gain must be finite and >= 0 cm^-1")
        return v

    _scan = field_validator("gain_scan_cm", "stripe_length_um", mode="before")(
        lambda cls, v: _nonnegative_numbers(v))

    @model_validator(mode="after")
    def _scattering(self) -> OutcouplingAnalysis:
        particle = (self.particle_radius_nm, self.volume_fraction)
        if self.alpha_sca_cm is None and None in particle:
            raise ValueError("give alpha_sca_cm, or particle_radius_nm and volume_fraction")
        if self.alpha_sca_cm is not None and any(p is not None for p in particle):
            raise ValueError("give either alpha_sca_cm or the particle model, not both")
        return self

    def gain_at(self, wavelength_nm: float) -> float:
        """G_mat at a wavelength (the number, or the spectrum interpolated; no extrapolation)."""
        if not isinstance(self.material_gain_cm, dict):
            return float(self.material_gain_cm)
        lam = np.asarray(self.material_gain_cm["wavelength_nm"], dtype=float)
        if not lam[0] <= wavelength_nm <= lam[-1]:
            raise ConfigError(f"{wavelength_nm} nm is outside the gain spectrum "
                              f"({lam[0]}-{lam[-1]} nm)", field="material_gain_cm")
        return float(np.interp(wavelength_nm, lam, self.material_gain_cm["gain_cm"]))


ANALYSES: dict[str, type[Analysis]] = {
    cls.model_fields["kind"].default: cls
    for cls in (ModesAnalysis, ReflectanceAnalysis, DipoleEmissionAnalysis, OutcouplingAnalysis)
}


def make_analysis(kind: str, source: str = "analysis", **parameters: Any) -> Analysis:
    """Validate ``parameters`` for the analysis ``kind``; one ConfigError names each problem."""
    if kind not in ANALYSES:
        raise ConfigError(f"unknown analysis '{kind}'; known: {', '.join(ANALYSES)}", field=source)
    cls = ANALYSES[kind]
    return validated(lambda: cls.model_validate({**parameters, "kind": kind}), source)
