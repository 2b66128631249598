"""Reader for refractiveindex.info database files (YAML, wavelengths in micrometres).

Supported ``DATA`` types: ``tabulated nk``, ``tabulated n``, ``tabulated k`` and the dispersion
``formula 1`` to ``formula 5`` (Sellmeier, Sellmeier-2, polynomial, RefractiveIndex.INFO,
Cauchy), as defined in the database's ``doc/Dispersion formulas.pdf``. Formulas give n only;
a file may add a ``tabulated k`` block. Tabulated data are interpolated linearly in wavelength
and are never extrapolated.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import yaml

from .errors import MaterialError


def _sellmeier(lam: np.ndarray, c: np.ndarray) -> np.ndarray:
    n2 = 1.0 + c[0]
    for i in range(1, len(c) - 1, 2):
        n2 = n2 + c[i] * lam**2 / (lam**2 - c[i + 1] ** 2)
    return np.sqrt(n2)


def _sellmeier2(lam: np.ndarray, c: np.ndarray) -> np.ndarray:
    n2 = 1.0 + c[0]
    for i in range(1, len(c) - 1, 2):
        n2 = n2 + c[i] * lam**2 / (lam**2 - c[i + 1])
    return np.sqrt(n2)


def _polynomial(lam: np.ndarray, c: np.ndarray) -> np.ndarray:
    n2 = c[0] + 0.0 * lam
    for i in range(1, len(c) - 1, 2):
        n2 = n2 + c[i] * lam ** c[i + 1]
    return np.sqrt(n2)


def _refractiveindex_info(lam: np.ndarray, c: np.ndarray) -> np.ndarray:
    c = np.concatenate([c, np.zeros(max(0, 9 - len(c)))])
    n2 = c[0] + c[1] * lam ** c[2] / (lam**2 - c[3] ** c[4])
    n2 = n2 + c[5] * lam ** c[6] / (lam**2 - c[7] ** c[8])
    for i in range(9, len(c) - 1, 2):
        n2 = n2 + c[i] * lam ** c[i + 1]
    return np.sqrt(n2)


def _cauchy(lam: np.ndarray, c: np.ndarray) -> np.ndarray:
    n = c[0] + 0.0 * lam
    for i in range(1, len(c) - 1, 2):
        n = n + c[i] * lam ** c[i + 1]
    return n


FORMULAS = {
    1: _sellmeier,
    2: _sellmeier2,
    3: _polynomial,
    4: _refractiveindex_info,
    5: _cauchy,
}


@dataclass(frozen=True, eq=False)
class Dispersion:
    """n and k of one database file as functions of wavelength in micrometres."""

    n_fn: Callable[[np.ndarray], np.ndarray]
    k_fn: Callable[[np.ndarray], np.ndarray]
    range_um: tuple[float, float]
    reference: str
    comments: str


def _table(block: dict, ncols: int, path: Path) -> np.ndarray:
    rows = np.array(
        [[float(v) for v in line.split()] for line in str(block["data"]).strip().splitlines()]
    )
    if rows.ndim != 2 or rows.shape[1] != ncols or len(rows) < 2:
        raise MaterialError(f"malformed '{block['type']}' block", field=str(path))
    order = np.argsort(rows[:, 0])
    return rows[order]


def _interp(x: np.ndarray, y: np.ndarray):
    return lambda lam: np.interp(lam, x, y)


def read_dispersion(path: Path) -> Dispersion:
    """Parse one refractiveindex.info YAML file."""
    try:
        doc = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError) as exc:
        raise MaterialError(f"cannot read material file ({exc})", field=str(path)) from None
    n_fn = k_fn = None
    lo, hi = 0.0, np.inf
    for block in doc.get("DATA", []):
        kind = str(block["type"])
        if kind.startswith("tabulated"):
            cols = kind.split()[1]
            rows = _table(block, 1 + len(cols), path)
            lo, hi = max(lo, rows[0, 0]), min(hi, rows[-1, 0])
            for j, col in enumerate(cols, start=1):
                fn = _interp(rows[:, 0], rows[:, j])
                if col == "n":
                    n_fn = fn
                else:
                    k_fn = fn
        elif kind.startswith("formula"):
            number = int(kind.split()[1])
            if number not in FORMULAS:
                raise MaterialError(f"unsupported dispersion '{kind}'", field=str(path))
            coeffs = np.array([float(v) for v in str(block["coefficients"]).split()])
            wmin, wmax = (float(v) for v in str(block["wavelength_range"]).split())
            lo, hi = max(lo, wmin), min(hi, wmax)
            formula = FORMULAS[number]
            n_fn = lambda lam, f=formula, c=coeffs: f(lam, c)  # noqa: E731
        else:
            raise MaterialError(f"unsupported data type '{kind}'", field=str(path))
    if n_fn is None:
        raise MaterialError("file gives no refractive index n", field=str(path))
    if k_fn is None:
        k_fn = lambda lam: np.zeros_like(lam)  # noqa: E731  transparent: the file gives no k
    return Dispersion(
        n_fn=n_fn,
        k_fn=k_fn,
        range_um=(float(lo), float(hi)),
        reference=" ".join(str(doc.get("REFERENCES", "")).split()),
        comments=" ".join(str(doc.get("COMMENTS", "")).split()),
    )
