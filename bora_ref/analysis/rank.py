"""Rank of BoRA updates: the exact bound, and numerical rank under a written tolerance policy.

The bound: with ``ΔW = P S Q``, ``P = blockdiag(B_i)`` has rank at most ``Σ_i min(r, m_i)``
and ``Q = blockdiag(A_j)`` at most ``Σ_j min(r, n_j)``, so ``rank ΔW`` is at most the smaller
sum (attained by almost every choice of factors; proof in ``docs/theory.md``).

Tolerance policy (singular values computed in float64, counted with a strict ``σ > tol``;
the docs page ``docs/rank.md`` derives each rule):

1. **Default relative rule** (NumPy's ``matrix_rank``): ``tol = scale · max(m, n) · eps``.
   Dense float32/float64 matrix: ``scale = σ₁``, ``eps`` of the input's dtype. Factors:
   ``eps`` of float64 and ``scale = ‖|P| |S| |Q|‖_F`` ([`factor_abs_norm`][bora_ref.analysis.tolerance.factor_abs_norm]),
   the size of the rounding error of computing ΔW (or its structured SVD) from the factors,
   which exceeds σ₁ when rank channels cancel. 16-bit dense input: float64's ``eps``.
2. **rtol / atol** (like ``torch.linalg.matrix_rank``): ``tol = max(atol, rtol · σ₁)``; they
   replace rule 1. A missing ``atol`` is 0; a missing ``rtol`` is 0 when ``atol > 0``, else
   the whole default policy applies.
3. **Rounding-noise floor** of the dtype the data were stored in, ``tol = max(rule 1 or 2,
   floor)``: on by default for float16/bfloat16 dense input (where rule 1 with their ``eps``
   exceeds σ₁ and returns 0), on request (``storage_dtype=``) for anything else, notably
   factors stored in float32/float16/bfloat16. See [`bora_ref.analysis.tolerance`][bora_ref.analysis.tolerance].

A rank decision is reliable when the computed matrix is ``M + E`` and
``‖E‖₂ <= tol < s_min(M) - ‖E‖₂`` (Weyl's inequality), ``s_min`` the smallest non-zero
singular value of ``M``. Every ``*_rank_info`` function also reports the gap ``σ_k / σ_{k+1}``
at the cut: a small gap means the rank is ill-defined at that precision.
"""

from __future__ import annotations

import math
import numbers
from dataclasses import dataclass
from typing import Any

import numpy as np

