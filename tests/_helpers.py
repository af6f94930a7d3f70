"""Helpers shared by the tests (plain functions; fixtures live in conftest.py)."""

from __future__ import annotations

import numpy as np

from bora_ref import numpy_ref


def random_factors(rng: np.random.Generator, m: int, n: int, r: int, b: int):
    """Gaussian ``(B, A, sigma)`` in float64 (generic: attains every bound with probability 1)."""
    return rng.standard_normal((m, r)), rng.standard_normal((r, n)), rng.standard_normal((b, b, r))


def abs_bound(x, B, A, sigma):
    """Sum of |terms| of every entry of ``x @ ΔW.T``: rounding error is at most (a few·r·b)·eps times this."""
    return numpy_ref.bora_matmul(np.abs(x), np.abs(B), np.abs(A), np.abs(sigma))
