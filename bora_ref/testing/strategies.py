"""Hypothesis strategies for valid BoRA shapes, factors and inputs, for property tests in any project.

Shapes are named as everywhere in bora_ref: ``(m, n, r, b)`` with ``B (m, r)``, ``A (r, n)``,
``sigma (b, b, r)``, ``x (..., n)`` and ``1 <= b <= min(m, n)``.

- [`shapes`][bora_ref.testing.strategies.shapes]: valid ``(m, n, r, b)``, optionally only even or only uneven splits;
- [`factors`][bora_ref.testing.strategies.factors]: ``(B, A, sigma)`` as NumPy arrays or torch tensors of a chosen dtype, either
  Gaussian from a drawn seed (generic: attains every rank bound) or drawn element by element
  (``elements=float_elements()``: hypothesis shrinks them to simple values);
- [`bora_inputs`][bora_ref.testing.strategies.bora_inputs]: complete ``(x, B, A, sigma)``;
- [`oracle_cases`][bora_ref.testing.strategies.oracle_cases]: [`OracleCase`][bora_ref.testing.OracleCase] objects, to drive
  [`check_implementation`][bora_ref.testing.check_implementation] from hypothesis.

Examples:
    A property test of a kernel (here `torch_ref.bora_matmul`) against the NumPy reference:

    >>> import numpy as np, torch
    >>> from hypothesis import given, settings
    >>> from bora_ref import numpy_ref, torch_ref
    >>> from bora_ref.testing import strategies as bst
    >>> @settings(max_examples=10, deadline=None, database=None)
    ... @given(bst.bora_inputs(backend="torch", dtype=torch.float64))
    ... def test_my_kernel(inputs):
    ...     expected = numpy_ref.bora_matmul(*(t.numpy() for t in inputs))
    ...     np.testing.assert_allclose(torch_ref.bora_matmul(*inputs).numpy(), expected, rtol=1e-9, atol=1e-9)
    >>> test_my_kernel()  # pytest calls it for you; hypothesis draws 10 inputs
"""

from __future__ import annotations

from typing import Any, NamedTuple

import numpy as np
import torch
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from .._validation import BoRAValueError
from .cases import FACTOR_KINDS, LAYOUTS, OracleCase

__all__ = ["BoRAShape", "shapes", "float_elements", "factors", "bora_inputs", "oracle_cases"]


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


def float_elements(max_abs: float = 4.0) -> st.SearchStrategy[float]:
    """Finite floats in ``[-max_abs, max_abs]`` (no NaN, infinity or subnormals), for ``elements=``."""
    return st.floats(-max_abs, max_abs, allow_nan=False, allow_infinity=False, allow_subnormal=False)


def _gaussian(seed: int, shape: tuple[int, ...], scale: float) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal(shape) * scale


def _array(
    draw: Any, shape: tuple[int, ...], seed: int, scale: float, elements: st.SearchStrategy[float] | None
) -> np.ndarray:
    """A float64 array: Gaussian from ``seed`` or, with ``elements``, drawn entry by entry."""
    if elements is None:
        return _gaussian(seed, shape, scale)
    return draw(arrays(np.float64, shape, elements=elements))


@st.composite
def factors(
    draw: Any,
    shape: BoRAShape | None = None,
    *,
    backend: str = "numpy",
    dtype: Any = np.float64,
    scale: float = 1.0,
    elements: st.SearchStrategy[float] | None = None,
    device: str | torch.device | None = None,
) -> tuple[Any, Any, Any]:
    """``(B, A, sigma)`` of shapes ``(m, r)``, ``(r, n)``, ``(b, b, r)``.

    By default the entries are Gaussian from a drawn seed (generic: full rank with probability 1);
    with ``elements`` every entry is drawn from that strategy, so hypothesis can shrink a failure to
    small, simple values.

    Args:
        shape: a fixed [`BoRAShape`][bora_ref.testing.strategies.BoRAShape]; drawn from [`shapes`][bora_ref.testing.strategies.shapes] when ``None``.
        backend: ``"numpy"`` or ``"torch"``.
        dtype: a NumPy dtype (``backend="numpy"``) or torch dtype (``"torch"``); values are drawn
            in float64 and rounded to it.
        scale: standard deviation of the Gaussian entries (ignored with ``elements``).
        elements: ``None`` or a strategy of floats, e.g. [`float_elements`][bora_ref.testing.strategies.float_elements].
        device: torch device of the tensors (``backend="torch"`` only; default CPU).

    Raises:
        BoRAValueError: an unknown ``backend``, or ``device`` with ``backend="numpy"``.
    """
    m, n, r, b = shape if shape is not None else draw(shapes())
    seed = draw(st.integers(0, 2**32 - 1), label="seed") if elements is None else 0
    arrays_ = (
        _array(draw, (m, r), seed, scale, elements),
        _array(draw, (r, n), seed + 1, scale, elements),
        _array(draw, (b, b, r), seed + 2, scale, elements),
    )
    return tuple(_convert(a, backend, dtype, device) for a in arrays_)  # type: ignore[return-value]


