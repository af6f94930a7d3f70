"""Frozen-embedding baseline: logistic regression on mean-pooled, L2-normalised encoder states.

This is how all-MiniLM-L6-v2 is meant to be used (sentence-transformers: mean pooling, then
normalisation), so it is the bar an adapter has to clear to be worth training.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from torch import nn

from .._validation import BoRAValueError
from .finetune import Encoded

__all__ = ["mean_pooled_embeddings", "frozen_embedding_baseline"]


@torch.no_grad()
def mean_pooled_embeddings(
    model: nn.Module, data: Encoded, *, batch_size: int = 128, device: torch.device | str = "cpu", normalize: bool = True
) -> np.ndarray:
    """Mask-weighted mean of the encoder's last hidden states, ``(N, d)`` float64.

    $$e = \\frac{\\sum_t m_t h_t}{\\sum_t m_t}, \\qquad e \\leftarrow e / \\|e\\|_2 \\text{ if normalize}$$

    Args:
        model: a Hugging Face model; its ``base_model`` (the bare encoder) is used when present.
        data: tokenised texts, ``input_ids``/``attention_mask`` ``(N, L)``.

    Raises:
        ValueError: the encoder output has no ``last_hidden_state``.
    """
    encoder = getattr(model, "base_model", model)
    was_training = encoder.training
    encoder.eval()
    chunks = []
    for start in range(0, len(data), batch_size):
        inputs, _ = data.batch(torch.arange(start, min(start + batch_size, len(data))), device)
        out = encoder(**inputs)
        if not hasattr(out, "last_hidden_state"):
            raise BoRAValueError(f"the encoder of {type(model).__name__} returns no last_hidden_state")
        mask = inputs["attention_mask"].unsqueeze(-1).to(out.last_hidden_state.dtype)  # (batch, L, 1)
        emb = (out.last_hidden_state * mask).sum(dim=1) / mask.sum(dim=1).clamp_min(1.0)  # (batch, d)
        chunks.append(emb.double().cpu())
    encoder.train(was_training)
    emb = torch.cat(chunks).numpy()
    if normalize:
        emb = emb / np.maximum(np.linalg.norm(emb, axis=1, keepdims=True), 1e-12)
    return emb


def frozen_embedding_baseline(
    model: nn.Module,
    train: Encoded,
    val: Encoded,
    test: Encoded,
    *,
    Cs: Sequence[float] = (0.1, 1.0, 10.0, 100.0),
    device: torch.device | str = "cpu",
) -> dict[str, float]:
    """Fit scikit-learn's ``LogisticRegression`` on frozen embeddings; choose ``C`` on ``val``.

    Returns:
        ``{"C": chosen C, "val_acc": ..., "test_acc": ...}`` (deterministic: lbfgs, no seed).

    Raises:
        ValueError: ``Cs`` is empty or not all positive.
    """
    from sklearn.linear_model import LogisticRegression

    if not Cs or any(not c > 0 for c in Cs):
        raise BoRAValueError(f"Cs must be a non-empty sequence of positive numbers, got {tuple(Cs)!r}")
    X = {name: mean_pooled_embeddings(model, part, device=device) for name, part in (("train", train), ("val", val), ("test", test))}
    best: dict[str, float] | None = None
    for C in Cs:
        clf = LogisticRegression(C=float(C), max_iter=5000).fit(X["train"], train.labels.numpy())
        val_acc = float(clf.score(X["val"], val.labels.numpy()))
        if best is None or val_acc > best["val_acc"]:
            best = {"C": float(C), "val_acc": val_acc, "test_acc": float(clf.score(X["test"], test.labels.numpy()))}
    assert best is not None  # Cs is non-empty
    return best
