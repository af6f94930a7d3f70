"""Adapter set-up, the training loop and evaluation for sequence classification.

Every adapter is a [`bora_ref.BoRALinear`][bora_ref.BoRALinear]. LoRA is the same layer with ``b = 1``,
``sigma_param="raw"`` and ``σ`` frozen at 1, i.e. exactly $\\Delta W = B \\, \\mathrm{diag}(1) \\, A = BA$
with PEFT's initialisation (Kaiming-uniform ``A``, ``B = 0``): LoRA and BoRA then differ in Σ
only, and run through the same code. Optimiser: AdamW without weight decay, linear warm-up and
linear decay to 0 (the paper's settings).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from tqdm import tqdm

from .._validation import BoRAValueError, check_choice, check_int, check_positive_float, check_probability
from ..nn._modules import replace_submodule
from ..nn.inject import apply_bora
from ..nn.config import BoRAConfig
from ..nn.layer import BoRALinear
from ..nn.sigma import DEFAULT_SIGMA_PARAM, SIGMA_REGISTRY, get_sigma_param
from .analysis import adapter_layers, layer_ranks
from .data import TextDataset

__all__ = [
    "HEAD_MODULES",
    "AdapterSpec",
    "Encoded",
    "TrainConfig",
    "TrainLog",
    "encode",
    "evaluate",
    "reset_head",
    "setup_adapters",
    "train",
    "upgrade_to_bora",
]

HEAD_MODULES = ("classifier", "score")
"""Classification-head names of Hugging Face ``*ForSequenceClassification`` models (BERT, LLaMA/Qwen)."""


@dataclass(frozen=True)
class AdapterSpec:
    """One adapter configuration of the comparison.

    Attributes:
        name: label in tables and plots.
        r: rank per block product. b: blocks per side (``1`` with frozen Σ = 1 is LoRA).
        sigma_param: ``"exp_norm"`` (the paper's) or ``"raw"``.
        train_sigma: whether Σ is trained (``False`` with ``raw`` keeps Σ = 1).
    """

    name: str
    r: int
    b: int = 1
    sigma_param: str = DEFAULT_SIGMA_PARAM
    train_sigma: bool = True

    def __post_init__(self) -> None:
        check_int("r", self.r, minimum=1)
        check_int("b", self.b, minimum=1)
        param = get_sigma_param(self.sigma_param)
        if not self.train_sigma and not param.may_freeze:
            frozen_ok = [name for name, p in SIGMA_REGISTRY.items() if p.may_freeze]
            raise BoRAValueError(
                f"train_sigma=False needs a sigma_param whose initial Σ is 1 {frozen_ok}, got {self.sigma_param!r}"
            )

    @classmethod
    def lora(cls, r: int) -> AdapterSpec:
        """LoRA of rank ``r``: ``b = 1``, raw Σ frozen at 1."""
        return cls(f"LoRA r={r}", r, 1, "raw", False)

    @classmethod
    def bora(cls, r: int, b: int, sigma_param: str = DEFAULT_SIGMA_PARAM) -> AdapterSpec:
        """BoRA with ``b`` blocks; the name records a non-default Σ parameterisation."""
        suffix = "" if sigma_param == DEFAULT_SIGMA_PARAM else f", Σ {sigma_param}"
        return cls(f"BoRA r={r} b={b}{suffix}", r, b, sigma_param, True)


def _matching(model: nn.Module, names: Sequence[str]) -> list[nn.Module]:
    return [m for n, m in model.named_modules() if n and any(n == t or n.endswith("." + t) for t in names)]


def reset_head(model: nn.Module, head_modules: Sequence[str] = HEAD_MODULES) -> None:
    """Re-initialise the head's ``nn.Linear`` layers like Hugging Face does (normal, std ``initializer_range``).

    Raises:
        ValueError: no module of ``model`` matches ``head_modules``.
    """
    heads = _matching(model, head_modules)
    if not heads:
        raise BoRAValueError(f"head_modules={tuple(head_modules)!r} matches no module of the model")
    std = float(getattr(getattr(model, "config", None), "initializer_range", 0.02))
    with torch.no_grad():
        for head in heads:
            for layer in [head, *head.modules()]:
                if isinstance(layer, nn.Linear):
                    layer.weight.normal_(0.0, std)
                    if layer.bias is not None:
                        layer.bias.zero_()


def setup_adapters(
    model: nn.Module, spec: AdapterSpec, target_modules: Sequence[str] | str, head_modules: Sequence[str] = HEAD_MODULES
) -> nn.Module:
    """Put ``spec``'s adapters on ``target_modules`` ([`bora_ref.apply_bora`][bora_ref.apply_bora]) and train the head too.

    Trainable afterwards: ``lora_A``, ``lora_B``, ``sigma`` (unless ``spec.train_sigma`` is off)
    and the parameters of ``head_modules``; everything else is frozen.

    Raises:
        ValueError: as [`bora_ref.apply_bora`][bora_ref.apply_bora], or no module matches ``head_modules``
            (checked first: the model is unchanged then).
    """
    if not isinstance(spec, AdapterSpec):
        raise BoRAValueError(f"spec must be an AdapterSpec, got {type(spec).__name__}")
    heads = _matching(model, head_modules)
    if not heads:
        raise BoRAValueError(f"head_modules={tuple(head_modules)!r} matches no module of the model")
    apply_bora(model, target_modules=target_modules, r=spec.r, b=spec.b, sigma_param=spec.sigma_param)
    for layer in adapter_layers(model).values():
        layer.sigma.requires_grad_(spec.train_sigma)
    for head in heads:
        head.requires_grad_(True)
    return model


def upgrade_to_bora(model: nn.Module, b: int, sigma_param: str = "raw") -> nn.Module:
    """LoRA → BoRA: give every LoRA layer (``b = 1``) ``b`` blocks with Σ = 1, and train Σ alone.

    The new layers share the base weights and copy ``lora_A``, ``lora_B``; σ is set so that the
    effective Σ is exactly 1 (``raw``: ones; ``exp_norm``: zeros, where its guard gives
    ``exp(0) = 1``), so the model's function is unchanged. Only σ stays trainable.

    Raises:
        ValueError: the model has no BoRA layer, a layer has ``b != 1``, or ``b`` is invalid for a layer.
    """
    layers = adapter_layers(model)
    if not layers:
        raise BoRAValueError("model has no BoRALinear layers; train a LoRA adapter first")
    for name, layer in layers.items():
        if layer.b != 1:
            raise BoRAValueError(f"layer {name!r} already has b={layer.b}; upgrade_to_bora starts from LoRA (b=1)")
        BoRAConfig(r=layer.r, b=b, alpha=layer.alpha, rslora=layer.rslora, sigma_param=sigma_param).check_shape(
            layer.out_features, layer.in_features)
    for p in model.parameters():
        p.requires_grad_(False)
    for name, old in layers.items():
        new = BoRALinear.from_linear(old.base, old.r, b, alpha=old.alpha, rslora=old.rslora, sigma_param=sigma_param,
                                     adapter_dtype=old.lora_A.dtype)
        with torch.no_grad():
            new.lora_A.copy_(old.lora_A)
            new.lora_B.copy_(old.lora_B)
            new.sigma.fill_(get_sigma_param(sigma_param).identity_value)
        new.lora_A.requires_grad_(False)
        new.lora_B.requires_grad_(False)
        replace_submodule(model, name, new)
    return model


@dataclass(frozen=True)
class Encoded:
    """Tokenised texts, right-padded to one length: ``input_ids``, ``attention_mask`` ``(N, L)``, ``labels`` ``(N,)``."""

    input_ids: torch.Tensor
    attention_mask: torch.Tensor
    labels: torch.Tensor

    def __len__(self) -> int:
        return int(self.labels.shape[0])

    def batch(self, idx: torch.Tensor, device: torch.device | str) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
        """Rows ``idx``, trimmed to their longest sequence, moved to ``device``."""
        mask = self.attention_mask[idx]
        length = int(mask.sum(dim=1).max())
        inputs = {"input_ids": self.input_ids[idx, :length].to(device), "attention_mask": mask[:, :length].to(device)}
        return inputs, self.labels[idx].to(device)


def encode(tokenizer: Any, data: TextDataset, max_length: int) -> Encoded:
    """Tokenise ``data`` once (truncate to ``max_length``, right-pad); sets a pad token if missing (decoder LLMs)."""
    max_length = check_int("max_length", max_length, minimum=2)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    tokenizer.padding_side = "right"
    enc = tokenizer(list(data.texts), padding="max_length", truncation=True, max_length=max_length, return_tensors="pt")
    return Encoded(enc["input_ids"], enc["attention_mask"], torch.as_tensor(data.labels, dtype=torch.long))


@dataclass(frozen=True)
class TrainConfig:
    """Optimisation settings (defaults: the paper's encoder recipe, shortened).

    Attributes:
        epochs: passes over the training data. batch_size: examples per step.
        lr: AdamW learning rate (no weight decay). warmup_ratio: fraction of steps of linear warm-up,
        then linear decay to 0. rank_every: record layer ranks every this many steps (0: never).
        eval_batch_size: batch size of `evaluate`. progress: show a tqdm bar.
        grad_clip: if set, clip the global gradient norm of the trainable parameters to this
        value before every optimiser step (``torch.nn.utils.clip_grad_norm_``); ``None``: no clipping.
    """

    epochs: int = 3
    batch_size: int = 32
    lr: float = 3e-4
    warmup_ratio: float = 0.06
    rank_every: int = 0
    eval_batch_size: int = 128
    progress: bool = True
    grad_clip: float | None = None

    def __post_init__(self) -> None:
        check_int("epochs", self.epochs, minimum=1)
        check_int("batch_size", self.batch_size, minimum=1)
        check_positive_float("lr", self.lr)
        check_probability("warmup_ratio", self.warmup_ratio)
        check_int("rank_every", self.rank_every, minimum=0)
        check_int("eval_batch_size", self.eval_batch_size, minimum=1)
        if self.grad_clip is not None:
            check_positive_float("grad_clip", self.grad_clip)


@dataclass
class TrainLog:
    """What `train` records: per-step loss and seconds; ``ranks`` as ``(step, {layer: energy rank})``.

    ``grad_norms``: the global gradient norm before clipping, per step (only with ``grad_clip``).
    """

    losses: list[float] = field(default_factory=list)
    grad_norms: list[float] = field(default_factory=list)
    step_seconds: list[float] = field(default_factory=list)
    ranks: list[tuple[int, dict[str, int]]] = field(default_factory=list)


def _logits(model: nn.Module, inputs: dict[str, torch.Tensor]) -> torch.Tensor:
    out = model(**inputs)
    return out.logits if hasattr(out, "logits") else out


def train(
    model: nn.Module,
    data: Encoded,
    config: TrainConfig,
    *,
    seed: int,
    device: torch.device | str = "cpu",
    desc: str = "train",
    on_epoch: Callable[[int], None] | None = None,
) -> TrainLog:
    """Train the model's trainable parameters with cross-entropy; returns the `TrainLog`.

    The batch order comes from ``torch.Generator().manual_seed(seed)`` (same seed, same order
    for every adapter). ``on_epoch(epoch)`` is called after every epoch.

    Raises:
        ValueError: the model has no trainable parameter, or ``data`` is empty.
    """
    params = [p for p in model.parameters() if p.requires_grad]
    if not params:
        raise BoRAValueError("model has no trainable parameters; call setup_adapters first")
    if len(data) == 0:
        raise BoRAValueError("data is empty")
    steps_per_epoch = math.ceil(len(data) / config.batch_size)
    total = steps_per_epoch * config.epochs
    warmup = int(config.warmup_ratio * total)
    opt = torch.optim.AdamW(params, lr=config.lr, weight_decay=0.0)
    # Linear warm-up over `warmup` steps, then linear decay to 0 at step `total`.
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: (s + 1) / (warmup + 1) if s < warmup else max(0.0, (total - s) / max(1, total - warmup))
    )
    gen = torch.Generator().manual_seed(seed)
    log = TrainLog()
    model.train()
    bar = tqdm(total=total, desc=desc, disable=not config.progress, leave=False)
    step = 0
    for epoch in range(config.epochs):
        order = torch.randperm(len(data), generator=gen)
        for start in range(0, len(data), config.batch_size):
            t0 = time.perf_counter()
            inputs, labels = data.batch(order[start:start + config.batch_size], device)
            loss = F.cross_entropy(_logits(model, inputs), labels)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            if config.grad_clip is not None:
                log.grad_norms.append(float(torch.nn.utils.clip_grad_norm_(params, config.grad_clip)))
            opt.step()
            sched.step()
            if str(device).startswith("cuda"):
                torch.cuda.synchronize()
            log.step_seconds.append(time.perf_counter() - t0)
            log.losses.append(float(loss.detach()))
            step += 1
            if config.rank_every and step % config.rank_every == 0:
                log.ranks.append((step, {n: v["energy"] for n, v in layer_ranks(model).items()}))
            bar.update(1)
            bar.set_postfix(loss=f"{log.losses[-1]:.3f}")
        if on_epoch is not None:
            on_epoch(epoch)
    bar.close()
    return log


@torch.no_grad()
def evaluate(model: nn.Module, data: Encoded, *, batch_size: int = 128, device: torch.device | str = "cpu") -> float:
    """Accuracy of ``argmax(logits)`` on ``data`` (model in eval mode; restored to its previous mode)."""
    was_training = model.training
    model.eval()
    correct = 0
    for start in range(0, len(data), batch_size):
        inputs, labels = data.batch(torch.arange(start, min(start + batch_size, len(data))), device)
        correct += int((_logits(model, inputs).argmax(dim=-1) == labels).sum())
    model.train(was_training)
    return correct / max(1, len(data))

