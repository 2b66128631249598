"""Dispersive materials: n + ik versus wavelength, each with its published source.

Convention: time dependence exp(-i omega t), so the complex index is N = n + ik with k > 0
for an absorbing medium and Im(eps) > 0. Wavelengths are vacuum wavelengths in nm.

Kinds of material:

* ``tabulated``: a refractiveindex.info file (tabulated or formula), interpolated linearly in
  wavelength, never extrapolated (:class:`~qdcavity.errors.WavelengthRangeError`);
* ``constant``: n + ik given inline, valid at every wavelength;
* ``drude-lorentz``: eps(E) = eps_inf - wp^2 / (E^2 + i gamma E)
  + sum_j f_j w_j^2 / (w_j^2 - E^2 - i g_j E), energies in eV.
"""

from __future__ import annotations

import hashlib
import tomllib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from functools import cache
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np

from .errors import MaterialError, WavelengthRangeError
from .refractiveindex import read_dispersion

HC_EV_NM = 1239.841984  # h c in eV nm (CODATA 2018)


@dataclass(frozen=True, eq=False)
class Material:
    """A named optical material; call :meth:`nk` for its complex index."""

    name: str
    kind: str
    reference: str
    range_nm: tuple[float, float]
    spec: Mapping[str, Any]
    _index: Callable[[np.ndarray], np.ndarray] = field(repr=False)
    note: str = ""

    def nk(self, wavelength_nm: float | np.ndarray) -> np.ndarray:
        """Complex index n + ik at the given vacuum wavelengths (nm); never extrapolates."""
        lam = np.asarray(wavelength_nm, dtype=float)
        lo, hi = self.range_nm
        bad = (lam < lo * (1 - 1e-12)) | (lam > hi * (1 + 1e-12)) | ~np.isfinite(lam)
        if np.any(bad):
            worst = float(np.atleast_1d(lam)[np.atleast_1d(bad)][0])
            raise WavelengthRangeError(
                f"wavelength {worst:g} nm is outside the data of material '{self.name}' "
                f"({lo:g}-{hi:g} nm); refusing to extrapolate"
            )
        return np.asarray(self._index(lam), dtype=complex)

    def with_zero_k(self, reason: str) -> Material:
        """The same material with k = 0 (e.g. band-edge absorption bleached by pumping)."""
        return Material(
            name=f"{self.name} (k=0)",
            kind=self.kind,
            reference=self.reference,
            range_nm=self.range_nm,
            spec={**self.spec, "k_zeroed": reason},
            _index=lambda lam: self._index(lam).real + 0j,
            note=reason,
        )

    def canonical(self) -> dict[str, Any]:
        """Stable description used for serialization and content hashes."""
        return {"name": self.name, **self.spec}


def constant_material(n: float, k: float = 0.0, name: str | None = None,
                      reference: str = "given inline") -> Material:
    """A non-dispersive material with N = n + ik at every wavelength (k < 0 is gain)."""
    if not (np.isfinite(n) and np.isfinite(k)) or n <= 0:
        raise MaterialError(f"constant index needs a finite n > 0 and finite k, got n={n}, k={k}")
    value = complex(n, k)
    return Material(
        name=name or f"n={n:g}+{k:g}i",
        kind="constant",
        reference=reference,
        range_nm=(0.0, np.inf),
        spec={"kind": "constant", "n": float(n), "k": float(k)},
        _index=lambda lam: np.full(np.shape(lam), value),
    )


def drude_lorentz_material(eps_inf: float, plasma_ev: float = 0.0, gamma_ev: float = 0.0,
                           poles: list[dict[str, float]] | None = None, name: str = "drude-lorentz",
                           reference: str = "given inline",
                           range_nm: tuple[float, float] = (0.0, np.inf)) -> Material:
    """A Drude-Lorentz material (energies in eV; see the module docstring)."""
    poles = list(poles or [])
    for i, pole in enumerate(poles):
        missing = {"strength", "omega_ev", "gamma_ev"} - set(pole)
        if missing:
            raise MaterialError(f"Lorentz pole {i} lacks {sorted(missing)}")

    def index(lam: np.ndarray) -> np.ndarray:
        energy = HC_EV_NM / lam
        eps = eps_inf + 0j
        if plasma_ev:
            eps = eps - plasma_ev**2 / (energy**2 + 1j * gamma_ev * energy)
        for p in poles:
            w0 = p["omega_ev"]
            eps = eps + p["strength"] * w0**2 / (w0**2 - energy**2 - 1j * p["gamma_ev"] * energy)
        return np.sqrt(eps)

    return Material(
        name=name,
        kind="drude-lorentz",
        reference=reference,
        range_nm=tuple(float(v) for v in range_nm),
        spec={"kind": "drude-lorentz", "eps_inf": eps_inf, "plasma_ev": plasma_ev,
              "gamma_ev": gamma_ev, "poles": poles},
        _index=index,
    )


