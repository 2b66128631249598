"""The TMM backend through the public API: contracts, gain exactness, K(u) peaks, main job."""

from __future__ import annotations

import numpy as np
import pytest

import qdcavity
from qdcavity.checks import gain_check
from qdcavity.errors import ConfigError, QdcavityError
from qdcavity.stack import Stack

PAPER_STACKS = ("BE", "TE-IZOB", "TE-IZOT", "TE-DIZO")


@pytest.mark.parametrize("name", PAPER_STACKS)
def test_modes_dataset_of_the_paper_stacks(name: str) -> None:
    ds = qdcavity.solve(name, "modes", wavelength_nm=630)
    te = ds.sel(polarization="TE", wavelength_nm=630)
    labels = [str(v) for v in te.label.values]
    assert "TE0" in labels
    n = int(ds.n_modes.sel(polarization="TE", wavelength_nm=630))
    valid = te.isel(mode=slice(0, n))
    np.testing.assert_allclose(valid.gamma_E.sum("layer"), 1.0, atol=1e-9)
    np.testing.assert_allclose(valid.alpha_cm, 4 * np.pi * valid.neff.imag / 630e-7, rtol=1e-12)
    np.testing.assert_allclose(valid.net_gain_cm, valid.modal_gain_cm - valid.alpha_cm)
    np.testing.assert_allclose(valid.modal_gain_cm, 690 * valid.gamma_P.sel(layer="QD"))
    assert np.all(np.diff(valid.neff.real) < 0)  # ordered by Re(neff), descending
    assert ds.attrs["backend"] == "tmm" and ds.attrs["stack_hash"]
    te0 = te.isel(mode=labels.index("TE0"))
    assert np.nanmax(np.abs(te0.field_Ey)) == pytest.approx(1.0)


def test_gain_exactness_check_on_te_dizo(te_dizo: Stack) -> None:
    rows = gain_check(te_dizo, gains_cm=(10.0, 100.0))
    for row in rows:
        tolerance = 1e-3 if row.mode == "TE0" else 1e-2  # documented in docs/tmm.md
        assert abs(row.difference_cm) <= tolerance * row.exact_modal_gain_cm, row


def test_dipole_peaks_sit_at_the_mode_indices(te_dizo: Stack) -> None:
    modes = qdcavity.solve(te_dizo, "modes", wavelength_nm=630)
    dip = qdcavity.solve(te_dizo, "dipole_emission", wavelength_nm=630, u_points=6001, u_max=3.0)
    n_e = float(dip.n_emitter.sel(wavelength_nm=630))
    k = dip.K.sel(orientation="horizontal", wavelength_nm=630).values
    u = dip.u.values
    te0 = modes.neff.sel(polarization="TE", wavelength_nm=630, mode=0).values
    window = (u > te0.real / n_e - 0.05) & (u < te0.real / n_e + 0.05)
    peak = u[window][np.argmax(k[window])]
    assert peak == pytest.approx(te0.real / n_e, abs=2 * (u[1] - u[0]))
    np.testing.assert_allclose(dip.fraction.sum("channel"), 1.0, atol=1e-8)


def test_stack_without_guided_modes_gives_an_explicit_empty_result() -> None:
    stack = Stack.from_dict({
        "name": "bare", "substrate": {"material": "glass"}, "superstrate": {"material": "air"},
        "layers": [{"name": "film", "material": {"n": 1.3}, "thickness_nm": 20}],
    })
    ds = qdcavity.solve(stack, "modes", wavelength_nm=630)
    assert int(ds.n_modes.sum()) == 0
    assert np.all(ds.label.values == "")


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (lambda: qdcavity.solve("TE-DIZO", "modes", wavelength_nm=3000), "outside the data"),
        (lambda: qdcavity.solve("TE-DIZO", "reflectance", incidence="substrate",
                                wavelength_nm=630), "incidence medium"),
        (lambda: qdcavity.solve(Stack.from_dict({
            "name": "x", "substrate": {"material": "glass"}, "superstrate": {"material": "air"},
            "layers": [{"name": "a", "material": "IZO", "thickness_nm": 50}]}),
            "dipole_emission"), "emitter_layer"),
        (lambda: qdcavity.solve("TE-DIZO", "dipole_emission", position=1.5), "position"),
    ],
)
def test_bad_input_gets_a_clear_error(call, message: str) -> None:
    with pytest.raises(QdcavityError, match=message):
        call()


def test_spectral_sweep_tracks_te0_smoothly(te_dizo: Stack) -> None:
    ds = qdcavity.solve(te_dizo, "modes", wavelength_nm={"start": 600, "stop": 660, "step": 10})
    te0 = [complex(ds.neff.sel(polarization="TE", wavelength_nm=w).values[
        list(ds.label.sel(polarization="TE", wavelength_nm=w).values).index("TE0")])
        for w in ds.wavelength_nm.values]
    steps = np.abs(np.diff(te0))
    assert np.all(steps < 0.03) and np.all(np.diff(np.real(te0)) < 0)  # normal dispersion


def test_gain_check_refuses_a_missing_mode(te_dizo: Stack) -> None:
    with pytest.raises(ConfigError, match="no mode 'TE9'"):
        gain_check(te_dizo, gains_cm=(10.0,), modes=("TE9",))


def test_paper_main_job(tmp_path) -> None:
    from qdcavity.paper import run_paper, summarize
    from qdcavity.results import read_netcdf

    assert run_paper(tmp_path) == 0
    names = {p.name for p in tmp_path.iterdir()}
    assert {"paper.nc", "fig2g.png", "te0_field_profiles.png", "dipole_K_maps.png",
            "reflectance.png"} <= names
    summaries = summarize(read_netcdf(tmp_path / "paper.nc"))
    assert [s.stack for s in summaries] == list(PAPER_STACKS)
    for s in summaries:
        assert sum(s.fractions.values()) == pytest.approx(1.0, abs=1e-8)
        assert 550 <= s.r_min_nm <= 700
