"""pytest integration: subclass :class:`BackendConformance` in a test module.

::

    # tests/test_conformance.py of a plugin distribution
    from qdcavity.testing import BackendConformance

    class TestMySolver(BackendConformance):
        backend = "mysolver"                  # the name it registers under
        cases = None                          # every case its analyses call for (default)
        options = {"resolution": 20}          # backend options for every run (optional)
        analysis_params = {"outcoupling": {"geometry": "2d"}}  # contract-case overrides

pytest then collects one test per conformance case (``test_conformance[physics.slab]``...);
a failing case fails with every violation it found, a case the backend cannot run here (it is
unavailable) is skipped with its reason. Nothing here imports pytest until a test runs.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, ClassVar

from ..backend import Backend
from ..registry import Registry
from .conformance import Case, Context, make_context, run_case, select_cases

_CONTEXTS: dict[type, Context] = {}  # one per test class: availability is probed once


class BackendConformance:
    """Base class of a conformance test class (not collected itself: no ``Test`` prefix)."""

    backend: ClassVar[str | Backend]
    cases: ClassVar[Sequence[str] | str | None] = None
    options: ClassVar[Mapping[str, Any]] = {}
    analysis_params: ClassVar[Mapping[str, Mapping[str, Any]]] = {}
    registry: ClassVar[Registry | None] = None

    def pytest_generate_tests(self, metafunc: Any) -> None:
        if "conformance_case" not in metafunc.fixturenames:
            return
        try:
            ctx = make_context(self.backend, self.options, self.registry, self.analysis_params)
            selected: list[Case | Exception] = list(select_cases(ctx.backend, self.cases))
            ids = [c.id for c in selected]  # type: ignore[union-attr]
        except Exception as exc:  # noqa: BLE001  reported by the test, not at collection
            selected, ids = [exc], ["setup"]
        metafunc.parametrize("conformance_case", selected, ids=ids)

    def test_conformance(self, conformance_case: Case | Exception) -> None:
        import pytest

        if isinstance(conformance_case, Exception):
            pytest.fail(f"conformance set-up for backend {self.backend!r} failed: "
                        f"{type(conformance_case).__name__}: {conformance_case}", pytrace=False)
        ctx = _CONTEXTS.get(type(self))
        if ctx is None:
            ctx = _CONTEXTS[type(self)] = make_context(self.backend, self.options, self.registry,
                                                       self.analysis_params)
        result = run_case(conformance_case, ctx)
        if result.status == "skipped":
            pytest.skip(result.message)
        if result.status == "failed":
            pytest.fail(f"backend '{ctx.backend.name}', case {result.case}:\n{result.message}",
                        pytrace=False)
