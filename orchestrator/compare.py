"""Cross-backend comparison: one study, several backends, every quantity side by side.

``qdcavity compare STUDY.toml --backends tmm,fdmodes`` (or :func:`compare_study`) runs the study
once per backend, aligns the results (modes by their label -- TE0, TM1, SPP0 -- not by their
slot, so a backend that finds an extra mode does not shift the others), and judges every
difference from the first backend (the reference) against the sum of the tolerances the two
backends declare (:func:`qdcavity.testing.tolerance`): each promises that much agreement with
the exact answer. A mode found by one backend only, or a point that failed, is reported as
``missing`` and counts as a failure, so the exit status can gate CI.

The comparison dataset has, for every analysis ``a`` and compared variable ``v``:
``a.v`` (dims ``backend`` + the variable's), ``a.v.diff`` (value minus the reference's),
``a.v.tolerance`` and ``a.v.ok``; attributes name the backends, their versions and tolerances.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import xarray as xr

from . import __version__
from .errors import BackendError, ConfigError
from .registry import default_registry
from .results import analysis_view
from .study import Study, load_study
from .testing.tolerances import tolerance

#: Variables compared per analysis kind (fields and spectra K(u) are not: they are checked
#: through the integrated quantities).
COMPARED: dict[str, tuple[str, ...]] = {
    "modes": ("neff", "alpha_cm", "gamma_E", "gamma_P", "modal_gain_cm", "net_gain_cm"),
    "reflectance": ("R", "T", "A"),
    "dipole_emission": ("purcell", "fraction"),
    "outcoupling": ("neff", "gamma_P", "alpha_abs_cm", "alpha_sca_cm", "net_gain_cm",
                    "escape_fraction", "scattered_fraction", "beta", "spontaneous_air_fraction"),
}
#: Undeclared variables whose tolerance is that of another (fractions of a power).
TOLERANCE_ALIASES = {"escape_fraction": "fraction", "scattered_fraction": "fraction",
                     "spontaneous_air_fraction": "fraction", "beta": "fraction"}


@dataclass
class Quantity:
    """One compared variable: where it exceeds, the worst element, how many elements."""

    analysis: str
    variable: str
    n_elements: int
    n_exceeding: int
    n_missing: int
    worst: dict[str, Any] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return self.n_exceeding == 0 and self.n_missing == 0

    @property
    def name(self) -> str:
        return f"{self.analysis}.{self.variable}"


@dataclass
class Comparison:
    """The comparison dataset, the per-quantity verdicts and the failed points per backend."""

    dataset: xr.Dataset
    backends: list[str]
    quantities: list[Quantity]
    failed_points: dict[str, list[str]]

    @property
    def reference(self) -> str:
        return self.backends[0]

    @property
    def ok(self) -> bool:
        return all(q.ok for q in self.quantities) and not any(self.failed_points.values())


# ----- running --------------------------------------------------------------------------------


def parse_backends(text: str | Sequence[str]) -> list[str]:
    """``"tmm,meep"`` -> ``["tmm", "meep"]`` (at least two, no repeats)."""
    names = [n.strip() for n in (text.split(",") if isinstance(text, str) else text)]
    if any(not n for n in names):
        raise ConfigError(f"empty backend name in {text!r}", field="--backends")
    repeated = sorted({n for n in names if names.count(n) > 1})
    if repeated:
        raise ConfigError(f"backend(s) {repeated} given twice", field="--backends")
    if len(names) < 2:
        raise ConfigError("compare needs at least two backends, e.g. --backends tmm,fdmodes",
                          field="--backends")
    return names


def backend_options_for(options: Mapping[str, Any], backend: str,
                        backends: Sequence[str]) -> dict[str, Any]:
    """The options one backend gets from a study compared on several backends.

    A table named after a compared backend (``[backend_options.meep]``) applies to that backend
    only; the other keys apply to every backend::

        [backend_options]
        timeout_s = 600            # all backends
        [backend_options.meep]
        resolution = 100           # meep only
    """
    common = {k: v for k, v in options.items()
              if not (k in backends and isinstance(v, Mapping))}
    own = options.get(backend)
    return {**common, **(dict(own) if isinstance(own, Mapping) else {})}


def study_for(study: Study, backend: str, backends: Sequence[str]) -> Study:
    return study.model_copy(update={
        "backend_options": backend_options_for(study.backend_options, backend, backends)})


def check_compare_backends(study: Study, backends: Sequence[str]) -> None:
    """Before any work: every backend exists, answers every analysis and is available."""
    from .runner import expand

    if "backend" in study.sweep.axes:
        raise ConfigError("the study sweeps 'backend'; compare runs it once per backend given "
                          "with --backends: remove that axis", field="sweep.axes")
    registry = default_registry()
    for name in backends:
        backend = registry.get(name)  # unknown: lists the available ones
        expand(study_for(study, name, backends), name)  # unsupported analysis: names the
        #                                                 supported ones
        try:
            status = backend.availability()
        except (Exception, SystemExit) as exc:  # noqa: BLE001  a broken plugin is reported
            raise BackendError(f"backend '{name}': availability() raised "
                               f"{type(exc).__name__}: {exc}", field="--backends") from None
        if not status.available:
            hint = f" ({status.install_hint})" if status.install_hint else ""
            raise BackendError(f"backend '{name}' is unavailable: {status.reason}{hint}",
                               field="--backends")


def compare_study(study: Study | str | Path, backends: str | Sequence[str], *,
                  executor: Any = None, progress_factory: Any = None,
                  **run_kwargs: Any) -> Comparison:
    """Run ``study`` on each backend and compare every quantity with the first backend's.

    Each backend gets the study's ``backend_options`` minus the tables named after the other
    compared backends (:func:`backend_options_for`).

    ``run_kwargs`` go to :func:`qdcavity.runner.execute_study` (``cache_dir``, ``use_cache``,
    ``workers``...). ``progress_factory(backend)`` may return a progress context manager.
    """
    from .runner import execute_study

    if not isinstance(study, Study):
        study = load_study(study)
    names = parse_backends(backends)
    check_compare_backends(study, names)
    results: dict[str, xr.Dataset] = {}
    for name in names:
        own = study_for(study, name, names)
        if progress_factory is not None:
            with progress_factory(name) as progress:
                results[name], _ = execute_study(own, backend=name, executor=executor,
                                                 progress=progress, **run_kwargs)
        else:
            results[name], _ = execute_study(own, backend=name, executor=executor,
                                             **run_kwargs)
    return compare_results(study, results)


# ----- alignment ------------------------------------------------------------------------------


def _label_key(label: str) -> tuple[int, str, int]:
    m = re.fullmatch(r"(TE|TM|SPP)(-leaky)?(\d+)", label)
    if not m:
        return (9, label, 0)
    return ({"TE": 0, "TM": 1, "SPP": 2}[m.group(1)] + (3 if m.group(2) else 0), m.group(1),
            int(m.group(3)))


def mode_labels(views: Sequence[xr.Dataset]) -> list[str]:
    found = {str(x) for v in views for x in np.asarray(v["label"].values).ravel() if str(x)}
    return sorted(found, key=_label_key)


def modes_by_label(view: xr.Dataset, labels: Sequence[str]) -> xr.Dataset:
    """The modes variables with the ``mode`` slot replaced by a ``label`` dimension."""
    lab = view["label"]
    out = {}
    for var in COMPARED["modes"]:
        if var not in view:
            continue
        da = view[var]
        parts = []
        for name in labels:
            mask = lab == name
            parts.append(da.where(mask).sum("mode", min_count=1, skipna=True))
        out[var] = xr.concat(parts, dim="label").assign_coords(label=list(labels))
        out[var].attrs = dict(da.attrs)
    ds = xr.Dataset(out)
    if "material_gain_cm" in view:
        ds["material_gain_cm"] = view["material_gain_cm"]
    return ds


def _failed(ds: xr.Dataset) -> list[str]:
    if "status" not in ds:
        return []
    status = ds["status"]
    if status.ndim == 0:
        return [str(ds["error"].values)] if str(status.values) == "failed" else []
    out = []
    stacked = status.stack(_p=status.dims)
    errors = ds["error"].stack(_p=status.dims)
    for i in range(stacked.sizes["_p"]):
        if str(stacked.values[i]) == "failed":
            where = ", ".join(f"{k}={v!r}" for k, v in _point_coords(stacked, i).items())
            out.append(f"({where}): {errors.values[i]}")
    return out


def _point_coords(da: xr.DataArray, i: int) -> dict[str, Any]:
    sub = da.isel(_p=i)
    return {str(k): _plain(v.values) for k, v in sub.coords.items()
            if k != "_p" and v.ndim == 0 and k not in da.dims}


def _plain(x: Any) -> Any:
    x = np.asarray(x).item() if np.ndim(x) == 0 else x
    return x.decode() if isinstance(x, bytes) else x


def _tolerance_da(declared: Mapping[str, float], var: str, like: xr.DataArray,
                  view: xr.Dataset) -> xr.DataArray:
    name = var if var in declared else TOLERANCE_ALIASES.get(var, var)
    swept = [c for c in like.coords if str(c).endswith(".wavelength_nm")]  # the sweep's axis
    if "wavelength_nm" in like.coords:
        lam: Any = like["wavelength_nm"]
    elif len(swept) == 1:
        lam = like[swept[0]]
    else:
        lam = 630.0
    if "material_gain_cm" in like.coords:
        gain: Any = like["material_gain_cm"]
    elif "material_gain_cm" in view:
        gain = view["material_gain_cm"]
    else:
        gain = 690.0
    tol = tolerance(declared, name, wavelength_nm=lam, material_gain_cm=gain)
    if var == "net_gain_cm" and "alpha_sca_cm" in view and name == "net_gain_cm":
        tol = tol + tolerance(declared, "alpha_sca_cm")
    return xr.zeros_like(like, dtype=float) + tol


def compare_results(study: Study, results: Mapping[str, xr.Dataset]) -> Comparison:
    """Compare study results (one dataset per backend, reference first)."""
    names = list(results)
    registry = default_registry()
    kinds = {a.label: a.kind for a in study.analyses}
    multi = len(kinds) > 1
    sweep_axes = set(study.sweep.axes) | {"point"}
    out: dict[str, xr.DataArray] = {}
    quantities: list[Quantity] = []
    for aname, kind in kinds.items():
        views = {b: analysis_view(ds, aname) for b, ds in results.items()}
        if kind == "modes":
            labels = mode_labels(list(views.values()))
            views = {b: modes_by_label(v, labels) for b, v in views.items()}
        for var in COMPARED.get(kind, ()):
            having = [views[b][var] for b in names if var in views[b]]
            if not having:
                continue
            # a backend without the variable (every point failed) is 'missing' everywhere
            arrays = xr.align(*(views[b][var] if var in views[b] else xr.full_like(
                having[0], np.nan, dtype=having[0].dtype if having[0].dtype.kind in "fc"
                else float) for b in names), join="outer")
            stacked = xr.concat(arrays, dim="backend").assign_coords(backend=names)
            ref = stacked.sel(backend=names[0])
            diff = stacked - ref
            tol_ref = _tolerance_da(registry.get(names[0]).tolerances, var, ref, views[names[0]])
            tols = xr.concat([tol_ref + _tolerance_da(registry.get(b).tolerances, var, ref,
                                                      views[b]) for b in names], dim="backend")
            tols = tols.assign_coords(backend=names)
            present = stacked.notnull()
            any_present = present.any("backend")
            missing = any_present & ~present
            within = np.abs(diff) <= tols
            ok = (within | ~any_present) & ~missing
            ok.loc[{"backend": names[0]}] = (~missing.sel(backend=names[0])).values
            quantities.append(_summarize(aname, var, stacked, diff, tols, ok, missing,
                                         any_present, names))
            prefix = f"{aname}.{var}"
            rename = {d: f"{aname}.{d}" for d in stacked.dims
                      if multi and d != "backend" and d not in sweep_axes}
            units = views[names[0]][var].attrs.get("units", "")
            for suffix, da, unit in (("", stacked, units), (".diff", diff, units),
                                     (".tolerance", tols, units), (".ok", ok, "")):
                da = da.rename(rename) if rename else da
                da = da.drop_vars([c for c in da.coords if c not in da.dims])
                da.attrs = {"units": unit} if unit else {}
                out[prefix + suffix] = da
    ds = xr.Dataset(out)
    failed = {b: _failed(results[b]) for b in names}
    info = {b: {"version": registry.get(b).version,
                "tolerances": dict(registry.get(b).tolerances),
                "solver_versions": registry.get(b).solver_versions()} for b in names}
    comparison = Comparison(ds, names, quantities, failed)
    ds.attrs.update({
        "qdcavity_version": __version__,
        "study_name": study.name,
        "study": study.text,
        "analyses": json.dumps(list(kinds)),
        "analysis_kinds": json.dumps(kinds),
        "reference_backend": names[0],
        "backends": json.dumps(names),
        "backend_info": json.dumps(info, sort_keys=True, default=str),
        "tolerance_rule": "|value - reference| <= tol_reference + tol_backend, each backend's "
                          "declared tolerance (qdcavity.testing.tolerance)",
        "failed_points": json.dumps(failed),
        "ok": int(comparison.ok),
        "n_quantities_exceeding": sum(not q.ok for q in quantities),
    })
    return comparison


def _summarize(aname: str, var: str, stacked: xr.DataArray, diff: xr.DataArray,
               tols: xr.DataArray, ok: xr.DataArray, missing: xr.DataArray,
               any_present: xr.DataArray, names: list[str]) -> Quantity:
    others = names[1:]
    sub_ok = ok.sel(backend=others)
    n_el = int(any_present.sum())
    n_missing = int(missing.any("backend").sum())
    n_exc = int(((~sub_ok) & any_present & ~missing.any("backend")).sum())
    q = Quantity(aname, var, n_el, n_exc, n_missing)
    ratio = (np.abs(diff.sel(backend=others)) / tols.sel(backend=others).where(
        tols.sel(backend=others) > 0)).fillna(0).max("backend")
    ratio = ratio.where(~missing.any("backend"), np.inf).where(any_present, -1)
    if n_el:
        idx = np.unravel_index(int(np.argmax(ratio.values)), ratio.shape)
        where = {d: _plain(ratio[d].values[i]) for d, i in zip(ratio.dims, idx, strict=True)}
        q.worst = {"where": where,
                   "values": {b: _plain(stacked.sel(backend=b).values[idx]) for b in names},
                   "diff": {b: _plain(diff.sel(backend=b).values[idx]) for b in others},
                   "tolerance": {b: float(tols.sel(backend=b).values[idx]) for b in others},
                   "ratio": float(ratio.values[idx])}
    return q


# ----- report: table rows, netCDF, figure -----------------------------------------------------


def element_rows(comparison: Comparison, quantity: Quantity, max_rows: int
                 ) -> list[dict[str, Any]]:
    """Per element rows (coords, values, diffs, tolerance, status) when the quantity has at
    most ``max_rows`` elements, else one row for the worst element."""
    ds, names = comparison.dataset, comparison.backends
    vals = ds[quantity.name]
    dims = [d for d in vals.dims if d != "backend"]
    stacked_vals = vals.stack(_e=dims) if dims else vals.expand_dims(_e=[0])
    present = stacked_vals.notnull().any("backend")
    if quantity.n_elements > max_rows:
        return []
    diff = ds[quantity.name + ".diff"]
    tol = ds[quantity.name + ".tolerance"]
    ok = ds[quantity.name + ".ok"]
    st = {k: (a.stack(_e=dims) if dims else a.expand_dims(_e=[0])) for k, a in
          (("diff", diff), ("tol", tol), ("ok", ok))}
    rows = []
    for i in np.nonzero(present.values)[0]:
        coords = {}
        if dims:
            for d in dims:
                coords[d.rsplit(".", 1)[-1]] = _plain(stacked_vals[d].values[i])
        values = {b: _plain(stacked_vals.sel(backend=b).values[i]) for b in names}
        miss = [b for b in names if not np.isfinite(np.abs(values[b]))]
        rows.append({
            "where": coords, "values": values,
            "diff": {b: _plain(st["diff"].sel(backend=b).values[i]) for b in names[1:]},
            "tolerance": {b: float(st["tol"].sel(backend=b).values[i]) for b in names[1:]},
            "status": "missing" if miss else (
                "ok" if bool(st["ok"].sel(backend=names[1:]).values[..., i].all())
                else "EXCEEDS"),
        })
    return rows


def fmt_value(x: Any) -> str:
    if isinstance(x, complex | np.complexfloating):
        if not np.isfinite(abs(x)):
            return "-"
        return f"{x.real:.7g}{x.imag:+.4g}j"
    if isinstance(x, float | np.floating):
        return "-" if not math.isfinite(x) else f"{x:.6g}"
    return str(x)


def fmt_diff(x: Any) -> str:
    if isinstance(x, complex | np.complexfloating):
        return "-" if not np.isfinite(abs(x)) else f"{abs(x):.2e}"
    if isinstance(x, float | np.floating):
        return "-" if not math.isfinite(x) else f"{x:+.2e}"
    return str(x)


def fmt_where(where: Mapping[str, Any]) -> str:
    parts = []
    for k, v in where.items():
        if k.endswith("wavelength_nm"):
            parts.append(f"{fmt_value(v)} nm")
        elif k.endswith("angle_deg"):
            parts.append(f"{fmt_value(v)} deg")
        elif k in ("polarization", "label", "layer", "orientation", "channel", "mode"):
            parts.append(str(v))
        else:
            parts.append(f"{k}={fmt_value(v)}")
    return " ".join(parts) or "-"


def write_figure(comparison: Comparison, path: str | Path, max_quantities: int = 16) -> Path:
    """Per quantity: values of each backend (left) and |difference| / tolerance (right)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    qs = [q for q in comparison.quantities if q.n_elements][:max_quantities]
    n = max(len(qs), 1)
    fig, axes = plt.subplots(n, 2, figsize=(10, 1.9 * n + 0.6), squeeze=False)
    ds, names = comparison.dataset, comparison.backends
    for row, q in zip(axes, qs, strict=False):
        vals = ds[q.name]
        dims = [d for d in vals.dims if d != "backend"]
        flat = vals.stack(_e=dims) if dims else vals.expand_dims(_e=[0])
        keep = flat.notnull().any("backend").values
        x = np.arange(int(keep.sum()))
        for b, marker in zip(names, "os^vDx+*", strict=False):
            y = flat.sel(backend=b).values[keep]
            y = y.real if np.iscomplexobj(y) else y
            row[0].plot(x, y, marker, ms=3, label=b, alpha=0.8)
        row[0].set_ylabel(q.variable + (" (Re)" if np.iscomplexobj(vals.values) else ""),
                          fontsize=8)
        row[0].set_title(q.name, loc="left", fontsize=8)
        diff = ds[q.name + ".diff"].stack(_e=dims) if dims else ds[q.name + ".diff"].expand_dims(
            _e=[0])
        tol = ds[q.name + ".tolerance"].stack(_e=dims) if dims else ds[
            q.name + ".tolerance"].expand_dims(_e=[0])
        for b, marker in zip(names[1:], "s^vDx+*", strict=False):
            r = np.abs(diff.sel(backend=b).values[keep]) / np.maximum(
                tol.sel(backend=b).values[keep], 1e-300)
            row[1].semilogy(x, np.where(np.isfinite(r), np.maximum(r, 1e-6), np.nan), marker,
                            ms=3, label=f"{b} - {names[0]}")
        row[1].axhline(1.0, color="red", lw=1)
        row[1].set_ylabel("|diff| / tol", fontsize=8)
        verdict = "ok" if q.ok else (f"{q.n_exceeding} exceed" + (
            f", {q.n_missing} missing" if q.n_missing else ""))
        row[1].set_title(verdict, loc="right", fontsize=8,
                         color="green" if q.ok else "red")
        for ax in row:
            ax.tick_params(labelsize=7)
    if qs:
        axes[0][0].legend(fontsize=7)
        axes[0][1].legend(fontsize=7)
    else:
        axes[0][0].text(0.5, 0.5, "nothing to compare (see the failed points)",
                        ha="center", va="center", transform=axes[0][0].transAxes)
    for ax in axes[-1]:
        ax.set_xlabel("element (coordinates in the netCDF file)", fontsize=8)
    fig.suptitle(f"{comparison.dataset.attrs.get('study_name', '')}: "
                 f"{', '.join(names)} (reference {names[0]})", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path
