"""Solver-agnostic planar stacks: substrate, named layers bottom to top, superstrate.

Geometry convention: z is the stack normal, z = 0 at the substrate's top surface, layers are
listed bottom (on the substrate) to top (under the superstrate). A stack is immutable and
validated on creation; :meth:`Stack.canonical` and :attr:`Stack.content_hash` identify it, and
:meth:`Stack.with_overrides` makes variants from dotted names such as ``IZO_top.thickness_nm``.
"""

from __future__ import annotations

import hashlib
import json
import math
import tomllib
from collections.abc import Iterable, Mapping
from functools import cached_property
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from .errors import ConfigError, QdcavityError, WavelengthRangeError
from .identity import CachedIdentity, canonical_dumps
from .materials import Material, material_from_spec
from .validation import validated

MaterialSpec = str | dict[str, Any]


def _check_material(spec: MaterialSpec) -> MaterialSpec:
    try:
        material_from_spec(spec)
    except QdcavityError as exc:  # re-raised as ValueError so pydantic names the field
        raise ValueError(str(exc)) from None
    return spec


_MATERIAL_JSON: dict[str, str] = {}


def material_json(spec: MaterialSpec) -> str:
    """``canonical_dumps`` of a material's canonical form, memoized: a sweep builds thousands
    of stacks from the same few materials (and the shipped library never changes in a run)."""
    memo_key = spec if isinstance(spec, str) else "\0" + canonical_dumps(spec)
    text = _MATERIAL_JSON.get(memo_key)
    if text is None:
        text = canonical_dumps(material_from_spec(spec).canonical())
        if len(_MATERIAL_JSON) > 4096:  # inline tables swept by value: keep the memo bounded
            _MATERIAL_JSON.clear()
        _MATERIAL_JSON[memo_key] = text
    return text


class Medium(BaseModel):
    """A semi-infinite medium (substrate or superstrate)."""

    model_config = ConfigDict(frozen=True, extra="forbid")
    material: MaterialSpec

    @field_validator("material")
    @classmethod
    def _material(cls, v: MaterialSpec) -> MaterialSpec:
        return _check_material(v)


class Layer(CachedIdentity):
    """A finite layer with a unique name, a material and a thickness in nm."""

    model_config = ConfigDict(frozen=True, extra="forbid")
    name: str = Field(min_length=1)
    material: MaterialSpec
    thickness_nm: float

    @field_validator("material")
    @classmethod
    def _material(cls, v: MaterialSpec) -> MaterialSpec:
        return _check_material(v)

    @cached_property
    def canonical_json(self) -> str:
        """``canonical_dumps`` of this layer's entry in :meth:`Stack.canonical`."""
        return (f'{{"material":{material_json(self.material)},"name":{json.dumps(self.name)},'
                f'"thickness_nm":{json.dumps(self.thickness_nm)}}}')

    @field_validator("name")
    @classmethod
    def _name(cls, v: str) -> str:
        if "." in v or v.strip() != v:
            raise ValueError("layer names may not contain '.' or surrounding spaces")
        return v

    @field_validator("thickness_nm", mode="before")
    @classmethod
    def _thickness(cls, v: Any) -> float:
        if isinstance(v, bool) or not isinstance(v, int | float):
            raise ValueError(f"thickness must be a number of nm, got {v!r}")
        if not math.isfinite(v) or v <= 0:
            raise ValueError(f"thickness must be a finite number > 0 nm, got {v!r}")
        return float(v)


#: (id of a layer, thickness) -> (that layer, kept so that its id stays its own; the resized one)
_RESIZED: dict[tuple[int, float], tuple[Layer, Layer]] = {}


def _resized(layer: Layer, thickness_nm: float) -> Layer:
    """``layer`` with another thickness, one object per (layer, thickness): the points of a
    sweep grid share their layers, and each layer's canonical JSON is built once."""
    found = _RESIZED.get((id(layer), thickness_nm))
    if found is None:
        if len(_RESIZED) >= 4096:
            _RESIZED.clear()
        found = _RESIZED[(id(layer), thickness_nm)] = (layer, Layer.model_construct(
            name=layer.name, material=layer.material, thickness_nm=thickness_nm))
    return found[1]


#: id of a stack -> (that stack, kept so that its id stays its own; the position of each layer
#: by name): what each sweep point's variant of it needs (see Stack._with_thicknesses)
_VARIANT_BASES: dict[int, tuple[Any, dict[str, int]]] = {}


