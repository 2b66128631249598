"""Line-dipole (2D, y-invariant) emission kernel and the outcoupling model's 2D geometry."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.special import j0, j1

import qdcavity
from qdcavity.errors import QdcavityError
from qdcavity.plugins.tmm.dipole import CHANNELS
from qdcavity.plugins.tmm.dipole2d import (
    ORIENTATIONS_2D,
    line_dipole_emission,
    mode_emission_fraction,
)
from qdcavity.plugins.tmm.fields import mode_profile
from qdcavity.plugins.tmm.modes import find_modes
from qdcavity.plugins.tmm.outcoupling_tmm import cylinder_alpha_bulk_cm, cylinder_q_sca

AG = 0.0569 + 4.2543j  # 630 nm
SI = 3.879 + 0.01644j
WL = 630.0
# Si / Ag 100 / 1.78 140 / emitter 1.67 70 / 1.78 120 / Ag 20 / air
METAL_CLAD = (np.array([SI, AG, 1.78, 1.67 + 0.0j, 1.78, AG, 1.0]),
              np.array([100.0, 140.0, 70.0, 120.0, 20.0]), 3)
SLAB = (np.array([1.45, 1.45, 2.0, 1.45, 1.45], dtype=complex), np.array([300.0, 150.0, 300.0]))


def _ok(res, tol: float = 1e-9) -> None:
    np.testing.assert_allclose(res.fractions.sum(axis=1), 1.0, atol=tol)
    assert np.all(res.fractions >= -1e-7)
    assert res.fractions.shape == (3, len(CHANNELS))
    assert res.K.shape == res.P_top.shape == res.P_bottom.shape == (3, res.u.size)
    assert res.orientations == ORIENTATIONS_2D


@pytest.mark.parametrize("z", [1.0, 37.0, 99.0])
def test_homogeneous_medium_is_the_bulk_line_source(z: float) -> None:
    n = np.full(5, 1.7 + 0j)
    d = np.array([50.0, 100.0, 80.0])
    res = line_dipole_emission(n, d, WL, 2, z)
    np.testing.assert_allclose(res.purcell, 1.0, atol=1e-6)
    _ok(res)
    np.testing.assert_allclose(res.fractions[:, :2], 0.5, atol=1e-6)
    np.testing.assert_allclose(res.fractions[:, 2:], 0.0, atol=1e-9)
    # analytic spectra (both signs of kx): y 2/pi /l, x 4/pi l, z 4/pi u^2/l
    u = np.linspace(0.01, 0.99, 50)
    k = line_dipole_emission(n, d, WL, 2, z, u=u).K
    lz = np.sqrt(1 - u**2)
    np.testing.assert_allclose(k[0], 2 / np.pi / lz, rtol=1e-12)
    np.testing.assert_allclose(k[1], 4 / np.pi * lz, rtol=1e-12)
    np.testing.assert_allclose(k[2], 4 / np.pi * u**2 / lz, rtol=1e-12)


@pytest.mark.parametrize("n_m", [1.0, 1.5])
def test_line_current_above_a_perfect_mirror(n_m: float) -> None:
    """Image line currents at distance 2h (x = 2 k h): y (parallel to the mirror, image -I):
    P/P0 = 1 - J0(x); x (parallel, image -I): 1 - 2 [J0(x) - J1(x)/x]; z (normal, image +I):
    1 + 2 J1(x)/x (the mutual resistance of two parallel line currents is ~ J0(k r), its
    derivatives give the in-plane ones)."""
    n = np.array([1e8j, n_m, n_m])
    for z in (1.0, 10.0, 40.0, 100.0, 200.0, 315.0, 500.0):
        res = line_dipole_emission(n, np.array([2000.0]), WL, 1, z)
        x = 2 * (2 * np.pi / WL) * n_m * z
        expected = [1 - j0(x), 1 - 2 * (j0(x) - j1(x) / x), 1 + 2 * j1(x) / x]
        np.testing.assert_allclose(res.purcell, expected, atol=1e-5)
        _ok(res)
        np.testing.assert_allclose(res.fractions[:, 0], 1.0, atol=1e-6)  # all goes up


def test_lossless_stack_without_guided_modes_conserves_energy() -> None:
    n = np.array([1.8, 1.5, 1.7, 1.6, 1.0], dtype=complex)
    res = line_dipole_emission(n, np.array([100.0, 80.0, 50.0]), WL, 2, 30.0)
    _ok(res)
    np.testing.assert_allclose(res.fractions[:, 2:], 0.0, atol=1e-8)
    np.testing.assert_allclose(res.K, res.P_top + res.P_bottom, atol=1e-9 * res.K.max())


@pytest.mark.parametrize("z", [20.0, 75.0, 140.0])
def test_guided_share_equals_the_mode_amplitude_te(z: float) -> None:
    """Lossless slab: the (delta-like) TE0 pole's share equals twice the reciprocity result
    for one direction, and nothing is absorbed."""
    n, d = SLAB
    res = line_dipole_emission(n, d, WL, 2, z)
    _ok(res)
    te0 = find_modes(n, d, WL, "TE")
    assert len(te0) == 1
    phi = mode_emission_fraction(n, d, WL, te0[0], np.array([300.0 + z]), res.purcell[:1])
    assert 2 * phi[0] == pytest.approx(res.fractions[0, CHANNELS.index("waveguide")], rel=1e-6)
    assert abs(res.fractions[0, CHANNELS.index("absorbed")]) < 1e-9


def test_guided_share_equals_the_mode_amplitude_tm() -> None:
    """At the centre of a symmetric slab TM0 has E_x = 0 (a pure z dipole) and TM1 has E_z = 0
    (a pure x dipole, which does not couple to TM0): both shares match reciprocity."""
    n, d = SLAB
    res = line_dipole_emission(n, d, WL, 2, 75.0)
    tm0 = find_modes(n, d, WL, "TM")[0]
    phi = mode_emission_fraction(n, d, WL, tm0, np.array([375.0]), res.purcell[1:, None])
    assert 2 * phi[0] == pytest.approx(res.fractions[2, CHANNELS.index("waveguide")], rel=1e-6)
    n2, d2 = n, np.array([300.0, 500.0, 300.0])
    res2 = line_dipole_emission(n2, d2, WL, 2, 250.0)
    tm = [m for m in find_modes(n2, d2, WL, "TM") if m.label == "TM1"][0]
    prof = mode_profile(n2, d2, WL, tm, np.array([550.0]))
    assert abs(prof["Ez"][0]) < 1e-6 * abs(prof["Ex"][0])
    phi1 = mode_emission_fraction(n2, d2, WL, tm, np.array([550.0]), res2.purcell[1:, None])
    assert 2 * phi1[0] == pytest.approx(res2.fractions[1, CHANNELS.index("waveguide")],
                                        rel=1e-6)


def test_metal_clad_stack_converges_and_the_angular_distribution_integrates() -> None:
    n, d, e = METAL_CLAD
    res = line_dipole_emission(n, d, WL, e, 35.0)
    _ok(res)
    tight = line_dipole_emission(n, d, WL, e, 35.0, rtol=1e-8)
    np.testing.assert_allclose(res.fractions, tight.fractions, atol=1e-5)
    np.testing.assert_allclose(res.purcell, tight.purcell, rtol=1e-5)
    assert "s" in res.pole_polarization and "p" in res.pole_polarization
    # dP/dtheta over the x-z plane of the superstrate integrates to the air share
    theta = np.linspace(0, np.pi / 2, 4001)
    grid = line_dipole_emission(n, d, WL, e, 35.0, u=np.sin(theta) / n[e].real)
    per_angle = grid.angular_distribution(theta, 1.0)
    np.testing.assert_allclose(np.trapezoid(per_angle, theta, axis=1), res.fractions[:, 0],
                               rtol=2e-3)


def test_cylinder_scattering_limits() -> None:
    """Bohren & Huffman sec. 8.4: Rayleigh limits of both cases, and Q_sca -> 2 (extinction
    paradox) for large non-absorbing cylinders."""
    for m in (1.2, 1.6):
        x = 0.01
        q1 = cylinder_q_sca(m, x, "I")
        assert q1 == pytest.approx(np.pi**2 * x**3 * (m**2 - 1) ** 2 / 8, rel=1e-3)
        assert cylinder_q_sca(m, x, "II") == pytest.approx(q1 * 2 / (m**2 + 1) ** 2, rel=1e-3)
        big = np.mean([cylinder_q_sca(m, xx, "I") for xx in np.linspace(100, 140, 41)])
        assert big == pytest.approx(2.0, rel=0.06)
    # the per-area coefficient: N sigma with N = f / (pi a^2), sigma = 2 a Q
    a, f, lam, n_p, n_h = 15.0, 0.05, 630.0, 2.6, 1.7
    q = cylinder_q_sca(n_p / n_h, 2 * np.pi * a * n_h / lam, "I")
    assert cylinder_alpha_bulk_cm(a, f, n_p, n_h, lam, "mie") == pytest.approx(
        f / (np.pi * a**2) * 2 * a * q * 1e7, rel=1e-12)
    assert cylinder_alpha_bulk_cm(2.0, f, n_p, n_h, lam, "mie") == pytest.approx(
        cylinder_alpha_bulk_cm(2.0, f, n_p, n_h, lam, "rayleigh"), rel=1e-2)


def test_te_dizo_outcoupling_2d_dataset() -> None:
    kw = {"particle_radius_nm": 15, "volume_fraction": 0.05, "stripe_length_um": [0, 100],
          "gain_scan_cm": [0, 690]}
    ds = qdcavity.solve("TE-DIZO", "outcoupling", geometry="2d", **kw)
    three = qdcavity.solve("TE-DIZO", "outcoupling", **kw)
    assert ds.attrs["geometry"] == "2d" and three.attrs["geometry"] == "3d"
    np.testing.assert_allclose(ds.scattered_fraction.sum("channel"), 1.0, atol=1e-9)
    assert float(ds.escape_fraction[0]) == float(ds.scattered_fraction.sel(channel="air")[0])
    assert float(ds.scattered_fraction.sel(channel="spp")[0]) < 0.02  # s waves: no SPP
    # decay = extinction minus the forward re-radiation into the mode
    ext, phi = float(ds.alpha_ext_cm[0]), float(ds.forward_fraction[0])
    assert float(ds.alpha_sca_cm[0]) == pytest.approx(ext * (1 - phi), rel=1e-9)
    assert 0.2 < phi < 0.6 and 0.3 < float(ds.purcell_mean[0]) < 1.5
    assert float(ds.angular_pattern.max()) == pytest.approx(1.0)
    # same mode, same spontaneous emission (3D QDs) as the 3d geometry
    assert complex(ds.neff[0]) == complex(three.neff[0])
    assert float(ds.beta[0]) == pytest.approx(float(three.beta[0]))
    assert "alpha_ext_cm" not in three
    # alpha_sca given directly: taken as the decay
    given = qdcavity.solve("TE-DIZO", "outcoupling", geometry="2d", alpha_sca_cm=50.0,
                           stripe_length_um=[0, 100], gain_scan_cm=[0])
    assert float(given.alpha_sca_cm[0]) == 50.0
    assert float(given.alpha_ext_cm[0]) > 50.0


def test_cylinder_must_fit_in_the_layer() -> None:
    with pytest.raises(QdcavityError, match="does not fit"):
        qdcavity.solve("TE-DIZO", "outcoupling", geometry="2d", particle_radius_nm=40,
                       volume_fraction=0.05)
