"""Test oracle for BoRA implementations: run your kernel against the NumPy reference.

In your own pytest::

    from bora_ref.testing import check_golden, check_implementation

    def test_my_kernel():
        check_implementation(my_bora_matmul, grad=True)  # raises AssertionError naming the failing case
        check_golden(my_bora_matmul)  # the packaged golden vectors, output and gradients

Modules: [`oracle`][bora_ref.testing.oracle] ([`check_implementation`][bora_ref.testing.check_implementation]), [`cases`][bora_ref.testing.cases]
(the built-in case list), [`results`][bora_ref.testing.results] (report and failure objects),
[`strategies`][bora_ref.testing.strategies] (hypothesis strategies), [`golden`][bora_ref.testing.golden]
(golden vectors for implementations outside Python).
"""

from __future__ import annotations

from . import strategies
from .cases import DEFAULT_CASES, OracleCase, get_case, make_inputs
from .golden import GOLDEN_RTOL, check_golden
from .oracle import CALLS_PER_CASE, DEFAULT_FLOOR, DEFAULT_K, FLOAT64_RTOL, check_implementation
from .results import Comparison, OracleFailure, OracleReport

__all__ = [
    "CALLS_PER_CASE",
    "DEFAULT_CASES",
    "DEFAULT_FLOOR",
    "DEFAULT_K",
    "FLOAT64_RTOL",
    "GOLDEN_RTOL",
    "Comparison",
    "OracleCase",
    "OracleFailure",
    "OracleReport",
    "check_golden",
    "check_implementation",
    "get_case",
    "make_inputs",
    "strategies",
]
