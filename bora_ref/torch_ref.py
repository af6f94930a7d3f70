"""PyTorch BoRA: a differentiable ``delta_weight`` and the fast ``bora_matmul`` used by the layer.

Same names and semantics as [`bora_ref.numpy_ref`][bora_ref.numpy_ref] (the ground truth they are tested
against): ``B (m, r)``, ``A (r, n)``, ``sigma (b, b, r)``, ``x (..., n)``, blocks per
[`bora_ref.block_sizes`][bora_ref.block_sizes], no scaling. Every function keeps the inputs' dtype and device
and is differentiable in all its arguments.

``bora_matmul`` never allocates an ``(m, n)`` tensor: it projects with ``A`` block-wise, mixes
the ``b`` projections with the ``b x b`` diagonals (per rank channel), and lifts with ``B``
block-wise, each step a strided batched matmul on views, the lift added into a zero-filled
output (strategy ``"bmm"``, `_BoRAMatmul`; ``BoRALinear`` adds it into its base output instead).
Besides its output ``(N, m)`` it allocates (and saves for backward) two ``(b r N)``-element
tensors, so it costs LoRA's two matmuls plus ``b² r`` multiply-adds per token. Strategy
``"dense"`` (`_DenseBoRAMatmul`) runs two plain GEMMs on the factors expanded to ``(n, b r)``
and ``(b r, m)``; [`choose_strategy`][bora_ref.torch_ref.choose_strategy] picks one per shape
and thread count. Both are first-order differentiable
(a custom backward; ``create_graph=True`` raises). ``delta_weight`` is the plain, readable route.
Unlike the NumPy reference, the torch paths check shapes but not values (no NaN scan): a
data-dependent check would force a device sync on every forward.
"""

from __future__ import annotations

from typing import Any

import torch

from ._validation import BoRAValueError, check_b, check_factors, check_int, check_same_dtype_device, check_x
from .partition import BlockRun, block_runs, block_sizes

__all__ = ["delta_weight", "bora_matmul", "choose_strategy", "STRATEGIES"]


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

    Examples:
        >>> import numpy as np, torch
        >>> from bora_ref import numpy_ref, torch_ref
        >>> B, A, sigma = torch.randn(6, 2, dtype=torch.float64), torch.randn(2, 4, dtype=torch.float64), torch.randn(2, 2, 2, dtype=torch.float64)
        >>> dW = torch_ref.delta_weight(B, A, sigma)  # differentiable in B, A and sigma
        >>> tuple(dW.shape), np.allclose(dW.numpy(), numpy_ref.delta_weight(B.numpy(), A.numpy(), sigma.numpy()))
        ((6, 4), True)
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


def bora_matmul(
    x: torch.Tensor, B: torch.Tensor, A: torch.Tensor, sigma: torch.Tensor, *, strategy: str = "auto"
) -> torch.Tensor:
    """$x \\, \\Delta W^T$ for ``x`` of shape ``(..., n)``, without forming $\\Delta W$ (the fast path).

    Args:
        x: ``(..., n)``; any leading dimensions, contiguous or not.
        B: ``(m, r)``.
        A: ``(r, n)``.
        sigma: ``(b, b, r)`` effective diagonals.
        strategy: how the products are arranged; all give the same result up to rounding and
            none allocates an ``(m, n)`` tensor. ``"bmm"``: strided batched matmuls over the
            blocks (extra memory ``O(b r N)``). ``"dense"``: two plain GEMMs with the factors
            expanded to the block-diagonal ``(n, b r)`` projection and the ``(b r, m)`` lift
            with $\\Sigma$ folded in ($b\\times$ LoRA's multiply-adds, fast only when ``b r`` is
            small). ``"auto"`` (default): [`choose_strategy`][bora_ref.torch_ref.choose_strategy].

    Returns:
        ``(..., m)`` tensor with the dtype and device of the inputs; differentiable in all four.

    Raises:
        ValueError: as [`delta_weight`][bora_ref.torch_ref.delta_weight], and when ``x`` is not a float tensor with last
            dimension ``n`` and the dtype and device of the factors, or an unknown ``strategy``.

    Examples:
        >>> import numpy as np, torch
        >>> from bora_ref import numpy_ref, torch_ref
        >>> B, A, sigma = torch.randn(6, 2, dtype=torch.float64), torch.randn(2, 4, dtype=torch.float64), torch.randn(2, 2, 2, dtype=torch.float64)
        >>> x = torch.randn(3, 5, 4, dtype=torch.float64)
        >>> y = torch_ref.bora_matmul(x, B, A, sigma)  # never forms the (6, 4) update
        >>> tuple(y.shape), np.allclose(y.numpy(), numpy_ref.bora_matmul(x.numpy(), B.numpy(), A.numpy(), sigma.numpy()))
        ((3, 5, 6), True)
    """
    m, n, r, b = check_factors(B, A, sigma, "torch")
    check_x(x, n, "torch")
    check_same_dtype_device(B=B, x=x)
    if strategy not in STRATEGIES:
        raise BoRAValueError(f"strategy must be one of {', '.join(map(repr, STRATEGIES))}, got {strategy!r}")
    return _bora_matmul(x, B, A, sigma, strategy)