def file_material(name: str, path: Path, note: str = "") -> Material:
    """A material read from a refractiveindex.info YAML file."""
    disp = read_dispersion(path)
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    return Material(
        name=name,
        kind="tabulated",
        reference=disp.reference,
        range_nm=(disp.range_um[0] * 1e3, disp.range_um[1] * 1e3),
        spec={"kind": "tabulated", "file": path.name, "sha256": digest},
        _index=lambda lam: disp.n_fn(lam * 1e-3) + 1j * disp.k_fn(lam * 1e-3),
        note=note,
    )


def _materials_dir() -> Path:
    return Path(str(resources.files("qdcavity.geometries") / "materials"))


@dataclass(frozen=True)
class MaterialLibrary:
    """Named materials from ``geometries/materials/library.toml``; aliases are explicit."""

    entries: Mapping[str, Mapping[str, Any]]
    aliases: Mapping[str, str]
    root: Path
    _loaded: dict[str, Material] = field(default_factory=dict, repr=False, compare=False)

    def names(self) -> list[str]:
        return sorted(self.entries)

    def resolve_name(self, name: str) -> str:
        if name in self.entries:
            return name
        if name in self.aliases:
            return self.aliases[name]
        hint = [n for n in [*self.entries, *self.aliases] if n.lower() == name.lower()]
        extra = f" (names are case-sensitive: did you mean '{hint[0]}'?)" if hint else ""
        raise MaterialError(
            f"unknown material '{name}'{extra}; known: {', '.join(self.names())}"
        )

    def get(self, name: str) -> Material:
        name = self.resolve_name(name)
        if name not in self._loaded:
            self._loaded[name] = self._load(name)
        return self._loaded[name]

    def _load(self, name: str) -> Material:
        entry = self.entries[name]
        note = entry.get("note", "")
        if "file" in entry:
            return file_material(name, self.root / entry["file"], note=note)
        if "constant" in entry:
            c = entry["constant"]
            return constant_material(c["n"], c.get("k", 0.0), name=name,
                                     reference=entry["reference"])
        raise MaterialError(f"library entry '{name}' has neither 'file' nor 'constant'")


@cache
def default_library() -> MaterialLibrary:
    """The material library shipped in ``qdcavity.geometries/materials``."""
    root = _materials_dir()
    doc = tomllib.loads((root / "library.toml").read_text(encoding="utf-8"))
    return MaterialLibrary(
        entries={k: dict(v) for k, v in doc["materials"].items()},
        aliases=dict(doc.get("aliases", {})),
        root=root,
    )


def material_from_spec(spec: str | Mapping[str, Any], library: MaterialLibrary | None = None
                       ) -> Material:
    """Build a material from a stack file's ``material`` value.

    Accepted: a library name (``"Ag"``), ``{n = 1.95, k = 0.005}`` for a constant index, or
    ``{model = "drude-lorentz", eps_inf = ..., plasma_ev = ..., gamma_ev = ..., poles = [...]}``.
    """
    library = library or default_library()
    if isinstance(spec, str):
        return library.get(spec)
    if not isinstance(spec, Mapping):
        raise MaterialError(f"expected a material name or table, got {type(spec).__name__}")
    spec = dict(spec)
    if spec.get("model") == "drude-lorentz":
        spec.pop("model")
        allowed = {"eps_inf", "plasma_ev", "gamma_ev", "poles", "name", "reference"}
        unknown = set(spec) - allowed
        if unknown or "eps_inf" not in spec:
            raise MaterialError(f"drude-lorentz needs eps_inf; unknown keys {sorted(unknown)}")
        return drude_lorentz_material(**spec)
    if "n" in spec:
        unknown = set(spec) - {"n", "k", "name"}
        if unknown:
            raise MaterialError(f"unknown keys {sorted(unknown)} in constant material")
        n, k = spec["n"], spec.get("k", 0.0)
        if not all(isinstance(v, int | float) and not isinstance(v, bool) for v in (n, k)):
            raise MaterialError(f"n and k must be numbers, got n={n!r}, k={k!r}")
        return constant_material(float(n), float(k), name=spec.get("name"))
    raise MaterialError("a material table needs 'n' (and 'k') or model = 'drude-lorentz'")
