"""Guided-mode solver of the TMM backend (plugins/tmm/modes.py, fields.py), cross-checked against
analytic results and the independent finite-difference solver (qdcavity-fdmodes).

Modes found at 630 nm on the paper stacks (indices below, QD bleached), TE and TM, default
search region (Re neff from 1.00001 -- 1.52171 for BE, whose glass side is not shielded -- to
1.25 x the largest plasmon estimate + 0.5; Im neff in [-0.05, max(1, 1.5 max Im estimate + 0.25)]);
gamma_E / gamma_P of the QD layer:

TE-DIZO  SPP0 9.320684+0.839112i TM plasmonic bound (Ag/Si plasmon)         0.0000 / 0.0000
         SPP1 2.168165+0.024766i TM plasmonic substrate-radiating          0.0107 / 0.0211
         SPP2 1.942475+0.011423i TM plasmonic substrate-radiating          0.0126 / 0.0173
         TE0  1.573025+0.005546i TE photonic  substrate-radiating          0.2566 / 0.2732
         TM0  1.323438+0.011469i TM photonic  substrate-radiating          0.1746 / 0.2815
         TE1  1.178290+0.009390i TE photonic  substrate-radiating          0.0318 / 0.0451
         TM1  1.024040+0.001264i TM photonic  substrate-radiating          0.0118 / 0.0212
TE-IZOB  SPP0 9.320684+0.839112i, SPP1 1.991160+0.021460i, SPP2 1.899411+0.021415i,
         TE0  1.471244+0.005795i (0.1915 / 0.2180), TM0 1.059232+0.003587i (0.0180 / 0.0355)
TE-IZOT  SPP0 9.320684+0.839112i, SPP1 2.169111+0.024650i,
         TM0  1.708298+0.015180i (0.2078 / 0.3033), TE0 1.449420+0.007169i (0.2907 / 0.3359),
         TM1  1.048995+0.002467i
BE       SPP0 1.793327+0.014814i TM plasmonic bound (0.3352 / 0.4399),
         TE0  1.579685+0.003002i TE photonic bound (0.0724 / 0.0767); no TM photonic mode above
         the glass index (below it: a TM mode leaking into the glass, 1.028818+0.000821i).
"""

from __future__ import annotations

import math
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest

from qdcavity.plugins.tmm.fields import (
    confinement,
    confinements,
    confinements_and_profiles,
    gain_overlap,
    mode_profile,
)
from qdcavity.plugins.tmm.modes import (
    Mode,
    SearchRegion,
    continue_modes,
    count_modes,
    dispersion_log,
    find_modes,
    search_region,
)
from qdcavity.stack import load_stack

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "plugins" / "contrib"
                       / "qdcavity-fdmodes" / "src"))
from qdcavity_fdmodes.plugin import find_modes as fd_find_modes  # noqa: E402
from qdcavity_fdmodes.plugin import parse_options as fd_options  # noqa: E402
from qdcavity_fdmodes.solver import solve_modes_fd  # noqa: E402

WL = 630.0
SI, AG, IZO = 3.879 + 0.0164j, 0.0569 + 4.2543j, 1.7853 + 0.0032j
PEDOT, TFB, QD = 1.5036 + 0.0131j, 1.7792 + 0j, 1.6746 + 0j
ZNMGO, GLASS, AIR = 1.6243 + 0.0169j, 1.5217 + 0j, 1.0 + 0j

PAPER = {
    "TE-DIZO": ([SI, AG, IZO, PEDOT, TFB, QD, ZNMGO, IZO, AG, AIR],
                [100, 140, 40, 30, 70, 40, 120, 20]),
    "TE-IZOB": ([SI, AG, IZO, PEDOT, TFB, QD, ZNMGO, AG, AIR], [100, 140, 40, 30, 70, 40, 20]),
    "TE-IZOT": ([SI, AG, PEDOT, TFB, QD, ZNMGO, IZO, AG, AIR], [100, 40, 30, 70, 40, 120, 20]),
    "BE": ([GLASS, IZO, PEDOT, TFB, QD, ZNMGO, AG, AIR], [110, 40, 30, 70, 40, 100]),
}