STRATEGIES = ("auto", "bmm", "dense")
"""The values of ``bora_matmul(..., strategy=)``; ``"auto"`` picks one of the other two with [`choose_strategy`][bora_ref.torch_ref.choose_strategy].

Examples:
    >>> import torch
    >>> from bora_ref import torch_ref
    >>> x, B, A = torch.randn(3, 8, dtype=torch.float64), torch.randn(6, 2, dtype=torch.float64), torch.randn(2, 8, dtype=torch.float64)
    >>> sigma = torch.randn(2, 2, 2, dtype=torch.float64)
    >>> ys = [torch_ref.bora_matmul(x, B, A, sigma, strategy=s) for s in torch_ref.STRATEGIES]
    >>> all(torch.allclose(y, ys[0]) for y in ys)  # the same product, computed differently
    True
"""

# The rule of choose_strategy, measured with ``python -m benchmarks --sections adapter --strategies``
# (T = 2048, float32, docs/benchmarks.md; one thread re-measured with the accumulating lift, "bmm"
# faster in every cell): "dense" when b r is at most this, by torch thread count (1, or 2 and
# more); 0: only for b = 1.
_DENSE_MAX_BR = {1: 0, 2: 0}


def choose_strategy(m: int, n: int, r: int, b: int, *, threads: int | None = None, device_type: str = "cpu") -> str:
    """The strategy ``bora_matmul(..., strategy="auto")`` uses for these sizes.

    ``"dense"`` for ``b = 1`` (then it is exactly LoRA's two products); on a CPU also when
    ``b r`` is at most a measured threshold per thread count (``_DENSE_MAX_BR``; measured on a
    2-core AVX-512 CPU, see docs/benchmarks.md) and the expanded factors stay far below
    ``(m, n)`` ($4 b r \\le \\min(m, n)$); else ``"bmm"``. On CUDA only ``b = 1`` uses
    ``"dense"`` (not measured there yet).

    Args:
        m: rows of the update.
        n: columns of the update.
        r: rank per block product.
        b: number of blocks per side.
        threads: torch's intra-op thread count (default: ``torch.get_num_threads()``).
        device_type: ``"cpu"`` or ``"cuda"``.

    Returns:
        ``"bmm"`` or ``"dense"``.

    Raises:
        ValueError: ``m``, ``n``, ``r`` not integers ``>= 1``, ``b`` outside ``[1, min(m, n)]``,
            ``threads`` not ``None`` or an integer ``>= 1``, or a ``device_type`` that is not a string.

    Examples:
        >>> from bora_ref.torch_ref import choose_strategy
        >>> choose_strategy(4096, 4096, 8, 1), choose_strategy(4096, 4096, 8, 16)
        ('dense', 'bmm')
    """
    m, n, r = (check_int(k, v, minimum=1) for k, v in (("m", m), ("n", n), ("r", r)))
    b = check_b(b, m, n)
    threads = None if threads is None else check_int("threads", threads, minimum=1)
    if not isinstance(device_type, str):
        raise BoRAValueError(f"device_type must be a device type string such as 'cpu' or 'cuda', got {device_type!r:.80}")
    return _choose_strategy(m, n, r, b, threads, device_type)


