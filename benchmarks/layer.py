"""The whole layer: ``BoRALinear`` against a LoRA layer, both including the frozen base matmul.

The LoRA layer is PEFT's ``peft.tuners.lora.Linear`` when PEFT is installed, else
:class:`PlainLoRALinear` (the same three products PEFT runs). Both wrap one shared frozen
``nn.Linear``; adapters are in the base dtype (PEFT's behaviour when a layer is built directly).
The third candidate, ``ref``, adds ``x @ layer.delta_weight().T`` (the update formed first).
``fwd`` is inference (``no_grad``), ``fwd+bwd`` a training step of the layer with ``x`` needing a
gradient, so the backward also runs the base layer's input-gradient matmul.
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from bora_ref import BoRALinear

from ._timing import Clock, interleave, timing_columns

__all__ = ["PlainLoRALinear", "lora_layer", "time_layer"]


class PlainLoRALinear(nn.Module):
    """$y = \\text{base}(x) + s \\, (x A^T) B^T$ with ``A (r, n)``, ``B (m, r)``: PEFT's LoRA forward."""

    def __init__(self, base: nn.Linear, r: int, alpha: float) -> None:
        super().__init__()
        self.base = base
        factory = {"device": base.weight.device, "dtype": base.weight.dtype}
        self.lora_A = nn.Parameter(torch.randn(r, base.in_features, **factory) / base.in_features**0.5)
        self.lora_B = nn.Parameter(torch.zeros(base.out_features, r, **factory))
        self.scaling = alpha / r

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.base(x) + (x @ self.lora_A.T) @ self.lora_B.T * self.scaling


def lora_layer(base: nn.Linear, r: int, alpha: float) -> tuple[nn.Module, str]:
    """PEFT's ``lora.Linear`` around ``base`` if PEFT is installed, else :class:`PlainLoRALinear`; and its label."""
    if importlib.util.find_spec("peft") is None:
        return PlainLoRALinear(base, r, alpha), "plain LoRA layer (PEFT not installed)"
    from peft import LoraConfig
    from peft.tuners.lora import Linear

    layer = Linear(base, "default", LoraConfig(r=r, lora_alpha=alpha), r=r, lora_alpha=alpha)
    return layer, f"peft.tuners.lora.Linear (peft {importlib.metadata.version('peft')})"


def _nonzero_(layer: nn.Module, g: torch.Generator) -> None:
    # lora_B starts at zero in both layers; random values put them in a trained-like state
    # (dense BLAS time does not depend on the values, but the outputs then differ from the base's).
    with torch.no_grad():
        for name, p in layer.named_parameters():
            if p.requires_grad and ("lora_B" in name or name == "sigma"):
                p.copy_(torch.randn(p.shape, generator=g) * 0.01)


def time_layer(
    m: int, n: int, r: int, b: int, *, tokens: int, dtype: torch.dtype, clock: Clock, repeats: int,
    with_ref: bool, compile_layers: bool = False, ref_runs: int = 2,
) -> list[dict[str, Any]]:
    """One row per pass: BoRALinear and the reference route against the LoRA layer, medians and ratios."""
    device = clock.device
    g = torch.Generator().manual_seed(m + 7 * n + 31 * r + b)
    base = nn.Linear(n, m, device=device, dtype=dtype)
    bora = BoRALinear.from_linear(base, r, b, alpha=2 * r, adapter_dtype=dtype)
    lora, lora_label = lora_layer(base, r, 2 * r)
    lora.to(device)
    for layer in (bora, lora):
        _nonzero_(layer, g)
    x = torch.randn(tokens, n, generator=g).to(device=device, dtype=dtype).requires_grad_()
    gy = torch.randn(tokens, m, generator=g).to(device=device, dtype=dtype)
    forms: dict[str, Callable[[], torch.Tensor]] = {"lora": lambda: lora(x), "bora": lambda: bora(x)}
    if with_ref:
        forms["ref"] = lambda: base(x) + x @ bora.delta_weight().T
    if compile_layers:
        compiled = torch.compile(bora)
        forms["compiled"] = lambda: compiled(x)

    def fwd(form: Callable[[], torch.Tensor]) -> Callable[[], Any]:
        def run() -> None:
            with torch.no_grad():
                form()
        return run

    def fwd_bwd(form: Callable[[], torch.Tensor]) -> Callable[[], Any]:
        def run() -> None:
            for p in (x, *bora.parameters(), *lora.parameters()):
                p.grad = None
            form().backward(gy)
        return run

    rows = []
    for pass_name, wrap in (("fwd", fwd), ("fwd+bwd", fwd_bwd)):
        fns = {name: wrap(form) for name, form in forms.items()}
        times = interleave(fns, repeats=repeats, clock=clock, max_runs={"ref": ref_runs})
        row: dict[str, Any] = {"shape": f"{m}x{n}", "m": m, "n": n, "r": r, "b": b, "pass": pass_name,
                               "runs": len(times["bora"]), "baseline": lora_label}
        row.update(timing_columns({name: times.get(name, []) for name in fns}))
        rows.append(row)
    return rows
