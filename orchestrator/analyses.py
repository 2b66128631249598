"""Solver-agnostic analyses: the questions asked of a stack, with validated parameters.

Each analysis is a frozen pydantic model with a ``kind``; its result contract (the dataset every
backend returns) lives in :mod:`qdcavity.contracts`. Build one with :func:`make_analysis`.
"""

from __future__ import annotations

import math
from typing import Annotated, Any, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, field_validator

from .errors import ConfigError
from .validation import validated

PositiveFloat = Annotated[float, Field(gt=0, allow_inf_nan=False)]


def _wavelengths(value: Any) -> tuple[float, ...]:
    """A number, a list, or ``{start, stop, step}`` / ``{start, stop, num}`` (inclusive)."""
    if isinstance(value, dict):
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
        if not 1 <= num <= 1_000_000:
            raise ValueError(f"a range must have 1 to 1e6 points, got {num}")
        stop = start + (num - 1) * float(value["step"]) if "step" in value else stop
        value = np.linspace(start, stop, num)
    values = np.atleast_1d(np.asarray(value, dtype=float)) if not isinstance(value, str) else None
    if values is None or values.ndim != 1 or values.size == 0:
        raise ValueError(f"expected a wavelength or a list of wavelengths in nm, got {value!r}")
    if not np.all(np.isfinite(values)) or np.any(values <= 0):
        raise ValueError("wavelengths must be finite and > 0 nm")
    return tuple(float(v) for v in values)


class Analysis(BaseModel):
    """Common base: frozen, no unknown keys."""

    model_config = ConfigDict(frozen=True, extra="forbid")
    kind: str

    def canonical(self) -> dict[str, Any]:
        return self.model_dump(mode="json")


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
    """Scattering-driven vertical outcoupling of a guided mode (issue: outcoupling)."""

    kind: Literal["outcoupling"] = "outcoupling"
    wavelength_nm: tuple[float, ...] = (630.0,)
    mode: str = Field("TE0", pattern=r"^(TE|TM)\d+$")
    material_gain_cm: float = Field(690.0, ge=0, allow_inf_nan=False)
    alpha_sca_cm: float | None = Field(None, ge=0, allow_inf_nan=False)
    particle_radius_nm: float | None = Field(None, gt=0, allow_inf_nan=False)
    volume_fraction: float | None = Field(None, gt=0, le=0.74)
    stripe_length_um: tuple[float, ...] = (100.0, 200.0, 500.0, 1000.0)

    _wl = field_validator("wavelength_nm", mode="before")(lambda cls, v: _wavelengths(v))


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
