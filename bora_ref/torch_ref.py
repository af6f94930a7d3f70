"""PyTorch BoRA: a differentiable ``delta_weight`` and the fast ``bora_matmul`` used by the layer.

Same names and semantics as :mod:`bora_ref.numpy_ref` (the ground truth they are tested
against): ``B (m, r)``, ``A (r, n)``, ``sigma (b, b, r)``, ``x (..., n)``, blocks per
:func:`bora_ref.block_sizes`, no scaling. Every function keeps the inputs' dtype and device
and is differentiable in all its arguments.

``bora_matmul`` never allocates an ``(m, n)`` tensor: it projects with ``A`` block-wise, mixes
the ``b`` projections with the ``b x b`` diagonals (per rank channel), and lifts with ``B``
block-wise, each step a strided batched matmul on views (:class:`_BoRAMatmul`). Besides its
output ``(N, m)`` it allocates (and saves for backward) two ``(r, b, N)`` tensors, so it costs
LoRA's two matmuls plus ``b² r`` multiply-adds per token. It is first-order differentiable
(a custom backward; ``create_graph=True`` raises). ``delta_weight`` is the plain, readable route.
Unlike the NumPy reference, the torch paths check shapes but not values (no NaN scan): a
data-dependent check would force a device sync on every forward.
"""

from __future__ import annotations

import itertools
from typing import Any, NamedTuple

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


