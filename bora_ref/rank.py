"""Rank of BoRA updates: the exact bound, and numerical rank by SVD.

The bound (DESIGN.md fact 4): with ``ΔW = P S Q``, ``P = blockdiag(B_i)`` has rank at most
``Σ_i min(r, m_i)`` and ``Q = blockdiag(A_j)`` at most ``Σ_j min(r, n_j)``.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from ._validation import BoRAValueError, check_b, check_int
from .partition import block_sizes

__all__ = ["rank_bound", "numerical_rank"]


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


def _as_float64_matrix(name: str, M: Any) -> tuple[np.ndarray, np.dtype | torch.dtype]:
    if isinstance(M, torch.Tensor):
        dtype = M.dtype
        if not dtype.is_floating_point:
            raise BoRAValueError(f"{name} must have a real floating dtype, got {dtype}")
        arr = M.detach().to("cpu", torch.float64).numpy()
    elif isinstance(M, np.ndarray):
        dtype = M.dtype
        if not np.issubdtype(dtype, np.floating):
            raise BoRAValueError(f"{name} must have a real floating dtype, got {dtype}")
        arr = M.astype(np.float64)
    else:
        raise BoRAValueError(f"{name} must be a numpy.ndarray or torch.Tensor, got {type(M).__name__}")
    if arr.ndim != 2 or 0 in arr.shape:
        raise BoRAValueError(f"{name} must be a non-empty 2-D matrix, got shape {arr.shape}")
    if not np.isfinite(arr).all():
        raise BoRAValueError(f"{name} contains NaN or infinity; all its values must be finite")
    return arr, dtype


def _eps(dtype: np.dtype | torch.dtype) -> float:
    if isinstance(dtype, torch.dtype):
        return float(torch.finfo(dtype).eps)
    return float(np.finfo(dtype).eps)


def numerical_rank(M: Any, *, rtol: float | None = None, atol: float | None = None) -> int:
    """Number of singular values of ``M`` above a tolerance (SVD in float64).

    Default tolerance: ``S.max() * max(M.shape) * eps(M.dtype)`` (NumPy's ``matrix_rank`` rule),
    singular values counted with strict ``>``. With ``rtol``/``atol`` the tolerance is
    ``max(atol, rtol * S.max())`` like ``torch.linalg.matrix_rank``.

    Args:
        M: ``(m, n)`` NumPy array or torch tensor of a real floating dtype (any device).
        rtol: relative tolerance (multiplies the largest singular value).
        atol: absolute tolerance.

    Raises:
        ValueError: non-array input, non-float dtype, not 2-D, empty, or non-finite values.
    """
    arr, dtype = _as_float64_matrix("M", M)
    S = np.linalg.svd(arr, compute_uv=False)
    if rtol is None and atol is None:
        tol = S.max() * max(arr.shape) * _eps(dtype)
    else:
        tol = max(atol or 0.0, (rtol or 0.0) * S.max())
    return int((S > tol).sum())


def _factors_float64(B: Any, A: Any, sigma: Any) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    from ._validation import check_factors, check_finite

    backend = "torch" if isinstance(B, torch.Tensor) else "numpy"
    check_factors(B, A, sigma, backend)  # type: ignore[arg-type]
    out = []
    for name, value in (("B", B), ("A", A), ("sigma", sigma)):
        check_finite(name, value)
        out.append(value.detach().to("cpu", torch.float64).numpy() if backend == "torch" else value.astype(np.float64))
    return out[0], out[1], out[2]


def singular_values(B: Any, A: Any, sigma: Any) -> np.ndarray:
    """Singular values of $\\Delta W$, computed without forming the ``(m, n)`` matrix.

    Uses $\\Delta W = P S Q$: thin Householder QR of every ``B_i`` and ``A_j^T``
    (``B_i = U_i R_i``, ``A_j^T = V_j T_j``) turns the problem into the SVD of the small core
    $\\mathrm{blockdiag}(R_i) \\, S \\, \\mathrm{blockdiag}(T_j)^T$, whose singular values are
    exactly those of $\\Delta W$ (the ``U``, ``V`` factors have orthonormal columns).

    Args:
        B: ``(m, r)``. A: ``(r, n)``. sigma: ``(b, b, r)`` effective diagonals. NumPy or torch,
            any float dtype and device; computed on CPU in float64.

    Returns:
        ``(min(m, n),)`` float64 array, descending, zero-padded after the core's singular values.

    Raises:
        ValueError: invalid factors (see :func:`bora_ref.numpy_ref.delta_weight`) or non-finite values.
    """
    B64, A64, s64 = _factors_float64(B, A, sigma)
    m, r = B64.shape
    n = A64.shape[1]
    b = s64.shape[0]
    rows = np.cumsum((0,) + block_sizes(m, b))
    cols = np.cumsum((0,) + block_sizes(n, b))
    R = [np.linalg.qr(B64[rows[i]:rows[i + 1]], mode="r") for i in range(b)]  # (k_i, r), k_i = min(m_i, r)
    T = [np.linalg.qr(A64[:, cols[j]:cols[j + 1]].T, mode="r") for j in range(b)]  # (l_j, r)
    # core[i, j] = R_i diag(sigma_ij) T_j^T
    core = np.block([[(R[i] * s64[i, j]) @ T[j].T for j in range(b)] for i in range(b)])
    S = np.linalg.svd(core, compute_uv=False)
    out = np.zeros(min(m, n))
    k = min(len(S), len(out))
    out[:k] = S[:k]
    return out
