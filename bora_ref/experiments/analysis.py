"""What a fine-tuned adapter learned: ΔW spectra and ranks per layer, and parameter budgets.

Spectra and ranks come from [`bora_ref.model_rank_info`][bora_ref.model_rank_info] (structured SVD of the layer's
factors and effective Σ; the ``(m, n)`` update is never formed). Per layer:

- ``numerical``: the numerical rank with the float32 rounding-noise floor of the adapter
  (``storage_dtype="auto"``) — how many directions the factors *can* express;
- ``energy``: [`bora_ref.analysis.measures.energy_rank`][bora_ref.analysis.measures.energy_rank], the fewest singular values holding 90% of
  $\\|\\Delta W\\|_F^2$ — how many directions the update actually *uses*;
- ``effective``: [`bora_ref.analysis.measures.effective_rank`][bora_ref.analysis.measures.effective_rank] (Roy & Vetterli), a smooth version.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from torch import nn

from .._validation import check_int
from ..nn.layer import BoRALinear
from ..analysis.measures import effective_rank, energy_rank
from ..analysis.params import equal_budget_lora_rank, param_count
from ..analysis.rank import rank_bound
from ..nn.inspect import model_rank_info

__all__ = [
    "adapter_layers",
    "layer_ranks",
    "layer_spectra",
    "overhead_rows",
    "trainable_parameters",
]


def adapter_layers(model: nn.Module) -> dict[str, BoRALinear]:
    """The model's [`BoRALinear`][bora_ref.BoRALinear] layers by qualified name, in ``named_modules`` order."""
    return {name: module for name, module in model.named_modules() if isinstance(module, BoRALinear)}


def layer_spectra(model: nn.Module) -> dict[str, np.ndarray]:
    """Singular values of every adapted layer's ``scaling * ΔW``, ``(min(m, n),)`` descending.

    Raises:
        ValueError: the model has no BoRA layer.
    """
    return {name: info.singular_values for name, info in model_rank_info(model).items()}


def layer_ranks(model: nn.Module, tau: float = 0.9) -> dict[str, dict[str, float]]:
    """Per adapted layer: ``bound`` ([`bora_ref.rank_bound`][bora_ref.rank_bound]), ``numerical``, ``energy`` and ``effective`` rank.

    Raises:
        ValueError: the model has no BoRA layer.
    """
    layers = adapter_layers(model)
    out = {}
    for name, info in model_rank_info(model, storage_dtype="auto").items():
        layer = layers[name]
        out[name] = {
            "bound": rank_bound(layer.out_features, layer.in_features, layer.r, layer.b),
            "numerical": info.rank,
            "energy": energy_rank(info.singular_values, tau),
            "effective": effective_rank(info.singular_values),
        }
    return out


def trainable_parameters(model: nn.Module) -> int:
    """Number of parameters with ``requires_grad`` (shared tensors counted once)."""
    seen, total = set(), 0
    for p in model.parameters():
        if p.requires_grad and id(p) not in seen:
            seen.add(id(p))
            total += p.numel()
    return total


def overhead_rows(
    shapes: Sequence[tuple[str, int, int]], r: int, bs: Sequence[int], *, layers: int = 1, model_params: int | None = None
) -> list[dict[str, object]]:
    """Parameter overhead of BoRA over LoRA of the same ``r``, per layer and for ``layers`` layers.

    Args:
        shapes: ``(label, m, n)`` of an adapted weight.
        r: rank per block. bs: block counts to tabulate.
        layers: number of adapted layers of that shape (for the totals).
        model_params: the model's parameter count, to express BoRA's extra as a fraction of it.

    Returns:
        One dict per ``(shape, b)``: ``label, m, n, r, b, lora, sigma, overhead_pct``,
        ``equal_budget_r`` and, with ``model_params``, ``extra_pct_of_model``.
    """
    layers = check_int("layers", layers, minimum=1)
    rows: list[dict[str, object]] = []
    for label, m, n in shapes:
        for b in bs:
            pc = param_count(m, n, r, b)
            row: dict[str, object] = {
                "label": label, "m": m, "n": n, "r": r, "b": b, "lora": pc.lora * layers, "sigma": pc.sigma * layers,
                "overhead_pct": 100.0 * pc.overhead, "equal_budget_r": equal_budget_lora_rank(m, n, r, b),
            }
            if model_params is not None:
                row["extra_pct_of_model"] = 100.0 * pc.sigma * layers / model_params
            rows.append(row)
    return rows
