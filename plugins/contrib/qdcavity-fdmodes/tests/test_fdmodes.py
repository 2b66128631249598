"""Tests of the qdcavity-fdmodes distribution: qdcavity's conformance suite, registration
through the entry point only, agreement with the TMM backend on the paper stacks, options."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
from qdcavity.errors import ConfigError
from qdcavity.registry import build_registry
from qdcavity.testing import BackendConformance


class TestFDModesConformance(BackendConformance):
    """Every case of qdcavity.testing that the 'modes' analysis calls for."""

    backend = "fdmodes"


def test_registered_through_the_entry_point_only() -> None:
    from importlib.metadata import entry_points

    (ep,) = [e for e in entry_points(group="qdcavity") if e.name == "fdmodes"]
    assert ep.value == "qdcavity_fdmodes.plugin"
    assert ep.dist is not None and ep.dist.name == "qdcavity-fdmodes"
    reg = build_registry()
    assert reg.origins["fdmodes"] == "fdmodes"
    assert "fdmodes" not in build_registry(allow=[]).backends  # the allow-list applies
    # qdcavity itself never imports the plugin: only the registry's entry-point load does
    code = ("import sys, qdcavity\n"
            "qdcavity.solve('BE', 'reflectance', wavelength_nm=630)\n"
            "assert not [m for m in sys.modules if m.startswith('qdcavity_fdmodes')]\n")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          env={"QDCAVITY_PLUGINS": "", "PATH": ""}, timeout=120)
    assert proc.returncode == 0, proc.stderr


@pytest.mark.parametrize("stack", ["TE-DIZO", "BE"])
def test_agrees_with_tmm_on_the_paper_stacks(stack: str) -> None:
    import qdcavity
    from qdcavity.registry import default_registry

    tol = default_registry().get("fdmodes").tolerances
    ref = qdcavity.solve(stack, "modes", backend="tmm", wavelength_nm=630, fields=False)
    fd = qdcavity.solve(stack, "modes", backend="fdmodes", wavelength_nm=630, fields=False)
    for pol in ("TE", "TM"):
        a, b = (d.sel(polarization=pol).isel(wavelength_nm=0) for d in (ref, fd))
        labels = [str(x) for x in a.label.values if x]
        assert [str(x) for x in b.label.values if x] == labels
        for i in range(len(labels)):
            assert abs(complex(a.neff[i]) - complex(b.neff[i])) < tol["neff"]
            assert str(a.branch[i].values) == str(b.branch[i].values)
            np.testing.assert_allclose(b.gamma_E[i], a.gamma_E[i], atol=tol["gamma_E"])
            np.testing.assert_allclose(b.gamma_P[i], a.gamma_P[i], atol=tol["gamma_P"])


def test_options_are_validated_and_enter_results() -> None:
    import qdcavity

    with pytest.raises(ConfigError, match="fdmodes backend options: resolution"):
        qdcavity.solve("BE", "modes", backend="fdmodes", options={"resolution": 3})
    coarse = qdcavity.solve("BE", "modes", backend="fdmodes", fields=False,
                            options={"levels": 1, "points_per_wavelength": 12})
    fine = qdcavity.solve("BE", "modes", backend="fdmodes", fields=False)
    exact = qdcavity.solve("BE", "modes", backend="tmm", fields=False)
    err = abs(complex(coarse.neff[0, 0, 0] - exact.neff[0, 0, 0]))
    assert 1e-7 < err < 1e-2  # unextrapolated coarse grid: visibly less accurate
    assert abs(complex(fine.neff[0, 0, 0] - exact.neff[0, 0, 0])) < err / 100
    assert float(fine.neff_error.max()) < 1e-5