def _convert(a: np.ndarray, backend: str, dtype: Any, device: str | torch.device | None) -> Any:
    if backend == "numpy":
        if device is not None:
            raise BoRAValueError(f"device is only for backend='torch', got device={device!r} with backend='numpy'")
        return a.astype(dtype)
    if backend == "torch":
        return torch.from_numpy(a).to(dtype=dtype, device=device)
    raise BoRAValueError(f"backend must be 'numpy' or 'torch', got {backend!r}")


@st.composite
def bora_inputs(
    draw: Any,
    shape: BoRAShape | None = None,
    *,
    backend: str = "numpy",
    dtype: Any = np.float64,
    max_batch_dims: int = 2,
    elements: st.SearchStrategy[float] | None = None,
    device: str | torch.device | None = None,
) -> tuple[Any, Any, Any, Any]:
    """Complete ``(x, B, A, sigma)``: ``x (..., n)`` with 0 to ``max_batch_dims`` leading dimensions.

    Args:
        shape: as in [`factors`][bora_ref.testing.strategies.factors] (default: drawn by [`shapes`][bora_ref.testing.strategies.shapes]).
        backend: as in [`factors`][bora_ref.testing.strategies.factors].
        dtype: as in [`factors`][bora_ref.testing.strategies.factors].
        elements: as in [`factors`][bora_ref.testing.strategies.factors]; ``x`` is drawn from it too (default: Gaussian with
            standard deviation 1).
        device: as in [`factors`][bora_ref.testing.strategies.factors].
        max_batch_dims: most leading dimensions of ``x``, each of size 1 to 4.

    Raises:
        BoRAValueError: as [`factors`][bora_ref.testing.strategies.factors].
    """
    shape = shape if shape is not None else draw(shapes())
    B, A, sigma = draw(factors(shape, backend=backend, dtype=dtype, elements=elements, device=device))
    lead = tuple(draw(st.lists(st.integers(1, 4), max_size=max_batch_dims), label="lead"))
    seed = draw(st.integers(0, 2**32 - 1), label="x_seed") if elements is None else 0
    x = _convert(_array(draw, lead + (shape.n,), seed, 1.0, elements), backend, dtype, device)
    return x, B, A, sigma


@st.composite
def oracle_cases(draw: Any, *, max_dim: int = 24, max_r: int = 8, max_batch_dims: int = 2) -> OracleCase:
    """An [`OracleCase`][bora_ref.testing.OracleCase] with drawn shape, leading dimensions, layout and factor kind.

    Examples:
        >>> from hypothesis import given, settings
        >>> from bora_ref import torch_ref
        >>> from bora_ref.testing import check_implementation, strategies as bst
        >>> @settings(max_examples=3, deadline=None, database=None)
        ... @given(bst.oracle_cases())
        ... def test_my_kernel_on_drawn_cases(case):
        ...     check_implementation(torch_ref.bora_matmul, cases=[case])
        >>> test_my_kernel_on_drawn_cases()
    """
    m, n, r, b = draw(shapes(max_dim=max_dim, max_r=max_r))
    lead = tuple(draw(st.lists(st.integers(0, 4), max_size=max_batch_dims), label="lead"))
    layout = draw(st.sampled_from(LAYOUTS), label="layout")
    kind = draw(st.sampled_from(FACTOR_KINDS), label="factors")
    return OracleCase(f"drawn-{m}x{n}-r{r}-b{b}", m, n, r, b, lead=lead, layout=layout, factors=kind)