class Stack(CachedIdentity):
    """A planar multilayer. Build it with :func:`load_stack` or :meth:`from_dict`."""

    model_config = ConfigDict(frozen=True, extra="forbid")
    name: str = Field(min_length=1)
    description: str = ""
    substrate: Medium
    superstrate: Medium
    layers: tuple[Layer, ...] = Field(min_length=1)
    gain_layer: str | None = None
    emitter_layer: str | None = None

    @model_validator(mode="after")
    def _roles(self) -> Stack:
        names = [layer.name for layer in self.layers]
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            raise ValueError(f"duplicate layer name(s) {dupes}")
        reserved = {"substrate", "superstrate"} & set(names)
        if reserved:
            raise ValueError(f"layer name(s) {sorted(reserved)} are reserved")
        for role in ("gain_layer", "emitter_layer"):
            value = getattr(self, role)
            if value is not None and value not in names:
                raise ValueError(f"{role} '{value}' is not a layer; layers are {names}")
        return self

    # ----- construction -------------------------------------------------------------------
    @classmethod
    def from_dict(cls, data: Mapping[str, Any], source: str = "stack") -> Stack:
        if not isinstance(data, Mapping):
            raise ConfigError(f"{source}: a stack must be a table")
        missing = [k for k in ("substrate", "superstrate", "layers") if k not in data]
        if missing:
            raise ConfigError(f"{source}: missing required field(s) {missing}")
        return validated(lambda: cls.model_validate(dict(data)), source)

    # ----- identity -----------------------------------------------------------------------
    def canonical(self) -> dict[str, Any]:
        """Canonical JSON-able form, materials expanded to their data identity."""

        def medium(spec: MaterialSpec) -> dict[str, Any]:
            return material_from_spec(spec).canonical()

        return {
            "substrate": medium(self.substrate.material),
            "layers": [
                {"name": la.name, "material": medium(la.material),
                 "thickness_nm": la.thickness_nm}
                for la in self.layers
            ],
            "superstrate": medium(self.superstrate.material),
            "gain_layer": self.gain_layer,
            "emitter_layer": self.emitter_layer,
        }

    @cached_property
    def canonical_json(self) -> str:
        """``canonical_dumps(self.canonical())``, assembled from per-layer pieces (each layer
        and material is serialized once, not once per sweep point)."""
        layers = ",".join(la.canonical_json for la in self.layers)
        return (f'{{"emitter_layer":{json.dumps(self.emitter_layer)},'
                f'"gain_layer":{json.dumps(self.gain_layer)},"layers":[{layers}],'
                f'"substrate":{material_json(self.substrate.material)},'
                f'"superstrate":{material_json(self.superstrate.material)}}}')

    @cached_property
    def content_hash(self) -> str:
        """SHA-256 of the canonical form (the name and description do not enter it)."""
        return hashlib.sha256(self.canonical_json.encode()).hexdigest()

    def to_toml_dict(self) -> dict[str, Any]:
        return self.model_dump(exclude_none=True)

    # ----- variants -----------------------------------------------------------------------
    def with_overrides(self, overrides: Mapping[str, Any]) -> Stack:
        """A new stack with dotted fields replaced: ``{"IZO_top.thickness_nm": 100}``.

        Addressable: ``<layer>.thickness_nm``, ``<layer>.material``, ``substrate.material``,
        ``superstrate.material``, ``gain_layer``, ``emitter_layer``, ``name``.
        """
        fast = self._with_thicknesses(overrides)
        if fast is not None:
            return fast
        data = self.model_dump()
        data["layers"] = [dict(la) for la in data["layers"]]
        by_name = {la["name"]: la for la in data["layers"]}
        for key, value in overrides.items():
            head, _, attr = key.partition(".")
            if not attr and head in ("gain_layer", "emitter_layer", "name", "description"):
                data[head] = value
            elif head in ("substrate", "superstrate") and attr == "material":
                data[head] = {"material": value}
            elif head in by_name and attr in ("thickness_nm", "material"):
                by_name[head][attr] = value
            else:
                fields = ", ".join(self.addressable_fields())
                raise ConfigError(f"unknown stack field '{key}'; addressable fields: {fields}",
                                  field="overrides")
        return Stack.from_dict(data, source=f"{self.name} with overrides")

    def _with_thicknesses(self, overrides: Mapping[str, Any]) -> Stack | None:
        """The common sweep case, only ``<layer>.thickness_nm`` changed and valid: a new stack
        without re-validating what did not change (None: take the general path)."""
        base = _VARIANT_BASES.get(id(self))
        positions = base[1] if base is not None else {
            layer.name: i for i, layer in enumerate(self.layers)}
        thickness: dict[int, float] = {}
        for key, value in overrides.items():
            head, _, attr = key.partition(".")
            if attr != "thickness_nm" or head not in positions:
                return None
            try:
                thickness[positions[head]] = Layer._thickness(value)
            except ValueError:
                return None  # the general path reports it, naming the field
        if base is None:  # the fast path applies: remember what the variants share
            if len(_VARIANT_BASES) >= 256:
                _VARIANT_BASES.clear()
            _VARIANT_BASES[id(self)] = (self, positions)
        layers = list(self.layers)
        for i, thickness_nm in thickness.items():
            layers[i] = _resized(layers[i], thickness_nm)
        return self._replaced(layers=tuple(layers))

    def addressable_fields(self) -> list[str]:
        out = ["substrate.material", "superstrate.material", "gain_layer", "emitter_layer"]
        for la in self.layers:
            out += [f"{la.name}.thickness_nm", f"{la.name}.material"]
        return out

    # ----- optics for backends -----------------------------------------------------------
    @property
    def layer_names(self) -> list[str]:
        return [la.name for la in self.layers]

    @property
    def media_names(self) -> list[str]:
        """``["substrate", *layer_names, "superstrate"]``: the order of :meth:`indices`."""
        return ["substrate", *self.layer_names, "superstrate"]

    @property
    def thicknesses_nm(self) -> np.ndarray:
        return np.array([la.thickness_nm for la in self.layers])

    @property
    def interfaces_nm(self) -> np.ndarray:
        """z of every interface, from 0 (substrate top) to the total thickness."""
        return np.concatenate([[0.0], np.cumsum(self.thicknesses_nm)])

    def layer_position(self, name: str) -> int:
        """Index of a layer in :attr:`media_names` (substrate is 0)."""
        if name not in self.layer_names:
            raise ConfigError(f"no layer '{name}'; layers are {self.layer_names}")
        return self.layer_names.index(name) + 1

    def materials(self) -> list[Material]:
        """Materials of ``[substrate, *layers, superstrate]``."""
        specs = [self.substrate.material, *(la.material for la in self.layers),
                 self.superstrate.material]
        return [material_from_spec(s) for s in specs]

    def indices(self, wavelength_nm: float | Iterable[float],
                zero_k: Iterable[str] = ()) -> np.ndarray:
        """Complex indices n + ik, shape (n_wavelengths, n_layers + 2).

        Columns follow :attr:`media_names`. Layers named in ``zero_k`` get k = 0 (a gain layer
        whose ground-state absorption is bleached by pumping).
        """
        lam = np.atleast_1d(np.asarray(wavelength_nm, dtype=float))
        cols = []
        for medium, material in zip(self.media_names, self.materials(), strict=True):
            try:
                cols.append(material.nk(lam))
            except WavelengthRangeError as exc:
                raise WavelengthRangeError(str(exc), field=f"{self.name}.{medium}") from None
        for name in zero_k:
            pos = self.layer_position(name)
            cols[pos] = cols[pos].real + 0j
        return np.stack(cols, axis=-1)


