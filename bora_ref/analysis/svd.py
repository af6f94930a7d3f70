"""SVD of a BoRA update without forming the ``(m, n)`` matrix (exact algebra, backward-stable arithmetic).

A BoRA update has the factored form (Lemma 1 of ``docs/theory.md``)

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
condition number or break down. A block with at most ``r`` rows is its own ``R_i`` (``U_i = I``),
so each block contributes ``min(m_i, r)`` rows to ``C`` and nothing of size ``r x r`` is formed
when ``r`` exceeds the blocks; the equal blocks of each run (at most two per side) share one
batched QR call. Cost: ``O((m + n) r^2 + K L r + K L min(K, L))`` with ``K, L <= min(b r, m, n)``
the sides of ``C``, against ``O(m n min(m, n))`` for the dense SVD.

What is guaranteed: the algebra is exact, the arithmetic is not. Computed in floating point,
the singular values are those of $\\Delta W + E$ with $\\|E\\|_2$ a modest multiple of
$\\varepsilon_{64} \\, \\| |P| |S| |Q| \\|_F$ (the QRs are backward stable column by column, the
core is a sum of products of the factors, its SVD is backward stable), so each is within that
amount of the exact value (Weyl). This equals $\\varepsilon_{64}\\sigma_1$ up to a modest factor
for generic factors, but is far larger when rank channels cancel; the default rank tolerance
of [`bora_ref.factor_rank`][bora_ref.factor_rank] scales with it
([`bora_ref.analysis.tolerance.factor_abs_norm`][bora_ref.analysis.tolerance.factor_abs_norm]).
"""

from __future__ import annotations

import functools
from typing import Any, NamedTuple

import numpy as np
from threadpoolctl import ThreadpoolController

