"""BoRA kernels for the oracle's own tests: independently written correct ones, and planted bugs.

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


# ---------------------------------------------------------------------------------------------
# More independent correct kernels: each computes y = x @ ΔW.T its own way, in the inputs' dtype.

def _splits(dim: int, b: int) -> list[int]:
    """array_split sizes, recomputed here from the rule (larger blocks first)."""
    return [dim // b + (1 if i < dim % b else 0) for i in range(b)]


def loop_bora_matmul(x, B, A, sigma):
    """Correct: Python loops over the b x b blocks, y_i = sum_j ((x_j @ A_j.T) * sigma[i, j]) @ B_i.T."""
    b = sigma.shape[0]
    xs = x.split(_splits(A.shape[1], b), dim=-1)
    As = A.split(_splits(A.shape[1], b), dim=1)
    Bs = B.split(_splits(B.shape[0], b), dim=0)
    z = [x_j @ A_j.T for x_j, A_j in zip(xs, As)]  # b x (..., r)
    out = []
    for i, B_i in enumerate(Bs):
        u = z[0] * sigma[i, 0]
        for j in range(1, b):
            u = u + z[j] * sigma[i, j]
        out.append(u @ B_i.T)  # (..., m_i)
    return torch.cat(out, dim=-1)


def einsum_bora_matmul(x, B, A, sigma):
    """Correct: ΔW in one einsum over one-hot row/column block masks, then x @ ΔW.T."""
    b, m, n = sigma.shape[0], B.shape[0], A.shape[1]
    rows = torch.nn.functional.one_hot(_block_index(m, b, x.device), b).to(x.dtype)  # (m, b)
    cols = torch.nn.functional.one_hot(_block_index(n, b, x.device), b).to(x.dtype)  # (n, b)
    s = torch.einsum("pi,ijk,qj->pqk", rows, sigma, cols)  # (m, n, r): sigma of the block holding (p, q)
    delta = torch.einsum("pk,pqk,kq->pq", B, s, A)  # (m, n)
    return x @ delta.T


def blockdiag_bora_matmul(x, B, A, sigma):
    """Correct: BoRA as LoRA with expanded factors, ΔW = blockdiag(B_i) @ S @ blockdiag(A_j),
    S[(i, k), (j, k')] = [k = k'] sigma[i, j, k] of shape (b r, b r)."""
    b, r = sigma.shape[0], sigma.shape[2]
    P = torch.block_diag(*B.split(_splits(B.shape[0], b), dim=0))  # (m, b r)
    Q = torch.block_diag(*A.split(_splits(A.shape[1], b), dim=1))  # (b r, n)
    eye = torch.eye(r, dtype=x.dtype, device=x.device)
    S = (sigma[:, :, :, None] * eye).permute(0, 2, 1, 3).reshape(b * r, b * r)  # [i k, j k'] = sigma[i, j, k] [k = k']
    return ((x @ Q.T) @ S.T) @ P.T


class _HandBackward(torch.autograd.Function):
    """Correct: the loop forward with the backward written out by hand (the VJP block formulas)."""

    @staticmethod
    def forward(ctx, x, B, A, sigma):
        ctx.save_for_backward(x, B, A, sigma)
        return loop_bora_matmul(x, B, A, sigma)

    @staticmethod
    def backward(ctx, g):
        x, B, A, sigma = ctx.saved_tensors
        b, (m, r), n = sigma.shape[0], B.shape, A.shape[1]
        rs, cs = _splits(m, b), _splits(n, b)
        Bs, As = B.split(rs, 0), A.split(cs, 1)
        gs, xs = g.split(rs, -1), x.split(cs, -1)
        g2 = [gi.reshape(-1, gi.shape[-1]) for gi in gs]  # (N, m_i)
        x2 = [xj.reshape(-1, xj.shape[-1]) for xj in xs]  # (N, n_j)
        gB, gA, gsig = [], [None] * b, torch.empty_like(sigma)
        gx = [torch.zeros_like(xj) for xj in xs]
        gz = [0] * b
        for i in range(b):
            w = g2[i] @ Bs[i]  # (N, r): d/du_i
            acc = None
            for j in range(b):
                z_j = x2[j] @ As[j].T  # (N, r)
                gsig[i, j] = (w * z_j).sum(0)
                term = (z_j * sigma[i, j])
                acc = term if acc is None else acc + term
                gz[j] = gz[j] + w * sigma[i, j]
            gB.append(g2[i].T @ acc)  # (m_i, r)
        for j in range(b):
            gA[j] = gz[j].T @ x2[j]  # (r, n_j)
            gx[j] = (gz[j] @ As[j]).reshape(xs[j].shape)
        return torch.cat(gx, -1), torch.cat(gB, 0), torch.cat(gA, 1), gsig


def custom_backward_bora_matmul(x, B, A, sigma):
    """Correct: a torch.autograd.Function with a hand-written backward."""
    return _HandBackward.apply(x, B, A, sigma)


CORRECT = [onehot_bora_matmul, loop_bora_matmul, einsum_bora_matmul, blockdiag_bora_matmul,
           custom_backward_bora_matmul, torch_ref.bora_matmul]


# ---------------------------------------------------------------------------------------------
# Planted bugs for the gaps the oracle used to miss (issue: leading dims, decode steps, long
# reductions, state between calls).

def keeps_first_leading_dim(x, B, A, sigma):
    """Bug: returns (lead0, rest, m) for x with 3+ dims (flattens all but the first leading dim)."""
    y = onehot_bora_matmul(x, B, A, sigma)
    return y.reshape(x.shape[0], -1, B.shape[0]) if x.dim() >= 3 else y


def squeezes_unit_dims(x, B, A, sigma):
    """Bug: drops size-1 leading dimensions (a .squeeze() meant for the batch)."""
    return onehot_bora_matmul(x.reshape([d for d in x.shape[:-1] if d != 1] + [x.shape[-1]]), B, A, sigma)


def decode_sigma_transposed(x, B, A, sigma):
    """Bug: a special path for a decode step (x of shape (1, n) or (1, 1, n)) that reads sigma[j, i] for
    block (i, j)."""
    if x.dim() >= 2 and x.numel() == x.shape[-1]:
        return onehot_bora_matmul(x, B, A, sigma.transpose(0, 1))
    return onehot_bora_matmul(x, B, A, sigma)


def decode_drops_batch_dims(x, B, A, sigma):
    """Bug: the decode-step path (x of shape (1, n) or (1, 1, n)) returns (m,), dropping the leading dims."""
    if x.dim() >= 2 and x.numel() == x.shape[-1]:
        return onehot_bora_matmul(x.reshape(-1), B, A, sigma)
    return onehot_bora_matmul(x, B, A, sigma)


def _sequential_sum(terms: torch.Tensor) -> torch.Tensor:
    """Sum over the last dimension one term at a time, rounding every partial sum to the dtype."""
    acc = torch.zeros(terms.shape[:-1], dtype=terms.dtype, device=terms.device)
    for t in terms.unbind(-1):
        acc = acc + t
    return acc


def low_precision_accumulation(x, B, A, sigma):
    """Bug: the projection x_j @ A_j.T accumulated element by element in the working dtype (a kernel
    whose accumulator has the input dtype instead of float32). Correct for float32/float64 inputs."""
    b = sigma.shape[0]
    xs, As = x.split(_splits(A.shape[1], b), -1), A.split(_splits(A.shape[1], b), 1)
    z = [_sequential_sum(x_j[..., None, :] * A_j) for x_j, A_j in zip(xs, As)]  # b x (..., r)
    Bs = B.split(_splits(B.shape[0], b), 0)
    out = []
    for i, B_i in enumerate(Bs):
        u = sum(z[j] * sigma[i, j] for j in range(b))
        out.append(u @ B_i.T)
    return torch.cat(out, dim=-1)


class _DeltaCache:
    """Bug: caches ΔW keyed by the shapes of B, A and sigma (not their values)."""

    def __init__(self):
        self.cache = {}

    def __call__(self, x, B, A, sigma):
        key = (tuple(B.shape), tuple(A.shape), tuple(sigma.shape), B.dtype)
        if key not in self.cache:
            self.cache[key] = torch_ref.delta_weight(B, A, sigma)
        return x @ self.cache[key].T


caches_delta_by_shape = _DeltaCache()


class _OutputBuffer:
    """Bug: writes every result into one preallocated buffer per shape and returns the buffer itself,
    so the caller's earlier result changes at the next call."""

    def __init__(self):
        self.buffers = {}

    def __call__(self, x, B, A, sigma):
        y = onehot_bora_matmul(x, B, A, sigma)
        key = (tuple(y.shape), y.dtype)
        if key not in self.buffers:
            self.buffers[key] = torch.empty_like(y)
        out = self.buffers[key]
        with torch.no_grad():
            out.copy_(y)
        return out if not y.requires_grad else y  # with autograd the buffer is not used


reuses_output_buffer = _OutputBuffer()


class _GlobalSaved(torch.autograd.Function):
    """Bug in backward only: saves its inputs on the class, not on ctx, so a second forward before the
    first backward makes the first backward use the second call's inputs."""

    saved = None

    @staticmethod
    def forward(ctx, x, B, A, sigma):
        _GlobalSaved.saved = (x.detach(), B.detach(), A.detach(), sigma.detach())
        return onehot_bora_matmul(x, B, A, sigma)

    @staticmethod
    def backward(ctx, g):
        inputs = [t.clone().requires_grad_() for t in _GlobalSaved.saved]
        with torch.enable_grad():
            return torch.autograd.grad(onehot_bora_matmul(*inputs), inputs, g)


def global_saved_tensors(x, B, A, sigma):
    return _GlobalSaved.apply(x, B, A, sigma)


class _BlockIndexCache:
    """Bug across cases: caches the column one-hot masks keyed by b only (stale when n changes), so it
    fails only after an earlier case with the same b and another n. ``reset()`` empties the cache (a
    fresh process)."""

    def __init__(self):
        self.cols = {}

    def reset(self):
        self.cols.clear()

    def __call__(self, x, B, A, sigma):
        b, (m, r), n = sigma.shape[0], B.shape, A.shape[1]
        if b not in self.cols:
            self.cols[b] = _block_index(n, b, x.device)
        col = self.cols[b]
        if col.shape[0] != n:  # stale: pad or cut to n rather than crash (a silent wrong answer)
            col = torch.nn.functional.pad(col, (0, max(0, n - col.shape[0])), value=b - 1)[:n]
        col_onehot = torch.nn.functional.one_hot(col, b).to(x.dtype)
        z = torch.einsum("...q,kq,qj->...jk", x, A, col_onehot)
        u = torch.einsum("ijk,...jk->...ik", sigma, z)
        return (u.index_select(-2, _block_index(m, b, x.device)) * B).sum(-1)


stale_block_index_cache = _BlockIndexCache()


def exits(x, B, A, sigma):
    """Bug: calls sys.exit(0) (a debugging leftover); must fail, never pass silently."""
    import sys

    sys.exit(0)


def returns_list(x, B, A, sigma):
    """Bug: returns a Python list."""
    return onehot_bora_matmul(x, B, A, sigma).tolist()


def returns_sparse(x, B, A, sigma):
    """Bug: returns a sparse COO tensor."""
    return onehot_bora_matmul(x, B, A, sigma).to_sparse()


def spins_forever(x, B, A, sigma):
    """Bug: never returns (a Python loop waiting on a condition that never comes)."""
    while True:
        pass
