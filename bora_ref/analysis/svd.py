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
batched QR call, and the core is formed by a few array operations (no loop over blocks).

Cost: ``O((m + n) r^2 + K L r + K L min(K, L))`` with ``K, L <= min(b r, m, n)`` the sides of
``C``, against ``O(m n min(m, n))`` for the dense SVD. In practice the time is a few LAPACK calls:
the batched ``geqrf`` of the ``2 b`` blocks and the SVD of ``C`` (``gesdd``: bidiagonalisation,
then the dqds iteration); validation and the assembly of ``C`` are a small remainder (the
breakdown at ``2048 x 2048``, ``r = b = 8`` is on the benchmarks page). The core cannot be
shrunk further: ``min(K, L)`` is already the rank bound (``min(m, n, b r)`` when the blocks
have at least ``r`` rows and columns), and ``C`` is a dense matrix without structure that an SVD
could use (every ``R_i`` and ``T_j`` mixes the rank channels that ``S`` keeps
apart), so its SVD costs that of any dense ``K x L`` matrix. A Gram matrix ``C^T C`` with a
symmetric eigensolver would be cheaper but squares the condition number, so small singular
values would lose all accuracy.

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
from . import budget
from .budget import check_budget, structured_svd_bytes
from ..partition import BlockRun, block_runs

__all__ = ["StructuredSVD", "structured_svd", "singular_values"]

_F64 = np.dtype(np.float64)


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
    _check_budget(m, n, r, b, vectors=False)
    return B64, A64, s64, (dB, dA, ds)


def _check_budget(m: int, n: int, r: int, b: int, *, vectors: bool) -> None:
    nbytes = structured_svd_bytes(m, n, r, b, vectors=vectors)
    if nbytes > budget.MEMORY_BUDGET_BYTES:  # before the work; the message is only built when needed
        check_budget("the structured SVD", nbytes, f"m={m}, n={n}, r={r}, b={b}")


