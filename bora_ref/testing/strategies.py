"""Hypothesis strategies for valid BoRA shapes and factors, for property tests.

Shapes use DESIGN.md's names: ``(m, n, r, b)`` with ``B (m, r)``, ``A (r, n)``,
``sigma (b, b, r)``, ``x (..., n)`` and ``1 <= b <= min(m, n)``.

Example:
    >>> from hypothesis import given
    >>> from bora_ref.testing import strategies as bst
    >>> @given(bst.bora_inputs())
    ... def test_my_kernel(inputs):
    ...     x, B, A, sigma = inputs
    ...     ...
"""

from __future__ import annotations

from typing import Any, NamedTuple

import numpy as np
import torch
from hypothesis import strategies as st

__all__ = ["BoRAShape", "shapes", "factors", "bora_inputs"]


class BoRAShape(NamedTuple):
    """``(m, n, r, b)``: weight ``(m, n)``, rank per block ``r``, blocks per side ``b``."""

    m: int
    n: int
    r: int
    b: int


@st.composite
def shapes(
    draw: Any, *, max_dim: int = 24, max_r: int = 8, max_b: int | None = None, even: bool | None = None
) -> BoRAShape:
    """Valid ``(m, n, r, b)``: ``1 <= b <= min(m, n, max_b)``.

    Args:
        max_dim: largest ``m`` and ``n``.
        max_r: largest ``r`` (``r`` may exceed a block's size, a case worth testing).
        max_b: largest ``b`` (default ``max_dim``).
        even: ``True`` only even splits (``b`` divides ``m`` and ``n``), ``False`` only shapes with
            at least one uneven split, ``None`` both.
    """
    m = draw(st.integers(1, max_dim), label="m")
    n = draw(st.integers(1, max_dim), label="n")
    r = draw(st.integers(1, max_r), label="r")
    upper = min(m, n) if max_b is None else min(m, n, max_b)
    candidates = list(range(1, upper + 1))
    if even is True:
        candidates = [b for b in candidates if m % b == 0 and n % b == 0]
    elif even is False:
        candidates = [b for b in candidates if m % b or n % b]
    if not candidates:
        # hypothesis rejects this draw and tries another (b = 1 always divides, so only even=False gets here)
        draw(st.nothing())
    b = draw(st.sampled_from(candidates), label="b")
    return BoRAShape(m, n, r, b)


def _gaussian(seed: int, shape: tuple[int, ...], scale: float) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal(shape) * scale


@st.composite
def factors(
    draw: Any,
    shape: BoRAShape | None = None,
    *,
    backend: str = "numpy",
    dtype: Any = np.float64,
    scale: float = 1.0,
) -> tuple[Any, Any, Any]:
    """``(B, A, sigma)`` with Gaussian entries from a drawn seed (generic, full-rank with probability 1).

    Args:
        shape: a fixed :class:`BoRAShape`; drawn from :func:`shapes` when ``None``.
        backend: ``"numpy"`` or ``"torch"``.
        dtype: a NumPy dtype (``backend="numpy"``) or torch dtype (``"torch"``); values are drawn
            in float64 and rounded to it.
        scale: standard deviation of the entries.
    """
    m, n, r, b = shape if shape is not None else draw(shapes())
    seed = draw(st.integers(0, 2**32 - 1), label="seed")
    arrays = (_gaussian(seed, (m, r), scale), _gaussian(seed + 1, (r, n), scale), _gaussian(seed + 2, (b, b, r), scale))
    return tuple(_convert(a, backend, dtype) for a in arrays)  # type: ignore[return-value]


def _convert(a: np.ndarray, backend: str, dtype: Any) -> Any:
    if backend == "numpy":
        return a.astype(dtype)
    if backend == "torch":
        return torch.from_numpy(a).to(dtype)
    raise ValueError(f"backend must be 'numpy' or 'torch', got {backend!r}")


@st.composite
def bora_inputs(
    draw: Any,
    shape: BoRAShape | None = None,
    *,
    backend: str = "numpy",
    dtype: Any = np.float64,
    max_batch_dims: int = 2,
) -> tuple[Any, Any, Any, Any]:
    """Complete ``(x, B, A, sigma)`` inputs; ``x`` has 1 to ``max_batch_dims + 1`` dimensions ``(..., n)``."""
    shape = shape if shape is not None else draw(shapes())
    B, A, sigma = draw(factors(shape, backend=backend, dtype=dtype))
    lead = tuple(draw(st.lists(st.integers(1, 4), max_size=max_batch_dims), label="lead"))
    seed = draw(st.integers(0, 2**32 - 1), label="x_seed")
    x = _convert(_gaussian(seed, lead + (shape.n,), 1.0), backend, dtype)
    return x, B, A, sigma
