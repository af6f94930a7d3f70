"""Looking inside a torch model: its BoRA layers, their ranks and their parameter counts.

These are the model-level views of `bora_ref.analysis` (which works on plain factors and
never imports torch.nn): each function finds the [`BoRALinear`][bora_ref.BoRALinear] modules of a model
and applies the factor-level analysis to ``lora_B``, ``lora_A`` and ``effective_sigma()``.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from .._validation import BoRAValueError
from ..analysis.params import ParamCount, param_count, sum_param_counts
from ..analysis.rank import RankInfo, factor_rank_info
from .layer import BoRALinear

__all__ = ["ModelParamCount", "layer_rank_info", "model_param_count", "model_rank_info", "named_bora_layers"]


def named_bora_layers(model: Any, *, name: str = "model", require: bool = False) -> list[tuple[str, BoRALinear]]:
    """``(module name, layer)`` for every [`BoRALinear`][bora_ref.BoRALinear] in ``model``, in ``named_modules`` order.

    A module reachable under two names (a shared or tied layer) is listed once, under its first name.

    Args:
        model: a ``torch.nn.Module``.
        name: the argument name used in error messages.
        require: raise when the model has no BoRA layer.

    Raises:
        ValueError: ``model`` is not an ``nn.Module``, or (``require=True``) it has no ``BoRALinear``
            (call [`bora_ref.apply_bora`][bora_ref.apply_bora] first).
    """
    if not isinstance(model, nn.Module):
        raise BoRAValueError(f"{name} must be a torch.nn.Module, got {type(model).__name__}")
    layers = [(n, m) for n, m in model.named_modules() if isinstance(m, BoRALinear)]
    if require and not layers:
        raise BoRAValueError(f"{name} ({type(model).__name__}) has no BoRALinear layers; call bora_ref.apply_bora first")
    return layers


@torch.no_grad()
def layer_rank_info(
    layer: BoRALinear, *, rtol: float | None = None, atol: float | None = None, storage_dtype: Any = None
) -> RankInfo:
    """Rank of a layer's update ``scaling * ΔW`` from ``lora_B``, ``lora_A``, ``effective_sigma()``.

    The scaling matters only for ``atol`` (and [`bora_ref.analysis.measures.threshold_rank`][bora_ref.analysis.measures.threshold_rank], which
    is absolute too). ``storage_dtype="auto"`` takes the adapter dtype.

    Args:
        layer: a [`bora_ref.BoRALinear`][bora_ref.BoRALinear] (merged or not: the adapter is what is measured).
        rtol: relative tolerance, as in [`factor_rank_info`][bora_ref.factor_rank_info].
        atol: absolute tolerance, as in [`factor_rank_info`][bora_ref.factor_rank_info].
        storage_dtype: dtype whose rounding floor is added, as in [`factor_rank_info`][bora_ref.factor_rank_info].

    Raises:
        ValueError: ``layer`` is not a ``BoRALinear``, or as [`factor_rank_info`][bora_ref.factor_rank_info].

    Examples:
        >>> from torch import nn
        >>> from bora_ref import BoRALinear, layer_rank_info
        >>> layer = BoRALinear(in_features=64, out_features=48, r=4, b=4)
        >>> layer_rank_info(layer).rank  # lora_B starts at zero: no update yet
        0
        >>> _ = nn.init.normal_(layer.lora_B)
        >>> layer_rank_info(layer).rank  # b r = 16, where LoRA of rank 4 stops at 4
        16
    """
    if not isinstance(layer, BoRALinear):
        raise BoRAValueError(f"layer must be a bora_ref.BoRALinear, got {type(layer).__name__}")
    # Scale in float64: the (b, b, r) values the layer uses, times its scaling, without a new rounding.
    # ("auto" still sees the adapter dtype: it takes the least precise of the three inputs.)
    sigma = layer.effective_sigma().to(torch.float64) * layer.scaling
    return factor_rank_info(layer.lora_B, layer.lora_A, sigma, rtol=rtol, atol=atol, storage_dtype=storage_dtype)


def model_rank_info(
    model: nn.Module, *, rtol: float | None = None, atol: float | None = None, storage_dtype: Any = None
) -> dict[str, RankInfo]:
    """[`layer_rank_info`][bora_ref.layer_rank_info] of every ``BoRALinear`` in ``model``, keyed by module name.

    Raises:
        ValueError: ``model`` is not an ``nn.Module`` or has no ``BoRALinear`` (call
            [`bora_ref.apply_bora`][bora_ref.apply_bora] first), or as [`factor_rank_info`][bora_ref.factor_rank_info].

    Examples:
        >>> from torch import nn
        >>> from bora_ref import apply_bora, bora_layers, model_rank_info
        >>> model = apply_bora(nn.Sequential(nn.Linear(32, 32), nn.ReLU(), nn.Linear(32, 8)), target_modules=["0", "2"], r=2, b=4)
        >>> for layer in bora_layers(model):
        ...     _ = nn.init.normal_(layer.lora_B)
        >>> {name: info.rank for name, info in model_rank_info(model).items()}
        {'0': 8, '2': 8}
    """
    return {
        name: layer_rank_info(module, rtol=rtol, atol=atol, storage_dtype=storage_dtype)
        for name, module in named_bora_layers(model, require=True)
    }


@dataclass(frozen=True)
class ModelParamCount(ParamCount):
    """Trainable BoRA parameters of a whole model: the sums, plus every layer's count.

    Attributes:
        lora: ``lora_A`` and ``lora_B`` parameters, summed over the layers.
        sigma: Σ parameters, summed over the layers.
        total: ``lora + sigma``.
        layers: module name -> that ``BoRALinear``'s [`ParamCount`][bora_ref.ParamCount], in ``named_modules`` order.
    """

    layers: Mapping[str, ParamCount] = field(default_factory=dict)


def model_param_count(model: nn.Module) -> ModelParamCount:
    """Per-layer and total parameter accounting of every ``BoRALinear`` in ``model``.

    Counts follow [`param_count`][bora_ref.param_count] with each layer's own ``(m, n, r, b)``; they equal the
    number of adapter parameters the layers hold.

    Raises:
        ValueError: ``model`` is not an ``nn.Module`` or has no ``BoRALinear`` layer.
    """
    layers = {
        name: param_count(module.out_features, module.in_features, module.r, module.b)
        for name, module in named_bora_layers(model, require=True)
    }
    total = sum_param_counts(layers.values())
    return ModelParamCount(lora=total.lora, sigma=total.sigma, total=total.total, layers=layers)
