"""Outcoupling model (TMM backend): scattering loss, escape fraction, VSL curves, bad input."""

from __future__ import annotations

import numpy as np
import pytest

import qdcavity
from qdcavity.errors import QdcavityError
from qdcavity.plugins.tmm.outcoupling_tmm import (
    half_width_deg,
    particle_alpha_bulk_cm,
    vsl_outputs,
)


def test_mie_tends_to_rayleigh_for_small_particles() -> None:
    mie = particle_alpha_bulk_cm(2.0, 0.3, 2.6, 1.67, 630.0, "mie")
    rayleigh = particle_alpha_bulk_cm(2.0, 0.3, 2.6, 1.67, 630.0, "rayleigh")
    assert mie == pytest.approx(rayleigh, rel=2e-3)
    # alpha = 3 f Q / 4a: doubling the volume fraction doubles the loss
    assert particle_alpha_bulk_cm(20.0, 0.2, 2.6, 1.67, 630.0, "mie") == pytest.approx(
        2 * particle_alpha_bulk_cm(20.0, 0.1, 2.6, 1.67, 630.0, "mie"))


def test_vsl_formula_limits_and_superlinearity() -> None:
    length = np.linspace(0, 0.2, 41)  # cm
    g = np.array([-50.0, 0.0, 1e-9, 40.0])
    lateral, vertical = vsl_outputs(g, length, beta=0.2, eta=0.1, alpha_sca=30.0, eta_sp=0.05)
    # the VSL form A (e^{gL} - 1)/g with A = beta, and its g -> 0 limit A L
    np.testing.assert_allclose(lateral[3], 0.2 * np.expm1(40 * length) / 40, rtol=1e-12)
    np.testing.assert_allclose(lateral[1], 0.2 * length, rtol=1e-12)
    np.testing.assert_allclose(lateral[2], lateral[1], rtol=1e-8)
    np.testing.assert_allclose(vertical[1], 0.1 * 30 * 0.2 * length**2 / 2 + 0.05 * length,
                               rtol=1e-12)
    # with gain the vertical output rises super-linearly (second differences positive)
    assert np.all(np.diff(vertical[3], 2) > 0)
    assert np.all(np.isfinite(vertical)) and np.all(np.isfinite(lateral))
    with pytest.raises(QdcavityError, match="overflows exp"):
        vsl_outputs(np.array([5000.0]), np.array([1.0]), 0.1, 0.1, 1.0, 0.1)


def test_half_width_of_a_known_pattern() -> None:
    theta = np.linspace(0, 89.5, 180)
    pattern = np.cos(np.radians(theta)) ** 4
    expected = np.degrees(np.arccos(0.5 ** 0.25))
    assert half_width_deg(pattern, theta) == pytest.approx(expected, abs=0.05)


def test_te_dizo_outcoupling_dataset() -> None:
    ds = qdcavity.solve("TE-DIZO", "outcoupling", alpha_sca_cm=50.0,
                        stripe_length_um={"start": 0, "stop": 500, "step": 50},
                        gain_scan_cm=[0, 690, 5000])
    assert float(ds.alpha_sca_cm[0]) == 50.0
    modes = qdcavity.solve("TE-DIZO", "modes", wavelength_nm=630)
    te0 = modes.sel(polarization="TE", wavelength_nm=630, mode=0)
    assert complex(ds.neff[0]) == pytest.approx(complex(te0.neff), abs=1e-12)
    assert float(ds.alpha_abs_cm[0]) == pytest.approx(float(te0.alpha_cm))
    np.testing.assert_allclose(ds.scattered_fraction.sum("channel"), 1.0, atol=1e-6)
    assert 0 < float(ds.escape_fraction[0]) < 1
    assert float(ds.escape_fraction[0]) == float(ds.scattered_fraction.sel(channel="air")[0])
    assert 0 < float(ds.beta[0]) < 1
    g = ds.net_gain_cm.sel(material_gain_cm=5000)
    assert float(g[0]) > 0  # with enough gain the vertical output becomes super-linear
    vertical = ds.vertical_output.sel(material_gain_cm=5000).values[0]
    assert np.all(np.diff(vertical, 2) > 0)
    assert float(ds.angular_pattern.max()) == pytest.approx(1.0)


def test_gain_spectrum_is_recorded() -> None:
    ds = qdcavity.solve("TE-DIZO", "outcoupling", alpha_sca_cm=10.0, wavelength_nm=[620, 640],
                        material_gain_cm={"wavelength_nm": [600, 660], "gain_cm": [300, 900]},
                        stripe_length_um=[0, 100], gain_scan_cm=[0])
    np.testing.assert_allclose(ds.material_gain_nominal_cm, [500.0, 700.0])


@pytest.mark.parametrize(
    ("params", "message"),
    [
        ({"alpha_sca_cm": 1.0, "mode": "TE7"}, "no mode 'TE7'"),
        ({"particle_radius_nm": -3, "volume_fraction": 0.1}, "particle_radius_nm"),
        ({"particle_radius_nm": 3, "volume_fraction": 0.9}, "volume_fraction"),
        ({"alpha_sca_cm": 1.0, "stripe_length_um": [1e5], "gain_scan_cm": [1e4]},
         "overflows exp"),
        ({}, "give alpha_sca_cm, or particle_radius_nm"),
    ],
)
def test_outcoupling_bad_input(params: dict, message: str) -> None:
    with pytest.raises(QdcavityError, match=message):
        qdcavity.solve("TE-DIZO", "outcoupling", **params)
