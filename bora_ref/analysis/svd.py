"""Exact SVD of a BoRA update without forming the ``(m, n)`` matrix.

DESIGN.md §1 writes the update in factored form

$$\\Delta W = P \\, S \\, Q, \\qquad P = \\mathrm{blockdiag}(B_1, \\dots, B_b), \\quad
Q = \\mathrm{blockdiag}(A_1, \\dots, A_b),$$

with $S$ the ``(b r, b r)`` matrix whose ``(i, j)`` block is $\\mathrm{diag}(\\sigma_{ij})$.
A thin Householder QR of every row block $B_i = U_i R_i$ and of every transposed column block
$A_j^T = V_j T_j$ gives

$$\\Delta W = \\mathrm{blockdiag}(U_i) \\; C \\; \\mathrm{blockdiag}(V_j)^T, \\qquad
C_{[i, j]} = R_i \\, \\mathrm{diag}(\\sigma_{ij}) \\, T_j^T,$$

and since ``blockdiag(U_i)`` and ``blockdiag(V_j)`` have orthonormal columns, $\\Delta W$ and the
small core $C$ (at most ``(b r, b r)``) have the same nonzero singular values; the singular
vectors of $\\Delta W$ are those of $C$ mapped back through the ``U_i`` and ``V_j``.

Householder QR (LAPACK ``geqrf``, via ``numpy.linalg.qr``) is backward stable for any block,
including blocks with fewer rows than ``r`` (then ``R_i`` is ``(m_i, r)`` upper trapezoidal),
zero blocks and rank-deficient blocks, where a Gram/Cholesky factorisation would square the
condition number or break down. Cost: ``O((m + n) r^2 + (b r)^3)`` against ``O(m n min(m, n))``
for the dense SVD.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import numpy as np

from .._arrays import as_float64
from .._validation import check_factors
from ..partition import block_sizes, block_slices

__all__ = ["StructuredSVD", "structured_svd", "singular_values"]


class StructuredSVD(NamedTuple):
    """Compact SVD $\\Delta W = U \\, \\mathrm{diag}(S) \\, V_h$ of a BoRA update, in float64.

    ``k = min(sum_i min(m_i, r), sum_j min(n_j, r))`` is the size of the core, an upper bound of
    the rank (``<= min(m, n, b r)``); ``S`` may end in zeros when the factors are degenerate.

    Attributes:
        U: ``(m, k)``, orthonormal columns (left singular vectors).
        S: ``(k,)``, descending, non-negative.
        Vh: ``(k, n)``, orthonormal rows (right singular vectors).
    """

    U: np.ndarray
    S: np.ndarray
    Vh: np.ndarray


def factors_float64(B: Any, A: Any, sigma: Any) -> tuple[np.ndarray, np.ndarray, np.ndarray, tuple[str, ...]]:
    """Validate BoRA factors and return float64 CPU copies plus the three input dtype names.

    NumPy arrays and torch tensors of any real floating dtype and device are accepted, also
    mixed (each is converted on its own); the shapes are checked as in :mod:`bora_ref.numpy_ref`.

    Raises:
        ValueError: not arrays, non-float dtype, non-finite values, or inconsistent shapes.
    """
    B64, dB = as_float64("B", B)
    A64, dA = as_float64("A", A)
    s64, ds = as_float64("sigma", sigma)
    check_factors(B64, A64, s64, "numpy")
    return B64, A64, s64, (dB, dA, ds)


def _core(
    B: np.ndarray, A: np.ndarray, sigma: np.ndarray, *, keep_q: bool
) -> tuple[np.ndarray, list[np.ndarray], list[np.ndarray]]:
    """The core $C$ of the module docstring and, if ``keep_q``, the blocks' orthonormal factors.

    Args:
        B: ``(m, r)``, A: ``(r, n)``, sigma: ``(b, b, r)``; float64, already validated.

    Returns:
        ``C`` of shape ``(K, L)`` with ``K = sum_i k_i``, ``k_i = min(m_i, r)`` (and ``L`` alike),
        the ``U_i (m_i, k_i)`` and the ``V_j (n_j, l_j)`` (empty lists unless ``keep_q``).
    """
    m, r = B.shape
    n = A.shape[1]
    b = sigma.shape[0]
    rows, cols = block_slices(m, b), block_slices(n, b)

    # Thin Householder QR of every row block of B and every column block of A (transposed).
    # R_pad[i, :k_i] = R_i (k_i, r); the zero rows k_i..r are dropped again below.
    R_pad = np.zeros((b, r, r))
    T_pad = np.zeros((b, r, r))
    U_blocks: list[np.ndarray] = []
    V_blocks: list[np.ndarray] = []
    for i, sl in enumerate(rows):
        U_i, R_i = np.linalg.qr(B[sl])  # (m_i, k_i), (k_i, r)
        R_pad[i, : R_i.shape[0]] = R_i
        if keep_q:
            U_blocks.append(U_i)
    for j, sl in enumerate(cols):
        V_j, T_j = np.linalg.qr(A[:, sl].T)  # (n_j, l_j), (l_j, r)
        T_pad[j, : T_j.shape[0]] = T_j
        if keep_q:
            V_blocks.append(V_j)

    # C[i, :, j, :] = R_i diag(sigma_ij) T_j^T — all b^2 blocks at once.
    core = np.einsum("iak,ijk,jck->iajc", R_pad, sigma, T_pad).reshape(b * r, b * r)  # (b r, b r)
    k_rows = np.concatenate([i * r + np.arange(min(m_i, r)) for i, m_i in enumerate(block_sizes(m, b))])
    k_cols = np.concatenate([j * r + np.arange(min(n_j, r)) for j, n_j in enumerate(block_sizes(n, b))])
    return core[np.ix_(k_rows, k_cols)], U_blocks, V_blocks  # (K, L)


def structured_svd(B: Any, A: Any, sigma: Any) -> StructuredSVD:
    """Singular values and vectors of $\\Delta W$ from its factors, never forming $\\Delta W$.

    $$\\Delta W = U \\, \\mathrm{diag}(S) \\, V_h, \\qquad
    U = \\mathrm{blockdiag}(U_i) \\, U_C, \\quad V_h = V_{h,C} \\, \\mathrm{blockdiag}(V_j)^T$$

    where $C = U_C \\, \\mathrm{diag}(S) \\, V_{h,C}$ is the SVD of the small core (module docstring).

    Args:
        B: ``(m, r)``. A: ``(r, n)``. sigma: ``(b, b, r)`` effective diagonals (not a layer's raw
            parameter). NumPy arrays or torch tensors, any real float dtype and device; the
            computation runs on the CPU in float64, exactly on the factors as given.

    Returns:
        A :class:`StructuredSVD` ``(U (m, k), S (k,), Vh (k, n))`` in float64.

    Raises:
        ValueError: as :func:`singular_values`.

    Example:
        >>> rng = np.random.default_rng(0)
        >>> B, A, sigma = rng.standard_normal((64, 4)), rng.standard_normal((4, 48)), rng.standard_normal((4, 4, 4))
        >>> U, S, Vh = structured_svd(B, A, sigma)
        >>> U.shape, S.shape, Vh.shape
        ((64, 16), (16,), (16, 48))
    """
    B64, A64, s64, _ = factors_float64(B, A, sigma)
    m, n, b = B64.shape[0], A64.shape[1], s64.shape[0]
    core, U_blocks, V_blocks = _core(B64, A64, s64, keep_q=True)
    U_c, S, Vh_c = np.linalg.svd(core, full_matrices=False)  # (K, k), (k,), (k, L)

    # Map the core's singular vectors back through the orthonormal block factors.
    U = np.empty((m, len(S)))
    start = 0
    for sl, U_i in zip(block_slices(m, b), U_blocks):
        U[sl] = U_i @ U_c[start : start + U_i.shape[1]]  # (m_i, k)
        start += U_i.shape[1]
    Vh = np.empty((len(S), n))
    start = 0
    for sl, V_j in zip(block_slices(n, b), V_blocks):
        Vh[:, sl] = Vh_c[:, start : start + V_j.shape[1]] @ V_j.T  # (k, n_j)
        start += V_j.shape[1]
    return StructuredSVD(U, S, Vh)


def singular_values(B: Any, A: Any, sigma: Any) -> np.ndarray:
    """All ``min(m, n)`` singular values of $\\Delta W$, computed without forming it.

    $$\\sigma(\\Delta W) = \\big(\\sigma(C), 0, \\dots, 0\\big), \\qquad
    C_{[i, j]} = R_i \\, \\mathrm{diag}(\\sigma_{ij}) \\, T_j^T$$

    with $B_i = U_i R_i$ and $A_j^T = V_j T_j$ thin Householder QR factorisations (module
    docstring). The result equals the dense ``numpy.linalg.svd`` of
    :func:`bora_ref.numpy_ref.delta_weight` to within a few ``eps * sigma_1`` (both are backward
    stable), at a fraction of the cost. For the singular vectors use :func:`structured_svd`.

    Args:
        B: ``(m, r)``. A: ``(r, n)``. sigma: ``(b, b, r)`` effective diagonals. NumPy arrays or
            torch tensors (mixing is allowed), any real float dtype, any device; computed on
            the CPU in float64.

    Returns:
        ``(min(m, n),)`` float64 array, descending, zero after the core's singular values.

    Raises:
        ValueError: arguments that are not arrays, of a non-float dtype, non-finite, or of
            inconsistent shapes (``B (m, r)``, ``A (r, n)``, ``sigma (b, b, r)``,
            ``1 <= b <= min(m, n)``); the message names the argument.

    Example:
        >>> rng = np.random.default_rng(0)
        >>> B, A, sigma = rng.standard_normal((64, 4)), rng.standard_normal((4, 48)), rng.standard_normal((4, 4, 4))
        >>> S = singular_values(B, A, sigma)
        >>> S.shape, int((S > 1e-9 * S[0]).sum())  # rank b r = 16 <= min(m, n) = 48
        ((48,), 16)
    """
    B64, A64, s64, _ = factors_float64(B, A, sigma)
    core, _, _ = _core(B64, A64, s64, keep_q=False)
    S_core = np.linalg.svd(core, compute_uv=False)  # (min(K, L),), K <= m and L <= n
    out = np.zeros(min(B64.shape[0], A64.shape[1]))
    out[: len(S_core)] = S_core
    return out