def paper(name: str) -> tuple[np.ndarray, np.ndarray, int]:
    """(n, d_nm, index of the QD medium)."""
    n, d = PAPER[name]
    return np.array(n, dtype=complex), np.array(d, dtype=float), n.index(QD)


@pytest.fixture(scope="module")
def paper_modes() -> dict[str, list[Mode]]:
    out = {}
    for name in PAPER:
        n, d, _ = paper(name)
        out[name] = find_modes(n, d, WL, "TE") + find_modes(n, d, WL, "TM")
    return out


def lowest(modes: list[Mode], pol: str) -> Mode:
    """TE0 / TM0; for BE, which has no TM photonic mode, the highest-Re TM mode (the SPP)."""
    lab = {m.label: m for m in modes if m.polarization == pol}
    return lab.get(f"{pol}0") or max(lab.values(), key=lambda m: m.neff.real)


# --------------------------------------------------------------------------- analytic checks


@pytest.mark.parametrize("metal_side", ["substrate", "superstrate"])
@pytest.mark.parametrize("n_d,layer_nm", [(1.0, None), (1.5, 50.0), (IZO, 30.0)])
def test_spp_single_interface(metal_side: str, n_d: complex, layer_nm: float | None) -> None:
    """A lone metal/dielectric interface (a layer of the same dielectric changes nothing):
    the TM root is sqrt(e1 e2 / (e1 + e2)) to 1e-10, and it is the only TM mode."""
    media = [AG, n_d] if layer_nm is None else [AG, n_d, n_d]
    if metal_side == "superstrate":
        media = media[::-1]
    d = [] if layer_nm is None else [layer_nm]
    modes = find_modes(np.array(media), np.array(d), WL, "TM")
    e1, e2 = AG**2, complex(n_d) ** 2
    ref = np.sqrt(e1 * e2 / (e1 + e2))
    assert len(modes) == 1
    assert abs(modes[0].neff - ref) < 1e-10 * abs(ref)
    assert modes[0].kind_material == "plasmonic" and modes[0].kind_branch == "bound"
    assert find_modes(np.array(media), np.array(d), WL, "TE") == []


@pytest.mark.parametrize("pol", ["TE", "TM"])
def test_symmetric_slab(pol: str) -> None:
    """n = 2 core, 300 nm, in n = 1.5: every root satisfies the even/odd tan relation to 1e-10
    and the number of modes is the analytic one, floor(2 V / pi) + 1."""
    n1, n2, d = 2.0, 1.5, 300.0
    k0 = 2 * math.pi / WL
    modes = find_modes(np.array([n2, n1, n2], dtype=complex), np.array([d]), WL, pol)
    v = k0 * d / 2 * math.sqrt(n1**2 - n2**2)
    assert len(modes) == math.floor(2 * v / math.pi) + 1 == 2
    r = (n1 / n2) ** 2 if pol == "TM" else 1.0
    for i, m in enumerate(modes):
        assert abs(m.neff.imag) < 1e-12
        b = m.neff.real
        u = k0 * d / 2 * math.sqrt(n1**2 - b**2)  # half-phase in the core
        w = k0 * d / 2 * math.sqrt(b**2 - n2**2)  # decay in the cladding
        resid = u * math.tan(u) - r * w if i % 2 == 0 else -u / math.tan(u) - r * w
        assert abs(resid) < 1e-10 * max(1.0, u)
        assert m.label == f"{pol}{i}" and m.kind_branch == "bound"


# --------------------------------------------------------------------------- paper stacks


