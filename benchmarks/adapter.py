"""The adapter path alone: ``torch_ref.bora_matmul`` against plain LoRA ``(x A^T) B^T``.

Candidates for ``x (T, n)``, ``A (r, n)``, ``B (m, r)``, ``sigma (b, b, r)``:

- ``lora``: ``(x @ A.T) @ B.T``, the baseline;
- ``bora``: ``torch_ref.bora_matmul(x, B, A, sigma)``, the fast path (validation included);
- ``ref``: ``x @ torch_ref.delta_weight(B, A, sigma).T``, forming the ``(m, n)`` update first;
- ``compiled``: ``torch.compile(torch_ref.bora_matmul)`` (only with ``--compile``; the fast path is
  excluded from compilation, so this measures what compiling the argument checks around it gains);
- ``compiled_bmm``: ``torch.compile`` of `plain_bmm`, the three batched products written as plain
  traceable torch code that Inductor may fuse (only with ``--compile``, even splits only);
- ``bmm``, ``dense``: ``bora_matmul(..., strategy=...)`` forced (only with ``--strategies``), to
  measure the rule of ``torch_ref.choose_strategy`` (``bora`` runs ``strategy="auto"``).

``fwd`` runs under ``torch.no_grad()`` (inference); ``fwd+bwd`` is a training step of the adapter:
forward with autograd, then backward into ``x``, ``A``, ``B``, ``sigma`` (``x`` needs a gradient
as in any layer but the first). The physical limit of BoRA over LoRA is
$1 + b^2 / (m + n)$: LoRA's $r(m + n)$ multiply-adds per token plus the $b^2 r$ of the Σ mixing.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch

from bora_ref import torch_ref

from ._memory import peak_extra_bytes
from ._timing import Clock, interleave, timing_columns

__all__ = ["Operands", "make_operands", "plain_bmm", "adapter_candidates", "time_adapter", "memory_adapter"]

MiB = 2.0**20
DENSE_TIMED_MAX_BR = 64


@dataclass(frozen=True)
class Operands:
    """Random inputs of one cell, all leaves that require a gradient; ``gy (T, m)`` seeds backward."""

    x: torch.Tensor
    B: torch.Tensor
    A: torch.Tensor
    sigma: torch.Tensor
    gy: torch.Tensor

    def zero_grads(self) -> None:
        for t in (self.x, self.B, self.A, self.sigma):
            t.grad = None


def make_operands(m: int, n: int, r: int, b: int, tokens: int, dtype: torch.dtype, device: torch.device) -> Operands:
    g = torch.Generator().manual_seed(m * 1_000_003 + n * 1009 + r * 31 + b)

    def randn(*shape: int, scale: float = 1.0) -> torch.Tensor:
        return (torch.randn(*shape, generator=g) * scale).to(device=device, dtype=dtype).requires_grad_()

    # Scaled so every product stays O(1) in low precision.
    return Operands(
        x=randn(tokens, n), B=randn(m, r, scale=r**-0.5), A=randn(r, n, scale=n**-0.5),
        sigma=randn(b, b, r), gy=torch.randn(tokens, m, generator=g).to(device=device, dtype=dtype),
    )


def _lora(o: Operands) -> torch.Tensor:
    return (o.x @ o.A.T) @ o.B.T


def _bora(o: Operands) -> torch.Tensor:
    return torch_ref.bora_matmul(o.x, o.B, o.A, o.sigma)


def plain_bmm(x: torch.Tensor, B: torch.Tensor, A: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
    """``x ΔW^T`` for ``x (T, n)`` and an even split, as plain traceable torch ops (for ``torch.compile``).

    Project ``(b, r, n/b) @ (b, n/b, T)``, mix ``(r, b, b) @ (r, b, T)``, lift ``(b, T, r) @ (b, r, m/b)``,
    then the ``(b, T, m/b)`` blocks are laid out as ``(T, m)`` (a copy Inductor may fuse).
    """
    (T, n), (m, r), b = x.shape, B.shape, sigma.shape[0]
    z = torch.bmm(A.view(r, b, n // b).transpose(0, 1), x.view(T, b, n // b).permute(1, 2, 0))  # (b, r, T)
    u = torch.bmm(sigma.permute(2, 0, 1), z.transpose(0, 1))  # (r, b, T)
    y = torch.bmm(u.permute(1, 2, 0), B.view(b, m // b, r).transpose(1, 2))  # (b, T, m/b)
    return y.permute(1, 0, 2).reshape(T, m)


def _ref(o: Operands) -> torch.Tensor:
    return o.x @ torch_ref.delta_weight(o.B, o.A, o.sigma).T


def adapter_candidates(
    o: Operands, *, with_ref: bool, compiled: Callable[..., torch.Tensor] | None, strategies: bool = False,
    compiled_bmm: Callable[..., torch.Tensor] | None = None,
) -> dict[str, dict[str, Callable[[], Any]]]:
    """``{"fwd": {name: fn}, "fwd+bwd": {name: fn}}`` for the candidates of the module docstring."""
    forms: dict[str, Callable[[Operands], torch.Tensor]] = {"lora": _lora, "bora": _bora}
    if strategies:
        b, r = o.sigma.shape[0], o.sigma.shape[2]
        # "dense" costs b times LoRA's multiply-adds: timed only where b r <= 64 (beyond, it is 3-13x LoRA).
        for name in ("bmm", "dense") if b * r <= DENSE_TIMED_MAX_BR else ("bmm",):
            forms[name] = lambda o, name=name: torch_ref.bora_matmul(o.x, o.B, o.A, o.sigma, strategy=name)
    if with_ref:
        forms["ref"] = _ref
    if compiled is not None:
        forms["compiled"] = lambda o: compiled(o.x, o.B, o.A, o.sigma)
    (m, r), n, b = o.B.shape, o.A.shape[1], o.sigma.shape[0]
    if compiled_bmm is not None and m % b == 0 and n % b == 0:
        forms["compiled_bmm"] = lambda o: compiled_bmm(o.x, o.B, o.A, o.sigma)

    def fwd(form: Callable[[Operands], torch.Tensor]) -> Callable[[], Any]:
        def run() -> None:
            with torch.no_grad():
                form(o)
        return run

    def fwd_bwd(form: Callable[[Operands], torch.Tensor]) -> Callable[[], Any]:
        def run() -> None:
            o.zero_grads()
            form(o).backward(o.gy)
        return run

    return {
        "fwd": {name: fwd(form) for name, form in forms.items()},
        "fwd+bwd": {name: fwd_bwd(form) for name, form in forms.items()},
    }


def time_adapter(
    m: int, n: int, r: int, b: int, *, tokens: int, dtype: torch.dtype, clock: Clock, repeats: int,
    with_ref: bool, compiled: Callable[..., torch.Tensor] | None = None, ref_runs: int = 2, strategies: bool = False,
    compiled_bmm: Callable[..., torch.Tensor] | None = None,
) -> list[dict[str, Any]]:
    """One row per pass (``fwd``, ``fwd+bwd``): medians in ms and ratios to LoRA."""
    o = make_operands(m, n, r, b, tokens, dtype, clock.device)
    err = float("nan")
    if with_ref:  # the candidates must agree before their times mean anything
        with torch.no_grad():
            y_ref = _ref(o)
            err = float((_bora(o) - y_ref).abs().max() / y_ref.abs().max())
            if compiled_bmm is not None and m % b == 0 and n % b == 0:  # the compiled form must agree too
                err = max(err, float((compiled_bmm(o.x, o.B, o.A, o.sigma) - y_ref).abs().max() / y_ref.abs().max()))
    rows = []
    strategy = torch_ref.choose_strategy(m, n, r, b, device_type=clock.device.type)
    candidates = adapter_candidates(o, with_ref=with_ref, compiled=compiled, strategies=strategies, compiled_bmm=compiled_bmm)
    for pass_name, fns in candidates.items():
        times = interleave(fns, repeats=repeats, clock=clock, max_runs={"ref": ref_runs})
        row: dict[str, Any] = {
            "shape": f"{m}x{n}", "m": m, "n": n, "r": r, "b": b, "even": m % b == 0 and n % b == 0,
            "pass": pass_name, "runs": len(times["bora"]), "limit": 1 + b * b / (m + n), "max_rel_err": err,
            "strategy": strategy, "threads": torch.get_num_threads(),
        }
        row.update(timing_columns({name: times.get(name, []) for name in fns}))
        rows.append(row)
    return rows


def memory_adapter(m: int, n: int, r: int, b: int, *, tokens: int, dtype: torch.dtype, device: torch.device,
                   with_ref: bool) -> list[dict[str, Any]]:
    """Peak extra MiB of each candidate per pass, and the ``b r T`` term of BoRA's extra over LoRA.

    The fast path's own large tensors are ``(r, b, T)``: ``zt`` and ``ut`` in the forward (saved
    for backward), ``gut`` and ``gzt`` in the backward, so its extra over LoRA is about
    ``2 b r T`` (fwd) or ``4 b r T`` (fwd+bwd) elements plus terms in ``(m + n) r`` and ``b² r``
    (transposed parameter gradients, the mixing matrices), never ``m n``.
    """
    o = make_operands(m, n, r, b, tokens, dtype, device)
    bytes_per = o.x.element_size()
    rows = []
    for pass_name, fns in adapter_candidates(o, with_ref=with_ref, compiled=None).items():
        row: dict[str, Any] = {"shape": f"{m}x{n}", "m": m, "n": n, "r": r, "b": b, "pass": pass_name}
        for name, fn in fns.items():
            fn()  # warm-up, then measure from a clean state
            o.zero_grads()
            row[f"{name}_MiB"] = peak_extra_bytes(fn, device) / MiB
        row["bora_minus_lora_MiB"] = row["bora_MiB"] - row["lora_MiB"]
        row["brT_term_MiB"] = (2 if pass_name == "fwd" else 4) * b * r * tokens * bytes_per / MiB
        row["mn_MiB"] = m * n * bytes_per / MiB
        rows.append(row)
    return rows
