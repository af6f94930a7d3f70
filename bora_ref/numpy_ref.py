"""The NumPy reference: ground truth for every other BoRA path in this library.

It reads like the paper: loop over row blocks ``i`` and column blocks ``j``, and write

$$\\Delta W_{[i, j]} = B_i \\, \\mathrm{diag}(\\sigma_{ij}) \\, A_j$$

into the ``(i, j)`` block. Shapes (as on the theory page): ``B (m, r)``, ``A (r, n)``, ``sigma (b, b, r)``,
``x (..., n)``; blocks follow [`bora_ref.block_sizes`][bora_ref.block_sizes]. Nothing here is scaled
(the layer applies ``alpha / r``).

Arithmetic happens in ``numpy.result_type`` of the inputs (pass float64 to get float64 ground
truth; the oracle always does). Non-finite factors are rejected: a reference must not quietly
return NaN.
"""

from __future__ import annotations

import numpy as np

from ._validation import check_factors, check_finite, check_x
from .partition import block_slices

__all__ = ["delta_weight", "bora_matmul"]


def _check(B: np.ndarray, A: np.ndarray, sigma: np.ndarray) -> tuple[int, int, int, int]:
    m, n, r, b = check_factors(B, A, sigma, "numpy")
    for name, value in (("B", B), ("A", A), ("sigma", sigma)):
        check_finite(name, value)
    return m, n, r, b


def delta_weight(B: np.ndarray, A: np.ndarray, sigma: np.ndarray) -> np.ndarray:
    """The BoRA update $\\Delta W$ built block by block, exactly as the formula reads.

    $$\\Delta W_{[i, j]} = B_i \\, \\mathrm{diag}(\\sigma_{ij}) \\, A_j, \\qquad i, j = 1, \\dots, b$$

    Args:
        B: ``(m, r)`` up-projection; its rows are split into ``b`` blocks ``B_i`` of shape ``(m_i, r)``.
        A: ``(r, n)`` down-projection; its columns are split into ``b`` blocks ``A_j`` of shape ``(r, n_j)``.
        sigma: ``(b, b, r)``; ``sigma[i, j]`` is the diagonal of $\\Sigma_{ij}$ (effective values,
            not a layer's raw parameter).

    Returns:
        ``(m, n)`` array in ``numpy.result_type(B, A, sigma)``.

    Raises:
        ValueError: wrong types (not NumPy arrays), non-float dtypes, inconsistent shapes,
            ``b`` outside ``[1, min(m, n)]``, or non-finite values.

    Examples:
        >>> import numpy as np
        >>> from bora_ref import numpy_ref
        >>> rng = np.random.default_rng(0)
        >>> B, A, sigma = rng.standard_normal((6, 2)), rng.standard_normal((2, 4)), rng.standard_normal((2, 2, 2))
        >>> dW = numpy_ref.delta_weight(B, A, sigma)  # row blocks 3 + 3, column blocks 2 + 2
        >>> dW.shape, np.allclose(dW[3:, :2], B[3:] @ np.diag(sigma[1, 0]) @ A[:, :2])
        ((6, 4), True)
    """
    m, n, r, b = _check(B, A, sigma)
    dtype = np.result_type(B, A, sigma)
    rows = block_slices(m, b)  # row blocks of B and of ΔW
    cols = block_slices(n, b)  # column blocks of A and of ΔW

    delta = np.zeros((m, n), dtype=dtype)
    for i in range(b):
        B_i = B[rows[i], :]  # (m_i, r)
        for j in range(b):
            A_j = A[:, cols[j]]  # (r, n_j)
            Sigma_ij = np.diag(sigma[i, j])  # (r, r), the block's own diagonal
            delta[rows[i], cols[j]] = B_i @ Sigma_ij @ A_j  # (m_i, n_j)
    return delta


def bora_matmul(x: np.ndarray, B: np.ndarray, A: np.ndarray, sigma: np.ndarray) -> np.ndarray:
    """$x \\, \\Delta W^T$ for ``x`` of shape ``(..., n)``, without forming $\\Delta W$.

    Three steps per the factored form $\\Delta W = P S Q$:

    1. project each column block of ``x`` with its own ``A_j``: $z_j = x_j A_j^T$, ``(..., r)``;
    2. mix the projections with the diagonals: $u_i = \\sum_j \\sigma_{ij} \\odot z_j$, ``(..., r)``;
    3. lift each mixture with its own ``B_i``: $y_i = u_i B_i^T$, ``(..., m_i)``.

    Args:
        x: ``(..., n)`` input; any number of leading dimensions.
        B: ``(m, r)``.
        A: ``(r, n)``.
        sigma: ``(b, b, r)`` (see [`delta_weight`][bora_ref.numpy_ref.delta_weight]).

    Returns:
        ``(..., m)`` array in ``numpy.result_type(x, B, A, sigma)``.

    Raises:
        ValueError: as [`delta_weight`][bora_ref.numpy_ref.delta_weight], and when ``x`` is not a float NumPy array with last
            dimension ``n``.

    Examples:
        >>> import numpy as np
        >>> from bora_ref import numpy_ref
        >>> rng = np.random.default_rng(0)
        >>> B, A, sigma = rng.standard_normal((6, 2)), rng.standard_normal((2, 4)), rng.standard_normal((2, 2, 2))
        >>> x = rng.standard_normal((5, 4))
        >>> y = numpy_ref.bora_matmul(x, B, A, sigma)
        >>> y.shape, np.allclose(y, x @ numpy_ref.delta_weight(B, A, sigma).T)
        ((5, 6), True)
    """
    m, n, r, b = _check(B, A, sigma)
    check_x(x, n, "numpy")
    dtype = np.result_type(x, B, A, sigma)
    rows = block_slices(m, b)
    cols = block_slices(n, b)

    # Step 1: z[j] = x_j @ A_j.T — each column block of x meets only its own A_j.
    z = [x[..., cols[j]] @ A[:, cols[j]].T for j in range(b)]  # b arrays of shape (..., r)

    y = np.zeros(x.shape[:-1] + (m,), dtype=dtype)  # (..., m)
    for i in range(b):
        # Step 2: u_i = sum_j sigma[i, j] * z_j — elementwise over the r channels.
        u_i = sum(sigma[i, j] * z[j] for j in range(b))  # (..., r)
        # Step 3: y_i = u_i @ B_i.T.
        y[..., rows[i]] = u_i @ B[rows[i], :].T  # (..., m_i)
    return y
