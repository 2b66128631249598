"""Physics tests of the classical dipole-emission kernel (CPS / Neyts / Furno)."""

from __future__ import annotations

import time

import numpy as np
import pytest

from qdcavity.plugins.tmm.dipole import CHANNELS, ORIENTATIONS, dipole_emission

AG = 0.0569 + 4.2543j  # 630 nm
SI = 3.879 + 0.01644j
IZO = 1.95 + 0.012j
WL = 630.0

# Si / Ag 100 / 1.78 140 / emitter 1.67 70 / 1.78 120 / Ag 20 / air
METAL_CLAD = (np.array([SI, AG, 1.78, 1.67 + 0.0j, 1.78, AG, 1.0]),
              np.array([100.0, 140.0, 70.0, 120.0, 20.0]), 3, 35.0)
# a TE-DIZO-like 8-layer QLED (QD layer k ignored by the kernel)
QLED = (np.array([SI, AG, IZO, 1.5 + 0.01j, 1.62, 1.67 + 0.028j, 1.85, IZO, AG, 1.0]),
        np.array([100.0, 140.0, 40.0, 30.0, 70.0, 40.0, 120.0, 20.0]), 5, 35.0)


def _fractions_ok(res, tol: float = 1e-9) -> None:
    np.testing.assert_allclose(res.fractions.sum(axis=1), 1.0, atol=tol)
    assert np.all(res.fractions >= -tol)
    assert res.fractions.shape == (3, len(CHANNELS))
    assert res.K.shape == res.P_top.shape == res.P_bottom.shape == (3, res.u.size)


@pytest.mark.parametrize("z", [1.0, 37.0, 99.0])
def test_homogeneous_medium_is_bulk(z: float) -> None:
    n = np.full(5, 1.7 + 0j)
    res = dipole_emission(n, np.array([50.0, 100.0, 80.0]), WL, 2, z)
    np.testing.assert_allclose(res.purcell, 1.0, atol=1e-6)
    _fractions_ok(res)
    np.testing.assert_allclose(res.fractions[:, :2], 0.5, atol=1e-6)  # air / substrate halves
    np.testing.assert_allclose(res.fractions[:, 2:], 0.0, atol=1e-9)
    assert res.poles.size == 0
    # analytic K(u) for u < 1: h = 3/4 (u/l + u l), v = 3/2 u^3/l
    u = res.u[(res.u > 0) & (res.u < 0.999)]
    k = dipole_emission(n, np.array([50.0, 100.0, 80.0]), WL, 2, z, u=u).K
    lz = np.sqrt(1 - u**2)
    np.testing.assert_allclose(k[0], 0.75 * (u / lz + u * lz), rtol=1e-12)
    np.testing.assert_allclose(k[1], 1.5 * u**3 / lz, rtol=1e-12)


@pytest.mark.parametrize("n_m", [1.0, 1.5])
def test_perfect_mirror_image_dipole(n_m: float) -> None:
    """Dipole at height z above a (nearly) perfect conductor, Drexhage / CPS closed forms:
    F_v = 1 + 3 (sin x / x^3 - cos x / x^2), F_h = 1 - 3/2 (sin x / x + cos x / x^2 - sin x / x^3)
    with x = 2 k z (F_v -> 2, F_h -> 0 at the mirror)."""
    n = np.array([1e8j, n_m, n_m])
    for z in (1.0, 10.0, 40.0, 100.0, 200.0, 315.0, 500.0):
        res = dipole_emission(n, np.array([2000.0]), WL, 1, z)
        x = 2 * (2 * np.pi / WL) * n_m * z
        f_v = 1 + 3 * (np.sin(x) / x**3 - np.cos(x) / x**2)
        f_h = 1 - 1.5 * (np.sin(x) / x + np.cos(x) / x**2 - np.sin(x) / x**3)
        assert res.purcell[0] == pytest.approx(f_h, abs=1e-4)
        assert res.purcell[1] == pytest.approx(f_v, abs=1e-4)
        assert res.purcell[2] == pytest.approx((2 * f_h + f_v) / 3, abs=1e-4)
        _fractions_ok(res)
        np.testing.assert_allclose(res.fractions[:, 0], 1.0, atol=1e-6)  # all goes up
    near = dipole_emission(n, np.array([2000.0]), WL, 1, 0.05)
    assert near.purcell[1] == pytest.approx(2.0, abs=1e-4)
    assert near.purcell[0] == pytest.approx(0.0, abs=1e-4)