def _choose_strategy(m: int, n: int, r: int, b: int, threads: int | None, device_type: str) -> str:
    """`choose_strategy` without argument checks (called on every forward)."""
    if b == 1:
        return "dense"
    if device_type != "cpu" or 4 * b * r > min(m, n):
        return "bmm"
    threads = torch.get_num_threads() if threads is None else threads
    return "dense" if b * r <= _DENSE_MAX_BR[min(threads, 2)] else "bmm"


# torch.compile runs this eagerly, as one opaque call: Dynamo cannot trace ``out=`` and in-place
# products into strided views, and tracing the block loops instead recompiles for every block
# shape (a compiled plain-bmm form was measured slower on CPU: docs/benchmarks.md).
@torch.compiler.disable
def _bora_matmul(
    x: torch.Tensor, B: torch.Tensor, A: torch.Tensor, sigma: torch.Tensor, strategy: str = "auto", *,
    scale: float = 1.0, out: torch.Tensor | None = None,
) -> torch.Tensor:
    """Unchecked fast path (the layer calls this after validating once at construction).

    ``scale`` multiplies the result (folded into the ``(b, b, r)`` mixing, so it costs no pass
    over the output). ``out`` (``(..., m)``, contiguous, the dtype and device of ``x``): add the
    result into it in place and return it, its gradient being the output's (the layer's base
    output, so the residual add costs no extra pass); ``out`` must not be needed by anything
    else's backward. Without autograd work to do, no ``autograd.Function`` is involved.
    """
    (m, r), n, b = B.shape, A.shape[1], sigma.shape[0]
    if strategy == "auto":
        strategy = _choose_strategy(m, n, r, b, None, x.device.type)
    function = _DenseBoRAMatmul if strategy == "dense" else _BoRAMatmul
    if torch.is_grad_enabled() and (
        x.requires_grad or B.requires_grad or A.requires_grad or sigma.requires_grad or (out is not None and out.requires_grad)
    ):
        return function.apply(out, x, B, A, sigma, scale)
    return function.compute(out, x, B, A, sigma, scale)[0]


def _refuse_higher_order() -> None:
    """Called at the start of every custom backward: its products record no graph, so
    ``backward(create_graph=True)`` (grad enabled inside backward) would silently give wrong
    higher-order gradients."""
    if torch.is_grad_enabled():
        raise RuntimeError(
            "bora_matmul is first-order differentiable only: backward(create_graph=True) and higher-order "
            "gradients are not supported; use x @ torch_ref.delta_weight(B, A, sigma).T for those"
        )


_runs = block_runs  # the blocks as at most two runs of equal sizes (bora_ref.partition; cached there)


def _blocks(t: torch.Tensor, run: BlockRun, axis: int, *, transpose: bool = False) -> torch.Tensor:
    """The run's blocks of a 2-D ``t`` along ``axis``, stacked in front: a strided view, no copy.

    ``axis=1``, ``t (rows, dim)`` -> ``(count, rows, size)``; ``axis=0``, ``t (dim, cols)`` ->
    ``(count, size, cols)``; ``transpose=True`` swaps the last two dimensions.
    """
    (rows, cols), (s0, s1) = t.shape, t.stride()
    if axis == 1:
        shape, strides, step = [rows, run.size], [s0, s1], s1
    else:
        shape, strides, step = [run.size, cols], [s0, s1], s0
    if transpose:
        shape.reverse()
        strides.reverse()
    # One as_strided call (the callers run eagerly, see _bora_matmul): narrow() + as_strided() costs twice as much.
    return t.as_strided((run.count, *shape), (run.size * step, *strides), t.storage_offset() + run.offset * step)


# MKL writes an output strip that does not start on a 64-byte line up to 2x slower when the
# output is large (measured: the lift of 4096 x 2048 float32 into 7 blocks, 9.3 ms as one bmm,
# 6.5 ms block by block from aligned starts, LoRA's one product 5.2 ms); small outputs do not care.
_LINE_BYTES = 64
_ALIGNED_WRITES_MIN_BYTES = 2**20  # per block strip; below it the extra calls cost more than they save


