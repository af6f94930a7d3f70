"""What the oracle compares against: float64 truth from the NumPy reference, and a naive torch baseline.

Truth (float64, NumPy): the forward is [`bora_ref.numpy_ref.bora_matmul`][bora_ref.numpy_ref.bora_matmul]; the gradients of
$L = \\langle g, y \\rangle$ for a cotangent ``g (..., m)`` follow from $y = x \\Delta W^T$ with
$G = g^T x$ ``(m, n)`` (leading dimensions flattened) and the block formula of $\\Delta W$:

$$\\partial_x L = g \\, \\Delta W, \\quad
\\partial_{B_i} L = \\sum_j G_{ij} A_j^T \\mathrm{diag}(\\sigma_{ij}), \\quad
\\partial_{A_j} L = \\sum_i \\mathrm{diag}(\\sigma_{ij}) B_i^T G_{ij}, \\quad
\\partial_{\\sigma_{ij}} L = \\mathrm{diag}(B_i^T G_{ij} A_j^T).$$

Every entry of each quantity is a sum of products of input entries; the same functions applied to
the squared inputs give each entry's sum of squared terms. Its square root (root-sum-square of the
terms) is the scale of unavoidable rounding error, rounding errors being of random sign: the
oracle's error floor is a multiple of ``eps`` times it.

Baseline (same dtype, torch): $\\Delta W$ assembled block by block in the working dtype, then
``x @ dW.T``; its gradients come from autograd. It is written here, not taken from
[`bora_ref.torch_ref`][bora_ref.torch_ref], so a bug in the code under test cannot loosen the tolerance it is judged by.
"""

from __future__ import annotations

import numpy as np
import torch

from .. import numpy_ref
from ..partition import block_slices

__all__ = ["QUANTITIES", "truth", "rss_scale", "term_counts", "naive_bora_matmul"]

# Output first, then the gradients in argument order of fn(x, B, A, sigma).
QUANTITIES: tuple[str, ...] = ("y", "grad x", "grad B", "grad A", "grad sigma")


def _vjp(x: np.ndarray, B: np.ndarray, A: np.ndarray, sigma: np.ndarray, g: np.ndarray) -> tuple[np.ndarray, ...]:
    """Gradients of $\\langle g, x \\Delta W^T \\rangle$ w.r.t. ``x (..., n)``, ``B``, ``A``, ``sigma``."""
    m, r = B.shape
    n, b = A.shape[1], sigma.shape[0]
    grad_x = g @ numpy_ref.delta_weight(B, A, sigma)  # (..., n)
    G = g.reshape(-1, m).T @ x.reshape(-1, n)  # (m, n): dL/dΔW
    grad_B, grad_A, grad_sigma = np.zeros_like(B), np.zeros_like(A), np.zeros_like(sigma)
    rows, cols = block_slices(m, b), block_slices(n, b)
    for i in range(b):
        B_i = B[rows[i], :]  # (m_i, r)
        for j in range(b):
            A_j = A[:, cols[j]]  # (r, n_j)
            G_ij = G[rows[i], cols[j]]  # (m_i, n_j)
            grad_B[rows[i], :] += (G_ij @ A_j.T) * sigma[i, j]  # (m_i, r)
            BtG = B_i.T @ G_ij  # (r, n_j)
            grad_A[:, cols[j]] += sigma[i, j][:, None] * BtG  # (r, n_j)
            grad_sigma[i, j] = (BtG * A_j).sum(axis=1)  # (r,): diag(B_i^T G_ij A_j^T)
    return grad_x, grad_B, grad_A, grad_sigma


def truth(values: dict[str, np.ndarray], grad: bool) -> dict[str, np.ndarray]:
    """Float64 truth for `QUANTITIES` (only ``"y"`` unless ``grad``).

    Args:
        values: float64 arrays ``x (..., n)``, ``B (m, r)``, ``A (r, n)``, ``sigma (b, b, r)``,
            ``g (..., m)`` (as [`bora_ref.testing.cases.case_values`][bora_ref.testing.cases.case_values] returns them).
        grad: also compute the four gradients.

    Returns:
        ``{"y": (..., m)}`` plus, with ``grad``, ``"grad x" (..., n)``, ``"grad B" (m, r)``,
        ``"grad A" (r, n)``, ``"grad sigma" (b, b, r)``.
    """
    x, B, A, sigma = (values[k] for k in ("x", "B", "A", "sigma"))
    out = {"y": numpy_ref.bora_matmul(x, B, A, sigma)}
    if grad:
        out.update(zip(QUANTITIES[1:], _vjp(x, B, A, sigma, values["g"])))
    return out


def rss_scale(values: dict[str, np.ndarray], grad: bool) -> dict[str, float]:
    """Largest root-sum-square of the terms of any entry of each quantity: ``sqrt(max(truth(values**2)))``.

    Rounding each term, product or partial sum once costs about ``eps`` times this (random-sign errors
    add in quadrature), whatever the order of summation, so it scales the low-precision error floor.
    Unlike the sum of |terms| it does not grow faster than the result with the length of a reduction.
    """
    squared = truth({k: v * v for k, v in values.items()}, grad)
    return {k: float(np.sqrt(v.max())) if v.size else 0.0 for k, v in squared.items()}


def term_counts(values: dict[str, np.ndarray], grad: bool) -> dict[str, int]:
    """Largest number of products summed into any entry of each quantity: ``max(truth(ones))``.

    With every input equal to one, every term is one and each entry of the truth counts its terms
    (``n r`` for ``y``, ``N m_i n_j`` for ``grad sigma`` with ``N`` rows of ``x``). A sum of ``L``
    terms accumulated in floating point errs by about ``sqrt(L)`` roundings of its partial sums, so
    the oracle allows for that much growth at the accumulator's precision.
    """
    ones = truth({k: np.ones_like(v) for k, v in values.items()}, grad)
    return {k: int(round(float(v.max()))) if v.size else 0 for k, v in ones.items()}


def naive_bora_matmul(x: torch.Tensor, B: torch.Tensor, A: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
    """The simplest correct torch BoRA in the inputs' dtype: $\\Delta W$ block by block, then one matmul.

    Args:
        x: ``(..., n)``.
        B: ``(m, r)``.
        A: ``(r, n)``.
        sigma: ``(b, b, r)``; one dtype and device.

    Returns:
        ``(..., m)``, differentiable in all four inputs.
    """
    (m, _), n, b = B.shape, A.shape[1], sigma.shape[0]
    rows, cols = block_slices(m, b), block_slices(n, b)
    delta = torch.cat(
        [torch.cat([(B[rows[i]] * sigma[i, j]) @ A[:, cols[j]] for j in range(b)], dim=1) for i in range(b)],
        dim=0,
    )  # (m, n) in the working dtype
    return x @ delta.T
