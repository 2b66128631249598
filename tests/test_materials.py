"""Material library: tables, formulas, inline constants, Drude-Lorentz, range and names."""

from __future__ import annotations

import numpy as np
import pytest

from qdcavity.errors import MaterialError, WavelengthRangeError
from qdcavity.materials import (
    constant_material,
    default_library,
    drude_lorentz_material,
    material_from_spec,
)


@pytest.mark.parametrize(
    ("name", "n630", "k630"),
    [  # values of ../shared/materials/README.md (linear interpolation at 630 nm)
        ("Ag", 0.0569, 4.254),
        ("Si", 3.879, 0.01644),
        ("IZO", 1.785, 0.00323),
        ("ZnMgO", 1.624, 0.01687),
        ("QD", 1.675, 0.02794),
        ("PEDOT:PSS", 1.504, 0.01306),
        ("TFB", 1.779, 0.0),
        ("glass", 1.5217, 6.9e-7),
        ("SiO2", 1.4571, 0.0),
        ("BK7", 1.5152, 1.2e-8),
        ("MgO/Stephens", 1.7348, 0.0),
        ("air", 1.0, 0.0),
    ],
)
def test_library_values_at_630nm(name: str, n630: float, k630: float) -> None:
    nk = material_from_spec(name).nk(630.0)
    assert nk.real == pytest.approx(n630, abs=6e-4)
    assert nk.imag == pytest.approx(k630, abs=max(6e-5, 0.01 * k630))


def test_every_library_entry_loads_and_names_its_source() -> None:
    lib = default_library()
    for name in lib.names():
        mat = lib.get(name)
        assert mat.reference, name
        lo, hi = mat.range_nm
        assert lo < 630 < hi, name


def test_tabulated_material_refuses_extrapolation() -> None:
    ag = material_from_spec("Ag")
    with pytest.raises(WavelengthRangeError, match="outside the data of material 'Ag'"):
        ag.nk([500.0, 5000.0])
    with pytest.raises(WavelengthRangeError):
        material_from_spec("ZnO/Bodurov").nk(700.0)  # formula valid 405-635 nm only


def test_names_are_case_sensitive_with_explicit_aliases() -> None:
    assert material_from_spec("silver").nk(630) == material_from_spec("Ag").nk(630)
    with pytest.raises(MaterialError, match="case-sensitive: did you mean 'Ag'"):
        material_from_spec("ag")
    with pytest.raises(MaterialError, match="unknown material 'unobtainium'"):
        material_from_spec("unobtainium")


def test_inline_constant_and_its_validation() -> None:
    mat = material_from_spec({"n": 1.95, "k": 0.005})
    assert mat.nk([400.0, 900.0]) == pytest.approx([1.95 + 0.005j] * 2)
    assert material_from_spec({"n": 1.7, "k": -0.001}).nk(630).imag < 0  # k < 0: gain
    for bad in ({"n": -1.0}, {"n": 1.5, "k": float("nan")}, {"n": "x"}, {"k": 1.0},
                {"n": 1, "q": 2}):
        with pytest.raises(MaterialError):
            material_from_spec(bad)


def test_drude_lorentz_convention_and_limits() -> None:
    # Pure Drude metal: eps = 1 - wp^2/(E^2 + i g E); k > 0 (absorbing, exp(-i w t)).
    metal = drude_lorentz_material(1.0, plasma_ev=9.0, gamma_ev=0.05)
    lam = 630.0
    energy = 1239.841984 / lam
    eps = 1 - 81 / (energy**2 + 1j * 0.05 * energy)
    assert metal.nk(lam) ** 2 == pytest.approx(eps)
    assert metal.nk(lam).imag > 0
    # A Lorentz pole far above the band raises eps by its strength (static limit).
    dielectric = drude_lorentz_material(2.0, poles=[{"strength": 1.0, "omega_ev": 500.0,
                                                     "gamma_ev": 0.0}])
    assert dielectric.nk(1000.0) ** 2 == pytest.approx(3.0, rel=1e-5)
    spec = {"model": "drude-lorentz", "eps_inf": 1.0, "plasma_ev": 9.0, "gamma_ev": 0.05}
    assert material_from_spec(spec).nk(lam) == pytest.approx(metal.nk(lam))


def test_bleached_copy_keeps_n_and_zeroes_k() -> None:
    qd = material_from_spec("QD")
    bleached = qd.with_zero_k("pumped")
    assert bleached.nk(630).real == pytest.approx(qd.nk(630).real)
    assert bleached.nk(630).imag == 0.0


def test_constant_material_is_not_dispersive() -> None:
    m = constant_material(2.0, 0.1)
    assert np.all(m.nk(np.linspace(300, 1600, 5)) == 2.0 + 0.1j)
