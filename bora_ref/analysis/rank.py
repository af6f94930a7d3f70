"""Rank of BoRA updates: the exact bound, and numerical rank under a written tolerance policy.

The bound (DESIGN.md fact 4): with ``ΔW = P S Q``, ``P = blockdiag(B_i)`` has rank at most
``Σ_i min(r, m_i)`` and ``Q = blockdiag(A_j)`` at most ``Σ_j min(r, n_j)``.

Tolerance policy (singular values computed in float64, counted with a strict ``σ > tol``;
the docs page ``docs/rank.md`` derives each rule):

1. **Default relative rule** (NumPy's ``matrix_rank``): ``tol = σ₁ · max(m, n) · eps``, with
   ``eps`` of the input's dtype for a dense float32/float64 matrix, and of float64 for factors
   (the structured SVD is exact on the factors as given) and for 16-bit dense input.
2. **rtol / atol** (like ``torch.linalg.matrix_rank``): ``tol = max(atol, rtol · σ₁)``; they
   replace rule 1. A missing ``atol`` is 0; a missing ``rtol`` is 0 when ``atol > 0``, else
   the whole default policy applies.
3. **Rounding-noise floor** of the dtype the data were stored in, ``tol = max(rule 1 or 2,
   floor)``: on by default for float16/bfloat16 dense input (where rule 1 with their ``eps``
   exceeds σ₁ and returns 0), on request (``storage_dtype=``) for anything else, notably
   factors stored in float32/float16/bfloat16. See :mod:`bora_ref.analysis.tolerance`.

Every ``*_rank_info`` function also reports the gap ``σ_k / σ_{k+1}`` at the cut: a small gap
means the rank is ill-defined at that precision.
"""

from __future__ import annotations

import math
import numbers
from dataclasses import dataclass
from typing import Any

import numpy as np

from .._arrays import as_float64, dtype_eps, storage_dtype_name
from .._validation import BoRAValueError, check_b, check_int
from ..partition import block_sizes
from .svd import factors_float64, singular_values
from .tolerance import floor_dense, floor_factors, resolve_storage

__all__ = [
    "RankInfo",
    "factor_rank",
    "factor_rank_info",
    "matrix_rank_info",
    "numerical_rank",
    "rank_bound",
]

def rank_bound(m: int, n: int, r: int, b: int) -> int:
    """The largest rank a BoRA update on an ``(m, n)`` weight can have.

    $$\\mathrm{rank}(\\Delta W) \\le \\min\\Big(\\sum_i \\min(r, m_i), \\sum_j \\min(r, n_j)\\Big)$$

    For even splits with ``r <= m/b`` and ``r <= n/b`` this is ``min(b r, m, n)``; random
    Gaussian factors attain it with probability 1.

    Args:
        m, n: weight shape ``(m, n)``. r: rank per block, ``>= 1``. b: ``1 <= b <= min(m, n)``.

    Raises:
        ValueError: non-integer or out-of-range arguments.

    Example:
        >>> rank_bound(4096, 4096, 8, 16)
        128
    """
    m = check_int("m", m, minimum=1)
    n = check_int("n", n, minimum=1)
    r = check_int("r", r, minimum=1)
    b = check_b(b, m, n)
    rows = sum(min(r, m_i) for m_i in block_sizes(m, b))
    cols = sum(min(r, n_j) for n_j in block_sizes(n, b))
    return min(rows, cols)