def _validated(B: Any, A: Any, sigma: Any, *, vectors: bool) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The factors as validated float64 NumPy arrays, refused exactly as by `factors_float64`.

    Float64 NumPy arrays of consistent shapes and finite values are used as they are (the SVD
    only reads them, so no copy is made); anything else,
    including every input that is refused, goes through `factors_float64`, which converts it or
    raises the error naming the argument, its value and the rule.
    """
    if (
        type(B) is np.ndarray and type(A) is np.ndarray and type(sigma) is np.ndarray
        and B.dtype == _F64 and A.dtype == _F64 and sigma.dtype == _F64
        and B.ndim == 2 and A.ndim == 2 and sigma.ndim == 3
    ):  # fmt: skip
        (m, r), n, b = B.shape, A.shape[1], sigma.shape[0]
        if (
            m > 0 and n > 0 and r > 0 and A.shape[0] == r and sigma.shape == (b, b, r) and 1 <= b <= min(m, n)
            and np.isfinite(B).all() and np.isfinite(A).all() and np.isfinite(sigma).all()
        ):  # fmt: skip
            _check_budget(m, n, r, b, vectors=vectors)
            return B, A, sigma
    B64, A64, s64, _ = factors_float64(B, A, sigma)
    if vectors:
        _check_budget(B64.shape[0], A64.shape[1], A64.shape[0], s64.shape[0], vectors=True)
    return B64, A64, s64


@functools.cache
def _blas_libraries() -> tuple[Any, ...]:
    # Found once (inspecting the loaded libraries costs ~0.2 ms); NumPy's BLAS is loaded with NumPy.
    return tuple(ThreadpoolController().select(user_api="blas").lib_controllers)


class _OneBlasThread:
    """Context manager: one BLAS thread, the caller's limits restored on exit (two calls per BLAS library).

    The factorisations here are small (blocks of ``r`` columns, a core of at most ``(b r, b r)``):
    BLAS threads cannot speed them up, and on a busy machine their spin-waiting made the
    11008 x 4096 case over 100x slower."""

    def __enter__(self) -> None:
        self.saved = [(lib, lib.num_threads) for lib in _blas_libraries()]
        for lib, threads in self.saved:
            if threads != 1:
                lib.set_num_threads(1)

    def __exit__(self, *exc: Any) -> None:
        for lib, threads in self.saved:
            if threads != 1:
                lib.set_num_threads(threads)


_runs = block_runs  # the blocks as at most two runs of equal sizes (bora_ref.partition; cached there)


@functools.lru_cache(maxsize=4)
def _lower_mask(r: int) -> np.ndarray:
    return np.tril(np.ones((r, r)))


def _reduce(stack: np.ndarray, keep_q: bool) -> tuple[np.ndarray | None, np.ndarray]:
    """``stack (c, s, r)`` -> ``(Q (c, s, k) or None, R^T (c, r, k))``, ``stack = Q R``, ``k = min(s, r)``.

    One batched Householder QR call (LAPACK ``geqrf``) for the ``c`` blocks when ``s > r``. A block
    with ``s <= r`` rows is already small, so it is its own ``R`` (``Q = None`` stands for the
    identity). ``R`` is returned transposed (a view where that is free): the raw factor of
    ``numpy.linalg.qr(mode="raw")`` is stored transposed, so ``R^T`` is the lower triangle of its
    top ``(r, r)`` block (the Householder vectors lie in the rest), cut with one multiplication.
    """
    s, r = stack.shape[1:]
    if s <= r:
        return None, stack.transpose(0, 2, 1)
    if keep_q:
        Q, R = np.linalg.qr(stack)  # (c, s, r), (c, r, r)
        return Q, R.transpose(0, 2, 1)
    h = np.linalg.qr(stack, mode="raw")[0]  # (c, r, s): the factored stack, transposed
    return None, (h[:, :, :r] * _lower_mask(r) if r <= 256 else np.tril(h[:, :, :r]))


def _core(
    B: np.ndarray, A: np.ndarray, sigma: np.ndarray, *, keep_q: bool
) -> tuple[np.ndarray, list[tuple[BlockRun, np.ndarray | None]], list[tuple[BlockRun, np.ndarray | None]]]:
    """The core $C$ of the module docstring and, if ``keep_q``, the blocks' orthonormal factors.

    The blocks are handled as at most two runs of equal sizes (one batched QR per run), and each
    block is reduced to ``k_i = min(m_i, r)`` rows before the core is formed. The core then takes
    three array operations: $W_{[i, j]} = \\mathrm{diag}(\\sigma_{ij}) T_j^T$ for all ``i, j`` at
    once (``W`` of shape ``(b, r, L)``: ``sigma`` repeated along the columns of the ``T_j^T``, times
    them) and the batched product $C_{[i, :]} = R_i W_{[i, :]}$ per run of row blocks. Cost
    ``O((m + n) r^2 + K L r)``, with no ``(b r, b r)`` intermediate when ``r`` exceeds the blocks.

    Args:
        B: ``(m, r)``, A: ``(r, n)``, sigma: ``(b, b, r)``; float64, already validated (only read).

    Returns:
        ``C`` of shape ``(K, L)`` with ``K = sum_i k_i``, ``k_i = min(m_i, r)`` (and ``L`` alike),
        and per run of row (column) blocks the run and its stacked ``U_i (c, m_i, k_i)``
        (``V_j (c, n_j, l_j)``), ``None`` for identity factors (or when not ``keep_q``).
    """
    m, r = B.shape
    n = A.shape[1]
    b = sigma.shape[0]
    rows = [  # R_i^T (c, r, k_i) of B's row blocks
        (run, *_reduce(B[run.offset : run.offset + run.count * run.size].reshape(run.count, run.size, r), keep_q))
        for run in _runs(m, b)
    ]
    cols = [  # T_j^T (c, r, l_j) of the transposed column blocks A_j^T
        (run, *_reduce(A[:, run.offset : run.offset + run.count * run.size].reshape(r, run.count, run.size).transpose(1, 2, 0), keep_q))
        for run in _runs(n, b)
    ]
    # T^T (r, L): the T_j^T side by side; W[i, p, (j, l)] = sigma[i, j, p] T_j[l, p].
    Tt = [Gt.transpose(1, 0, 2).reshape(r, -1) for _, _, Gt in cols]
    Tt = Tt[0] if len(Tt) == 1 else np.concatenate(Tt, axis=1)
    widths = cols[0][2].shape[2] if len(cols) == 1 else [Gt.shape[2] for run, _, Gt in cols for _ in range(run.count)]
    W = np.repeat(sigma.transpose(0, 2, 1), widths, axis=2)  # (b, r, L)
    W *= Tt
    K = sum(run.count * Rt.shape[2] for run, _, Rt in rows)
    L = W.shape[2]
    core = np.empty((K, L))
    row0 = 0
    for run, _, Rt in rows:  # C[(i, k), :] = R_i W[i]: (c, k_i, r) @ (c, r, L), written in place
        k = Rt.shape[2]
        block = core[row0 : row0 + run.count * k].reshape(run.count, k, L)
        np.matmul(Rt.transpose(0, 2, 1), W[run.first : run.first + run.count], out=block)
        row0 += run.count * k
    return core, [(run, Q) for run, Q, _ in rows], [(run, V) for run, V, _ in cols]


def _map_back(X: np.ndarray, blocks: list[tuple[BlockRun, np.ndarray | None]], dim: int) -> np.ndarray:
    """``blockdiag(U_i) X``: ``X (K, k)`` (rows ``k_i`` per block) -> ``(dim, k)``, one batched product per run."""
    k = X.shape[1]
    out = np.empty((dim, k))
    start = 0
    for run, Q in blocks:
        rows = X[start : start + run.count * (Q.shape[2] if Q is not None else run.size)]
        start += len(rows)
        dest = out[run.offset : run.offset + run.count * run.size]
        if Q is None:  # blocks of at most r rows are their own R: U_i = I
            dest[:] = rows
        else:  # (c, m_i, k_i) @ (c, k_i, k) -> (c, m_i, k)
            np.matmul(Q, rows.reshape(run.count, -1, k), out=dest.reshape(run.count, run.size, k))
    return out


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
    B64, A64, s64 = _validated(B, A, sigma, vectors=True)
    m, n = B64.shape[0], A64.shape[1]
    with _OneBlasThread():
        core, U_blocks, V_blocks = _core(B64, A64, s64, keep_q=True)
        U_c, S, Vh_c = np.linalg.svd(core, full_matrices=False)  # (K, k), (k,), (k, L)
        U = _map_back(U_c, U_blocks, m)  # (m, k)
        Vh = _map_back(Vh_c.T, V_blocks, n).T  # (k, n)
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
    B64, A64, s64 = _validated(B, A, sigma, vectors=False)
    with _OneBlasThread():
        core, _, _ = _core(B64, A64, s64, keep_q=False)
        S_core = np.linalg.svd(core, compute_uv=False)  # (min(K, L),), K <= m and L <= n
    out = np.zeros(min(B64.shape[0], A64.shape[1]))
    out[: len(S_core)] = S_core
    return out