@pytest.mark.parametrize("name", list(PAPER))
def test_paper_stacks_fd_agreement(name: str, paper_modes: dict[str, list[Mode]]) -> None:
    """The FD solver (PML, 3 grids, Richardson) reproduces TE0 and TM0 to < 1e-4 in neff and
    < 1e-3 in gamma_E of the QD layer (observed: ~1e-9 for both)."""
    n, d, iqd = paper(name)
    print(f"\n{name} at {WL} nm:")
    for m in paper_modes[name]:
        ge, gp = confinement(n, d, WL, m)
        print(f"  {m.label:6s} {m.polarization} {m.neff:.6f} {m.kind_material:9s} "
              f"{m.kind_branch:19s} alpha={m.alpha_cm:8.1f}/cm  QD gamma_E={ge[iqd]:.4f} "
              f"gamma_P={gp[iqd]:.4f}")
    for pol in ("TE", "TM"):
        m = lowest(paper_modes[name], pol)
        fd = solve_modes_fd(n, d, WL, pol, guesses=[m.neff])[0]
        ge = confinement(n, d, WL, m).gamma_E
        assert abs(fd.neff - m.neff) < 1e-4, (pol, fd.neff, m.neff)
        assert abs(fd.gamma_E[iqd] - ge[iqd]) < 1e-3
        assert abs(fd.gamma_E.sum() - 1) < 1e-9


@pytest.mark.parametrize("name", list(PAPER))
@pytest.mark.parametrize("pol", ["TE", "TM"])
def test_count_matches_and_no_duplicates(name: str, pol: str,
                                         paper_modes: dict[str, list[Mode]]) -> None:
    """The argument-principle count over the whole search boundary equals the number of
    distinct roots returned (nothing missed, nothing duplicated)."""
    n, d, _ = paper(name)
    modes = [m for m in paper_modes[name] if m.polarization == pol]
    assert count_modes(n, d, WL, pol) == sum(m.multiplicity for m in modes) == len(modes)
    z = np.array([m.neff for m in modes])
    dist = np.abs(z[:, None] - z[None, :]) + np.eye(z.size)
    assert dist.min() > 1e-6
    reg = search_region(n, d, WL)
    assert all(reg.re_min <= m.neff.real <= reg.re_max for m in modes)
    assert [m.neff.real for m in modes] == sorted((m.neff.real for m in modes), reverse=True)


def test_region_shift_finds_same_modes() -> None:
    """Moving the rectangle edges (different subdivision) gives the same roots."""
    n, d, _ = paper("TE-DIZO")
    a = find_modes(n, d, WL, "TM")
    r = search_region(n, d, WL)
    b = find_modes(n, d, WL, "TM", region=SearchRegion(r.re_min, r.re_max + 0.731, -0.0377,
                                                       r.im_max + 0.113, r.splits))
    assert len(a) == len(b)
    assert max(abs(x.neff - y.neff) for x, y in zip(a, b, strict=True)) < 1e-11


@pytest.mark.parametrize("name", list(PAPER))
def test_both_polarizations_in_one_search(name: str,
                                          paper_modes: dict[str, list[Mode]]) -> None:
    """find_modes(..., "both") (one contour evaluation for TE and TM, as the modes analysis
    uses it) returns the separate TE and TM solves, labels included, to 1e-12 (observed 2e-15);
    confinements() of all of them at once equals confinement() mode by mode to 1e-13."""
    n, d, _ = paper(name)
    both = find_modes(n, d, WL, "both")
    single = sorted(paper_modes[name], key=lambda m: -m.neff.real)
    assert [(m.label, m.polarization) for m in both] == [(m.label, m.polarization)
                                                         for m in single]
    assert max(abs(a.neff - b.neff) for a, b in zip(both, single, strict=True)) < 1e-12
    for m, c in zip(both, confinements(n, d, WL, both), strict=True):
        one = confinement(n, d, WL, m)
        assert np.abs(c.gamma_E - one.gamma_E).max() < 1e-13
        assert np.abs(c.gamma_P - one.gamma_P).max() < 1e-13
        assert c.truncated == one.truncated
    # confinements and field profiles from one coefficient computation (the modes analysis)
    z = np.linspace(-200.0, float(d.sum()) + 200.0, 97)
    together = confinements_and_profiles(n, d, WL, both, z)
    for m, (c, prof) in zip(both, together, strict=True):
        one = confinement(n, d, WL, m)
        alone = mode_profile(n, d, WL, m, z)
        assert np.abs(c.gamma_E - one.gamma_E).max() < 1e-13 and c.truncated == one.truncated
        assert prof.keys() == alone.keys()
        for key, value in alone.items():
            if isinstance(value, np.ndarray):
                assert np.allclose(prof[key], value, rtol=1e-12, atol=1e-12), key
            else:
                assert prof[key] == value, key


