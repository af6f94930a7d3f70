"""Cost of one training step: wall-clock time and memory, measured side by side.

Wall-clock on a shared CPU is noisy, so the models are timed *interleaved* (repeat: every model
runs ``steps`` steps) and the median over repeats is reported. Memory is measured in ways that do
not depend on the machine's load:

- ``activation_bytes``: bytes autograd keeps for the backward pass (counted once per storage,
  model parameters excluded) — the part of peak memory that grows with batch and sequence;
- ``state_bytes``: trainable parameters × 16 bytes (float32 weight, gradient, AdamW's two moments);
- ``cuda_peak_bytes``: ``torch.cuda.max_memory_allocated`` during a step minus the memory held
  between steps (model, optimiser state), on CUDA only.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Mapping
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from .._validation import BoRAValueError, check_int
from .analysis import trainable_parameters

__all__ = ["StepCost", "activation_bytes", "step_costs"]


@dataclass(frozen=True)
class StepCost:
    """Cost of one optimiser step of one model (see the module docstring for each field)."""

    seconds: float
    seconds_all: tuple[float, ...]
    activation_bytes: int
    trainable: int
    state_bytes: int
    cuda_peak_bytes: int | None


def _loss(model: nn.Module, inputs: Mapping[str, torch.Tensor], labels: torch.Tensor) -> torch.Tensor:
    out = model(**inputs)
    return F.cross_entropy(out.logits if hasattr(out, "logits") else out, labels)


def activation_bytes(model: nn.Module, inputs: Mapping[str, torch.Tensor], labels: torch.Tensor) -> int:
    """Bytes of the tensors autograd saves for backward in one forward pass (parameters excluded).

    Each storage is counted once (views of one tensor share it), with its full size.
    """
    param_storages = {p.untyped_storage().data_ptr() for p in model.parameters()}
    seen: dict[int, int] = {}

    def pack(t: torch.Tensor) -> torch.Tensor:
        storage = t.untyped_storage()
        ptr = storage.data_ptr()
        if ptr not in param_storages:
            seen[ptr] = storage.nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        loss = _loss(model, inputs, labels)
    del loss
    return sum(seen.values())


def step_costs(
    models: Mapping[str, nn.Module],
    inputs: Mapping[str, torch.Tensor],
    labels: torch.Tensor,
    *,
    steps: int = 5,
    repeats: int = 3,
    lr: float = 3e-4,
) -> dict[str, StepCost]:
    """Time ``steps`` AdamW steps per model, ``repeats`` times interleaved; measure memory once.

    Args:
        models: name → model (trainable parameters already chosen), all on ``labels.device``.
        inputs: one batch, e.g. ``{"input_ids": (N, L), "attention_mask": (N, L)}``.
        labels: ``(N,)`` class indices.
        steps, repeats: see the module docstring; the first step of every model is a warm-up.

    Returns:
        name → `StepCost`; ``seconds`` is the median over repeats of the mean step time.

    Raises:
        ValueError: no models, a model without trainable parameters, or ``steps``/``repeats`` < 1.
    """
    steps = check_int("steps", steps, minimum=1)
    repeats = check_int("repeats", repeats, minimum=1)
    if not models:
        raise BoRAValueError("models is empty")
    cuda = labels.device.type == "cuda"
    opts = {}
    for name, model in models.items():
        params = [p for p in model.parameters() if p.requires_grad]
        if not params:
            raise BoRAValueError(f"model {name!r} has no trainable parameters")
        opts[name] = torch.optim.AdamW(params, lr=lr, weight_decay=0.0)
        model.train()

    def one_step(name: str) -> None:
        loss = _loss(models[name], inputs, labels)
        opts[name].zero_grad(set_to_none=True)
        loss.backward()
        opts[name].step()

    for name in models:  # warm-up: first-call overheads, AdamW state allocated
        one_step(name)
    peaks: dict[str, int | None] = dict.fromkeys(models)
    if cuda:  # the transient peak of one step above what is held between steps
        for name in models:
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
            held = torch.cuda.memory_allocated()
            one_step(name)
            torch.cuda.synchronize()
            peaks[name] = torch.cuda.max_memory_allocated() - held
    times: dict[str, list[float]] = {name: [] for name in models}
    for _ in range(repeats):
        for name in models:
            t0 = time.perf_counter()
            for _ in range(steps):
                one_step(name)
            if cuda:
                torch.cuda.synchronize()
            times[name].append((time.perf_counter() - t0) / steps)
    out = {}
    for name, model in models.items():
        trainable = trainable_parameters(model)
        out[name] = StepCost(
            seconds=statistics.median(times[name]), seconds_all=tuple(times[name]),
            activation_bytes=activation_bytes(model, inputs, labels), trainable=trainable,
            state_bytes=16 * trainable, cuda_peak_bytes=peaks[name],
        )
    return out