def test_lossless_stack_without_guided_modes_conserves_energy() -> None:
    # substrate index above every layer index: nothing is guided, nothing absorbed
    n = np.array([1.8, 1.5, 1.7, 1.6, 1.0], dtype=complex)
    res = dipole_emission(n, np.array([100.0, 80.0, 50.0]), WL, 2, 30.0)
    _fractions_ok(res)
    np.testing.assert_allclose(res.fractions[:, 2:], 0.0, atol=1e-8)
    # pointwise: K = P_top + P_bottom, also for evanescent u > 1 that reach the substrate
    np.testing.assert_allclose(res.K, res.P_top + res.P_bottom, atol=1e-9 * res.K.max())
    assert res.u.max() > 1.8 / 1.7


def test_spp_peak_at_single_silver_interface() -> None:
    n_d = 1.7
    res = dipole_emission(np.array([AG, n_d, n_d]), np.array([500.0]), WL, 1, 20.0)
    e1, e2 = AG**2, n_d**2
    u_spp = np.sqrt(e1 * e2 / (e1 + e2)).real / n_d
    peak = res.u[np.argmax(res.K[1])]
    assert peak == pytest.approx(u_spp, abs=1e-3)
    assert res.K[1].max() > 10
    _fractions_ok(res)


def test_metal_clad_fractions_sum_and_converge() -> None:
    n, d, e, z = METAL_CLAD
    res = dipole_emission(n, d, WL, e, z)
    _fractions_ok(res)
    tight = dipole_emission(n, d, WL, e, z, rtol=1e-8)
    np.testing.assert_allclose(res.fractions, tight.fractions, atol=1e-4)
    np.testing.assert_allclose(res.purcell, tight.purcell, rtol=1e-4)
    assert np.max(np.abs(res.fractions - tight.fractions)) < 1e-6  # in fact far better
    # the guided TE mode (width ~5e-4 in u) and the TM modes were found and resolved
    assert "s" in res.pole_polarization and "p" in res.pole_polarization
    assert np.min(res.poles.imag) < 1e-3
    assert res.fractions[0, CHANNELS.index("waveguide")] > 0.5  # horizontal: mostly guided


def test_quadrature_matches_dense_brute_force() -> None:
    """Integrals vs. a dense trapezoid rule on the output spectra of the same kernel (10 media,
    lossy guided modes, an SPP, Si substrate)."""
    n, d, e, z = QLED
    res = dipole_emission(n, d, WL, e, z)
    n_e = n[e].real
    cuts = np.unique(np.concatenate([[0.0, 1.0, 4.0], np.abs(n.real) / n_e, res.poles.real]))
    cuts = cuts[cuts <= 4.0]
    s = (np.arange(8000) + 0.5) / 8000
    u, wts = [], []
    for a, b in zip(cuts[:-1], cuts[1:], strict=True):  # smoothstep: kills 1/sqrt end points
        u.append(a + (b - a) * s * s * (3 - 2 * s))
        wts.append(6 * (b - a) * s * (1 - s) / s.size)
    tail = 4.0 + 2.0 * s / (1 - s)
    u.append(tail)
    wts.append(2.0 / (1 - s) ** 2 / s.size)
    u, wts = np.concatenate(u), np.concatenate(wts)
    dense = dipole_emission(n, d, WL, e, z, u=u)
    ref = dense.K @ wts
    np.testing.assert_allclose(res.purcell, ref, rtol=2e-5)
    np.testing.assert_allclose(res.fractions[:, 0], dense.P_top @ wts / ref, atol=2e-5)
    np.testing.assert_allclose(res.fractions[:, 1], dense.P_bottom @ wts / ref, atol=2e-5)


