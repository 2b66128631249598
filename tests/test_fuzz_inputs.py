"""Property-based: malformed stack and study files give a clean QdcavityError, nothing else."""

from __future__ import annotations

import tempfile
from pathlib import Path

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from qdcavity.errors import QdcavityError
from qdcavity.runner import expand
from qdcavity.stack import Stack, load_stack
from qdcavity.study import load_study

STACK = """name = "demo"
substrate = { material = "Si" }
superstrate = { material = "air" }
gain_layer = "QD"
[[layers]]
name = "Ag"
material = "Ag"
thickness_nm = 100
[[layers]]
name = "QD"
material = { n = 1.7, k = 0.01 }
thickness_nm = 70
"""

STUDY = """name = "s"
stack = "TE-DIZO"
backend = "tmm"
[[analyses]]
kind = "reflectance"
wavelength_nm = { start = 600, stop = 610, step = 5 }
[sweep]
mode = "product"
[sweep.axes]
"QD.thickness_nm" = [60, 70]
[executor]
kind = "inprocess"
"""

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=8),
    lambda children: st.lists(children, max_size=3) | st.dictionaries(st.text(max_size=6),
                                                                      children, max_size=3),
    max_leaves=8,
)


def mutations(text: str):
    """Delete, duplicate or replace a random slice of a valid file."""
    return st.tuples(
        st.integers(0, len(text)), st.integers(0, 12), st.sampled_from(["del", "dup", "sub"]),
        st.text(alphabet=' "=[]{}.,-0123456789abcxyz\n', max_size=6),
    ).map(lambda t: _mutate(text, *t))


def _mutate(text: str, start: int, length: int, how: str, insert: str) -> str:
    piece = text[start:start + length]
    if how == "del":
        return text[:start] + text[start + length:]
    if how == "dup":
        return text[:start] + piece + piece + text[start + length:]
    return text[:start] + insert + text[start + length:]


def _write(text: str) -> Path:
    handle = tempfile.NamedTemporaryFile("w", suffix=".toml", delete=False, encoding="utf-8")
    with handle:
        handle.write(text)
    return Path(handle.name)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(mutations(STACK))
def test_mutated_stack_files_fail_cleanly(text: str) -> None:
    path = _write(text)
    try:
        stack = load_stack(path)
    except QdcavityError:
        return
    finally:
        path.unlink()
    assert isinstance(stack, Stack)
    stack.indices(630.0)


@settings(max_examples=150, deadline=None)
@given(st.dictionaries(st.sampled_from(["name", "substrate", "superstrate", "layers",
                                        "gain_layer", "extra"]), json_values, max_size=6))
def test_random_stack_tables_fail_cleanly(data: dict) -> None:
    try:
        Stack.from_dict(data)
    except QdcavityError:
        pass


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(mutations(STUDY))
def test_mutated_study_files_fail_cleanly(text: str) -> None:
    path = _write(text)
    try:
        expand(load_study(path))
    except QdcavityError:
        pass
    finally:
        path.unlink()