# --------------------------------------------------------------------------- gain perturbation


@pytest.mark.parametrize("name,pol", [("TE-DIZO", "TE"), ("TE-DIZO", "TM"), ("BE", "TE"),
                                      ("TE-IZOT", "TM")])
def test_gain_perturbation(name: str, pol: str, paper_modes: dict[str, list[Mode]]) -> None:
    """Gain g = +-100 /cm in the QD layer (k -> k - g lambda / 4 pi), re-solved:

    * the second-order residual (dA(g) + dA(-g)) / 2 is < 1e-5 |dA| (observed ~2e-6);
    * the first-order slope equals the exact complex-overlap coefficient to 1e-6 (relative);
    * it equals gamma_P (real-field approximation) to 0.5 % (observed <= 0.25 % here).
    """
    n, d, iqd = paper(name)
    m = lowest(paper_modes[name], pol)
    g = 100.0
    dalpha = []
    for sign in (1, -1):
        n2 = n.copy()
        n2[iqd] = n[iqd] - 1j * sign * g * WL * 1e-7 / (4 * math.pi)
        m2 = continue_modes(n2, d, WL, [m], fallback=False)[0]
        assert m2 is not None
        dalpha.append(m2.alpha_cm - m.alpha_cm)
    slope = -(dalpha[0] - dalpha[1]) / (2 * g)
    second = 0.5 * (dalpha[0] + dalpha[1])
    assert abs(second) < 1e-5 * abs(dalpha[0])
    exact = gain_overlap(n, d, WL, m)[iqd]
    assert abs(slope - exact) < 1e-6 * exact
    gp = confinement(n, d, WL, m).gamma_P[iqd]
    assert abs(gp - slope) < 5e-3 * slope


# --------------------------------------------------------------------------- fields


@pytest.mark.parametrize("name", list(PAPER))
def test_gamma_sums_and_continuity(name: str, paper_modes: dict[str, list[Mode]]) -> None:
    """gamma_E sums to 1, is >= 0; tangential fields (Ey, Hx | Hy, Ex) are continuous."""
    n, d, _ = paper(name)
    zi = np.concatenate([[0.0], np.cumsum(d)])
    for m in paper_modes[name]:
        c = confinement(n, d, WL, m)
        assert c.tails_finite
        assert abs(c.gamma_E.sum() - 1) < 1e-12 and (c.gamma_E >= 0).all()
        z = np.concatenate([zi - 1e-9, zi + 1e-9, np.linspace(-50, zi[-1] + 50, 301)])
        prof = mode_profile(n, d, WL, m, z)
        assert abs(prof["E_abs2"].max() - 1) < 1e-12  # normalize="grid"
        zf = np.concatenate([np.linspace(0, zi[-1], 100001), zi - 1e-9, zi + 1e-9])
        fine = mode_profile(n, d, WL, m, zf, normalize="stack")["E_abs2"]
        coarse = mode_profile(n, d, WL, m, z, normalize="stack")["E_abs2"]
        assert coarse.max() < 1 + 1e-8 and abs(fine.max() - 1) < 1e-6
        keys = ("Hy", "Ex") if m.polarization == "TM" else ("Ey", "Hx")
        k = zi.size
        for key in keys:
            f = prof[key]
            scale = np.abs(f).max()
            assert np.abs(f[:k] - f[k:2 * k]).max() < 1e-6 * scale, (m.label, key)


