"""Stacks: TOML format, validation (one clear message per problem), hash, overrides."""

from __future__ import annotations

import hashlib
import json
import pickle

import pydantic
import pytest

from qdcavity.errors import ConfigError, WavelengthRangeError
from qdcavity.stack import Stack, builtin_stacks, canonical_dumps, load_stack

GOOD = """
name = "demo"
substrate = { material = "Si" }
superstrate = { material = "air" }
gain_layer = "QD"
[[layers]]
name = "Ag_bottom"
material = "Ag"
thickness_nm = 100
[[layers]]
name = "QD"
material = { n = 1.7, k = 0.0 }
thickness_nm = 70
"""


def test_builtin_stacks_have_the_paper_layer_orders() -> None:
    assert set(builtin_stacks()) == {"BE", "TE-IZOB", "TE-IZOT", "TE-DIZO"}
    dizo = load_stack("TE-DIZO")
    assert dizo.media_names == ["substrate", "Ag_bottom", "IZO_bottom", "PEDOT", "TFB", "QD",
                                "ZnMgO", "IZO_top", "Ag_top", "superstrate"]
    assert list(dizo.thicknesses_nm) == [100, 140, 40, 30, 70, 40, 120, 20]
    assert "IZO_top" not in load_stack("TE-IZOB").layer_names
    assert "IZO_bottom" not in load_stack("TE-IZOT").layer_names
    be = load_stack("BE")
    assert be.substrate.material == "glass"
    assert [(la.name, la.thickness_nm) for la in be.layers][0] == ("IZO_bottom", 110)
    assert be.layers[-1].material == "Ag" and be.layers[-1].thickness_nm == 100
    for name in builtin_stacks():
        assert load_stack(name).gain_layer == "QD"


def test_load_by_file_and_by_stem(write) -> None:
    path = write("demo.toml", GOOD)
    stack = load_stack(path)
    assert stack.layer_names == ["Ag_bottom", "QD"]
    assert load_stack("te-dizo").name == "TE-DIZO"


@pytest.mark.parametrize(
    ("patch", "message"),
    [
        (("material = \"Ag\"", "material = \"Agg\""), "layers[0].material: unknown material 'Agg'"),
        (("name = \"QD\"", "name = \"Ag_bottom\""), "duplicate layer name(s) ['Ag_bottom']"),
        (("thickness_nm = 100", "thickness_nm = -5"), "layers[0].thickness_nm: thickness must"),
        (("thickness_nm = 100", "thickness_nm = 0"), "layers[0].thickness_nm: thickness must"),
        (("thickness_nm = 100", "thickness_nm = \"thick\""), "thickness must be a number"),
        (("thickness_nm = 100", "thickness_nm = nan"), "thickness must be a finite number"),
        (("substrate = { material = \"Si\" }\n", ""), "missing required field(s) ['substrate']"),
        (("gain_layer = \"QD\"", "gain_layer = \"QW\""), "gain_layer 'QW' is not a layer"),
        (("name = \"demo\"", "name = \"demo\"\ncolour = 3"), "colour: Extra inputs"),
    ],
)
def test_each_validation_rule_names_the_field(write, patch: tuple[str, str], message: str) -> None:
    path = write("bad.toml", GOOD.replace(*patch, 1))
    with pytest.raises(ConfigError) as info:
        load_stack(path)
    assert message in str(info.value)
    assert str(path) in str(info.value)


def test_malformed_toml_is_a_config_error(write) -> None:
    with pytest.raises(ConfigError, match="not valid TOML"):
        load_stack(write("broken.toml", "name = \n[[layers"))
    with pytest.raises(ConfigError, match="not found"):
        load_stack("no/such/file.toml")


def test_wavelength_outside_material_data_is_refused(te_dizo: Stack) -> None:
    with pytest.raises(WavelengthRangeError, match="TE-DIZO.substrate: wavelength 3000 nm .* 'Si'"):
        te_dizo.indices([630.0, 3000.0])


def test_stack_is_immutable(te_dizo: Stack) -> None:
    with pytest.raises(pydantic.ValidationError):
        te_dizo.name = "other"  # type: ignore[misc]


def test_hash_is_stable_and_content_based(write) -> None:
    a = load_stack(write("a.toml", GOOD))
    b = load_stack(write("b.toml", GOOD.replace('name = "demo"', 'name = "renamed"')))
    assert a.content_hash == b.content_hash  # the name is not content
    c = a.with_overrides({"QD.thickness_nm": 71})
    assert c.content_hash != a.content_hash
    assert c.with_overrides({"QD.thickness_nm": 70}).content_hash == a.content_hash
    # a pinned value guards against accidental changes of the canonical form
    assert load_stack("TE-DIZO").content_hash == load_stack("TE-DIZO").content_hash


@pytest.mark.parametrize("name", ["BE", "TE-IZOB", "TE-IZOT", "TE-DIZO"])
def test_canonical_json_is_the_canonical_form_dumped(name: str) -> None:
    """The assembled (memoized) canonical JSON is exactly the canonical dict dumped with sorted
    keys and no spaces: hashes and cache keys do not depend on how it is built."""
    base = load_stack(name)
    inline = base.with_overrides({"superstrate.material": {"n": 1.5, "k": 0.0},
                                  f"{base.layers[0].name}.material": {"n": 2.1, "k": 1e-3}})
    for stack in (base, base.with_overrides({f"{base.layers[1].name}.thickness_nm": 33.25}),
                  inline, inline.model_copy(update={"gain_layer": None})):
        assert stack.canonical_json == canonical_dumps(stack.canonical())
        assert stack.content_hash == hashlib.sha256(
            canonical_dumps(stack.canonical()).encode()).hexdigest()