@pytest.mark.parametrize("side", ["top", "bottom"])
def test_flux_matches_reciprocity_with_tmm(side: str) -> None:
    """P_top(u) / P_bottom(u) for propagating u equal the plane-wave field at the dipole
    (reciprocity) computed by the tmm package: P_v = 3/4 u/q |E_z|^2, P_h = 3/8 u/q
    (|E_y^s|^2 + |E_x^p|^2) with q = n_out cos(th_out) / n_e and unit incident |E|."""
    tmm = pytest.importorskip("tmm")
    n = np.array([1.52, AG, 1.78 + 0.01j, 1.67, 1.78, AG, 1.3])
    d = np.array([30.0, 140.0, 70.0, 120.0, 20.0])
    e, z, n_e = 3, 30.0, 1.67
    u = np.array([0.05, 0.3, 0.5, 0.7])
    res = dipole_emission(n, d, WL, e, z, u=u)
    if side == "top":  # light from the superstrate: propagation order is top -> bottom
        media, dd, layer, dist = n[::-1], d[::-1], n.size - 1 - e, d[e - 1] - z
        n_out, flux = 1.3, res.P_top
    else:
        media, dd, layer, dist, n_out, flux = n, d, e, z, 1.52, res.P_bottom
    for i, ui in enumerate(u):
        th = np.arcsin(ui * n_e / n_out)
        q = n_out * np.cos(th) / n_e
        args = (list(media), [np.inf, *dd, np.inf], th, WL)
        fs = tmm.position_resolved(layer, dist, tmm.coh_tmm("s", *args))
        fp = tmm.position_resolved(layer, dist, tmm.coh_tmm("p", *args))
        p_v = 0.75 * ui / q * abs(fp["Ez"]) ** 2
        p_h = 0.375 * ui / q * (abs(fs["Ey"]) ** 2 + abs(fp["Ex"]) ** 2)
        assert flux[1, i] == pytest.approx(p_v, rel=1e-10)
        assert flux[0, i] == pytest.approx(p_h, rel=1e-10)


def test_lossless_guided_modes_by_residue() -> None:
    """Strictly lossless slab: delta-like guided modes are integrated analytically and agree
    with the small-loss limit (widths ~1e-8) and with a leaky-into-substrate limit."""
    d = np.array([100.0, 100.0, 100.0])
    lossless = dipole_emission(np.array([1.5, 1.8, 1.8, 1.8, 1.0]), d, WL, 2, 50.0)
    _fractions_ok(lossless)
    assert np.all(np.abs(lossless.poles.imag) < 1e-10) and lossless.poles.size == 2
    np.testing.assert_allclose(lossless.fractions[:, 3:], 0.0, atol=1e-9)
    assert lossless.fractions[2, CHANNELS.index("waveguide")] > 0.3
    lossy = dipole_emission(np.array([1.5, 1.8 + 1e-7j, 1.8, 1.8 + 1e-7j, 1.0]), d, WL, 2, 50.0)
    np.testing.assert_allclose(lossy.purcell, lossless.purcell, rtol=1e-6)
    np.testing.assert_allclose(lossy.fractions[:, :3], lossless.fractions[:, :3], atol=1e-6)
    # lossless core on a slightly absorbing substrate: narrow modes (w ~ 1e-4 .. 1e-8) whose
    # power ends up in the substrate; must converge to substrate + waveguide of the lossless case
    for k_sub in (1e-3, 1e-5, 1e-7):
        res = dipole_emission(np.array([1.5 + 1j * k_sub, 1.8, 1.8, 1.8, 1.0]), d, WL, 2, 50.0)
        _fractions_ok(res)
        assert np.min(res.poles.imag) < 2e-4
        guided = lossless.fractions[:, 1] + lossless.fractions[:, 2]
        np.testing.assert_allclose(res.fractions[:, 1], guided, atol=50 * k_sub + 1e-6)
        np.testing.assert_allclose(res.purcell, lossless.purcell, rtol=50 * k_sub + 1e-6)


HARD = [  # random stacks that once defeated the resonance search; references at rtol = 1e-10
    (  # thick emitter layer: 15 guided modes crowding at the emitter light line, w down to 1e-8
        [1.5, 2.1529817168138905, 1.4090160776703964 + 1e-05j, 1.6859337619186765 + 0.3j,
         1.3029980590915315 + 1e-05j, 1.5],
        [1489.7437996339938, 375.78607794374454, 300.5484611835104, 1135.5567695261],
        1, 12.619956540464234,
        [0.9789726691281008, 0.4573412239349066, 0.8050955207303694],
    ),
    (  # a narrow TE mode 1.5 um away from the emitter, very weakly coupled
        [1.8, 1.656109815399755, 2.1406121343980273, 2.5299082468381844, 1.7687448587028296,
         AG, 1.8098980097713728 + 1e-05j, 1.734700764235055 + 1e-05j, 1.33],
        [1764.330978237797, 553.0296167410395, 1450.7806347987494, 111.42357068312178,
         1744.190588128447, 887.6136098697134, 1506.9330735852423],
        1, 1488.8970778339076,
        [1.000004592672022, 1.0060422219896707, 1.0020171357779049],
    ),
    (  # two modes 2e-3 apart (one seen by the coarse scan only through a phase jump), and
        # delta-like lossless modes; dipole 0.64 nm from an interface
        [1.0, 1.6866691771521873, AG, 2.415305602454752 + 1e-05j, 1.4741520433720505,
         2.583473941144545, 1.33],
        [1669.5199375655034, 1588.8626629069956, 1106.7506380587138, 218.0635817815865,
         1900.99674800142],
        4, 0.6358204977680965,
        [2.277357183070402, 4.100081863507844, 2.8849320765495494],
    ),
]