@pytest.mark.parametrize("label", ["TE0", "TM0", "SPP1"])
def test_closed_form_integrals_match_quadrature(label: str,
                                                paper_modes: dict[str, list[Mode]]) -> None:
    """Closed-form gamma_E and gamma_P agree with dense trapezoid quadrature of the profile
    (claddings truncated where the field has decayed below 1e-9 in intensity)."""
    n, d, _ = paper("TE-DIZO")
    m = next(x for x in paper_modes["TE-DIZO"] if x.label == label)
    zi = np.concatenate([[0.0], np.cumsum(d)])
    ks = [abs(m.kz_cladding["substrate"].imag), abs(m.kz_cladding["superstrate"].imag)]
    lo, hi = -10.4 / ks[0], zi[-1] + 10.4 / ks[1]
    edges = [lo, *zi, hi]
    segs = [np.linspace(a + 1e-9, b - 1e-9, 20001)
            for a, b in zip(edges[:-1], edges[1:], strict=True)]
    p = mode_profile(n, d, WL, m, np.concatenate(segs))  # one call: one normalisation
    ge, gp = confinement(n, d, WL, m)
    e2 = np.split(p["E_abs2"], n.size)
    sx = np.split(p["Sx"], n.size)
    ej = np.array([np.trapezoid(e, z) for e, z in zip(e2, segs, strict=True)])
    tot_s = sum(np.trapezoid(s, z) for s, z in zip(sx, segs, strict=True))
    assert np.abs(ej / ej.sum() - ge).max() < 2e-6
    assert np.abs(n.real * ej / tot_s - gp).max() < 2e-6


def test_leaky_mode_flagged() -> None:
    """A mode on the outgoing sheet of a lossless substrate grows into it: truncated tail."""
    n, d, _ = paper("BE")
    r = search_region(n, d, WL)
    modes = find_modes(n, d, WL, "TM", region=SearchRegion(1.00001, r.re_max, r.im_min,
                                                           r.im_max, (GLASS.real,)))
    leaky = [m for m in modes if m.kind_branch == "leaky"]
    assert leaky and all(m.kz_branch["substrate"] == "outgoing" for m in leaky)
    c = confinement(n, d, WL, leaky[0])
    assert not c.tails_finite and c.truncated == ("substrate",)
    assert abs(c.gamma_E.sum() - 1) < 1e-12


# --------------------------------------------------------------------------- tracking


def test_continue_modes_tracks_sweep(paper_modes: dict[str, list[Mode]]) -> None:
    """Modes tracked 630 -> 636 nm in 2 nm steps equal a fresh global solve at 636 nm."""
    n, d, _ = paper("TE-DIZO")
    cur: list[Mode] = paper_modes["TE-DIZO"]
    for wl in (632.0, 634.0, 636.0):
        nxt = continue_modes(n, d, wl, cur)
        assert all(m is not None for m in nxt)
        cur = [m for m in nxt if m is not None]
    fresh = find_modes(n, d, 636.0, "TE") + find_modes(n, d, 636.0, "TM")
    assert len(fresh) == len(cur)
    for m in cur:
        twin = min(fresh, key=lambda f: abs(f.neff - m.neff))
        assert abs(twin.neff - m.neff) < 1e-11 and twin.label == m.label