from .._arrays import as_float64
from .._validation import check_factors
from .budget import check_budget, structured_svd_bytes
from ..partition import block_runs, block_sizes

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
    mixed (each is converted on its own); the shapes are checked as in [`bora_ref.numpy_ref`][bora_ref.numpy_ref].

    Raises:
        ValueError: not arrays, non-float dtype, non-finite values, inconsistent shapes, or a
            structured SVD whose working memory would exceed the budget
            ([`MEMORY_BUDGET_BYTES`][bora_ref.analysis.budget.MEMORY_BUDGET_BYTES]).
    """
    B64, dB = as_float64("B", B)
    A64, dA = as_float64("A", A)
    s64, ds = as_float64("sigma", sigma)
    m, n, r, b = check_factors(B64, A64, s64, "numpy")
    check_budget("the structured SVD", structured_svd_bytes(m, n, r, b), f"m={m}, n={n}, r={r}, b={b}")  # before the work
    return B64, A64, s64, (dB, dA, ds)


@functools.cache
def _blas_controller() -> ThreadpoolController:
    return ThreadpoolController()  # built once: inspecting the loaded libraries costs ~0.2 ms


def _one_blas_thread() -> Any:
    """Context manager: one BLAS thread (about 8 µs). The factorisations here are small (blocks
    of ``r`` columns, a core of at most ``(b r, b r)``): BLAS threads cannot speed them up, and
    on a busy machine their spin-waiting made the 11008 x 4096 case over 100x slower."""
    return _blas_controller().limit(limits=1, user_api="blas")


_runs = block_runs  # the blocks as at most two runs of equal sizes (bora_ref.partition)


def _reduce(stack: np.ndarray, keep_q: bool) -> tuple[np.ndarray | None, np.ndarray]:
    """``stack (c, s, r)`` -> ``(Q (c, s, k) or None, R (c, k, r))``, ``stack = Q R``, ``k = min(s, r)``.

    One batched Householder QR call for all ``c`` blocks when ``s > r`` (joining the stacks of
    ``B`` and ``A`` into one call measured no faster). A block with ``s <= r`` rows is already
    small, so it is its own ``R`` (``Q = None`` stands for the identity).
    """
    if stack.shape[1] <= stack.shape[2]:
        return None, stack
    if keep_q:
        return np.linalg.qr(stack)  # (c, s, r), (c, r, r)
    return None, np.linalg.qr(stack, mode="r")


def _core(
    B: np.ndarray, A: np.ndarray, sigma: np.ndarray, *, keep_q: bool
) -> tuple[np.ndarray, list[tuple[_Run, np.ndarray | None]], list[tuple[_Run, np.ndarray | None]]]:
    """The core $C$ of the module docstring and, if ``keep_q``, the blocks' orthonormal factors.

    The blocks are handled as at most two runs of equal sizes (one batched QR per run), and each
    block is reduced to ``k_i = min(m_i, r)`` rows before the core is formed, so the cost is
    ``O((m + n) r^2 + K L r)`` with no ``(b r, b r)`` intermediate when ``r`` exceeds the blocks.

    Args:
        B: ``(m, r)``, A: ``(r, n)``, sigma: ``(b, b, r)``; float64, already validated.

    Returns:
        ``C`` of shape ``(K, L)`` with ``K = sum_i k_i``, ``k_i = min(m_i, r)`` (and ``L`` alike),
        and per run of row (column) blocks the run and its stacked ``U_i (c, m_i, k_i)``
        (``V_j (c, n_j, l_j)``), ``None`` for identity factors (or when not ``keep_q``).
    """
    m, r = B.shape
    n = A.shape[1]
    b = sigma.shape[0]
    # R_i (c, k_i, r) of B's row blocks and T_j (c, l_j, r) of the transposed column blocks of A.
    row_runs, col_runs = _runs(m, b), _runs(n, b)
    stacks = [B[run.offset : run.offset + run.count * run.size].reshape(run.count, run.size, r) for run in row_runs]
    stacks += [
        A[:, run.offset : run.offset + run.count * run.size].reshape(r, run.count, run.size).transpose(1, 2, 0)
        for run in col_runs
    ]
    reduced = [_reduce(stack, keep_q) for stack in stacks]
    rows = [(run, *qr) for run, qr in zip(row_runs, reduced)]
    cols = [(run, *qr) for run, qr in zip(col_runs, reduced[len(row_runs) :])]

    # C[i, :, j, :] = R_i diag(sigma_ij) T_j^T, one broadcast matmul per pair of runs.
    K = sum(run.count * R.shape[1] for run, _, R in rows)
    L = sum(run.count * T.shape[1] for run, _, T in cols)
    core = np.empty((K, L))
    row0 = 0
    for ri, _, R in rows:
        k = R.shape[1]
        col0 = 0
        for cj, _, T in cols:
            l = T.shape[1]
            s = sigma[ri.first : ri.first + ri.count, cj.first : cj.first + cj.count]  # (ci, cj, r)
            blocks = (R[:, None] * s[:, :, None, :]) @ T.transpose(0, 2, 1)[None]  # (ci, cj, k, l)
            core[row0 : row0 + ri.count * k, col0 : col0 + cj.count * l] = blocks.transpose(0, 2, 1, 3).reshape(
                ri.count * k, cj.count * l
            )
            col0 += cj.count * l
        row0 += ri.count * k
    return core, [(run, Q) for run, Q, _ in rows], [(run, V) for run, V, _ in cols]


def structured_svd(B: Any, A: Any, sigma: Any) -> StructuredSVD:
    """Singular values and vectors of $\\Delta W$ from its factors, never forming $\\Delta W$.

    $$\\Delta W = U \\, \\mathrm{diag}(S) \\, V_h, \\qquad
    U = \\mathrm{blockdiag}(U_i) \\, U_C, \\quad V_h = V_{h,C} \\, \\mathrm{blockdiag}(V_j)^T$$

    where $C = U_C \\, \\mathrm{diag}(S) \\, V_{h,C}$ is the SVD of the small core (module docstring).

    Args:
        B: ``(m, r)``.
        A: ``(r, n)``.
        sigma: ``(b, b, r)`` effective diagonals (not a layer's raw
            parameter). NumPy arrays or torch tensors, any real float dtype and device; the
            computation runs on the CPU in float64 on the factors as given (backward stable, see above).

    Returns:
        A [`StructuredSVD`][bora_ref.analysis.svd.StructuredSVD] ``(U (m, k), S (k,), Vh (k, n))`` in float64.

    Raises:
        ValueError: as [`singular_values`][bora_ref.singular_values].

    Examples:
        >>> rng = np.random.default_rng(0)
        >>> B, A, sigma = rng.standard_normal((64, 4)), rng.standard_normal((4, 48)), rng.standard_normal((4, 4, 4))
        >>> U, S, Vh = structured_svd(B, A, sigma)
        >>> U.shape, S.shape, Vh.shape
        ((64, 16), (16,), (16, 48))
    """
    B64, A64, s64, _ = factors_float64(B, A, sigma)
    m, n, b = B64.shape[0], A64.shape[1], s64.shape[0]
    with _one_blas_thread():
        core, U_blocks, V_blocks = _core(B64, A64, s64, keep_q=True)
        U_c, S, Vh_c = np.linalg.svd(core, full_matrices=False)  # (K, k), (k,), (k, L)

    # Map the core's singular vectors back through the orthonormal block factors, one run at a time.
    k = len(S)
    U = np.empty((m, k))
    start = 0
    for run, Q in U_blocks:
        rows = U_c[start : start + run.count * (Q.shape[2] if Q is not None else run.size)]
        start += len(rows)
        block_rows = U[run.offset : run.offset + run.count * run.size]
        if Q is None:  # blocks of at most r rows are their own R: U_i = I
            block_rows[:] = rows
        else:  # (c, m_i, k_i) @ (c, k_i, k) -> (c, m_i, k)
            block_rows[:] = (Q @ rows.reshape(run.count, Q.shape[2], k)).reshape(-1, k)
    Vh = np.empty((k, n))
    start = 0
    for run, V in V_blocks:
        l = V.shape[2] if V is not None else run.size
        cols = Vh_c[:, start : start + run.count * l]
        start += cols.shape[1]
        if V is None:
            Vh[:, run.offset : run.offset + run.count * run.size] = cols
        else:  # (c, k, l_j) @ (c, l_j, n_j) -> (c, k, n_j)
            mapped = cols.reshape(k, run.count, l).transpose(1, 0, 2) @ V.transpose(0, 2, 1)
            Vh[:, run.offset : run.offset + run.count * run.size] = mapped.transpose(1, 0, 2).reshape(k, -1)
    return StructuredSVD(U, S, Vh)


def singular_values(B: Any, A: Any, sigma: Any) -> np.ndarray:
    """All ``min(m, n)`` singular values of $\\Delta W$, computed without forming it.

    $$\\sigma(\\Delta W) = \\big(\\sigma(C), 0, \\dots, 0\\big), \\qquad
    C_{[i, j]} = R_i \\, \\mathrm{diag}(\\sigma_{ij}) \\, T_j^T$$

    with $B_i = U_i R_i$ and $A_j^T = V_j T_j$ thin Householder QR factorisations (module
    docstring). The result equals the dense ``numpy.linalg.svd`` of
    [`bora_ref.numpy_ref.delta_weight`][bora_ref.numpy_ref.delta_weight] to within a few ``eps * sigma_1`` (both are backward
    stable), at a fraction of the cost. For the singular vectors use [`structured_svd`][bora_ref.structured_svd].

    Args:
        B: ``(m, r)``.
        A: ``(r, n)``.
        sigma: ``(b, b, r)`` effective diagonals. NumPy arrays or
            torch tensors (mixing is allowed), any real float dtype, any device; computed on
            the CPU in float64.

    Returns:
        ``(min(m, n),)`` float64 array, descending, zero after the core's singular values.

    Raises:
        ValueError: arguments that are not arrays, of a non-float dtype, non-finite, or of
            inconsistent shapes (``B (m, r)``, ``A (r, n)``, ``sigma (b, b, r)``,
            ``1 <= b <= min(m, n)``); the message names the argument.

    Examples:
        >>> rng = np.random.default_rng(0)
        >>> B, A, sigma = rng.standard_normal((64, 4)), rng.standard_normal((4, 48)), rng.standard_normal((4, 4, 4))
        >>> S = singular_values(B, A, sigma)
        >>> S.shape, int((S > 1e-9 * S[0]).sum())  # rank b r = 16 <= min(m, n) = 48
        ((48,), 16)
    """
    B64, A64, s64, _ = factors_float64(B, A, sigma)
    with _one_blas_thread():
        core, _, _ = _core(B64, A64, s64, keep_q=False)
        S_core = np.linalg.svd(core, compute_uv=False)  # (min(K, L),), K <= m and L <= n
    out = np.zeros(min(B64.shape[0], A64.shape[1]))
    out[: len(S_core)] = S_core
    return out
