"""Meep backend against the TMM backend: wall time, peak memory and error per analysis.

Run::

    python benchmarks/bench_meep.py                           # TE-DIZO, default resolutions
    python benchmarks/bench_meep.py --analyses modes --resolutions 100 200 400
    python benchmarks/bench_meep.py --stack BE --json out.json

For each analysis (reflectance at normal incidence over 550-700 nm, modes TE+TM at 630 nm,
dipole emission at 630 nm) and each resolution (default: the backend's default) it prints the
wall time of ``solve(..., backend="meep")``, the peak resident memory of the Meep worker
processes (Linux ``ru_maxrss`` of the children of a fresh process per measurement, so the
largest worker of that analysis), the TMM backend's time
for the same answer and the ratio, and the largest error against TMM:

* reflectance: max |dR| over the band and the shift of the reflectance minimum;
* modes: |dneff|, |dalpha| (cm^-1), |dgamma_E|, |dgamma_P| (QD layer) of TE0 and TM0;
* dipole emission: relative Purcell error per orientation, |d air|, |d substrate| and
  |d (waveguide + spp + absorbed)| (the separable channels, see docs/meep.md).

Runs are sequential (one worker at a time); on a shared 2-core machine, run it alone.
"""

from __future__ import annotations

import argparse
import json
import resource
import sys
import time
from typing import Any

import numpy as np

from qdcavity.api import solve
from qdcavity.plugins.meep.backend import ANALYSIS_DEFAULTS

ANALYSES = ("reflectance", "modes", "dipole_emission")
PARAMS: dict[str, dict[str, Any]] = {
    "reflectance": {"wavelength_nm": {"start": 550, "stop": 700, "step": 2},
                    "polarizations": ["s"]},
    "modes": {"wavelength_nm": 630, "polarizations": ["TE", "TM"]},
    "dipole_emission": {"wavelength_nm": 630, "u_points": 200},
}


def _children_maxrss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024.0


def _label_row(ds, pol: str, label: str):
    sub = ds.sel(polarization=pol).isel(wavelength_nm=0)
    labels = [str(x) for x in sub.label.values]
    return sub.isel(mode=labels.index(label)) if label in labels else None


def compare(kind: str, ds, ref) -> dict[str, float]:
    if kind == "reflectance":
        r, r0 = ds.R.isel(angle_deg=0, polarization=0), ref.R.isel(angle_deg=0, polarization=0)
        return {"max_dR": float(abs(r - r0).max()),
                "dlambda_min_nm": float(r.idxmin()) - float(r0.idxmin()),
                "dR_min": float(r.min()) - float(r0.min())}
    if kind == "modes":
        out: dict[str, float] = {}
        for pol, label in (("TE", "TE0"), ("TM", "TM0")):
            m, t = _label_row(ds, pol, label), _label_row(ref, pol, label)
            if m is None or t is None:
                out[f"{label}_missing"] = 1.0
                continue
            out[f"{label}_dneff"] = abs(complex(m.neff) - complex(t.neff))
            out[f"{label}_dalpha_cm"] = abs(float(m.alpha_cm) - float(t.alpha_cm))
            for g in ("gamma_E", "gamma_P"):
                out[f"{label}_d{g}_QD"] = abs(float(m[g].sel(layer="QD"))
                                              - float(t[g].sel(layer="QD")))
        return out
    p, p0 = ds.purcell.isel(wavelength_nm=0), ref.purcell.isel(wavelength_nm=0)
    f, f0 = ds.fraction.isel(wavelength_nm=0), ref.fraction.isel(wavelength_nm=0)
    out = {}
    for o in ("horizontal", "vertical"):
        out[f"purcell_rel_{o}"] = float(p.sel(orientation=o) / p0.sel(orientation=o) - 1)
        for ch in ("air", "substrate"):
            out[f"d{ch}_{o}"] = float(f.sel(orientation=o, channel=ch)
                                      - f0.sel(orientation=o, channel=ch))
        g = f.sel(orientation=o, channel=["waveguide", "spp", "absorbed"]).sum()
        g0 = f0.sel(orientation=o, channel=["waveguide", "spp", "absorbed"]).sum()
        out[f"dguided_{o}"] = float(g - g0)
    return out


def measure(stack: str, kind: str, res: float, extra: dict[str, Any]) -> dict[str, Any]:
    """One Meep solve and its TMM reference, in this process (see :func:`isolated`)."""
    params = PARAMS[kind]
    solve(stack, kind, backend="tmm", **params)  # warm-up: imports, material tables
    t0 = time.perf_counter()
    ref = solve(stack, kind, backend="tmm", **params)
    t_tmm = time.perf_counter() - t0
    t0 = time.perf_counter()
    ds = solve(stack, kind, backend="meep", options={**extra, "resolution": res}, **params)
    t_meep = time.perf_counter() - t0
    return {"analysis": kind, "stack": stack, "resolution": res,
            "meep_s": round(t_meep, 2), "tmm_s": round(t_tmm, 4),
            "ratio": round(t_meep / max(t_tmm, 1e-9), 1),
            "worker_peak_rss_mb": round(_children_maxrss_mb(), 1),
            **{k: float(np.round(v, 6)) for k, v in compare(kind, ds, ref).items()}}


def isolated(stack: str, kind: str, res: float, extra: dict[str, Any]) -> dict[str, Any]:
    """:func:`measure` in a fresh python process, so that the peak RSS of its children is the
    peak of this analysis' Meep workers alone (ru_maxrss of children only ever grows)."""
    import subprocess

    cmd = [sys.executable, __file__, "--one", kind, str(res), "--stack", stack,
           *[a for k, v in extra.items() for a in ("--option", f"{k}={json.dumps(v)}")]]
    out = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if out.returncode != 0:
        return {"analysis": kind, "stack": stack, "resolution": res,
                "error": out.stderr.strip().splitlines()[-1:] or ["failed"]}
    return json.loads(out.stdout.strip().splitlines()[-1])


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--stack", default="TE-DIZO")
    ap.add_argument("--analyses", nargs="+", default=list(ANALYSES), choices=ANALYSES)
    ap.add_argument("--resolutions", nargs="+", type=float, default=None,
                    help="pixels per um (default: each analysis' default)")
    ap.add_argument("--option", action="append", default=[], metavar="KEY=JSON",
                    help="extra backend option, e.g. --option radius_um=2.0")
    ap.add_argument("--json", help="write the results to this file")
    ap.add_argument("--one", nargs=2, metavar=("ANALYSIS", "RESOLUTION"),
                    help=argparse.SUPPRESS)  # internal: one measurement, JSON on stdout
    args = ap.parse_args(argv)
    extra = {}
    for item in args.option:
        key, _, value = item.partition("=")
        extra[key] = json.loads(value)
    if args.one:
        print(json.dumps(measure(args.stack, args.one[0], float(args.one[1]), extra)))
        return 0
    rows = []
    for kind in args.analyses:
        for res in args.resolutions or [ANALYSIS_DEFAULTS[kind]["resolution"]]:
            row = isolated(args.stack, kind, float(res), extra)
            rows.append(row)
            print(json.dumps(row), flush=True)
    if args.json:
        with open(args.json, "w", encoding="utf-8") as fh:
            json.dump(rows, fh, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