@pytest.mark.parametrize("case", range(len(HARD)))
def test_hard_stacks_all_resonances_found(case: int) -> None:
    n, d, e, z, ref = HARD[case]
    res = dipole_emission(np.array(n, dtype=complex), np.array(d), WL, e, z)
    _fractions_ok(res)
    np.testing.assert_allclose(res.purcell, ref, rtol=2e-6)


def test_unresolvable_radiating_resonance_raises() -> None:
    n = np.array([1.5 + 1e-13j, 1.8, 1.8, 1.8, 1.0])
    with pytest.raises(ValueError, match="narrower"):
        dipole_emission(n, np.array([100.0, 100.0, 100.0]), WL, 2, 50.0)


def test_pole_hints_and_output_grid() -> None:
    n, d, e, z = METAL_CLAD
    base = dipole_emission(n, d, WL, e, z)
    hinted = dipole_emission(n, d, WL, e, z, pole_hints=list(base.poles.real) + [0.77, 1.3])
    np.testing.assert_allclose(hinted.fractions, base.fractions, atol=1e-7)
    u = np.linspace(0, 3, 1501)  # contains u = 1 exactly (emitter branch point)
    on_grid = dipole_emission(n, d, WL, e, z, u=u)
    assert np.array_equal(on_grid.u, u)
    assert np.all(np.isfinite(on_grid.K)) and np.all(on_grid.K >= -1e-12)
    np.testing.assert_allclose(on_grid.K[2], (2 * on_grid.K[0] + on_grid.K[1]) / 3)
    np.testing.assert_allclose(on_grid.fractions, base.fractions, atol=1e-12)
    assert base.orientations == ORIENTATIONS and base.channels == CHANNELS
    assert base.u_esc == pytest.approx(1 / 1.67) and base.u_wg == pytest.approx(1.78 / 1.67)
    # the automatic grid is dense around the narrow peaks
    p = base.poles[np.argmin(base.poles.imag)]
    assert np.sum(np.abs(base.u - p.real) < 3 * p.imag) >= 10


def test_emitter_absorption_is_ignored_and_reported() -> None:
    n, d, e, z = QLED
    res = dipole_emission(n, d, WL, e, z)
    n2 = n.copy()
    n2[e] = n[e].real
    ref = dipole_emission(n2, d, WL, e, z)
    assert res.emitter_k_ignored == pytest.approx(0.028)
    np.testing.assert_array_equal(res.fractions, ref.fractions)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"emitter": 0}, "emitter"),
        ({"emitter": 6}, "emitter"),
        ({"z_in_layer_nm": 0.0}, "inside"),
        ({"z_in_layer_nm": 70.0}, "inside"),
        ({"d_nm": np.array([100.0, 140.0, 70.0])}, "shape"),
        ({"u": np.array([-0.1, 0.5])}, "grid"),
        ({"rtol": 0.0}, "rtol"),
    ],
)
def test_validation(kwargs: dict, match: str) -> None:
    n, d, e, z = METAL_CLAD
    args = {"n": n, "d_nm": d, "wavelength_nm": WL, "emitter": e, "z_in_layer_nm": z, **kwargs}
    with pytest.raises(ValueError, match=match):
        dipole_emission(**args)


def test_speed() -> None:
    n, d, e, z = QLED
    dipole_emission(n, d, WL, e, z)
    best = np.inf
    for _ in range(5):
        t0 = time.perf_counter()
        dipole_emission(n, d, WL, e, z)
        best = min(best, time.perf_counter() - t0)
    assert best < 0.15  # ~10-15 ms on an idle core; generous for a loaded 2-core machine
