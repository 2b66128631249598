"""TMM backend speed, printed as ratios against named peers.

    python benchmarks/bench_tmm.py [--quick]

1. Reflectance of TE-DIZO, 151 wavelengths x s/p, against the `tmm` package (coh_tmm per
   wavelength and polarization): ratio tmm / qdcavity (target >= 100).
2. Full mode solve of each paper stack at 630 nm (TE and TM, every mode, gamma_E and gamma_P of
   every layer, no field profiles), target < 5 ms: the whole ``modes`` analysis
   (``solve_modes``: material indices, search, gammas, xarray dataset) and its numerical kernel
   alone (``find_modes(..., "both")`` + ``confinements``); best of 30, wall and CPU time (the
   machine is shared: the 1-minute load average is printed first).
3. The 100 x 100 map of the two IZO thicknesses of TE-DIZO (80-200 nm) computing TE0 and TM0
   with gamma_P, by continuation from the neighbouring point (global search as fallback):
   wall time (target < 60 s on 2 cores), ratio against a full global search per point
   estimated from a sample.
"""

from __future__ import annotations

import argparse
import os
import time

import numpy as np

from qdcavity.analyses import make_analysis
from qdcavity.plugins.tmm.fields import confinements
from qdcavity.plugins.tmm.modes import continue_modes, find_modes
from qdcavity.plugins.tmm.modeset_tmm import solve_modes
from qdcavity.plugins.tmm.reflectance import rt_spectra
from qdcavity.stack import load_stack


def best_of(fn, repeat: int = 5, timer=time.perf_counter) -> float:
    times = []
    for _ in range(repeat):
        t = timer()
        fn()
        times.append(timer() - t)
    return min(times)


def bench_reflectance() -> None:
    import tmm

    stack = load_stack("TE-DIZO")
    lam = np.arange(550.0, 700.5, 1.0)
    n = stack.indices(lam)
    d = stack.thicknesses_nm
    ours = best_of(lambda: rt_spectra(n, d, lam, np.array([0.0])), 20)

    def peer() -> None:
        for i, wl in enumerate(lam):
            nl = list(n[i, ::-1])  # tmm: light from the first medium (air on top)
            for pol in ("s", "p"):
                tmm.coh_tmm(pol, nl, [np.inf, *d[::-1], np.inf], 0.0, wl)

    theirs = best_of(peer, 3)
    print(f"reflectance 151 wl x s,p: qdcavity {ours * 1e3:.3f} ms, tmm package "
          f"{theirs * 1e3:.1f} ms  -> ratio {theirs / ours:.0f}x (target >= 100x)")


def bench_modes() -> None:
    analysis = make_analysis("modes", wavelength_nm=630, fields=False)
    for name in ("BE", "TE-IZOB", "TE-IZOT", "TE-DIZO"):
        stack = load_stack(name)
        n = stack.indices(630.0, zero_k=["QD"])[0]
        d = stack.thicknesses_nm

        def kernel(n=n, d=d) -> None:
            confinements(n, d, 630.0, find_modes(n, d, 630.0, "both"))

        full = [best_of(lambda s=stack: solve_modes(s, analysis), 30, timer)
                for timer in (time.perf_counter, time.process_time)]
        core = [best_of(kernel, 30, timer) for timer in (time.perf_counter, time.process_time)]
        print(f"modes {name:8s}: analysis {full[0] * 1e3:5.2f} ms wall / {full[1] * 1e3:5.2f} ms "
              f"CPU ({1 / full[0]:4.0f} solves/s); kernel {core[0] * 1e3:5.2f} / "
              f"{core[1] * 1e3:5.2f} ms (TE+TM, all modes, gammas; target < 5 ms)")


def lowest_two(n: np.ndarray, d: np.ndarray) -> list:
    """TE0 and TM0 from one global search (both polarizations)."""
    found = {m.label: m for m in find_modes(n, d, 630.0, "both")}
    return [found["TE0"], found["TM0"]]


def izo_map(points: int) -> tuple[float, int]:
    stack = load_stack("TE-DIZO")
    n = stack.indices(630.0, zero_k=["QD"])[0]
    d0 = stack.thicknesses_nm.copy()
    ib, it = stack.layer_names.index("IZO_bottom"), stack.layer_names.index("IZO_top")
    grid = np.linspace(80, 200, points)
    gamma = np.zeros((points, points, 2))
    fallbacks = 0
    t = time.perf_counter()
    row_start: list | None = None
    for i, tb in enumerate(grid):
        prev = row_start
        for j, tt in enumerate(grid):
            d = d0.copy()
            d[ib], d[it] = tb, tt
            if prev is None:
                modes = lowest_two(n, d)
            else:
                modes = continue_modes(n, d, 630.0, prev)
                if any(m is None for m in modes):
                    fallbacks += 1
                    modes = lowest_two(n, d)
            for k, c in enumerate(confinements(n, d, 630.0, modes[:2])):
                gamma[i, j, k] = c.gamma_P[5]
            prev = modes
            if j == 0:
                row_start = modes
    return time.perf_counter() - t, fallbacks


def bench_izo_map(points: int) -> None:
    elapsed, fallbacks = izo_map(points)
    stack = load_stack("TE-DIZO")
    n = stack.indices(630.0, zero_k=["QD"])[0]
    d = stack.thicknesses_nm
    per_global = best_of(lambda: find_modes(n, d, 630.0, "both"), 5)
    total = points * points
    print(f"IZO map {points}x{points}: {elapsed:.1f} s ({elapsed / total * 1e3:.2f} ms/point, "
          f"{fallbacks} global fallbacks); a global search per point would take "
          f"~{per_global * total:.0f} s -> continuation is {per_global * total / elapsed:.1f}x "
          "faster (target: 10,000 points < 60 s)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true", help="30 x 30 map instead of 100 x 100")
    args = parser.parse_args()
    print(f"load average (1, 5, 15 min): {', '.join(f'{x:.2f}' for x in os.getloadavg())} "
          f"on {os.cpu_count()} cores")
    bench_reflectance()
    bench_modes()
    bench_izo_map(30 if args.quick else 100)


if __name__ == "__main__":
    main()
