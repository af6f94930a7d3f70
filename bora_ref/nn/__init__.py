"""The torch side of bora_ref: the layer, model injection, adapter files, PEFT interop, inspection.

Layering: `bora_ref.nn` builds on the flat core ([`bora_ref.partition`][bora_ref.partition],
[`bora_ref.torch_ref`][bora_ref.torch_ref]) and on `bora_ref.analysis`; nothing below it imports it.
The public names are re-exported at the top level (``from bora_ref import BoRALinear``).
"""

from __future__ import annotations

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
from .inspect import ModelParamCount, layer_rank_info, model_param_count, model_rank_info, named_bora_layers
from .layer import BoRALinear
from .peft_interop import bora_from_peft, bora_to_peft, lora_factors

__all__ = [
    "BoRALinear",
    "ModelParamCount",
    "adapter_state_dict",
    "apply_bora",
    "bora_from_peft",
    "bora_layers",
    "bora_to_peft",
    "layer_rank_info",
    "load_adapter",
    "load_adapter_state_dict",
    "lora_factors",
    "merge_and_unload",
    "merge_bora",
    "model_param_count",
    "model_rank_info",
    "named_bora_layers",
    "save_adapter",
    "unmerge_bora",
]
