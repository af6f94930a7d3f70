"""bora_ref: the reference library for BoRA (Block-Diversified Low-Rank Adaptation).

BoRA splits LoRA's ``B (m, r)`` into ``b`` row blocks and ``A (r, n)`` into ``b`` column
blocks and gives every block product its own diagonal:

    ΔW[block i, block j] = B_i @ diag(sigma[i, j]) @ A_j        sigma: (b, b, r)

Public surface (DESIGN.md §2): partitioning and counting (:func:`block_sizes`,
:func:`rank_bound`, :func:`param_count`), rank analysis (:func:`numerical_rank`,
:func:`singular_values`), the torch layer (:class:`BoRALinear`) and model injection
(:func:`apply_bora`). Backends: :mod:`bora_ref.numpy_ref` (ground truth) and
:mod:`bora_ref.torch_ref` (fast path). Oracle: :mod:`bora_ref.testing`.
"""

from __future__ import annotations

from ._validation import BoRAValueError
from .adapter_io import load_adapter, save_adapter
from .inject import (
    adapter_state_dict,
    apply_bora,
    bora_layers,
    load_adapter_state_dict,
    merge_and_unload,
    merge_bora,
    unmerge_bora,
)
from .layer import BoRALinear
from .params import ParamCount, param_count
from .peft_interop import bora_from_peft, bora_to_peft, lora_factors
from .partition import block_sizes
from .rank import (
    RankInfo,
    factor_rank,
    factor_rank_info,
    layer_rank_info,
    matrix_rank_info,
    model_rank_info,
    numerical_rank,
    rank_bound,
)
from .svd import singular_values, structured_svd

__version__ = "0.1.0"

__all__ = [
    "BoRALinear",
    "BoRAValueError",
    "ParamCount",
    "RankInfo",
    "__version__",
    "adapter_state_dict",
    "apply_bora",
    "block_sizes",
    "bora_from_peft",
    "bora_layers",
    "bora_to_peft",
    "factor_rank",
    "factor_rank_info",
    "layer_rank_info",
    "load_adapter",
    "load_adapter_state_dict",
    "lora_factors",
    "matrix_rank_info",
    "merge_and_unload",
    "merge_bora",
    "model_rank_info",
    "numerical_rank",
    "param_count",
    "rank_bound",
    "save_adapter",
    "singular_values",
    "structured_svd",
    "unmerge_bora",
]
