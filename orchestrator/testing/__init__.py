"""qdcavity's conformance suite for solver backends (built-in and third-party).

Given a backend, it checks registration, capability declaration, the result contract of every
analysis it declares (dims, dtypes, units, attributes, internal consistency), physics on
analytic stacks (single-interface SPP, symmetric slab, Fresnel interface, thin film,
homogeneous dipole) within the tolerances the backend declares, error behaviour on bad input
and the determinism of the cache key. See docs/plugins.md.

From a plugin's own pytest run, one import::

    from qdcavity.testing import BackendConformance

    class TestMySolver(BackendConformance):
        backend = "mysolver"

or in one test: ``qdcavity.testing.assert_conforms("mysolver")``; from a shell:
``python -m qdcavity.testing mysolver [CASE ...]``.
"""

from .conformance import (
    CASES,
    Case,
    CaseResult,
    Checker,
    ConformanceReport,
    Context,
    NotApplicable,
    assert_conforms,
    run_case,
    run_conformance,
    select_cases,
)
from .suite import BackendConformance
from .tolerances import DEFAULT_TOLERANCES, tolerance

__all__ = [
    "CASES",
    "DEFAULT_TOLERANCES",
    "BackendConformance",
    "Case",
    "CaseResult",
    "Checker",
    "ConformanceReport",
    "Context",
    "NotApplicable",
    "assert_conforms",
    "run_case",
    "run_conformance",
    "select_cases",
    "tolerance",
]