def test_random_stacks_count_matches() -> None:
    """Random stacks (dielectrics 1.0-2.6, lossy or not, Ag, Si; 0-6 layers of 5-400 nm):
    the boundary winding number equals the zeros found, with multiplicity."""
    rng = np.random.default_rng(7)

    def medium() -> complex:
        r = rng.random()
        if r < 0.25:
            return AG
        if r < 0.3:
            return SI
        return rng.uniform(1.0, 2.6) + 1j * rng.choice([0.0, rng.uniform(0.0, 0.05)])

    for _ in range(12):
        n_layers = int(rng.integers(0, 7))
        n = np.array([medium() for _ in range(n_layers + 2)], dtype=complex)
        d = rng.uniform(5, 400, n_layers)
        for pol in ("TE", "TM"):
            with warnings.catch_warnings():
                warnings.simplefilter("error")  # an inconsistent winding number fails here
                modes = find_modes(n, d, WL, pol)
            assert count_modes(n, d, WL, pol) == sum(m.multiplicity for m in modes)


# --------------------------------------------------------------------------- wavelength grid

GRID_NM = np.arange(550.0, 700.0 + 1e-9, 2.5)
SHIPPED = ["BE", "TE-IZOB", "TE-IZOT", "TE-DIZO"]  # geometries/*.toml


@pytest.mark.parametrize("name", SHIPPED)
def test_wavelength_grid_winding_matches_roots(name: str) -> None:
    """The shipped stacks (tabulated materials) at 550-700 nm every 2.5 nm, QD bleached and
    not, TE and TM solved together: no RuntimeWarning from the search (escalated to errors:
    a split whose children's winding numbers do not add up, or zeros found != the boundary
    winding number), and the winding number from an independent subdivision (count_modes: one
    contour per analytic part) equals the zeros returned, with multiplicity, all distinct.

    Near the Ag/Si surface-plasmon resonance (eps_Si + eps_Ag ~ 0 at 560-600 nm) the plasmon
    estimate pushes the search rectangle to Im(neff) ~ 15-25, where the phase of f turns by
    ~2 pi per unit of Im(neff); the former midpoint-probe sampling aliased those turns by
    multiples of 2 pi (e.g. TE-DIZO 570 nm TM: "0 zeros found but the boundary winding number
    is -7"; TE-IZOB 585 nm TM: 5 vs 15). Observed now: no warning at any 1 nm step.
    """
    stack = load_stack(name)
    d = stack.thicknesses_nm
    for zero_k in ([], ["QD"]):
        for lam, n in zip(GRID_NM, stack.indices(GRID_NM, zero_k=zero_k), strict=True):
            with warnings.catch_warnings():
                warnings.simplefilter("error")
                modes = find_modes(n, d, lam, "both")
                count = count_modes(n, d, lam, "both")
            assert count == sum(m.multiplicity for m in modes), (name, lam, zero_k)
            for pol in ("TE", "TM"):
                z = np.array([m.neff for m in modes if m.polarization == pol])
                dist = np.abs(z[:, None] - z[None, :]) + np.eye(z.size)
                assert dist.size == 0 or dist.min() > 1e-6, (name, lam, pol)


def _uniform_winding(n: np.ndarray, d: np.ndarray, lam: float, pol: str, points: int
                     ) -> tuple[float, float]:
    """Winding number of f over the search region's boundary from uniform sampling (each
    analytic part on its documented sheets: outgoing left of a split at Re N_c, proper right
    of it), and the largest phase step between samples."""
    r = search_region(n, d, lam)
    xs = [r.re_min, *r.splits, r.re_max]
    total, worst = 0.0, 0.0
    for x0, x1 in zip(xs[:-1], xs[1:], strict=True):
        branch = ["outgoing" if n[c].real in r.splits and x1 <= n[c].real else "proper"
                  for c in (0, -1)]
        corners = [complex(x0, r.im_min), complex(x1, r.im_min), complex(x1, r.im_max),
                   complex(x0, r.im_max), complex(x0, r.im_min)]
        t = np.linspace(0.0, 1.0, points, endpoint=False)
        z = np.concatenate([a + (b - a) * t for a, b in zip(corners[:-1], corners[1:],
                                                            strict=True)] + [[corners[0]]])
        step = np.diff(dispersion_log(n, d, lam, pol, z, *branch).imag)
        step = np.mod(step + np.pi, 2 * np.pi) - np.pi
        total += step.sum() / (2 * math.pi)
        worst = max(worst, float(np.abs(step).max()))
    return total, worst


