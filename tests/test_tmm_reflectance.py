"""Tests of the vectorized TMM reflectance kernel against the `tmm` package and closed forms."""

from __future__ import annotations

import time

import numpy as np
import pytest

from qdcavity.plugins.tmm.reflectance import rt_spectra

tmm = pytest.importorskip("tmm")

AG = 0.06 + 4.2j
SI = 3.88 + 0.016j
WL = np.array([450.0, 630.0, 800.0])
ANGLES = np.array([0.0, 35.0, 70.0, 89.0])


def _tmm_rt(n_prop: np.ndarray, d_prop: np.ndarray, wl: float, angle_deg: float, pol: str):
    """coh_tmm with media in propagation order (incidence medium first)."""
    out = tmm.coh_tmm(pol, list(n_prop), [np.inf, *d_prop, np.inf], np.deg2rad(angle_deg), wl)
    return out["R"], out["T"]


def _random_stack(rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """[substrate, layers, superstrate] with metals, absorbers and lossless dielectrics."""
    n_layers = int(rng.integers(1, 8))
    layers = []
    for _ in range(n_layers):
        kind = rng.integers(0, 3)
        if kind == 0:
            layers.append(AG)
        elif kind == 1:
            layers.append(rng.uniform(1.3, 2.6) + 1j * rng.uniform(0.005, 0.5))
        else:
            layers.append(complex(rng.uniform(1.3, 2.6)))
    d = rng.uniform(5.0, 300.0, n_layers)
    d[np.array(layers) == AG] = rng.uniform(5.0, 60.0, int(np.sum(np.array(layers) == AG)))
    substrate = [SI, 1.5, 1.0][int(rng.integers(0, 3))]
    superstrate = [1.0, 1.33, 1.5][int(rng.integers(0, 3))]
    return np.array([substrate, *layers, superstrate], dtype=complex), d


@pytest.mark.parametrize("seed", range(24))
def test_matches_tmm_package_random_stacks(seed: int) -> None:
    rng = np.random.default_rng(seed)
    media, d = _random_stack(rng)
    n = np.tile(media, (WL.size, 1))
    # wavelength-dependent indices: perturb lossless / absorbing layers per wavelength
    n[:, 1:-1] *= 1.0 + 0.02 * rng.standard_normal((WL.size, 1))
    for incidence in ("superstrate", "substrate"):
        nn = n.copy()
        if incidence == "substrate":
            nn[:, 0] = 1.45  # lossless incidence medium; absorbing Si then as exit medium
            nn[:, -1] = SI if seed % 2 else 1.0
        out = rt_spectra(nn, d, WL, ANGLES, incidence=incidence)
        assert out["R"].shape == out["T"].shape == out["A"].shape == (WL.size, ANGLES.size, 2)
        for w, wl in enumerate(WL):
            prop = nn[w, ::-1] if incidence == "superstrate" else nn[w]
            dprop = d[::-1] if incidence == "superstrate" else d
            for a, ang in enumerate(ANGLES):
                for p, pol in enumerate("sp"):
                    R, T = _tmm_rt(prop, dprop, wl, ang, pol)
                    assert out["R"][w, a, p] == pytest.approx(R, abs=1e-10)
                    assert out["T"][w, a, p] == pytest.approx(T, abs=1e-10)
        np.testing.assert_allclose(out["A"], 1 - out["R"] - out["T"], atol=1e-15)


def test_energy_balance_lossless() -> None:
    rng = np.random.default_rng(7)
    media = np.array([1.52, *rng.uniform(1.3, 2.5, 9), 1.0], dtype=complex)
    d = rng.uniform(20, 400, 9)
    wl = np.linspace(400, 900, 51)
    ang = np.linspace(0, 89.9, 40)
    for incidence in ("superstrate", "substrate"):
        out = rt_spectra(np.tile(media, (wl.size, 1)), d, wl, ang, incidence=incidence)
        np.testing.assert_allclose(out["R"] + out["T"], 1.0, atol=1e-12)
        assert np.all(out["R"] >= -1e-15) and np.all(out["T"] >= -1e-15)
    # beyond the critical angle (glass -> air) no power is transmitted
    out = rt_spectra(np.tile(media, (wl.size, 1)), d, wl, np.array([60.0]), "substrate")
    np.testing.assert_allclose(out["T"], 0.0, atol=1e-15)
    np.testing.assert_allclose(out["R"], 1.0, atol=1e-12)


def test_thick_silver_no_overflow() -> None:
    n = np.array([[1.5, AG, 1.0]], dtype=complex)
    out = rt_spectra(n, np.array([2000.0]), np.array([630.0]), np.array([0.0, 45.0, 89.0]))
    for key in ("R", "T", "A"):
        assert np.all(np.isfinite(out[key]))
    assert np.all((out["R"] >= 0) & (out["R"] <= 1))
    assert np.all(out["T"] < 1e-60)  # exp(-4 pi k d / lambda) ~ 1e-73
    for a, ang in enumerate((0.0, 45.0, 89.0)):
        for p, pol in enumerate("sp"):
            R, _ = _tmm_rt(np.array([1.0, AG, 1.5]), np.array([2000.0]), 630.0, ang, pol)
            assert out["R"][0, a, p] == pytest.approx(R, abs=1e-10)


def test_deep_evanescence_is_finite() -> None:
    # n = 3.5 at 85 deg: kx = 3.49 k0, evanescent through 5 um of n = 1.0 and 1.45
    n = np.array([[1.45, 1.0, 2.0, 1.0, 1.45, 3.5]], dtype=complex)
    d = np.array([5000.0, 300.0, 5000.0, 200.0])
    out = rt_spectra(n, d, np.array([500.0, 630.0]), np.array([85.0, 89.99]))
    assert np.all(np.isfinite(out["R"])) and np.all(np.isfinite(out["T"]))
    np.testing.assert_allclose(out["R"], 1.0, atol=1e-12)  # lossless: total reflection
    np.testing.assert_allclose(out["T"], 0.0, atol=1e-15)
    # same with an absorbing layer: 0 <= R <= 1 and finite
    n[0, 3] = 1.0 + 0.3j
    out = rt_spectra(n, d, np.array([500.0, 630.0]), np.array([85.0, 89.99]))
    assert np.all(np.isfinite(out["R"])) and np.all((out["R"] >= 0) & (out["R"] <= 1))


def test_single_interface_fresnel() -> None:
    n1, n2 = 1.0, 1.5 + 0.1j  # light from n1 (superstrate) onto n2 (substrate)
    ang = np.linspace(0, 89, 30)
    th = np.deg2rad(ang)
    c1 = np.cos(th)
    c2 = np.sqrt(1 - (n1 * np.sin(th) / n2) ** 2 + 0j)
    rs = (n1 * c1 - n2 * c2) / (n1 * c1 + n2 * c2)
    rp = (n2 * c1 - n1 * c2) / (n2 * c1 + n1 * c2)
    ts = 2 * n1 * c1 / (n1 * c1 + n2 * c2)
    tp = 2 * n1 * c1 / (n2 * c1 + n1 * c2)
    Ts = np.abs(ts) ** 2 * (n2 * c2).real / (n1 * c1)
    Tp = np.abs(tp) ** 2 * (n2 * np.conj(c2)).real / (n1 * c1)
    out = rt_spectra(np.array([[n2, n1]]), np.array([]), np.array([600.0]), ang)
    np.testing.assert_allclose(out["R"][0, :, 0], np.abs(rs) ** 2, atol=1e-14)
    np.testing.assert_allclose(out["R"][0, :, 1], np.abs(rp) ** 2, atol=1e-14)
    np.testing.assert_allclose(out["T"][0, :, 0], Ts, atol=1e-14)
    np.testing.assert_allclose(out["T"][0, :, 1], Tp, atol=1e-14)
    # lossless: R + T = 1 and Brewster angle has R_p = 0
    brewster = np.rad2deg(np.arctan(1.5))
    out = rt_spectra(np.array([[1.5, 1.0]]), np.array([]), np.array([600.0]), [brewster])
    assert out["R"][0, 0, 1] == pytest.approx(0.0, abs=1e-15)
    np.testing.assert_allclose(out["R"] + out["T"], 1.0, atol=1e-14)


def test_validation() -> None:
    n = np.array([[1.5, 1.7, 1.0 + 0.01j]])
    with pytest.raises(ValueError, match="lossless"):
        rt_spectra(n, np.array([100.0]), np.array([600.0]), np.array([0.0]))
    out = rt_spectra(n, np.array([100.0]), np.array([600.0]), np.array([0.0]), "substrate")
    assert np.all(np.isfinite(out["R"]))
    with pytest.raises(ValueError, match="incidence"):
        rt_spectra(n, np.array([100.0]), np.array([600.0]), np.array([0.0]), "top")
    with pytest.raises(ValueError, match="layers"):
        rt_spectra(n, np.array([100.0, 5.0]), np.array([600.0]), np.array([0.0]), "substrate")
    with pytest.raises(ValueError, match="angles"):
        rt_spectra(n, np.array([100.0]), np.array([600.0]), np.array([90.0]), "substrate")


def test_speed_vs_tmm_package() -> None:
    media = np.array([SI, AG, 1.95 + 0.01j, 1.5, 1.62, 1.67, 1.85, 1.95, AG, 1.2, 1.0])
    d = np.array([100, 140, 40, 30, 70, 40, 120, 20, 50.0])
    wl = np.linspace(550, 700, 151)
    n = np.tile(media, (wl.size, 1))
    ours = min(_timed(lambda: rt_spectra(n, d, wl, np.array([0.0]))) for _ in range(20))
    t0 = time.perf_counter()
    for w in wl[::5]:  # 31 wavelengths x 2 polarizations, scaled to 151
        for pol in "sp":
            tmm.coh_tmm(pol, list(media[::-1]), [np.inf, *d[::-1], np.inf], 0.0, w)
    ref = (time.perf_counter() - t0) * wl.size / wl[::5].size
    assert ours < 5e-3
    assert ref / ours > 50  # typically ~400 (the target is 100; margin for a loaded machine)


def _timed(fn) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0
