"""Scattering-driven outcoupling: Meep (2D cell, random cylinders) against the TMM model at
``geometry = "2d"``, with wall times.

Run::

    python benchmarks/bench_outcoupling.py                      # TE-DIZO, res 100, 8 realizations
    python benchmarks/bench_outcoupling.py --resolution 50 --realizations 4 --window 6
    python benchmarks/bench_outcoupling.py --radius 20 --fraction 0.03 --json out.json

BE (glass substrate: its TE0 reaches ~0.8 um into the glass, so the overlap region, the PML
padding and the substrate flux line go deeper)::

    python benchmarks/bench_outcoupling.py --stack BE --resolution 50 --realizations 4
        --window 6 --no-plain --option pad_lo_um=1.2 --option flux_depth_um=0.8
        --option region_below_um=-0.8

Prints, for the Meep run and for its like-for-like TMM problem (``tmm_counterpart``: the
snapped stack with the gain layer at the mean medium of host + cylinders, the realized area
fraction), alpha_abs, alpha_sca, alpha_up = escape x alpha_sca (the upward-scattering
coefficient), the escape and substrate fractions, gamma_P, neff and the half width of the
angular pattern:
Meep's mean, the standard deviation over the realizations and the standard error of the mean
(SEM = std / sqrt(R)), TMM's value, and the difference in SEMs; alpha_up and the escape
fraction also divided by ``top_check`` (Meep's excess field above the top electrode, the grid
error of the thin top Ag measured in the same run). Also TMM on the stack as given
(2d and 3d) for context, and the wall times (Meep, TMM) and their ratio. The Meep run takes
minutes (res 50) to tens of minutes (res 100) on 2 cores. Numbers: docs/outcoupling.md.
"""

from __future__ import annotations

import argparse
import json
import os
import time