def test_model_copy_does_not_carry_a_stale_identity() -> None:
    stack = load_stack("TE-DIZO")
    layer = stack.layers[1]
    before = (stack.content_hash, stack.canonical_json, layer.canonical_json)
    copy = stack.model_copy(update={"gain_layer": None})
    assert copy.canonical_json == canonical_dumps(copy.canonical()) != before[1]
    assert copy.content_hash != before[0]
    thinner = layer.model_copy(update={"thickness_nm": 1.0})
    assert '"thickness_nm":1.0' in thinner.canonical_json != before[2]


def test_task_key_is_the_hash_of_its_canonical_inputs() -> None:
    from qdcavity.analyses import make_analysis
    from qdcavity.tasks import Task

    stack = load_stack("TE-DIZO").with_overrides({"QD.thickness_nm": 31.5})
    analysis = make_analysis("reflectance", wavelength_nm=[600, 630])
    task = Task(stack, analysis, "reflectance", "tmm", options={"x": (1, 2), "work_dir": "/w"})
    text = json.dumps({"stack": stack.canonical(), "analysis": analysis.canonical(),
                       "backend": "tmm", "backend_version": "9.9", "options": {"x": (1, 2)}},
                      sort_keys=True, separators=(",", ":"), default=str)
    assert task.key("9.9") == hashlib.sha256(text.encode()).hexdigest()


def test_overrides_address_fields_by_dotted_name(te_dizo: Stack) -> None:
    v = te_dizo.with_overrides({"IZO_top.thickness_nm": 100, "IZO_top.material": "ITO/Moerland",
                                "substrate.material": "glass"})
    assert v.layers[6].thickness_nm == 100 and v.layers[6].material == "ITO/Moerland"
    assert v.substrate.material == "glass"
    assert te_dizo.layers[6].thickness_nm == 120  # original untouched
    with pytest.raises(ConfigError, match="unknown stack field 'IZO_middle.thickness_nm'"):
        te_dizo.with_overrides({"IZO_middle.thickness_nm": 10})
    with pytest.raises(ConfigError, match="thickness must be a finite number > 0"):
        te_dizo.with_overrides({"QD.thickness_nm": -1})


def test_thickness_overrides_fast_path_equals_full_validation(te_dizo: Stack) -> None:
    """Thickness-only overrides skip re-validating the unchanged stack: the result must be
    the very stack full validation gives, with its own (not a copied, stale) content hash."""
    before = te_dizo.content_hash  # cached on the base stack first
    fast = te_dizo.with_overrides({"IZO_top.thickness_nm": 77, "QD.thickness_nm": 20.5})
    data = te_dizo.model_dump()
    for layer in data["layers"]:
        layer["thickness_nm"] = {"IZO_top": 77.0, "QD": 20.5}.get(layer["name"],
                                                                   layer["thickness_nm"])
    full = Stack.from_dict(data)
    assert fast == full and fast.model_dump() == full.model_dump()
    assert fast.content_hash == full.content_hash != before
    assert isinstance(fast.layers[6].thickness_nm, float)
    # later variants share what the first one remembered of the base stack
    again = te_dizo.with_overrides({"QD.thickness_nm": 20.5, "IZO_top.thickness_nm": 77})
    assert again == full and again.content_hash == full.content_hash
    back = fast.with_overrides({"IZO_top.thickness_nm": 120.0, "QD.thickness_nm": 70})
    assert back == te_dizo and back.content_hash == before
    for bad in (0, float("nan"), "thick", True):
        with pytest.raises(ConfigError, match=r"layers\[6\]\.thickness_nm"):
            te_dizo.with_overrides({"IZO_top.thickness_nm": bad})
    # a variant marks what it replaced as set, as model_copy(update=...) does, and shares no
    # state with its base
    assert "layers" in fast.__pydantic_fields_set__
    assert fast.__pydantic_fields_set__ is not te_dizo.__pydantic_fields_set__
    with pytest.raises(ValueError, match="not fields of Stack"):
        te_dizo._replaced(thickness=1.0)


def test_indices_bleach_the_named_layer(te_dizo: Stack) -> None:
    n = te_dizo.indices([630.0], zero_k=["QD"])
    assert n.shape == (1, 10)
    assert n[0, te_dizo.layer_position("QD")].imag == 0
    assert te_dizo.indices(630.0)[0, 5].imag > 0.02


def test_pickles_leave_the_cached_identities_out(te_dizo: Stack) -> None:
    """A stack (and its layers) travels to a worker without its cached canonical JSON and
    hash, which are rebuilt there, equal, on first use."""
    variant = te_dizo.with_overrides({"QD.thickness_nm": 33.5})
    text, digest = variant.canonical_json, variant.content_hash
    copy = pickle.loads(pickle.dumps(variant))
    assert "canonical_json" not in copy.__dict__ and "content_hash" not in copy.__dict__
    assert "canonical_json" not in copy.layers[0].__dict__
    assert copy == variant and copy.canonical_json == text and copy.content_hash == digest
    assert "canonical_json" in variant.__dict__  # the original keeps its own
    assert len(pickle.dumps(variant)) < len(text)
