"""Test oracle for BoRA implementations: run your kernel against the NumPy reference.

In your own pytest::

    from bora_ref.testing import check_implementation

    def test_my_kernel():
        check_implementation(my_bora_matmul, grad=True)  # raises AssertionError naming the failing case

Modules: :mod:`~bora_ref.testing.oracle` (:func:`check_implementation`), :mod:`~bora_ref.testing.cases`
(the built-in case list), :mod:`~bora_ref.testing.results` (report and failure objects),
:mod:`~bora_ref.testing.strategies` (hypothesis strategies), :mod:`~bora_ref.testing.golden`
(golden vectors for implementations outside Python).
"""

from __future__ import annotations

from . import strategies
from .cases import DEFAULT_CASES, OracleCase, get_case, make_inputs
from .oracle import DEFAULT_FLOOR, DEFAULT_K, FLOAT64_RTOL, check_implementation
from .results import Comparison, OracleFailure, OracleReport

__all__ = [
    "DEFAULT_CASES",
    "DEFAULT_FLOOR",
    "DEFAULT_K",
    "FLOAT64_RTOL",
    "Comparison",
    "OracleCase",
    "OracleFailure",
    "OracleReport",
    "check_implementation",
    "get_case",
    "make_inputs",
    "strategies",
]