def _add_col_blocks(out: torch.Tensor, u: torch.Tensor, w: torch.Tensor, runs: tuple[BlockRun, ...]) -> None:
    """``out[:, block i] += u[i] @ w[block i].T`` for every block: ``out (N, dim)``, ``u (b, N, r)``, ``w (dim, r)``.

    Accumulates (BLAS ``beta = 1``): MKL's ``beta = 0`` GEMM into strided column strips runs
    1.2-1.7x slower than accumulating into them (measured at 896² and 4096², T = 2048, one
    thread), so a fresh output is zero-filled first (one fast pass) and then accumulated into.
    One ``baddbmm_`` per run, unless (on CPU) the blocks are large and some start off a cache
    line (MKL accumulates into such strips ~4x slower: 12.1 ms against 3.1 ms for LoRA's lift,
    4096², b = 7): then block by block, each ``addmm_`` widened to start at the line below its
    block, with zero rows of ``w`` for the widened part, so the neighbouring block gains ``+0``.
    """
    (N, dim), unit = out.shape, _LINE_BYTES // out.element_size()
    misaligned = dim % unit == 0 and any(run.size % unit for run in runs)  # rows start on a line
    if out.device.type == "cpu" and misaligned and N * (dim // len(u)) * out.element_size() >= _ALIGNED_WRITES_MIN_BYTES:
        for run in runs:
            for i in range(run.count):
                start = run.offset + i * run.size
                lo, hi = start - start % unit, start + run.size
                w_i = w[start:hi]
                if lo < start:  # rows lo..start of the widened weights are zero
                    w_i = torch.cat([w_i.new_zeros(start - lo, w.shape[1]), w_i])
                out[:, lo:hi].addmm_(u[run.first + i], w_i.T)
        return
    for run in runs:
        # (count, N, r) @ (count, r, size) -> added into the run's column blocks of out
        u_run = u if len(runs) == 1 else u[run.first : run.first + run.count]
        _blocks(out, run, 1).baddbmm_(u_run, _blocks(w, run, 0, transpose=True))


def _output(out: torch.Tensor | None, x: torch.Tensor, m: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The ``(..., m)`` output and its ``(N, m)`` view: ``out`` (to add into), or a fresh zero-filled one.

    The output returned is never a view made here (autograd refuses saved views of a returned one).
    """
    y = x.new_zeros(*x.shape[:-1], m) if out is None else out
    return y, y.view(-1, m)


def _record_forward(
    ctx: Any, out: torch.Tensor | None, x: torch.Tensor, x2: torch.Tensor, scale: float, *saved: torch.Tensor
) -> None:
    """The bookkeeping both strategies' ``forward`` share: mark ``out`` dirty (the result was added
    into it), keep what ``backward`` reads (``x_shape``, ``scale``, ``has_out``) and save ``x``
    followed by ``saved``; ``x`` itself when ``x2`` is a view of it (a view made in ``forward``
    cannot be saved), else the flattened copy ``x2``."""
    if out is not None:
        ctx.mark_dirty(out)
    ctx.x_shape, ctx.scale, ctx.has_out = x.shape, scale, out is not None
    ctx.save_for_backward(x if x.is_contiguous() else x2, *saved)


class _BoRAMatmul(torch.autograd.Function):
    """``y = s · x ΔW^T`` for ``x (..., n)`` as strided batched matmuls; saves only ``(r, b, N)`` tensors.

    Forward, with ``z_j = A_j x_j^T`` and ``u_i = s Σ_j diag(σ_ij) z_j`` (``(r, N)`` per block):

    1. project: one ``bmm`` per run of equal column blocks, ``(count, r, n_j) @ (count, n_j, N)``,
       reading ``x``'s blocks in place (strided views) into a contiguous ``zb (b, r, N)`` (a
       contiguous output lets torch pass the whole batch to one batched BLAS call), used as
       ``zt (r, b, N)``;
    2. mix: per rank channel ``k`` a ``(b, b) @ (b, N)`` product, one ``bmm`` over ``r`` -> ``ut``
       (the scale ``s`` folded into the ``(r, b, b)`` mixing matrices);
    3. lift: one ``baddbmm_`` per run of row blocks, added through strided views straight into
       the column blocks of ``y (N, m)`` (no transpose copy, no concatenation; see
       `_add_col_blocks`): ``y`` is a zero-filled new tensor, or the caller's ``out``.

    Every product is a BLAS call on views, so ``x`` and ``y`` are never copied and the dtype is
    the inputs' even under autocast (``out=`` and in-place ops are not autocast). The backward
    runs the transposed steps in reverse order the same way. An uneven split is two runs
    (array_split's larger blocks, then the smaller ones), so it costs two calls per step.
    Arguments: ``(out, x, B, A, sigma, scale)``; with ``out`` the result is added into it in
    place (``mark_dirty``) and its gradient is the output's. ``out`` comes first: when it is a
    view, autograd's rebase (``CopySlices``) takes the first gradient as the view's.
    """

    @staticmethod
    def compute(
        out: torch.Tensor | None, x: torch.Tensor, B: torch.Tensor, A: torch.Tensor, sigma: torch.Tensor, scale: float
    ) -> tuple[torch.Tensor, ...]:
        """The forward without autograd: ``(y, x2, sigma_k, zt, ut)``."""
        (m, r), n, b = B.shape, A.shape[1], sigma.shape[0]
        x2 = x.reshape(-1, n)
        N = x2.shape[0]
        # zb[j] = A_j @ x_j^T. A contiguous output per run lets torch hand each bmm to the BLAS as
        # one batched call (a strided out= runs one GEMM per block: b parallel regions on 2 threads).
        zb = x2.new_empty(b, r, N)
        col_runs = _runs(n, b)
        for run in col_runs:
            # (count, r, n_j) @ (count, n_j, N) -> (count, r, N)
            zb_run = zb if len(col_runs) == 1 else zb[run.first : run.first + run.count]
            torch.bmm(_blocks(A, run, 1), _blocks(x2, run, 1, transpose=True), out=zb_run)
        zt = zb.transpose(0, 1)  # (r, b, N) view, rank channel first, for the mixing bmm
        # (r, b, b): sigma_k[k] = s * sigma[:, :, k]; always a copy (contiguous() may return sigma itself, b = 1)
        sigma_k = sigma.permute(2, 0, 1).clone(memory_format=torch.contiguous_format)
        if scale != 1.0:
            sigma_k.mul_(scale)
        ut = x2.new_empty(r, b, N)
        torch.bmm(sigma_k, zt, out=ut)  # ut[k, i] = sum_j s sigma[i, j, k] * zt[k, j]
        y, y2 = _output(out, x, m)
        _add_col_blocks(y2, ut.permute(1, 2, 0), B, _runs(m, b))  # y_i += u_i^T B_i^T
        return y, x2, sigma_k, zt, ut

    @staticmethod
    def forward(
        ctx: Any, out: torch.Tensor | None, x: torch.Tensor, B: torch.Tensor, A: torch.Tensor, sigma: torch.Tensor,
        scale: float,
    ) -> torch.Tensor:
        y, x2, sigma_k, zt, ut = _BoRAMatmul.compute(out, x, B, A, sigma, scale)
        _record_forward(ctx, out, x, x2, scale, B, A, sigma_k, zt, ut)
        return y

    @staticmethod
    def backward(ctx: Any, gy_full: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
        _refuse_higher_order()
        x, B, A, sigma_k, zt, ut = ctx.saved_tensors
        need_x, need_B, need_A, need_sigma = ctx.needs_input_grad[1:5]
        (m, r), n, b = B.shape, A.shape[1], zt.shape[1]
        x = x.reshape(-1, n)
        N = x.shape[0]
        row_runs, col_runs = _runs(m, b), _runs(n, b)
        gy = gy_full.reshape(N, m)
        gx = gB = gA = gsigma = None

        gub = gy.new_empty(b, r, N)  # d loss / d ut, block first (contiguous outputs, as in forward)
        for run in row_runs:
            # (count, r, m_i) @ (count, m_i, N) -> (count, r, N)
            torch.bmm(_blocks(B, run, 0, transpose=True), _blocks(gy, run, 1, transpose=True),
                      out=gub[run.first : run.first + run.count])
        gut = gub.transpose(0, 1)  # (r, b, N) view
        if need_B:
            # Computed transposed, (r, m_i) per block: MKL's (m_i, N) @ (N, r) is up to 12x slower at r = 8.
            gB = gy.new_empty(m, r)
            for run in row_runs:
                # (count, r, N) @ (count, N, m_i) -> (count, r, m_i), then into B's layout (a small copy)
                u_blocks = ut[:, run.first : run.first + run.count].transpose(0, 1)
                gBb = torch.bmm(u_blocks, _blocks(gy, run, 1))
                gB[run.offset : run.offset + run.count * run.size] = gBb.transpose(1, 2).reshape(-1, r)
        if need_sigma:
            gsigma_kji = gy.new_empty(r, b, b)
            torch.bmm(zt, gut.transpose(1, 2), out=gsigma_kji)  # [k, j, i] = sum_n zt[k, j, n] * gut[k, i, n]
            gsigma = gsigma_kji.permute(2, 1, 0).contiguous()  # (b, b, r)
            if ctx.scale != 1.0:
                gsigma.mul_(ctx.scale)
        if need_x or need_A:
            gzt = gy.new_empty(r, b, N)
            torch.bmm(sigma_k.transpose(1, 2), gut, out=gzt)  # gzt[k, j] = sum_i s sigma[i, j, k] * gut[k, i]
            del gut  # lowers the peak: gx below is the largest allocation
            if need_x:
                gx = gy.new_zeros(N, n)
                _add_col_blocks(gx, gzt.permute(1, 2, 0), A.T, col_runs)  # gx_j = gz_j^T A_j
                gx = gx.view(ctx.x_shape)
            if need_A:
                gA = gy.new_empty(r, n)
                for run in col_runs:
                    # (count, r, N) @ (count, N, n_j) -> (count, r, n_j), then into A's column blocks
                    gz = gzt[:, run.first : run.first + run.count].transpose(0, 1)
                    gAb = torch.bmm(gz, _blocks(x, run, 1))
                    gA[:, run.offset : run.offset + run.count * run.size] = gAb.transpose(0, 1).reshape(r, -1)
        return gy_full if ctx.has_out else None, gx, gB, gA, gsigma, None


def _expanded_factors(B: torch.Tensor, A: torch.Tensor, sigma: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``Qt (n, b r)``, the block-diagonal ``blockdiag(A_j)^T``, and ``W (b r, m)`` with Σ folded in.

    ``W[j r + k, rows_i] = sigma[i, j, k] B_i[:, k]``, so ``x ΔW^T = (x Qt) W``; ``O((m + n) b r)``
    entries, never ``(m, n)``.
    """
    (m, r), n, b = B.shape, A.shape[1], sigma.shape[0]
    Qt = A.new_zeros(n, b, r)
    for run in _runs(n, b):
        idx = torch.arange(run.first, run.first + run.count, device=A.device)
        block_rows = Qt[run.offset : run.offset + run.count * run.size].view(run.count, run.size, b, r)
        # Qt[cols_j, j, :] = A_j^T for the run's blocks j
        block_rows[torch.arange(run.count, device=A.device), :, idx, :] = _blocks(A, run, 1).transpose(1, 2)
    W = B.new_empty(b, r, m)
    for run in _runs(m, b):
        B_run = B[run.offset : run.offset + run.count * run.size].view(run.count, run.size, r)
        W[:, :, run.offset : run.offset + run.count * run.size] = torch.einsum(
            "ijk,ipk->jkip", sigma[run.first : run.first + run.count], B_run
        ).reshape(b, r, -1)
    return Qt.view(n, b * r), W.view(b * r, m)


class _DenseBoRAMatmul(torch.autograd.Function):
    """``y = s · (x Qt) W`` with the expanded factors of `_expanded_factors`: two plain GEMMs.

    ``b`` times LoRA's multiply-adds, but whole-row outputs and one BLAS call per product, which
    wins when ``b r`` is small. The backward runs the transposed GEMMs in the orientations MKL is
    fast at for thin operands (``(b r, N) @ (N, n)``, never ``(n, N) @ (N, b r)``) and folds the
    gradients of ``Qt`` and ``W`` back onto ``A``, ``B`` and ``sigma``. Arguments as
    `_BoRAMatmul`: ``(out, x, B, A, sigma, scale)``, ``s`` folded into ``W``.
    """

    @staticmethod
    def compute(
        out: torch.Tensor | None, x: torch.Tensor, B: torch.Tensor, A: torch.Tensor, sigma: torch.Tensor, scale: float
    ) -> tuple[torch.Tensor, ...]:
        """The forward without autograd: ``(y, x2, sigma_s, Qt, W, z)``, ``sigma_s = s sigma``."""
        m, n = B.shape[0], A.shape[1]
        sigma_s = sigma * scale if scale != 1.0 else sigma
        Qt, W = _expanded_factors(B, A, sigma_s)
        x2 = x.reshape(-1, n)
        z = torch.mm(x2, Qt)  # (N, b r)
        if out is None:
            y = x.new_empty(*x.shape[:-1], m)  # (..., m), never a view made here (see _output)
            torch.mm(z, W, out=y.view(-1, m))
        else:
            out.view(-1, m).addmm_(z, W)
            y = out
        return y, x2, sigma_s, Qt, W, z

    @staticmethod
    def forward(
        ctx: Any, out: torch.Tensor | None, x: torch.Tensor, B: torch.Tensor, A: torch.Tensor, sigma: torch.Tensor,
        scale: float,
    ) -> torch.Tensor:
        y, x2, sigma_s, Qt, W, z = _DenseBoRAMatmul.compute(out, x, B, A, sigma, scale)
        _record_forward(ctx, out, x, x2, scale, B, sigma_s, Qt, W, z)
        return y

    @staticmethod
    def backward(ctx: Any, gy_full: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
        _refuse_higher_order()
        x, B, sigma, Qt, W, z = ctx.saved_tensors  # sigma: the scaled s * sigma that built W
        need_x, need_B, need_A, need_sigma = ctx.needs_input_grad[1:5]
        (m, r), n, b = B.shape, Qt.shape[0], sigma.shape[0]
        x = x.reshape(-1, n)
        N = x.shape[0]
        gy = gy_full.reshape(N, m)
        gx = gB = gA = gsigma = None
        if need_x or need_A:
            gzt = torch.mm(W, gy.T)  # (b r, N) = (gy W^T)^T
            if need_x:
                gx = torch.mm(gzt.T, Qt.T).view(ctx.x_shape)  # (..., n)
            if need_A:
                gQ = torch.mm(gzt, x).view(b, r, n)  # (b r, n) = gQt^T; only its diagonal blocks are kept
                gA = gy.new_empty(r, n)
                for run in _runs(n, b):
                    idx = torch.arange(run.first, run.first + run.count, device=gy.device)
                    cols = gQ[:, :, run.offset : run.offset + run.count * run.size].view(b, r, run.count, run.size)
                    gA[:, run.offset : run.offset + run.count * run.size] = cols[idx, :, torch.arange(run.count, device=gy.device), :].transpose(0, 1).reshape(r, -1)
        if need_B or need_sigma:
            gW = torch.mm(z.T, gy).view(b, r, m)  # (b r, m)
            gB = gy.new_empty(m, r) if need_B else None
            gsigma = gy.new_empty(b, b, r) if need_sigma else None
            for run in _runs(m, b):
                G = gW[:, :, run.offset : run.offset + run.count * run.size].view(b, r, run.count, run.size)  # [j, k, i, p]
                s_run = sigma[run.first : run.first + run.count]  # (count, b, r): [i, j, k]
                if gB is not None:  # gB_i[p, k] = sum_j sigma[i, j, k] gW[j, k, i, p]
                    gB[run.offset : run.offset + run.count * run.size] = torch.einsum("ijk,jkip->ipk", s_run, G).reshape(-1, r)
                if gsigma is not None:  # gsigma[i, j, k] = sum_p B_i[p, k] gW[j, k, i, p]
                    B_run = B[run.offset : run.offset + run.count * run.size].view(run.count, run.size, r)
                    gsigma[run.first : run.first + run.count] = torch.einsum("ipk,jkip->ijk", B_run, G)
            if gsigma is not None and ctx.scale != 1.0:
                gsigma.mul_(ctx.scale)  # W holds s * sigma
        return gy_full if ctx.has_out else None, gx, gB, gA, gsigma, None
