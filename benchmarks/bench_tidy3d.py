"""Tidy3D local mode solver against the TMM backend: time and accuracy versus grid resolution.

Run::

    python benchmarks/bench_tidy3d.py                   # 4 paper stacks, 630 nm, 4/2/1 nm grids
    python benchmarks/bench_tidy3d.py --stacks TE-DIZO --resolutions 8 4 2 1 0.5
    python benchmarks/bench_tidy3d.py --no-averaging    # plain staircase (first order, for TM)
    python benchmarks/bench_tidy3d.py --json out.json

For every stack and resolution it prints the wall time of ``solve(..., backend="tidy3d")``
(the mode solves only: tidy3d's import is paid once before timing) and its ratio to the TMM
backend's time, and the largest error against TMM over the modes both backends report (matched
by label), split into photonic modes (TE0, TM0...), SPPs near the dielectric indices
(``plasmonic``) and single-interface SPPs far beyond them (``far-SPP``, Ag/Si, neff ~ 9.3,
solved on their own refined grid; errors relative): |dneff|, |dalpha| in cm^-1 (``da``),
max |dgamma_E| and max |dgamma_P| over the media (relative for |gamma_P| > 1), plus the ratio
of each error to the one at the next finer grid (about 4 for second-order convergence).
This is the convergence study behind the default ``resolution_nm`` (docs/tidy3d.md).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

import numpy as np

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")  # only effective if numpy is not loaded yet

STACKS = ("TE-DIZO", "BE", "TE-IZOB", "TE-IZOT")


def errors(ds, ref, lam: float) -> dict[str, dict[str, float]]:
    out: dict[str, dict[str, float]] = {}
    for pol in ds.polarization.values:
        d = ds.sel(polarization=pol, wavelength_nm=lam)
        r = ref.sel(polarization=pol, wavelength_nm=lam)
        rl = [str(x) for x in r.label.values[: int(r.n_modes)]]
        for m in range(int(d.n_modes)):
            label = str(d.label.values[m])
            if label not in rl:
                out.setdefault("unmatched", {})[label] = 1.0
                continue
            k = rl.index(label)
            n_ref = complex(r.neff.values[k])
            kind = ("photonic" if not label.startswith("SPP") else
                    "far-SPP" if abs(n_ref) > 3 else "plasmonic")
            gp_ref = r.gamma_P.values[k]
            scale = np.maximum(1.0, np.abs(gp_ref))
            e = {
                "neff": abs(complex(d.neff.values[m]) - n_ref) / (abs(n_ref) if abs(n_ref) > 3
                                                                  else 1.0),
                "alpha_cm": abs(float(d.alpha_cm.values[m]) - float(r.alpha_cm.values[k])),
                "gamma_E": float(np.max(np.abs(d.gamma_E.values[m] - r.gamma_E.values[k]))),
                "gamma_P": float(np.max(np.abs(d.gamma_P.values[m] - gp_ref) / scale)),
            }
            agg = out.setdefault(kind, {"neff": 0.0, "alpha_cm": 0.0, "gamma_E": 0.0,
                                        "gamma_P": 0.0})
            for key, v in e.items():
                agg[key] = max(agg[key], v)
    for label in rl_missing(ds, ref, lam):
        out.setdefault("missing", {})[label] = 1.0
    return out


def rl_missing(ds, ref, lam: float) -> list[str]:
    missing = []
    for pol in ref.polarization.values:
        d = ds.sel(polarization=pol, wavelength_nm=lam)
        r = ref.sel(polarization=pol, wavelength_nm=lam)
        have = {str(x) for x in d.label.values[: int(d.n_modes)]}
        missing += [str(x) for x in r.label.values[: int(r.n_modes)] if str(x) not in have]
    return missing


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--stacks", nargs="+", default=list(STACKS))
    parser.add_argument("--resolutions", nargs="+", type=float, default=[4.0, 2.0, 1.0])
    parser.add_argument("--wavelength", type=float, default=630.0)
    parser.add_argument("--no-averaging", action="store_true")
    parser.add_argument("--json", default=None)
    args = parser.parse_args(argv)

    from qdcavity.api import solve
    from qdcavity.plugins.tidy3d._runtime import tidy3d

    tidy3d()  # pay the import (~2.5 s) outside the timings
    lam = args.wavelength
    rows = []
    for name in args.stacks:
        t0 = time.perf_counter()
        ref = solve(name, "modes", backend="tmm", wavelength_nm=lam)
        t_tmm = time.perf_counter() - t0
        previous = None
        for res in sorted(args.resolutions, reverse=True):
            opts = {"resolution_nm": res, "interface_averaging": not args.no_averaging}
            t0 = time.perf_counter()
            ds = solve(name, "modes", backend="tidy3d", wavelength_nm=lam, options=opts)
            t_td = time.perf_counter() - t0
            err = errors(ds, ref, lam)
            row = {"stack": name, "resolution_nm": res, "seconds": t_td, "tmm_seconds": t_tmm,
                   "time_ratio": t_td / t_tmm, "cells": ds.attrs["tidy3d_grid_cells"],
                   "solves": ds.attrs["tidy3d_mode_solves"], "errors": err}
            rows.append(row)
            line = (f"{name:8s} h={res:5.2f} nm  {t_td:6.2f} s ({t_td / t_tmm:5.1f}x tmm)  "
                    f"cells={row['cells']:5d}")
            for kind in ("photonic", "plasmonic", "far-SPP"):
                if kind in err:
                    e = err[kind]
                    line += (f" | {kind[:5]} dn={e['neff']:.1e} da={e['alpha_cm']:.2g} "
                             f"dGE={e['gamma_E']:.1e} dGP={e['gamma_P']:.1e}")
                    if previous and kind in previous:
                        ratio = previous[kind]["neff"] / max(e["neff"], 1e-16)
                        line += f" (x{ratio:.1f})"
            for key in ("missing", "unmatched"):
                if key in err:
                    line += f" | {key}: {', '.join(err[key])}"
            print(line, flush=True)
            previous = err
    if args.json:
        with open(args.json, "w", encoding="utf-8") as fh:
            json.dump(rows, fh, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