import numpy as np

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--stack", default="TE-DIZO")
    ap.add_argument("--wavelength", type=float, default=630.0)
    ap.add_argument("--radius", type=float, default=15.0, help="cylinder radius, nm")
    ap.add_argument("--fraction", type=float, default=0.05, help="area fraction in the layer")
    ap.add_argument("--resolution", type=float, default=100.0, help="Meep pixels per um")
    ap.add_argument("--realizations", type=int, default=8)
    ap.add_argument("--window", type=float, default=8.0, help="scatterer window, um")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--no-plain", action="store_true",
                    help="skip the plain-stack run (alpha_abs and gamma_P then come from the "
                         "effective-medium reference)")
    ap.add_argument("--option", action="append", default=[], metavar="KEY=VALUE",
                    help="another Meep option (JSON value), e.g. for BE's glass substrate: "
                         "--option pad_lo_um=1.2 --option flux_depth_um=0.8 "
                         "--option region_below_um=-0.8")
    ap.add_argument("--json", help="write the numbers to this file")
    args = ap.parse_args()

    import qdcavity
    from qdcavity.analyses import make_analysis
    from qdcavity.plugins.meep.outcoupling import tmm_counterpart

    stack = qdcavity.load_stack(args.stack)
    analysis = make_analysis("outcoupling", wavelength_nm=args.wavelength, geometry="2d",
                             particle_radius_nm=args.radius, volume_fraction=args.fraction,
                             stripe_length_um=[0, 100], gain_scan_cm=[0])
    opts = {"resolution": args.resolution, "realizations": args.realizations,
            "window_um": args.window, "seed": args.seed, "plain_reference": not args.no_plain}
    for item in args.option:
        key, _, value = item.partition("=")
        opts[key.strip()] = json.loads(value)
    t0 = time.perf_counter()
    meep = qdcavity.solve(stack, analysis, backend="meep", options=opts)
    t_meep = time.perf_counter() - t0
    s2, a2 = tmm_counterpart(stack, analysis, opts)
    qdcavity.solve(s2, a2)  # warm-up (imports, caches)
    t0 = time.perf_counter()
    tmm = qdcavity.solve(s2, a2)
    t_tmm = time.perf_counter() - t0
    plain2 = qdcavity.solve(stack, analysis)
    plain3 = qdcavity.solve(stack, make_analysis(
        "outcoupling", **{**analysis.model_dump(exclude={"kind"}), "geometry": "3d"}))
    R = args.realizations

    def row(name: str, m: np.ndarray | float, t: float, fmt: str = "{:9.4g}") -> dict:
        m = np.atleast_1d(np.asarray(m, dtype=float))
        mean = float(np.mean(m))
        std = float(np.std(m, ddof=1)) if m.size > 1 else 0.0
        sem = std / np.sqrt(m.size) if m.size > 1 else 0.0
        z = (mean - t) / sem if sem > 0 else float("nan")
        print(f"{name:<22}" + fmt.format(mean) + "  " + fmt.format(std) + "  "
              + fmt.format(sem) + "  " + fmt.format(t) + f"  {z:7.2f}")
        return {"meep_mean": mean, "meep_std": std, "meep_sem": sem, "tmm_2d": t,
                "z": z, "meep_realizations": m.tolist()}

    v = lambda ds, k: float(np.real(ds[k].values[0]))  # noqa: E731
    print(f"{args.stack} {args.wavelength:g} nm, cylinders r = {args.radius:g} nm, "
          f"f = {a2.volume_fraction:.4f} ({meep.attrs['cylinders_per_realization']} per "
          f"realization), res {args.resolution:g}/um, {R} realizations, window "
          f"{args.window:g} um, cell {meep.attrs['cell_um']} um")
    print(f"{'quantity':<22}{'meep':>9}  {'std':>9}  {'SEM':>9}  {'tmm-2d':>9}  {'z=d/SEM':>7}")
    out = {"args": vars(args)}
    out["alpha_abs_cm"] = row("alpha_abs_cm (eff.)", v(meep, "alpha_abs_effective_cm"),
                              float(np.imag(tmm.neff.values[0])) * 4e7 * np.pi / args.wavelength)
    out["alpha_sca_cm"] = row("alpha_sca_cm", meep.alpha_sca_cm_realizations.values[0],
                              v(tmm, "alpha_sca_cm"))
    out["alpha_up_cm"] = row("alpha_up_cm", meep.alpha_up_cm_realizations.values[0],
                             v(tmm, "alpha_sca_cm") * v(tmm, "escape_fraction"))
    top = v(meep, "top_check")
    out["alpha_up_cm_top_corrected"] = row(
        "alpha_up / top_check", meep.alpha_up_cm_realizations.values[0] / top,
        v(tmm, "alpha_sca_cm") * v(tmm, "escape_fraction"))
    eta_pooled = v(meep, "escape_fraction")
    out["escape_fraction"] = row("escape (per real.)", meep.escape_fraction_realizations.values[0],
                                 v(tmm, "escape_fraction"))
    out["escape_fraction"]["meep_pooled"] = eta_pooled
    print(f"{'escape (pooled)':<22}{eta_pooled:9.4g}  {'':9}  {'':9}  "
          f"{v(tmm, 'escape_fraction'):9.4g}")
    print(f"{'escape / top_check':<22}{eta_pooled / top:9.4g}  {'':9}  {'':9}  "
          f"{v(tmm, 'escape_fraction'):9.4g}   (top_check {top:.4f})")
    out["top_check"] = top
    sub_m = float(meep.scattered_fraction.sel(channel="substrate").values[0])
    sub_t = float(tmm.scattered_fraction.sel(channel="substrate").values[0])
    out["substrate_fraction"] = {"meep_pooled": sub_m, "tmm_2d": sub_t}
    print(f"{'substrate (pooled)':<22}{sub_m:9.4g}  {'':9}  {'':9}  {sub_t:9.4g}")
    # neff, gamma_P, alpha_abs: Meep's plain run against TMM on the stack as given (or the
    # effective reference against the like-for-like stack with --no-plain)
    base, which = (tmm, "effective stack") if args.no_plain else (plain2, "stack as given")
    out["alpha_abs_cm_plain"] = {"meep": v(meep, "alpha_abs_cm"),
                                 "tmm": v(base, "alpha_abs_cm")}
    print(f"{'alpha_abs_cm':<22}{v(meep, 'alpha_abs_cm'):9.4g}  {'':9}  {'':9}  "
          f"{v(base, 'alpha_abs_cm'):9.4g}  (tmm: {which})")
    out["gamma_P"] = {"meep": v(meep, "gamma_P"), "tmm": v(base, "gamma_P")}
    print(f"{'gamma_P':<22}{v(meep, 'gamma_P'):9.4g}  {'':9}  {'':9}  "
          f"{v(base, 'gamma_P'):9.4g}  (tmm: {which})")
    nm, nt = complex(meep.neff.values[0]), complex(base.neff.values[0])
    out["neff"] = {"meep": [nm.real, nm.imag], "tmm": [nt.real, nt.imag]}
    print(f"{'Re neff':<22}{nm.real:9.5f}  {'':9}  {'':9}  {nt.real:9.5f}  (tmm: {which})")
    out["half_width_deg"] = {"meep": v(meep, "half_width_deg"), "tmm_2d": v(tmm,
                                                                            "half_width_deg")}
    print(f"{'half_width_deg':<22}{v(meep, 'half_width_deg'):9.4g}  {'':9}  {'':9}  "
          f"{v(tmm, 'half_width_deg'):9.4g}  (speckle-limited)")
    print(f"context, stack as given: tmm-2d alpha_sca {v(plain2, 'alpha_sca_cm'):.4g} cm^-1, "
          f"escape {v(plain2, 'escape_fraction'):.4g}; tmm-3d (spheres) alpha_sca "
          f"{v(plain3, 'alpha_sca_cm'):.4g}, escape {v(plain3, 'escape_fraction'):.4g}")
    print(f"tmm-2d: extinction {v(tmm, 'alpha_ext_cm'):.4g} cm^-1, <F> "
          f"{v(tmm, 'purcell_mean'):.3f}, forward share {v(tmm, 'forward_fraction'):.3f}")
    print(f"wall: meep {t_meep:.1f} s, tmm-2d {t_tmm:.2f} s, ratio {t_meep / t_tmm:.0f}")
    out["wall_s"] = {"meep": t_meep, "tmm_2d": t_tmm, "ratio": t_meep / t_tmm}
    if args.json:
        with open(args.json, "w", encoding="utf-8") as fh:
            json.dump(out, fh, indent=1)


if __name__ == "__main__":
    main()