# torch.compile runs this eagerly, as one opaque call: Dynamo cannot trace ``out=`` into strided
# views, and tracing the block loops instead recompiles for every block shape.
@torch.compiler.disable
def _bora_matmul(x: torch.Tensor, B: torch.Tensor, A: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
    """Unchecked fast path (the layer calls this after validating once at construction)."""
    n, m = A.shape[1], B.shape[0]
    y = _BoRAMatmul.apply(x.reshape(-1, n), B, A, sigma)  # (N, m)
    return y.reshape(*x.shape[:-1], m)


class _Run(NamedTuple):
    """``count`` consecutive equal blocks of ``size`` rows/columns: blocks ``first..first+count-1``, from ``offset``."""

    first: int
    count: int
    size: int
    offset: int


def _runs(dim: int, b: int) -> tuple[_Run, ...]:
    """The array_split blocks of ``dim`` as at most two runs of equal blocks (one when ``b`` divides ``dim``)."""
    runs, first, offset = [], 0, 0
    for size, group in itertools.groupby(block_sizes(dim, b)):
        count = len(list(group))
        runs.append(_Run(first, count, size, offset))
        first, offset = first + count, offset + count * size
    return tuple(runs)


def _blocks(t: torch.Tensor, run: _Run, axis: int, *, transpose: bool = False) -> torch.Tensor:
    """The run's blocks of a 2-D ``t`` along ``axis``, stacked in front: a strided view, no copy.

    ``axis=1``, ``t (rows, dim)`` -> ``(count, rows, size)``; ``axis=0``, ``t (dim, cols)`` ->
    ``(count, size, cols)``; ``transpose=True`` swaps the last two dimensions.
    """
    shape, strides = list(t.shape), list(t.stride())
    step = strides[axis]
    shape[axis] = run.size
    if transpose:
        shape.reverse()
        strides.reverse()
    # narrow() sets the start; as_strided() keeps it (no storage_offset(), which torch.compile cannot trace).
    return t.narrow(axis, run.offset, run.count * run.size).as_strided((run.count, *shape), (run.size * step, *strides))


# MKL writes an output strip that does not start on a 64-byte line up to 2x slower when the
# output is large (measured: the lift of 4096 x 2048 float32 into 7 blocks, 9.3 ms as one bmm,
# 6.5 ms block by block from aligned starts, LoRA's one product 5.2 ms); small outputs do not care.
_LINE_BYTES = 64
_ALIGNED_WRITES_MIN_BYTES = 2**20  # per block strip; below it the extra calls cost more than they save


def _write_col_blocks(out: torch.Tensor, u: torch.Tensor, w: torch.Tensor, runs: tuple[_Run, ...]) -> None:
    """``out[:, block i] = u[i] @ w[block i].T`` for every block: ``out (N, dim)``, ``u (b, N, r)``, ``w (dim, r)``.

    One ``bmm`` per run, unless (on CPU) the blocks are large and some start off a cache line:
    then block by block, from the last, each product widened to start at the line below its
    block. The widened part belongs to earlier blocks, which are written afterwards.
    """
    (N, dim), unit = out.shape, _LINE_BYTES // out.element_size()
    misaligned = dim % unit == 0 and any(run.size % unit for run in runs)  # rows start on a line
    if out.device.type == "cpu" and misaligned and N * (dim // len(u)) * out.element_size() >= _ALIGNED_WRITES_MIN_BYTES:
        for run in reversed(runs):
            for i in reversed(range(run.count)):
                start = run.offset + i * run.size
                lo, hi = start - start % unit, start + run.size
                torch.mm(u[run.first + i], w[lo:hi].T, out=out[:, lo:hi])
        return
    for run in runs:
        # (count, N, r) @ (count, r, size) -> the run's column blocks of out
        torch.bmm(u[run.first : run.first + run.count], _blocks(w, run, 0, transpose=True), out=_blocks(out, run, 1))


class _BoRAMatmul(torch.autograd.Function):
    """``y = x ΔW^T`` for ``x (N, n)`` as strided batched matmuls; saves only ``(r, b, N)`` tensors.

    Forward, with ``z_j = A_j x_j^T`` and ``u_i = Σ_j diag(σ_ij) z_j`` (``(r, N)`` per block):

    1. project: one ``bmm`` per run of equal column blocks, ``(count, r, n_j) @ (count, n_j, N)``,
       reading ``x``'s blocks in place (strided views) into ``zt (r, b, N)``;
    2. mix: per rank channel ``k`` a ``(b, b) @ (b, N)`` product, one ``bmm`` over ``r`` -> ``ut``;
    3. lift: one ``bmm`` per run of row blocks, written through ``out=`` straight into the
       column blocks of ``y (N, m)`` (no transpose copy, no concatenation; large blocks off the
       cache line block by block instead, see :func:`_write_col_blocks`).

    Every product is an ``out=`` BLAS call on views, so ``x`` and ``y`` are never copied and the
    dtype is the inputs' even under autocast (``out=`` ops are not autocast). The backward runs the
    transposed steps in reverse order the same way. An uneven split is two runs (array_split's
    larger blocks, then the smaller ones), so it costs two ``bmm`` calls per step instead of one.
    """

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, B: torch.Tensor, A: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
        (N, n), (m, r), b = x.shape, B.shape, sigma.shape[0]
        ctx.row_runs, ctx.col_runs = _runs(m, b), _runs(n, b)
        zt = x.new_empty(r, b, N)  # zt[:, j] = A_j @ x_j^T; rank channel first, for the mixing bmm
        for run in ctx.col_runs:
            # (count, r, n_j) @ (count, n_j, N) -> (count, r, N)
            out = zt[:, run.first : run.first + run.count].transpose(0, 1)
            torch.bmm(_blocks(A, run, 1), _blocks(x, run, 1, transpose=True), out=out)
        sigma_k = sigma.permute(2, 0, 1).contiguous()  # (r, b, b): sigma_k[k] = sigma[:, :, k]
        ut = x.new_empty(r, b, N)
        torch.bmm(sigma_k, zt, out=ut)  # ut[k, i] = sum_j sigma[i, j, k] * zt[k, j]
        y = x.new_empty(N, m)
        _write_col_blocks(y, ut.permute(1, 2, 0), B, ctx.row_runs)  # y_i = u_i^T B_i^T
        ctx.save_for_backward(x, B, A, sigma_k, zt, ut)
        return y

    @staticmethod
    def backward(ctx: Any, gy: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
        if torch.is_grad_enabled():  # create_graph=True: these out= products record no graph
            raise RuntimeError(
                "bora_matmul is first-order differentiable only: backward(create_graph=True) and higher-order "
                "gradients are not supported; use x @ torch_ref.delta_weight(B, A, sigma).T for those"
            )
        x, B, A, sigma_k, zt, ut = ctx.saved_tensors
        need_x, need_B, need_A, need_sigma = ctx.needs_input_grad
        (N, n), (m, r), b = x.shape, B.shape, zt.shape[1]
        gx = gB = gA = gsigma = None

        gut = gy.new_empty(r, b, N)  # d loss / d ut
        for run in ctx.row_runs:
            # (count, r, m_i) @ (count, m_i, N) -> (count, r, N)
            out = gut[:, run.first : run.first + run.count].transpose(0, 1)
            torch.bmm(_blocks(B, run, 0, transpose=True), _blocks(gy, run, 1, transpose=True), out=out)
        if need_B:
            # Computed transposed, (r, m): MKL's (m_i, N) @ (N, r) is up to 12x slower at r = 8.
            gBt = gy.new_empty(r, m)
            for run in ctx.row_runs:
                # (count, r, N) @ (count, N, m_i) -> (count, r, m_i)
                u_blocks = ut[:, run.first : run.first + run.count].transpose(0, 1)
                torch.bmm(u_blocks, _blocks(gy, run, 1), out=_blocks(gBt, run, 1))
            gB = gBt.T.contiguous()  # (m, r), the layout of B
        if need_sigma:
            gsigma_kji = gy.new_empty(r, b, b)
            torch.bmm(zt, gut.transpose(1, 2), out=gsigma_kji)  # [k, j, i] = sum_n zt[k, j, n] * gut[k, i, n]
            gsigma = gsigma_kji.permute(2, 1, 0).contiguous()  # (b, b, r)
        if need_x or need_A:
            gzt = gy.new_empty(r, b, N)
            torch.bmm(sigma_k.transpose(1, 2), gut, out=gzt)  # gzt[k, j] = sum_i sigma[i, j, k] * gut[k, i]
            del gut  # lowers the peak: gx below is the largest allocation
            if need_x:
                gx = gy.new_empty(N, n)
                _write_col_blocks(gx, gzt.permute(1, 2, 0), A.T, ctx.col_runs)  # gx_j = gz_j^T A_j
            if need_A:
                gA = gy.new_empty(r, n)
                for run in ctx.col_runs:
                    # (count, r, N) @ (count, N, n_j) -> the column blocks of gA
                    gz = gzt[:, run.first : run.first + run.count].transpose(0, 1)
                    torch.bmm(gz, _blocks(x, run, 1), out=_blocks(gA, run, 1))
        return gx, gB, gA, gsigma