from .._arrays import as_float64, dtype_eps, storage_dtype_name
from .._validation import BoRAValueError, check_b, check_int
from .budget import blocked_min
from .svd import factors_float64, singular_values
from .tolerance import abs_norm_factors, floor_dense, floor_factors, resolve_storage

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
    Gaussian factors attain it with probability 1. Computed in closed form (``m mod b`` blocks
    of ``⌊m/b⌋ + 1`` rows, the rest of ``⌊m/b⌋``), so any size answers at once.

    Args:
        m: rows of the weight ``(m, n)``.
        n: columns of the weight.
        r: rank per block, ``>= 1``.
        b: blocks per side, ``1 <= b <= min(m, n)``.

    Raises:
        ValueError: non-integer or out-of-range arguments.

    Examples:
        >>> rank_bound(4096, 4096, 8, 16)
        128
    """
    m = check_int("m", m, minimum=1)
    n = check_int("n", n, minimum=1)
    r = check_int("r", r, minimum=1)
    b = check_b(b, m, n)
    return min(blocked_min(m, b, r), blocked_min(n, b, r))  # closed form: O(1) for any b


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

    Examples:
        >>> import numpy as np
        >>> from bora_ref import matrix_rank_info
        >>> info = matrix_rank_info(np.diag([3.0, 1.0, 1e-17]))
        >>> info.rank, info.singular_values.tolist(), bool(1e-17 < info.tol < 1.0)
        (2, [3.0, 1.0, 1e-17], True)
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
    floor_dtype: str | None, scale: float | None = None, scale_name: str = "sigma_1",
) -> RankInfo:
    """Apply the policy of the module docstring to descending singular values ``S``.

    ``scale`` replaces ``σ₁`` in the default rule (``None``: ``σ₁``); ``scale_name`` names it.
    """
    sigma_1 = float(S[0])
    if rtol is None and not atol:
        tol = (sigma_1 if scale is None else scale) * max(shape) * default_eps
        policy = f"default: {scale_name} * max(m, n) * eps, eps = {default_eps:.3g}"
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
    """[`numerical_rank`][bora_ref.numerical_rank] of a dense matrix, with tolerance, floor, policy and gap.

    Args:
        M: ``(m, n)`` NumPy array or torch tensor of a real float dtype, any device.
        rtol: relative tolerance, as in [`numerical_rank`][bora_ref.numerical_rank].
        atol: absolute tolerance, as in [`numerical_rank`][bora_ref.numerical_rank].
        storage_dtype: add the rounding-noise floor ([`bora_ref.analysis.tolerance.dense_noise_floor`][bora_ref.analysis.tolerance.dense_noise_floor]) of this dtype,
            or ``"auto"`` for ``M``'s own; then the relative rule uses float64's ``eps``.
            Default ``None``: the floor applies to float16/bfloat16 ``M`` only.

    Raises:
        ValueError: invalid ``M``, negative or non-finite ``rtol``/``atol``, unknown dtype.

    Examples:
        >>> import numpy as np
        >>> rng = np.random.default_rng(0)
        >>> M = rng.standard_normal((40, 3)) @ rng.standard_normal((3, 30))  # rank 3, stored in float64
        >>> info = matrix_rank_info(M)
        >>> info.rank, bool(info.singular_values[3] < info.tol < info.singular_values[2])
        (3, True)
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
      the rounding-noise floor of the dtype, [`bora_ref.analysis.tolerance.dense_noise_floor`][bora_ref.analysis.tolerance.dense_noise_floor] (or float64's rule if larger).
    - ``rtol``/``atol`` given: ``tol = max(atol, rtol σ₁)`` like ``torch.linalg.matrix_rank``
      (a missing ``rtol`` is 0 when ``atol > 0``).

    Use [`matrix_rank_info`][bora_ref.matrix_rank_info] for the tolerance and the gap at the cut, and
    [`factor_rank`][bora_ref.factor_rank] for BoRA factors (no ``(m, n)`` matrix formed).

    Args:
        M: ``(m, n)`` NumPy array or torch tensor of a real floating dtype (any device).
        rtol: relative tolerance (multiplies the largest singular value), ``>= 0``.
        atol: absolute tolerance, ``>= 0``.

    Raises:
        ValueError: non-array input, non-float dtype, not 2-D, empty, non-finite values, or
            negative ``rtol``/``atol``.

    Examples:
        >>> numerical_rank(np.diag([3.0, 1.0, 1e-3, 1e-9]), rtol=1e-6)
        3
    """
    return matrix_rank_info(M, rtol=rtol, atol=atol).rank


def factor_rank_info(
    B: Any, A: Any, sigma: Any, *, rtol: float | None = None, atol: float | None = None, storage_dtype: Any = None
) -> RankInfo:
    """Numerical rank of $\\Delta W$ from its factors (structured SVD, no ``(m, n)`` matrix).

    Default: $\\mathrm{tol} = \\| |P||S||Q| \\|_F \\max(m, n) \\, \\varepsilon_{64}$ with
    $\\| |P||S||Q| \\|_F$ = [`bora_ref.analysis.tolerance.factor_abs_norm`][bora_ref.analysis.tolerance.factor_abs_norm] (never below
    $\\sigma_1$). The structured SVD is backward stable in the factors, not exact: its computed
    singular values are those of $\\Delta W + E$ with $\\|E\\|_2$ a small multiple of
    $\\varepsilon_{64} \\| |P||S||Q| \\|_F$, which can exceed $\\varepsilon_{64}\\sigma_1$ by orders of
    magnitude when rank channels cancel (``B = [x, x + δy]``, ``A = [z; z]``, ``σ = (1, -1)``
    is a rank-1 update of size ``~δ``). If the factors are a rounded copy of the update you
    care about (trained in or saved to float32/float16/bfloat16), pass ``storage_dtype`` (or
    ``"auto"``) to add [`bora_ref.analysis.tolerance.factor_noise_floor`][bora_ref.analysis.tolerance.factor_noise_floor]; never use
    ``max(m, n)·eps`` of a 16-bit dtype, which exceeds σ₁ and returns 0.

    Args:
        B: ``(m, r)``.
        A: ``(r, n)``.
        sigma: ``(b, b, r)`` effective diagonals; NumPy or torch.
        rtol: relative tolerance, as in [`numerical_rank`][bora_ref.numerical_rank].
        atol: absolute tolerance, as in [`numerical_rank`][bora_ref.numerical_rank].
        storage_dtype: ``None`` (exact factors), ``"auto"`` (the inputs' least precise dtype), or
            a dtype/name: ``tol = max(rule, factor_noise_floor)``.

    Raises:
        ValueError: invalid factors, negative or non-finite ``rtol``/``atol``, unknown dtype.

    Examples:
        >>> import numpy as np
        >>> rng = np.random.default_rng(0)
        >>> B, A, sigma = rng.standard_normal((96, 4)), rng.standard_normal((4, 80)), rng.standard_normal((8, 8, 4))
        >>> info = factor_rank_info(B, A, sigma)  # never forms the (96, 80) matrix
        >>> info.rank  # b r = 32, where LoRA of rank 4 stops at 4
        32
    """
    B64, A64, s64, dtypes = factors_float64(B, A, sigma)
    _check_tolerances(rtol, atol)
    storage = None if storage_dtype is None else resolve_storage(storage_dtype, dtypes)
    S = singular_values(B64, A64, s64)
    floor = floor_factors(B64, A64, s64, storage) if storage is not None else 0.0
    shape = (B64.shape[0], A64.shape[1])
    scale = abs_norm_factors(B64, A64, s64)  # ||P| |S| |Q||_F >= sigma_1
    return _cut(S, shape, rtol, atol, dtype_eps("float64"), floor, storage, scale, "||P||S||Q||_F")


def factor_rank(
    B: Any, A: Any, sigma: Any, *, rtol: float | None = None, atol: float | None = None, storage_dtype: Any = None
) -> int:
    """``factor_rank_info(B, A, sigma, ...).rank``: the rank of $\\Delta W$ from its factors.

    Raises:
        ValueError: as [`factor_rank_info`][bora_ref.factor_rank_info].

    Examples:
        >>> rng = np.random.default_rng(0)
        >>> factor_rank(rng.standard_normal((96, 4)), rng.standard_normal((4, 80)), rng.standard_normal((8, 8, 4)))
        32
    """
    return factor_rank_info(B, A, sigma, rtol=rtol, atol=atol, storage_dtype=storage_dtype).rank
