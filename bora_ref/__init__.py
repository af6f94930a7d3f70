"""bora_ref: the reference library for BoRA (Block-Diversified Low-Rank Adaptation).

BoRA splits LoRA's ``B (m, r)`` into ``b`` row blocks and ``A (r, n)`` into ``b`` column
blocks and gives every block product its own diagonal:

    ΔW[block i, block j] = B_i @ diag(sigma[i, j]) @ A_j        sigma: (b, b, r)

Public surface: partitioning and counting ([`block_sizes`][bora_ref.block_sizes],
[`rank_bound`][bora_ref.rank_bound], [`param_count`][bora_ref.param_count]), rank analysis
([`numerical_rank`][bora_ref.numerical_rank], [`singular_values`][bora_ref.singular_values]),
the torch layer ([`BoRALinear`][bora_ref.BoRALinear]) and model injection
([`apply_bora`][bora_ref.apply_bora]). Backends: `bora_ref.numpy_ref` (ground truth) and
`bora_ref.torch_ref` (fast path). Oracle: `bora_ref.testing`.

The package is layered; importing it is cheap, and each name loads its sub-package on first use
(``import bora_ref.numpy_ref`` never imports torch):

    partition, numpy_ref, torch_ref      the contract core (flat)
    analysis/                            rank, SVD, tolerance, measures, parameter counts
    nn/                                  layer, injection, adapter files, PEFT interop, inspection
    report/                              sweeps, figures, the report and its CLI
    testing/                             the oracle        experiments/   the fine-tune study
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from ._validation import BoRAValueError
from ._version import __version__
from .partition import block_sizes

# Public name -> the module that defines it (imported on first access, PEP 562).
_LAZY: dict[str, str] = {
    "ParamCount": "analysis.params",
    "param_count": "analysis.params",
    "RankInfo": "analysis.rank",
    "factor_rank": "analysis.rank",
    "factor_rank_info": "analysis.rank",
    "matrix_rank_info": "analysis.rank",
    "numerical_rank": "analysis.rank",
    "rank_bound": "analysis.rank",
    "singular_values": "analysis.svd",
    "structured_svd": "analysis.svd",
    "BoRALinear": "nn.layer",
    "adapter_state_dict": "nn.inject",
    "apply_bora": "nn.inject",
    "bora_layers": "nn.inject",
    "load_adapter_state_dict": "nn.inject",
    "merge_and_unload": "nn.inject",
    "merge_bora": "nn.inject",
    "unmerge_bora": "nn.inject",
    "layer_rank_info": "nn.inspect",
    "model_rank_info": "nn.inspect",
    "load_adapter": "nn.adapter_io",
    "save_adapter": "nn.adapter_io",
    "bora_from_peft": "nn.peft_interop",
    "bora_to_peft": "nn.peft_interop",
    "lora_factors": "nn.peft_interop",
}
# Sub-modules reachable as attributes (``bora_ref.numpy_ref`` after ``import bora_ref``).
_SUBMODULES = ("numpy_ref", "torch_ref", "partition", "testing", "analysis", "nn", "report", "experiments", "models")

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


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        value = getattr(importlib.import_module(f".{_LAZY[name]}", __name__), name)
        globals()[name] = value  # later lookups skip __getattr__
        return value
    if name in _SUBMODULES:
        return importlib.import_module(f".{name}", __name__)
    raise AttributeError(f"module 'bora_ref' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY) | set(_SUBMODULES))


if TYPE_CHECKING:  # static type checkers and IDEs see the eager imports
    from .analysis.params import ParamCount, param_count
    from .analysis.rank import RankInfo, factor_rank, factor_rank_info, matrix_rank_info, numerical_rank, rank_bound
    from .analysis.svd import singular_values, structured_svd
    from .nn.adapter_io import load_adapter, save_adapter
    from .nn.inject import (
        adapter_state_dict,
        apply_bora,
        bora_layers,
        load_adapter_state_dict,
        merge_and_unload,
        merge_bora,
        unmerge_bora,
    )
    from .nn.inspect import layer_rank_info, model_rank_info
    from .nn.layer import BoRALinear
    from .nn.peft_interop import bora_from_peft, bora_to_peft, lora_factors
