"""What a fine-tuned adapter learned: ΔW spectra and ranks per layer, and parameter budgets.

Spectra use the structured SVD :func:`bora_ref.rank.singular_values` on the layer's factors and
effective Σ (the ``(m, n)`` update is never formed). Two ranks are reported per layer:

- ``numerical``: singular values above ``S_max * max(m, n) * eps(float32)`` (NumPy's
  ``matrix_rank`` rule for the float32 adapter) — what the factors *can* express;
- ``energy``: the fewest singular values holding a fraction (default 90%) of
  $\\|\\Delta W\\|_F^2$ — how many directions the update actually *uses*.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from torch import nn

from .._validation import BoRAValueError, check_int
from ..layer import BoRALinear
from ..params import param_count
from ..rank import rank_bound, singular_values

__all__ = [
    "adapter_layers",
    "delta_spectrum",
    "energy_rank",
    "equal_budget_lora_rank",
    "layer_ranks",
    "overhead_rows",
    "trainable_parameters",
]

_EPS32 = float(np.finfo(np.float32).eps)


def adapter_layers(model: nn.Module) -> dict[str, BoRALinear]:
    """The model's :class:`BoRALinear` layers by qualified name, in ``named_modules`` order."""
    return {name: module for name, module in model.named_modules() if isinstance(module, BoRALinear)}


def delta_spectrum(layer: BoRALinear) -> np.ndarray:
    """Singular values of the scaled update ``scaling * ΔW`` of one layer.

    Args:
        layer: a :class:`BoRALinear` (``lora_B (m, r)``, ``lora_A (r, n)``, Σ ``(b, b, r)``).

    Returns:
        ``(min(m, n),)`` float64, descending (zeros past the rank).
    """
    if not isinstance(layer, BoRALinear):
        raise BoRAValueError(f"layer must be a BoRALinear, got {type(layer).__name__}")
    S = singular_values(layer.lora_B.detach(), layer.lora_A.detach(), layer.effective_sigma().detach())
    return layer.scaling * S


def energy_rank(S: Sequence[float] | np.ndarray, fraction: float = 0.9) -> int:
    """Fewest leading singular values whose squares hold ``fraction`` of the total $\\sum_k S_k^2$.

    $$\\min\\{k : \\textstyle\\sum_{i \\le k} S_i^2 \\ge f \\sum_i S_i^2\\}, \\quad 0 \\text{ if } S = 0$$

    Args:
        S: ``(k,)`` non-negative singular values, descending.
        fraction: ``f`` in ``(0, 1]``.

    Raises:
        ValueError: ``S`` not 1-D, negative, non-finite or not descending; ``fraction`` outside ``(0, 1]``.
    """
    s = np.asarray(S, dtype=np.float64)
    if s.ndim != 1 or not np.isfinite(s).all() or (s < 0).any() or (np.diff(s) > 0).any():
        raise BoRAValueError(f"S must be a 1-D finite, non-negative, descending array, got {s!r}")
    if not 0.0 < float(fraction) <= 1.0:
        raise BoRAValueError(f"fraction must be in (0, 1], got {fraction!r}")
    energy = np.cumsum(s**2)
    if energy.size == 0 or energy[-1] == 0.0:
        return 0
    # Relative slack of a few ulps so that fraction=1 counts exactly the nonzero values.
    return int(np.searchsorted(energy, fraction * energy[-1] * (1 - 8 * np.finfo(np.float64).eps)) + 1)


def layer_ranks(model: nn.Module, fraction: float = 0.9) -> dict[str, dict[str, int]]:
    """Per adapted layer: ``bound`` (:func:`bora_ref.rank_bound`), ``numerical`` and ``energy`` rank.

    Raises:
        ValueError: the model has no BoRA layer.
    """
    layers = adapter_layers(model)
    if not layers:
        raise BoRAValueError("model has no BoRALinear layers; nothing to analyse")
    out = {}
    for name, layer in layers.items():
        S = delta_spectrum(layer)
        m, n = layer.out_features, layer.in_features
        tol = S[0] * max(m, n) * _EPS32
        out[name] = {
            "bound": rank_bound(m, n, layer.r, layer.b),
            "numerical": int((S > tol).sum()) if S[0] > 0 else 0,
            "energy": energy_rank(S, fraction),
        }
    return out


def equal_budget_lora_rank(m: int, n: int, r: int, b: int) -> int:
    """Largest LoRA rank whose ``r' (m + n)`` parameters fit in BoRA's ``r (m + n) + b^2 r``.

    $$r' = \\lfloor (r(m + n) + b^2 r) / (m + n) \\rfloor$$

    Raises:
        ValueError: as :func:`bora_ref.param_count`.
    """
    total = param_count(m, n, r, b).total
    return total // (m + n)


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
