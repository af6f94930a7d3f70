"""BoRA kernels for the oracle's own tests: one independently written correct one, and planted bugs.

Importable by name (``tests.testing.kernels:NAME``) so the CLI and the replay snippets can find them.
Each buggy kernel is the correct one with exactly one realistic mistake.
"""

from __future__ import annotations

import torch

from bora_ref import torch_ref
from bora_ref.partition import block_sizes


def _block_index(dim: int, b: int, device: torch.device) -> torch.Tensor:
    """``(dim,)`` block number of every row (or column), blocks as numpy.array_split cuts them."""
    sizes = torch.tensor(block_sizes(dim, b), device=device)
    return torch.repeat_interleave(torch.arange(b, device=device), sizes)


def onehot_bora_matmul(x: torch.Tensor, B: torch.Tensor, A: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
    """Correct, vectorised, written without looking at torch_ref: one-hot block masks and a gather."""
    b, (m, r), n = sigma.shape[0], B.shape, A.shape[1]
    col_onehot = torch.nn.functional.one_hot(_block_index(n, b, x.device), b).to(x.dtype)  # (n, b)
    z = torch.einsum("...q,kq,qj->...jk", x, A, col_onehot)  # (..., b, r): z[j] = x_j @ A_j.T
    u = torch.einsum("ijk,...jk->...ik", sigma, z)  # (..., b, r): u[i] = sum_j sigma[i, j] * z[j]
    u_rows = u.index_select(-2, _block_index(m, b, x.device))  # (..., m, r): row p takes u of its block
    return (u_rows * B).sum(-1)  # (..., m)


def sigma_transposed(x, B, A, sigma):
    """Bug: uses sigma[j, i] for block (i, j)."""
    return onehot_bora_matmul(x, B, A, sigma.transpose(0, 1))


def sigma_ignored(x, B, A, sigma):
    """Bug: plain LoRA, Σ never enters."""
    return x @ (B @ A).T


def remainder_last(x, B, A, sigma):
    """Bug: uneven dims split with the remainder in the LAST block (numpy.array_split puts it first)."""
    b = sigma.shape[0]

    def sizes(d):
        return [d // b] * (b - 1) + [d - (b - 1) * (d // b)]

    Bs, As = B.split(sizes(B.shape[0]), dim=0), A.split(sizes(A.shape[1]), dim=1)
    delta = torch.cat([torch.cat([(B_i * sigma[i, j]) @ A_j for j, A_j in enumerate(As)], 1) for i, B_i in enumerate(Bs)])
    return x @ delta.T


def float32_roundtrip(x, B, A, sigma):
    """Bug: a hidden float32 detour (fine for float32/bfloat16, wrong for float64)."""
    return torch_ref.bora_matmul(x.float(), B.float(), A.float(), sigma.float()).to(x.dtype)


def flattens_leading_dims(x, B, A, sigma):
    """Bug: returns (N, m) instead of (..., m)."""
    return onehot_bora_matmul(x, B, A, sigma).reshape(-1, B.shape[0])


def writes_into_input(x, B, A, sigma):
    """Bug: scales B in place (and compensates, so y itself is exact)."""
    B.mul_(2.0)
    return onehot_bora_matmul(x, B, A, sigma) / 2.0


def ignores_strides(x, B, A, sigma):
    """Bug: reads x's storage as if it were contiguous (what a raw-pointer kernel does)."""
    flat = torch.as_strided(x, x.shape, torch.empty(x.shape).stride(), x.storage_offset())
    return onehot_bora_matmul(flat, B, A, sigma)


def bfloat16_via_float16(x, B, A, sigma):
    """Bug: computes bfloat16 in float16 (more mantissa, far less range: overflows on large factors)."""
    if x.dtype == torch.bfloat16:
        return onehot_bora_matmul(x.half(), B.half(), A.half(), sigma.half()).bfloat16()
    return onehot_bora_matmul(x, B, A, sigma)


def rejects_uneven(x, B, A, sigma):
    """Raises on uneven splits (an unsupported shape must not pass silently)."""
    b = sigma.shape[0]
    if B.shape[0] % b or A.shape[1] % b:
        raise NotImplementedError("uneven blocks are not supported")
    return onehot_bora_matmul(x, B, A, sigma)


def always_float32(x, B, A, sigma):
    """Bug: returns float32 whatever the input dtype."""
    return onehot_bora_matmul(x, B, A, sigma).float()


def detached(x, B, A, sigma):
    """Bug: no autograd graph (computed under no_grad)."""
    with torch.no_grad():
        return onehot_bora_matmul(x, B, A, sigma)


class _WrongSigmaGrad(torch.autograd.Function):
    """Correct forward; backward hands back the gradient of sigma transposed in (i, j)."""

    @staticmethod
    def forward(ctx, x, B, A, sigma):
        ctx.save_for_backward(x, B, A, sigma)
        return onehot_bora_matmul(x, B, A, sigma)

    @staticmethod
    def backward(ctx, g):
        inputs = [t.detach().requires_grad_() for t in ctx.saved_tensors]
        with torch.enable_grad():
            grads = torch.autograd.grad(onehot_bora_matmul(*inputs), inputs, g)
        return grads[0], grads[1], grads[2], grads[3].transpose(0, 1)


def wrong_sigma_grad(x, B, A, sigma):
    """Bug in backward only: forward is right, d/d sigma is transposed."""
    return _WrongSigmaGrad.apply(x, B, A, sigma)


def proportional_blocks(x, B, A, sigma):
    """Bug: block of row p is p * b // m (proportional), which differs from numpy.array_split only for
    some uneven shapes (e.g. 10 rows in 4 blocks: 3, 2, 3, 2 instead of 3, 3, 2, 2)."""
    b, (m, _), n = sigma.shape[0], B.shape, A.shape[1]
    col = torch.arange(n, device=x.device) * b // n
    row = torch.arange(m, device=x.device) * b // m
    z = torch.einsum("...q,kq,qj->...jk", x, A, torch.nn.functional.one_hot(col, b).to(x.dtype))  # (..., b, r)
    u = torch.einsum("ijk,...jk->...ik", sigma, z)  # (..., b, r)
    return (u.index_select(-2, row) * B).sum(-1)
