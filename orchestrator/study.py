"""Study files: a stack, overrides, analyses, a backend, sweep axes, an executor, an output.

Example (``geometries/studies/paper.toml`` ships more)::

    name = "izo-sweep"
    stack = "TE-DIZO"                    # built-in name, or a path relative to this file
    backend = "tmm"                      # or meep, tidy3d, a third-party plugin

    [overrides]
    "ZnMgO.thickness_nm" = 40

    [[analyses]]
    kind = "modes"
    wavelength_nm = 630

    [sweep]
    mode = "product"                     # or "zip" (equal-length axes, one point each)
    [sweep.axes]
    "IZO_top.thickness_nm" = [100, 120, 140]
    "backend" = ["tmm"]

    [executor]
    kind = "local"                       # inprocess | local | address | slurm

    [output]
    path = "izo-sweep.nc"

Sweep axes address stack fields by dotted name (``IZO_top.thickness_nm``), analysis
parameters as ``<analysis name>.<parameter>`` (``modes.material_gain_cm``), ``stack`` (a list of
stacks) and ``backend``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from .analyses import ANALYSES, Analysis, make_analysis
from .errors import ConfigError
from .stack import read_toml
from .validation import validated


class AnalysisEntry(BaseModel):
    model_config = ConfigDict(frozen=True, extra="allow")
    kind: str
    name: str | None = None

    @field_validator("kind")
    @classmethod
    def _kind(cls, v: str) -> str:
        if v not in ANALYSES:
            raise ValueError(f"unknown analysis '{v}'; known: {', '.join(ANALYSES)}")
        return v

    @property
    def label(self) -> str:
        return self.name or self.kind

    def parameters(self) -> dict[str, Any]:
        return dict(self.model_extra or {})


class Sweep(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")
    mode: Literal["product", "zip"] = "product"
    axes: dict[str, list[Any]] = Field(default_factory=dict)

    @field_validator("axes")
    @classmethod
    def _axes(cls, axes: dict[str, list[Any]]) -> dict[str, list[Any]]:
        for name, values in axes.items():
            if not values:
                raise ValueError(f"axis '{name}' is empty")
        return axes

    @model_validator(mode="after")
    def _shape(self) -> Sweep:
        if self.mode == "product":
            for name, values in self.axes.items():
                if len({repr(v) for v in values}) != len(values):
                    raise ValueError(f"axis '{name}' repeats a value (a product needs unique "
                                     "values)")
        else:
            lengths = {name: len(v) for name, v in self.axes.items()}
            if len(set(lengths.values())) > 1:
                raise ValueError(f"zipped axes must have equal lengths, got {lengths}")
        return self


class Executor(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")
    kind: Literal["inprocess", "local", "address", "slurm"] = "local"
    workers: int | None = Field(None, ge=1)
    address: str | None = None
    retries: int = Field(2, ge=0, le=20)
    batch_size: int | None = Field(None, ge=1)
    cache_flush_s: float = Field(0.25, ge=0)
    jobs: int = Field(1, ge=1)
    slurm: dict[str, Any] = Field(default_factory=dict)

    @model_validator(mode="after")
    def _address(self) -> Executor:
        if self.kind == "address" and not self.address:
            raise ValueError("executor kind 'address' needs address = 'tcp://host:port'")
        return self


class Output(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")
    path: str | None = None
    cache_dir: str | None = None
    figures: bool = False


class Study(BaseModel):
    """A validated study; paths in it are resolved against ``base_dir``."""

    model_config = ConfigDict(frozen=True, extra="forbid")
    name: str = "study"
    description: str = ""
    stack: str
    backend: str = "tmm"
    backend_options: dict[str, Any] = Field(default_factory=dict)
    overrides: dict[str, Any] = Field(default_factory=dict)
    analyses: tuple[AnalysisEntry, ...] = Field(min_length=1)
    sweep: Sweep = Field(default_factory=Sweep)
    executor: Executor = Field(default_factory=Executor)
    output: Output = Field(default_factory=Output)
    base_dir: str = "."
    text: str = ""

    @model_validator(mode="after")
    def _names(self) -> Study:
        labels = [a.label for a in self.analyses]
        if len(set(labels)) != len(labels):
            raise ValueError(f"analyses need unique names, got {labels}; set name = '...'")
        return self

    def analysis_objects(self, parameter_overrides: dict[str, Any] | None = None
                         ) -> dict[str, Analysis]:
        """Validated analyses by name, with ``"<name>.<param>"`` overrides applied."""
        out = {}
        for i, entry in enumerate(self.analyses):
            params = entry.parameters()
            for key, value in (parameter_overrides or {}).items():
                head, _, param = key.partition(".")
                if head == entry.label:
                    params[param] = value
            out[entry.label] = make_analysis(entry.kind, source=f"analyses[{i}]", **params)
        return out

    def stack_ref(self, name: str | None = None) -> str:
        """A built-in stack name as is, a file path resolved against the study's folder."""
        ref = name or self.stack
        candidate = Path(self.base_dir) / ref
        return str(candidate) if ref.endswith(".toml") and candidate.exists() else ref

    def output_path(self) -> Path | None:
        return Path(self.base_dir) / self.output.path if self.output.path else None


def load_study(path: str | Path) -> Study:
    """Read and validate a study TOML file (one ConfigError naming every problem)."""
    path = Path(path)
    data = read_toml(path, "study")
    text = path.read_text(encoding="utf-8")
    data.setdefault("name", path.stem)
    if "analyses" not in data and "analysis" in data:
        data["analyses"] = [data.pop("analysis")]
    if "stack" not in data:
        raise ConfigError(f"{path}: missing required field 'stack'")
    study = validated(
        lambda: Study.model_validate({**data, "base_dir": str(path.parent), "text": text}),
        str(path),
    )
    study.analysis_objects()  # validate analysis parameters now, not mid-sweep
    return study