@pytest.mark.parametrize("name,lam,pol", [("TE-DIZO", 570.0, "TM"), ("TE-IZOB", 585.0, "TM"),
                                          ("TE-IZOT", 585.0, "TE")])
def test_formerly_aliased_cases_dense_winding(name: str, lam: float, pol: str) -> None:
    """Cases whose winding numbers the old sampling got wrong (-7, 15 and -5): brute-force
    uniform sampling of the boundary at 20000 and 40000 points per edge (largest phase step
    observed 0.11 rad, so no 2 pi ambiguity) gives the same integer, within 1e-6, and it
    equals the number of modes found."""
    stack = load_stack(name)
    n = stack.indices([lam], zero_k=["QD"])[0]
    d = stack.thicknesses_nm
    modes = find_modes(n, d, lam, pol)
    for points in (20000, 40000):
        total, worst = _uniform_winding(n, d, lam, pol, points)
        assert worst < 0.3
        assert abs(total - sum(m.multiplicity for m in modes)) < 1e-6


@pytest.mark.slow
@pytest.mark.parametrize("name", SHIPPED)
def test_fd_global_search_agrees_in_resonance_band(name: str) -> None:
    """At 575 nm (inside the band that used to fail) the independent FD plugin's own global
    search (qdcavity-fdmodes: shifted eigenvalues + plasmon guesses, PML claddings, one grid)
    finds the same physical modes (Im neff < 1) as the TMM search, one to one: same count,
    each within 5e-3 (observed <= 2.1e-3, the FD discretisation error at one grid level;
    distinct modes are >= 0.05 apart). The TMM's far-off roots at Im neff ~ 15 lie on the
    sheets documented in modes.py; the PML of the FD solver picks another sheet there."""
    stack = load_stack(name)
    lam = 575.0
    n = stack.indices([lam], zero_k=["QD"])[0]
    d = stack.thicknesses_nm
    opts = fd_options({"levels": 1})
    for pol in ("TE", "TM"):
        ours = sorted((m.neff for m in find_modes(n, d, lam, pol) if m.neff.imag < 1),
                      key=lambda z: -z.real)
        theirs = sorted((m.neff for m in fd_find_modes(n, d, lam, pol, opts)
                         if m.neff.imag < 1), key=lambda z: -z.real)
        assert len(ours) == len(theirs) > 0, (pol, ours, theirs)
        for a, b in zip(ours, theirs, strict=True):
            assert abs(a - b) < 5e-3, (pol, a, b)


def test_guided_re_floor_follows_the_unshielded_claddings() -> None:
    """The search floor shared by the TMM and fdmodes backends: the largest radiating
    cladding that no metal shields, else the smallest shielded one, else 0."""
    from qdcavity.modeset import guided_re_floor, radiating_claddings

    glass, air, ito, ag = 1.5**2, 1.0, 1.9**2, -17.0 + 0.7j
    eps = np.array([glass, ito, air], dtype=complex)
    assert radiating_claddings(eps) == [0, 2]
    assert guided_re_floor(eps) == pytest.approx(1.5)
    shielded_top = np.array([glass, ito, ag, air], dtype=complex)
    assert guided_re_floor(shielded_top) == pytest.approx(1.5)  # air is behind Ag
    all_shielded = np.array([glass, ag, ito, ag, air], dtype=complex)
    assert guided_re_floor(all_shielded) == pytest.approx(1.0)
    assert guided_re_floor(np.array([ag, ito, ag], dtype=complex)) == 0.0
