"""PyTorch BoRA: a differentiable ``delta_weight`` and the fast ``bora_matmul`` used by the layer.

Same names and semantics as :mod:`bora_ref.numpy_ref` (the ground truth they are tested
against): ``B (m, r)``, ``A (r, n)``, ``sigma (b, b, r)``, ``x (..., n)``, blocks per
:func:`bora_ref.block_sizes`, no scaling. Every function keeps the inputs' dtype and device
and is differentiable in all its arguments.

``bora_matmul`` never allocates an ``(m, n)`` tensor: it projects with ``A`` block-wise, mixes
the ``b`` projections with the ``b x b`` diagonals (per rank channel), and lifts with ``B``
block-wise. Its largest intermediates are the output ``(N, m)`` and ``(b, N, r)`` projections.
Unlike the NumPy reference, the torch paths check shapes but not values (no NaN scan): a
data-dependent check would force a device sync on every forward.
"""

from __future__ import annotations

import torch

from ._validation import check_factors, check_same_dtype_device, check_x
from .partition import block_sizes

__all__ = ["delta_weight", "bora_matmul"]


def delta_weight(B: torch.Tensor, A: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
    """The ``(m, n)`` BoRA update $\\Delta W_{[i,j]} = B_i \\, \\mathrm{diag}(\\sigma_{ij}) \\, A_j$, in torch.

    Args:
        B: ``(m, r)``.
        A: ``(r, n)``.
        sigma: ``(b, b, r)`` effective diagonals.

    Returns:
        ``(m, n)`` tensor with the dtype and device of the inputs; differentiable.

    Raises:
        ValueError: non-tensor or non-float inputs, inconsistent shapes, ``b`` outside
            ``[1, min(m, n)]``, or mixed dtypes/devices.
    """
    m, n, r, b = check_factors(B, A, sigma, "torch")
    return _delta_weight(B, A, sigma)


def _delta_weight(B: torch.Tensor, A: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
    b = sigma.shape[0]
    (m, r), n = B.shape, A.shape[1]
    if m % b == 0 and n % b == 0:
        B_blocks = B.reshape(b, m // b, r)  # (b, m_b, r)
        A_blocks = A.reshape(r, b, n // b)  # (r, b, n_b)
        # delta[i, p, j, q] = sum_k B_i[p, k] * sigma[i, j, k] * A_j[k, q]
        delta = torch.einsum("ipk,ijk,kjq->ipjq", B_blocks, sigma, A_blocks)  # (b, m_b, b, n_b)
        return delta.reshape(m, n)
    # Uneven split: assemble the b x b blocks.
    B_blocks = torch.split(B, block_sizes(m, b), dim=0)  # b x (m_i, r)
    A_blocks = torch.split(A, block_sizes(n, b), dim=1)  # b x (r, n_j)
    rows = [torch.cat([(B_i * sigma[i, j]) @ A_j for j, A_j in enumerate(A_blocks)], dim=1) for i, B_i in enumerate(B_blocks)]
    return torch.cat(rows, dim=0)


def bora_matmul(x: torch.Tensor, B: torch.Tensor, A: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
    """$x \\, \\Delta W^T$ for ``x`` of shape ``(..., n)``, without forming $\\Delta W$ (the fast path).

    Args:
        x: ``(..., n)``; any leading dimensions, contiguous or not.
        B: ``(m, r)``.
        A: ``(r, n)``.
        sigma: ``(b, b, r)`` effective diagonals.

    Returns:
        ``(..., m)`` tensor with the dtype and device of the inputs; differentiable in all four.

    Raises:
        ValueError: as :func:`delta_weight`, and when ``x`` is not a float tensor with last
            dimension ``n`` and the dtype and device of the factors.
    """
    m, n, r, b = check_factors(B, A, sigma, "torch")
    check_x(x, n, "torch")
    check_same_dtype_device(B=B, x=x)
    return _bora_matmul(x, B, A, sigma)


def _bora_matmul(x: torch.Tensor, B: torch.Tensor, A: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
    """Unchecked fast path (the layer calls this after validating once at construction)."""
    b = sigma.shape[0]
    (m, r), n = B.shape, A.shape[1]
    lead = x.shape[:-1]
    x2 = x.reshape(-1, n)  # (N, n)
    N = x2.shape[0]

    if n % b == 0:
        # (b, N, n_b) @ (b, n_b, r) -> (b, N, r): one batched matmul over the column blocks.
        A_blocks = A.reshape(r, b, n // b).permute(1, 2, 0)  # (b, n_b, r)
        z = torch.bmm(x2.reshape(N, b, n // b).transpose(0, 1), A_blocks)  # (b, N, r)
    else:
        splits = block_sizes(n, b)
        z = torch.stack([x_j @ A_j.T for x_j, A_j in zip(x2.split(splits, dim=1), A.split(splits, dim=1))])  # (b, N, r)

    # u[i] = sum_j sigma[i, j] * z[j]: for each rank channel k a (b x b) mix of the projections.
    u = torch.einsum("ijk,jnk->ink", sigma, z)  # (b, N, r)

    if m % b == 0:
        B_blocks = B.reshape(b, m // b, r).transpose(1, 2)  # (b, r, m_b)
        y = torch.bmm(u, B_blocks)  # (b, N, m_b)
        y = y.transpose(0, 1).reshape(N, m)  # (N, m)
    else:
        splits = block_sizes(m, b)
        y = torch.cat([u_i @ B_i.T for u_i, B_i in zip(u.unbind(0), B.split(splits, dim=0))], dim=1)  # (N, m)
    return y.reshape(*lead, m)
