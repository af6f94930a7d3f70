"""Rank analysis and parameter accounting of BoRA updates, on plain factors.

Everything here takes factors ``B (m, r)``, ``A (r, n)``, ``sigma (b, b, r)`` (NumPy arrays or
torch tensors) or plain shapes, and computes in float64 NumPy. It never imports ``torch.nn`` or
`bora_ref.nn`; the model-level views live in [`bora_ref.nn.inspect`][bora_ref.nn.inspect].
"""

from __future__ import annotations

from .measures import RankMeasures, effective_rank, energy_rank, rank_measures, stable_rank, threshold_rank
from .params import ParamCount, best_b, equal_budget_lora_rank, param_count, sum_param_counts
from .rank import RankInfo, factor_rank, factor_rank_info, matrix_rank_info, numerical_rank, rank_bound
from .svd import singular_values, structured_svd

__all__ = [
    "ParamCount",
    "RankInfo",
    "RankMeasures",
    "best_b",
    "effective_rank",
    "energy_rank",
    "equal_budget_lora_rank",
    "factor_rank",
    "factor_rank_info",
    "matrix_rank_info",
    "numerical_rank",
    "param_count",
    "rank_bound",
    "rank_measures",
    "singular_values",
    "stable_rank",
    "structured_svd",
    "sum_param_counts",
    "threshold_rank",
]