@dataclass(frozen=True, eq=False)
class RankInfo:
    """A numerical rank with everything needed to judge it.

    Attributes:
        rank: number of singular values ``> tol``.
        tol: the tolerance used.
        floor: the rounding-noise floor the policy considered (0.0 when it has none);
            ``tol = max(rule, floor)``.
        policy: which rule set ``tol``, in words.
        singular_values: ``(min(m, n),)`` float64, descending.
    """

    rank: int
    tol: float
    floor: float
    policy: str
    singular_values: np.ndarray

    @property
    def gap(self) -> float:
        """$\\sigma_k / \\sigma_{k+1}$ at the cut ``k = rank``: large means a clean cut.

        ``inf`` when nothing non-zero was dropped (``σ_{k+1} = 0`` or ``k = min(m, n)``);
        ``nan`` when ``k = 0`` but ``σ₁ > 0`` (the tolerance swallowed the whole spectrum).
        """
        S, k = self.singular_values, self.rank
        dropped = S[k] if k < len(S) else 0.0
        if dropped == 0.0:
            return math.inf
        return float(S[k - 1] / dropped) if k > 0 else math.nan


def _check_tolerances(rtol: Any, atol: Any) -> None:
    for name, value in (("rtol", rtol), ("atol", atol)):
        if value is not None and (
            isinstance(value, bool) or not isinstance(value, numbers.Real) or not math.isfinite(value) or value < 0
        ):
            raise BoRAValueError(f"{name} must be a finite number >= 0 or None, got {value!r}")


def _cut(
    S: np.ndarray, shape: tuple[int, int], rtol: float | None, atol: float | None, default_eps: float, floor: float,
    floor_dtype: str | None,
) -> RankInfo:
    """Apply the policy of the module docstring to descending singular values ``S``."""
    sigma_1 = float(S[0])
    if rtol is None and not atol:
        tol = sigma_1 * max(shape) * default_eps
        policy = f"default: sigma_1 * max(m, n) * eps, eps = {default_eps:.3g}"
    else:
        tol = max(atol or 0.0, (rtol or 0.0) * sigma_1)
        policy = f"max(atol={atol or 0.0:g}, rtol={rtol or 0.0:g} * sigma_1)"
    if floor_dtype is not None and floor > tol:
        tol = floor
        policy = f"{floor_dtype} rounding-noise floor (above {policy})"
    return RankInfo(rank=int((S > tol).sum()), tol=float(tol), floor=floor, policy=policy, singular_values=S)


def matrix_rank_info(
    M: Any, *, rtol: float | None = None, atol: float | None = None, storage_dtype: Any = None
) -> RankInfo:
    """:func:`numerical_rank` of a dense matrix, with tolerance, floor, policy and gap.

    Args:
        M: ``(m, n)`` NumPy array or torch tensor of a real float dtype, any device.
        rtol, atol: as in :func:`numerical_rank`.
        storage_dtype: add the rounding-noise floor (:func:`bora_ref.analysis.tolerance.dense_noise_floor`) of this dtype,
            or ``"auto"`` for ``M``'s own; then the relative rule uses float64's ``eps``.
            Default ``None``: the floor applies to float16/bfloat16 ``M`` only.

    Raises:
        ValueError: invalid ``M``, negative or non-finite ``rtol``/``atol``, unknown dtype.
    """
    arr, own = as_float64("M", M, ndim=2)
    _check_tolerances(rtol, atol)
    if storage_dtype is None:
        storage = own if own in ("float16", "bfloat16") else None
    else:
        storage = own if isinstance(storage_dtype, str) and storage_dtype == "auto" else storage_dtype_name(storage_dtype)
    S = np.linalg.svd(arr, compute_uv=False)  # (min(m, n),) descending
    default_eps = dtype_eps("float64" if storage is not None else own)
    floor = floor_dense(arr, storage) if storage is not None else 0.0
    return _cut(S, arr.shape, rtol, atol, default_eps, floor, storage)


