"""Study files: validation, sweep expansion, combination into one dataset."""

from __future__ import annotations

import pytest

from qdcavity.errors import ConfigError
from qdcavity.runner import expand, sweep_points
from qdcavity.study import load_study

STUDY = """
name = "s"
stack = "TE-DIZO"
[[analyses]]
kind = "reflectance"
wavelength_nm = [600, 630]
"""


def test_minimal_study_defaults(write) -> None:
    study = load_study(write("s.toml", STUDY))
    assert study.backend == "tmm" and study.executor.kind == "local"
    tasks = expand(study)
    assert len(tasks) == 1 and tasks[0].analysis.wavelength_nm == (600.0, 630.0)


def test_product_and_zip_sweeps(write) -> None:
    text = STUDY + '[sweep]\n[sweep.axes]\n"IZO_top.thickness_nm" = [100, 120]\n' \
        '"QD.thickness_nm" = [60, 70, 80]\n'
    study = load_study(write("p.toml", text))
    points = sweep_points(study)
    assert len(points) == 6
    tasks = expand(study)
    assert {t.stack.layers[6].thickness_nm for t in tasks} == {100, 120}
    zipped = text.replace("[sweep]", '[sweep]\nmode = "zip"').replace("[60, 70, 80]", "[60, 80]")
    points = sweep_points(load_study(write("z.toml", zipped)))
    assert points == [{"IZO_top.thickness_nm": 100, "QD.thickness_nm": 60},
                      {"IZO_top.thickness_nm": 120, "QD.thickness_nm": 80}]
    bad = text.replace("[sweep]", '[sweep]\nmode = "zip"')
    with pytest.raises(ConfigError, match="zipped axes must have equal lengths"):
        load_study(write("z2.toml", bad))


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ('name = "x"\n[[analyses]]\nkind = "modes"\n', "missing required field 'stack'"),
        (STUDY.replace('"reflectance"', '"reflektance"'), "unknown analysis 'reflektance'"),
        (STUDY + "[sweep.axes]\nfoo = []\n", "axis 'foo' is empty"),
        (STUDY + '[executor]\nkind = "cloud"\n', "executor.kind"),
        (STUDY + '[executor]\nkind = "address"\n', "needs address"),
        (STUDY.replace("[600, 630]", "[-1]"), "wavelengths must be finite and > 0"),
        (STUDY + "colour = 1\n", "Extra inputs"),
        ("stack = \n", "not valid TOML"),
    ],
)
def test_study_errors_name_the_field(write, text: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        load_study(write("bad.toml", text))


def test_unknown_sweep_field_fails_before_any_work(write) -> None:
    study = load_study(write("u.toml", STUDY + '[sweep.axes]\n"IZO_middle.thickness_nm" = [1]\n'))
    with pytest.raises(ConfigError, match="unknown sweep axis 'IZO_middle.thickness_nm'"):
        expand(study)


def test_analysis_parameter_and_backend_axes(write) -> None:
    text = STUDY.replace('kind = "reflectance"', 'kind = "reflectance"\nname = "refl"') + \
        '[sweep.axes]\n"refl.angle_deg" = [0, 30]\nbackend = ["tmm"]\nstack = ["BE", "TE-DIZO"]\n'
    tasks = expand(load_study(write("a.toml", text)))
    assert len(tasks) == 4
    assert {t.analysis.angle_deg for t in tasks} == {(0.0,), (30.0,)}
    assert {t.stack.name for t in tasks} == {"BE", "TE-DIZO"}