def builtin_stack_dir() -> Path:
    return Path(str(resources.files("qdcavity.geometries")))


def builtin_stacks() -> dict[str, Path]:
    """Built-in stacks by name (``BE``, ``TE-IZOB``...), from ``qdcavity.geometries``."""
    out = {}
    for path in sorted(builtin_stack_dir().glob("*.toml")):
        data = tomllib.loads(path.read_text(encoding="utf-8"))
        out[data.get("name", path.stem)] = path
    return out


def read_toml(path: Path, what: str) -> dict[str, Any]:
    try:
        return tomllib.loads(Path(path).read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError(f"{what} file not found: {path}") from None
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{path}: not valid TOML ({exc})") from None
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read ({exc.strerror})") from None


def load_stack(name_or_path: str | Path, overrides: Mapping[str, Any] | None = None) -> Stack:
    """A built-in stack by name (case-sensitive, file stem also accepted) or a TOML file."""
    builtins = builtin_stacks()
    key = str(name_or_path)
    stems = {p.stem: p for p in builtins.values()}
    if key in builtins or key in stems:
        path = builtins.get(key) or stems[key]
    elif Path(key).suffix == ".toml" or Path(key).exists():
        path = Path(key)
    else:
        raise ConfigError(
            f"unknown stack '{key}': not a built-in ({', '.join(builtins)}) nor a .toml file",
            field="stack",
        )
    stack = Stack.from_dict(read_toml(path, "stack"), source=str(path))
    return stack.with_overrides(overrides) if overrides else stack