def numerical_rank(M: Any, *, rtol: float | None = None, atol: float | None = None) -> int:
    """Number of singular values of ``M`` above the tolerance of the policy (SVD in float64).

    $$\\mathrm{rank}(M) = \\#\\{k : \\sigma_k > \\mathrm{tol}\\}, \\qquad
    \\mathrm{tol} = \\sigma_1 \\max(m, n) \\, \\varepsilon \\text{ by default}$$

    - float32/float64 input: NumPy's rule with ``eps`` of the input's dtype.
    - float16/bfloat16 input: NumPy's rule would give ``tol > σ₁`` (rank 0), so the default is
      the rounding-noise floor of the dtype, :func:`bora_ref.analysis.tolerance.dense_noise_floor` (or float64's rule if larger).
    - ``rtol``/``atol`` given: ``tol = max(atol, rtol σ₁)`` like ``torch.linalg.matrix_rank``
      (a missing ``rtol`` is 0 when ``atol > 0``).

    Use :func:`matrix_rank_info` for the tolerance and the gap at the cut, and
    :func:`factor_rank` for BoRA factors (no ``(m, n)`` matrix formed).

    Args:
        M: ``(m, n)`` NumPy array or torch tensor of a real floating dtype (any device).
        rtol: relative tolerance (multiplies the largest singular value), ``>= 0``.
        atol: absolute tolerance, ``>= 0``.

    Raises:
        ValueError: non-array input, non-float dtype, not 2-D, empty, non-finite values, or
            negative ``rtol``/``atol``.

    Example:
        >>> numerical_rank(np.diag([3.0, 1.0, 1e-3, 1e-9]), rtol=1e-6)
        3
    """
    return matrix_rank_info(M, rtol=rtol, atol=atol).rank


def factor_rank_info(
    B: Any, A: Any, sigma: Any, *, rtol: float | None = None, atol: float | None = None, storage_dtype: Any = None
) -> RankInfo:
    """Numerical rank of $\\Delta W$ from its factors (structured SVD, no ``(m, n)`` matrix).

    Default: $\\mathrm{tol} = \\sigma_1 \\max(m, n) \\, \\varepsilon_{64}$ — the structured SVD is
    exact on the factors as given, whatever their dtype. If the factors are a rounded copy of
    the update you care about (trained in or saved to float32/float16/bfloat16), pass
    ``storage_dtype`` (or ``"auto"``) to add :func:`bora_ref.analysis.tolerance.factor_noise_floor`; never use
    ``max(m, n)·eps`` of a 16-bit dtype, which exceeds σ₁ and returns 0.

    Args:
        B: ``(m, r)``. A: ``(r, n)``. sigma: ``(b, b, r)`` effective diagonals; NumPy or torch.
        rtol, atol: as in :func:`numerical_rank`.
        storage_dtype: ``None`` (exact factors), ``"auto"`` (the inputs' least precise dtype), or
            a dtype/name: ``tol = max(rule, factor_noise_floor)``.

    Raises:
        ValueError: invalid factors, negative or non-finite ``rtol``/``atol``, unknown dtype.
    """
    B64, A64, s64, dtypes = factors_float64(B, A, sigma)
    _check_tolerances(rtol, atol)
    storage = None if storage_dtype is None else resolve_storage(storage_dtype, dtypes)
    S = singular_values(B64, A64, s64)
    floor = floor_factors(B64, A64, s64, storage) if storage is not None else 0.0
    shape = (B64.shape[0], A64.shape[1])
    return _cut(S, shape, rtol, atol, dtype_eps("float64"), floor, storage)


def factor_rank(
    B: Any, A: Any, sigma: Any, *, rtol: float | None = None, atol: float | None = None, storage_dtype: Any = None
) -> int:
    """``factor_rank_info(B, A, sigma, ...).rank``: the rank of $\\Delta W$ from its factors.

    Raises:
        ValueError: as :func:`factor_rank_info`.

    Example:
        >>> rng = np.random.default_rng(0)
        >>> factor_rank(rng.standard_normal((96, 4)), rng.standard_normal((4, 80)), rng.standard_normal((8, 8, 4)))
        32
    """
    return factor_rank_info(B, A, sigma, rtol=rtol, atol=atol, storage_dtype=storage_dtype).rank
