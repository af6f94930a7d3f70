"""When does BoRA's higher rank help? A controlled teacher–student study.

Two levels, both against known targets:

- **Matrix level** (`run_matrix`): fit a known $\\Delta W^*$ (``m x n``) directly, by Adam on
  the relative squared Frobenius residual $\\|\\Delta W - \\Delta W^*\\|_F^2 / \\|\\Delta W^*\\|_F^2$,
  with LoRA of several ranks and with BoRA (Σ ``raw`` and ``exp_norm``). Every adapter is a real
  [`bora_ref.BoRALinear`][bora_ref.BoRALinear] (LoRA: ``b = 1``, raw Σ frozen at 1) and $\\Delta W$ is its
  ``delta_weight()``. The exact optimum of rank-``R`` LoRA is known (Eckart–Young):
  `eckart_young_floor` gives it from the SVD of the target, an independent check of the
  optimiser.
- **Functional level** (`run_functional`): a teacher MiniLM whose query/value weights are
  perturbed by such targets (block-structured vs generic, matched Frobenius norm) is distilled into
  adapters on the BBC headline inputs, by MSE on the final hidden states.

Targets are normalised to $\\|\\Delta W^*\\|_F = 1$ at the matrix level (the residual is relative,
so only the optimiser sees the scale). Command (each part writes one JSON file)::

    python -m bora_ref.experiments.teacher finetune --out docs/evidence/data/teacher_ft_delta.npz
    python -m bora_ref.experiments.teacher matrix --out docs/evidence/data/teacher_matrix.json
    python -m bora_ref.experiments.teacher functional --out docs/evidence/data/teacher_functional.json
    python -m bora_ref.experiments.teacher plots --outdir docs/evidence
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import os
import platform
import sys
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from .. import numpy_ref
from .._validation import BoRAValueError, check_choice, check_int
from ..analysis.params import param_count
from ..nn.layer import BoRALinear
from ._env import cpu_model
from .finetune import AdapterSpec

__all__ = [
    "TARGET_KINDS",
    "FunctionalConfig",
    "MatrixConfig",
    "eckart_young_floor",
    "fit_matrix",
    "make_target",
    "matrix_methods",
    "relative_residual",
    "run_functional",
    "run_matrix",
    "summarise",
]

TARGET_KINDS = ("bora", "bora_pos", "gaussian", "power_law")
"""Synthetic target families of `make_target` (the fine-tune ΔW is loaded from a file)."""

_KIND_CODE = {"bora": 1, "bora_pos": 2, "gaussian": 3, "power_law": 4}


# --------------------------------------------------------------------------------------------
# Targets and the exact LoRA optimum
# --------------------------------------------------------------------------------------------


def make_target(kind: str, m: int, n: int, *, seed: int, r: int = 8, b: int = 8, rank: int = 8,
                exponent: float = 1.0) -> np.ndarray:
    """A float64 ``(m, n)`` target with $\\|\\Delta W^*\\|_F = 1$.

    - ``"bora"``: $B \\,\\Sigma\\, A$ in BoRA form ([`bora_ref.numpy_ref.delta_weight`][bora_ref.numpy_ref.delta_weight]) with
      standard normal ``B (m, r)``, ``A (r, n)`` and signed ``sigma (b, b, r)``.
    - ``"bora_pos"``: the same with positive ``sigma = exp(N(0, 1))`` (the sign pattern that
      ``exp_norm``, whose Σ is positive, can represent after absorbing signs into ``B`` and ``A``).
    - ``"gaussian"``: $G_1 G_2$, ``G1 (m, rank)``, ``G2 (rank, n)`` standard normal (generic rank ``rank``).
    - ``"power_law"``: $U \\mathrm{diag}(s) V^T$ with Haar-random orthonormal ``U``, ``V`` and
      $s_k \\propto k^{-\\text{exponent}}$, $k = 1..\\min(m, n)$ (full rank).

    The draw comes from ``numpy.random.default_rng([seed, kind code])``: same arguments, same target.

    Raises:
        ValueError: unknown ``kind`` or out-of-range sizes.
    """
    kind = check_choice("kind", kind, TARGET_KINDS)
    m, n = check_int("m", m, minimum=1), check_int("n", n, minimum=1)
    seed = check_int("seed", seed, minimum=0)
    rng = np.random.default_rng([seed, _KIND_CODE[kind]])
    if kind in ("bora", "bora_pos"):
        r, b = check_int("r", r, minimum=1), check_int("b", b, minimum=1)
        if b > min(m, n):
            raise BoRAValueError(f"b must be <= min(m, n) = {min(m, n)}, got b={b}")
        B, A = rng.standard_normal((m, r)), rng.standard_normal((r, n))
        sigma = rng.standard_normal((b, b, r))
        if kind == "bora_pos":
            sigma = np.exp(sigma)
        target = numpy_ref.delta_weight(B, A, sigma)
    elif kind == "gaussian":
        rank = check_int("rank", rank, minimum=1)
        target = rng.standard_normal((m, rank)) @ rng.standard_normal((rank, n))
    else:
        k = min(m, n)
        U, _ = np.linalg.qr(rng.standard_normal((m, k)))
        V, _ = np.linalg.qr(rng.standard_normal((n, k)))
        s = np.arange(1, k + 1, dtype=np.float64) ** (-float(exponent))
        target = (U * s) @ V.T
    return target / np.linalg.norm(target)


def eckart_young_floor(target: np.ndarray, rank: int) -> float:
    """The smallest relative residual any rank-``rank`` matrix reaches (Eckart–Young–Mirsky).

    $$\\min_{\\mathrm{rank}\\, X \\le R} \\frac{\\|X - T\\|_F}{\\|T\\|_F}
      = \\sqrt{\\sum_{k > R} s_k^2 \\Big/ \\sum_k s_k^2}$$

    from the singular values $s_k$ of ``target`` (computed in float64).
    """
    s = np.linalg.svd(np.asarray(target, dtype=np.float64), compute_uv=False)
    return float(np.sqrt(np.sum(s[rank:] ** 2) / np.sum(s ** 2)))


def relative_residual(delta: torch.Tensor | np.ndarray, target: torch.Tensor | np.ndarray) -> float:
    """$\\|\\Delta W - \\Delta W^*\\|_F / \\|\\Delta W^*\\|_F$, in float64."""
    d = np.asarray(torch.as_tensor(delta).detach().double().cpu() if isinstance(delta, torch.Tensor) else delta,
                   dtype=np.float64)
    t = np.asarray(torch.as_tensor(target).detach().double().cpu() if isinstance(target, torch.Tensor) else target,
                   dtype=np.float64)
    return float(np.linalg.norm(d - t) / np.linalg.norm(t))


# --------------------------------------------------------------------------------------------
# Matrix level
# --------------------------------------------------------------------------------------------


def _adapter(spec: AdapterSpec, m: int, n: int, seed: int) -> BoRALinear:
    torch.manual_seed(seed)  # lora_A (and exp_norm's sigma) are drawn from the global RNG
    layer = BoRALinear(n, m, r=spec.r, b=spec.b, sigma_param=spec.sigma_param, bias=False)
    layer.sigma.requires_grad_(spec.train_sigma)
    return layer


def _cosine(steps: int) -> Any:
    return lambda s: 0.5 * (1.0 + math.cos(math.pi * min(s, steps) / steps))


def fit_matrix(target: np.ndarray, spec: AdapterSpec, *, lr: float, steps: int, seed: int,
               checkpoints: Sequence[int] = ()) -> dict[str, Any]:
    """Fit ``target`` with one adapter by Adam on the relative squared residual.

    The adapter is ``BoRALinear(n, m, r, b, sigma_param)`` initialised as in training
    (``torch.manual_seed(seed)`` first; ``lora_B = 0``), scaling 1; ``lr`` decays to 0 on a
    cosine over ``steps``.

    Returns:
        ``residual`` (`relative_residual` at the end, ``nan`` if the loss diverged),
        ``params`` (trainable parameters), ``seconds`` and ``curve``: the residual at each of
        ``checkpoints`` (steps).
    """
    m, n = target.shape
    T = torch.as_tensor(target, dtype=torch.float32)
    norm2 = float((T.double() ** 2).sum())
    layer = _adapter(spec, m, n, seed)
    params = [p for p in (layer.lora_A, layer.lora_B, layer.sigma) if p.requires_grad]
    opt = torch.optim.Adam(params, lr=lr)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, _cosine(steps))
    curve: dict[int, float] = {}
    marks = set(int(c) for c in checkpoints)
    t0 = time.perf_counter()
    diverged = False
    for step in range(1, steps + 1):
        loss = ((layer.delta_weight() - T) ** 2).sum() / norm2
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        if not math.isfinite(float(loss.detach())):
            diverged = True
            break
        if step in marks:
            with torch.no_grad():
                curve[step] = relative_residual(layer.delta_weight(), target)
    with torch.no_grad():
        res = relative_residual(layer.delta_weight(), target)
    if diverged or not math.isfinite(res):
        res = float("nan")
    return {"residual": res, "params": sum(p.numel() for p in params), "seconds": time.perf_counter() - t0,
            "curve": curve}


@dataclass(frozen=True)
class MatrixConfig:
    """The matrix-level grid.

    Attributes:
        m, n: target shape (MiniLM's query/value: 384 x 384). r: BoRA's rank per block product and
        the base LoRA rank. bs: BoRA block counts. seeds: target draw (synthetic targets) and
        adapter initialisation. steps: Adam steps per fit. lrs: tried for every BoRA fit; the
        best mean over seeds is reported. lora_lrs: the same for LoRA (LoRA's landscape has no
        spurious minima; the fits are checked against the exact Eckart–Young optimum instead).
        gaussian_ranks: ranks of the generic targets. ft_delta: the ``.npz`` of fine-tune ΔW
        (``None``: no such targets); ft_layers: which of its arrays are targets.
    """

    m: int = 384
    n: int = 384
    r: int = 8
    bs: tuple[int, ...] = (2, 4, 8)
    seeds: tuple[int, ...] = (0, 1, 2)
    steps: int = 1000
    lrs: tuple[float, ...] = (1e-2, 3e-2)
    lora_lrs: tuple[float, ...] = (1e-2,)
    gaussian_ranks: tuple[int, ...] = (8, 32, 64)
    positive_bs: tuple[int, ...] = (8,)
    ft_delta: str | None = "docs/evidence/data/teacher_ft_delta.npz"
    ft_layers: tuple[str, ...] = ("layer0.query", "layer5.value")
    checkpoints: tuple[int, ...] = (100, 300)


def matrix_methods(config: MatrixConfig, structured_b: int | None = None) -> list[AdapterSpec]:
    """The adapters fitted to one target.

    LoRA at rank ``r``, the equal-budget rank $r + \\lfloor b^2 r / (m + n) \\rfloor$ (largest LoRA
    with no more parameters than BoRA ``(r, b)``), ``r + 1`` if that is larger than every
    equal-budget rank (the smallest LoRA with more parameters than BoRA), and ``b r`` (the rank
    bound of BoRA, as a ceiling); BoRA ``raw`` and ``exp_norm`` at every ``b``. For a
    block-structured target (``structured_b``) only that ``b``.
    """
    r = config.r
    bs = (structured_b,) if structured_b is not None else config.bs
    ranks = {r}
    eq = {b: param_count(config.m, config.n, r, b).total // (config.m + config.n) for b in bs}
    ranks.update(eq.values())
    ranks.add(max(eq.values()) + 1)
    ranks.update(b * r for b in bs)
    specs = [AdapterSpec.lora(R) for R in sorted(ranks)]
    for b in bs:
        specs += [AdapterSpec.bora(r, b, "raw"), AdapterSpec.bora(r, b, "exp_norm")]
    return specs


def _targets(config: MatrixConfig, seed: int) -> list[tuple[str, np.ndarray, int | None]]:
    m, n, r = config.m, config.n, config.r
    out: list[tuple[str, np.ndarray, int | None]] = []
    for b in config.bs:
        out.append((f"BoRA-structured b={b}", make_target("bora", m, n, seed=seed, r=r, b=b), b))
    for b in config.positive_bs:
        out.append((f"BoRA-structured b={b}, Σ>0", make_target("bora_pos", m, n, seed=seed, r=r, b=b), b))
    for R in config.gaussian_ranks:
        out.append((f"Gaussian rank {R}", make_target("gaussian", m, n, seed=seed, rank=R), None))
    out.append(("power law s_k ∝ 1/k", make_target("power_law", m, n, seed=seed), None))
    if config.ft_delta:
        with np.load(config.ft_delta) as data:
            for key in config.ft_layers:
                t = data[key].astype(np.float64)
                if t.shape != (m, n):
                    raise BoRAValueError(f"ft_delta[{key!r}] has shape {t.shape}, expected {(m, n)}")
                out.append((f"fine-tune ΔW {key}", t / np.linalg.norm(t), None))
    return out


def run_matrix(config: MatrixConfig, *, log: Any = None, partial: str | None = None) -> dict[str, Any]:
    """Every (target, adapter, learning rate, seed) fit of ``config``, plus the Eckart–Young floors.

    Args:
        log: a callable taking one line of progress text (``None``: silent).
        partial: a JSON-lines file appended with every finished fit (resumable record).

    Returns:
        ``{"config", "runs": [...], "floors": {target: {seed: {rank: floor}}}}``.
    """
    runs: list[dict[str, Any]] = []
    floors: dict[str, dict[str, dict[str, float]]] = {}
    ranks_needed = sorted({1, 2, 4} | set(range(8, 8 * max(config.bs) + 1, 1)))
    for seed in config.seeds:
        for name, target, sb in _targets(config, seed):
            s = np.linalg.svd(target, compute_uv=False)
            tail = np.sqrt(np.maximum(np.cumsum((s ** 2)[::-1])[::-1], 0.0))  # tail[R] = ||s[R:]||
            floors.setdefault(name, {})[str(seed)] = {str(R): float(tail[R] if R < len(s) else 0.0) for R in ranks_needed}
            for spec in matrix_methods(config, sb):
                lrs = config.lora_lrs if spec.b == 1 else config.lrs
                for lr in lrs:
                    out = fit_matrix(target, spec, lr=lr, steps=config.steps, seed=seed, checkpoints=config.checkpoints)
                    row = {"target": name, "method": spec.name, "r": spec.r, "b": spec.b, "sigma_param": spec.sigma_param,
                           "lr": lr, "seed": seed, **out}
                    if spec.b == 1:
                        row["eckart_young"] = eckart_young_floor(target, spec.r)
                    runs.append(row)
                    _append_jsonl(partial, row)
                    if log:
                        log(f"{name:32s} {spec.name:26s} lr={lr:g} seed={seed} res={out['residual']:.4g} "
                            f"({out['seconds']:.1f}s)")
    return {"config": asdict(config), "runs": runs, "floors": floors}


def summarise(runs: Sequence[dict[str, Any]], keys: Sequence[str] = ("target", "method"),
              metric: str = "residual") -> list[dict[str, Any]]:
    """Per ``keys`` group: the learning rate with the lowest mean ``metric`` over seeds, and its stats.

    A learning rate where some seed diverged (``nan``) is not chosen. Returns rows with the group
    keys, ``lr``, ``mean``, ``sd`` (sample, ``ddof = 1``; 0 for one seed), ``values`` per seed,
    ``seeds``, ``params`` and, for LoRA rows, ``eckart_young`` (mean over seeds).
    """
    groups: dict[tuple, dict[float, list[dict[str, Any]]]] = {}
    for row in runs:
        groups.setdefault(tuple(row[k] for k in keys), {}).setdefault(row["lr"], []).append(row)
    out = []
    for key, by_lr in groups.items():
        def score(rows: list[dict[str, Any]]) -> float:
            v = np.array([r[metric] for r in rows], dtype=np.float64)
            return float(v.mean()) if np.all(np.isfinite(v)) else float("inf")
        lr = min(by_lr, key=lambda x: score(by_lr[x]))
        rows = sorted(by_lr[lr], key=lambda r: r["seed"])
        v = np.array([r[metric] for r in rows], dtype=np.float64)
        item = dict(zip(keys, key))
        item.update({"lr": lr, "mean": float(v.mean()), "sd": float(v.std(ddof=1)) if len(v) > 1 else 0.0,
                     "values": v.tolist(), "seeds": [r["seed"] for r in rows], "params": rows[0].get("params"),
                     "all_lrs": {str(k): score(rs) for k, rs in sorted(by_lr.items())}})
        if "eckart_young" in rows[0]:
            item["eckart_young"] = float(np.mean([r["eckart_young"] for r in rows]))
        out.append(item)
    return out


def lora_equivalent_rank(residual: float, floor: dict[str, float]) -> float:
    """The (fractional) LoRA rank whose exact optimum has relative residual ``residual``.

    ``floor`` maps ranks (as strings) to Eckart–Young floors; between consecutive stored ranks the
    floor is interpolated linearly. A residual at or below the floor of the largest stored rank
    gives the first rank reaching it; above the floor of the smallest stored rank gives that rank.
    """
    ranks = sorted(int(k) for k in floor)
    vals = [floor[str(k)] for k in ranks]
    if residual >= vals[0]:
        return float(ranks[0])
    for (r0, f0), (r1, f1) in zip(zip(ranks, vals), zip(ranks[1:], vals[1:])):
        if f1 <= residual <= f0:
            return float(r0 + (f0 - residual) / (f0 - f1) * (r1 - r0)) if f0 > f1 else float(r0)
    return float(ranks[-1])


def equivalent_ranks(result: dict[str, Any]) -> list[dict[str, Any]]:
    """Per (target, BoRA method), at its chosen learning rate: the LoRA-equivalent rank of each seed's fit.

    Rows: ``target``, ``method``, ``b``, ``params``, ``param_rank`` (parameters / (m + n): the LoRA
    rank with the same budget, fractional), ``eq_rank`` mean, ``sd`` and ``values`` per seed.
    """
    cfg = result["config"]
    out = []
    for s in summarise(result["runs"]):
        if not s["method"].startswith("BoRA"):
            continue
        vals = [lora_equivalent_rank(v, result["floors"][s["target"]][str(seed)]) for v, seed in zip(s["values"], s["seeds"])]
        v = np.array(vals)
        out.append({"target": s["target"], "method": s["method"], "params": s["params"],
                    "param_rank": s["params"] / (cfg["m"] + cfg["n"]), "eq_rank": float(v.mean()),
                    "sd": float(v.std(ddof=1)) if len(v) > 1 else 0.0, "values": vals})
    return out


# --------------------------------------------------------------------------------------------
# The full fine-tune ΔW of MiniLM's query/value weights
# --------------------------------------------------------------------------------------------


def _headline_split(split_seed: int = 0) -> tuple[Any, tuple[np.ndarray, ...]]:
    from .data import deduplicate, load_bbc_news, stratified_split

    data, _ = deduplicate(load_bbc_news("title"))
    return data, stratified_split(data.labels, (0.6, 0.2, 0.2), seed=split_seed)


def _qv_linears(model: nn.Module) -> dict[str, nn.Linear]:
    """``layer{l}.query`` / ``layer{l}.value`` -> the ``nn.Linear`` of a BERT encoder."""
    out = {}
    for name, module in model.named_modules():
        parts = name.split(".")
        if isinstance(module, nn.Linear) and parts[-1] in ("query", "value") and "layer" in parts:
            out[f"layer{parts[parts.index('layer') + 1]}.{parts[-1]}"] = module
    return out


def full_finetune_delta(*, seed: int = 0, epochs: int = 3, batch_size: int = 32, lr: float = 1e-4, head_lr: float = 1e-3,
                        max_length: int = 32, log: Any = None) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    """Fine-tune MiniLM's query/value weights fully (plus a fresh classifier head) on BBC headlines.

    Everything else is frozen. AdamW without weight decay, constant learning rates (``lr`` for
    the q/v weights and biases, ``head_lr`` for the head), batch order and head from ``seed``.

    Returns:
        ``{"layer{l}.query" / "layer{l}.value": ΔW (float32, (384, 384))}`` and an info dict
        (validation accuracy before/after, steps, seconds).
    """
    from ..models import load_pretrained
    from .finetune import encode, evaluate

    data, (tr, va, _) = _headline_split()
    torch.manual_seed(seed)
    model, tok = load_pretrained(num_labels=len(data.label_names))
    enc = encode(tok, data, max_length)
    train_enc, val_enc = _subset(enc, tr), _subset(enc, va)
    qv = _qv_linears(model)
    w0 = {k: lin.weight.detach().clone() for k, lin in qv.items()}
    for p in model.parameters():
        p.requires_grad_(False)
    qv_params = [p for lin in qv.values() for p in lin.parameters()]
    head_params = list(model.classifier.parameters())
    for p in qv_params + head_params:
        p.requires_grad_(True)
    opt = torch.optim.AdamW([{"params": qv_params, "lr": lr}, {"params": head_params, "lr": head_lr}], weight_decay=0.0)
    acc0 = evaluate(model, val_enc)
    gen = torch.Generator().manual_seed(seed)
    t0, steps = time.perf_counter(), 0
    model.train()
    for epoch in range(epochs):
        order = torch.randperm(len(train_enc), generator=gen)
        for start in range(0, len(train_enc), batch_size):
            inputs, labels = train_enc.batch(order[start:start + batch_size], "cpu")
            loss = nn.functional.cross_entropy(model(**inputs).logits, labels)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            steps += 1
        if log:
            log(f"full fine-tune epoch {epoch + 1}/{epochs}: last loss {float(loss):.3f}")
    acc1 = evaluate(model, val_enc)
    deltas = {k: (lin.weight.detach() - w0[k]).float().numpy() for k, lin in qv.items()}
    rel = {k: float(np.linalg.norm(d) / np.linalg.norm(w0[k].numpy())) for k, d in deltas.items()}
    info = {"seed": seed, "epochs": epochs, "batch_size": batch_size, "lr_qv": lr, "lr_head": head_lr, "steps": steps,
            "max_length": max_length, "val_accuracy_before": acc0, "val_accuracy_after": acc1,
            "seconds": time.perf_counter() - t0, "relative_norm": rel, "n_train": len(train_enc), "n_val": len(val_enc)}
    return deltas, info


def _subset(enc: Any, idx: np.ndarray) -> Any:
    from .finetune import Encoded

    i = torch.as_tensor(np.asarray(idx, dtype=np.int64))
    return Encoded(enc.input_ids[i], enc.attention_mask[i], enc.labels[i])


# --------------------------------------------------------------------------------------------
# Functional level: distil a perturbed teacher into adapters
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class FunctionalConfig:
    """The distillation grid.

    Attributes:
        r, b: the adapters' rank and BoRA's block count; the block-structured teacher uses the same.
        layers: the encoder layers whose query/value weights are perturbed in the teacher and
        adapted in the student (the layers below are shared and frozen, so their output is
        computed once and cached). teachers: ``"block"`` (BoRA-structured, signed Σ, rank
        ``<= b r``) and/or ``"generic"`` (Gaussian of rank ``generic_rank``). rel_norm:
        $\\|\\Delta W^*_\\ell\\|_F / \\|W_\\ell\\|_F$ for every perturbed weight (so both teachers have
        matched norms). seeds: teacher draw, adapter init and batch order. lrs: tried on
        ``seeds[0]``; the lowest validation error picks the learning rate used for every seed.
        steps, batch_size, max_length: the distillation run (Adam, cosine decay to 0).
        lora_ranks: extra LoRA ranks (e.g. ``b r``). max_train, max_eval: caps on the inputs
        (``None``: the whole split).
    """

    r: int = 8
    b: int = 8
    layers: tuple[int, ...] = (4, 5)
    teachers: tuple[str, ...] = ("block", "generic")
    rel_norm: float = 0.1
    generic_rank: int = 64
    seeds: tuple[int, ...] = (0, 1, 2)
    lrs: tuple[float, ...] = (3e-3, 1e-2)
    steps: int = 150
    batch_size: int = 16
    max_length: int = 32
    lora_ranks: tuple[int, ...] = ()
    max_train: int | None = None
    max_eval: int | None = None


def functional_methods(config: FunctionalConfig, m: int = 384, n: int = 384) -> list[AdapterSpec]:
    """LoRA ``r``, the equal-budget LoRA (if it differs), extra LoRA ranks, BoRA ``raw`` and ``exp_norm``."""
    eq = param_count(m, n, config.r, config.b).total // (m + n)
    ranks = sorted({config.r, eq, *config.lora_ranks})
    return [AdapterSpec.lora(R) for R in ranks] + [AdapterSpec.bora(config.r, config.b, "raw"),
                                                     AdapterSpec.bora(config.r, config.b, "exp_norm")]


def _selected(model: nn.Module, layers: Sequence[int]) -> dict[str, nn.Linear]:
    wanted = {f"layer{k}.{w}" for k in layers for w in ("query", "value")}
    return {k: v for k, v in sorted(_qv_linears(model).items()) if k in wanted}


def perturb(model: nn.Module, kind: str, config: FunctionalConfig, seed: int) -> dict[str, np.ndarray]:
    """Add a unit-norm target, scaled to ``rel_norm * ||W||_F``, to the query/value weights of ``config.layers``, in place.

    The ``k``-th perturbed weight (sorted by name) draws its target with seed ``1000 * seed + k``.
    Returns the added ΔW* per weight (float32 arrays).
    """
    kind = check_choice("kind", kind, ("block", "generic"))
    added = {}
    for k, (name, lin) in enumerate(_selected(model, config.layers).items()):
        m, n = lin.weight.shape
        if kind == "block":
            t = make_target("bora", m, n, seed=1000 * seed + k, r=config.r, b=config.b)
        else:
            t = make_target("gaussian", m, n, seed=1000 * seed + k, rank=config.generic_rank)
        with torch.no_grad():
            delta = torch.as_tensor(t, dtype=lin.weight.dtype) * (config.rel_norm * lin.weight.norm())
            lin.weight.add_(delta)
        added[name] = delta.numpy().copy()
    return added


@torch.no_grad()
def layer_inputs(model: nn.Module, enc: Any, start: int, batch_size: int = 64) -> torch.Tensor:
    """The input of encoder layer ``start`` (``hidden_states[start]``) for every row, ``(N, L, d)``, ``L`` the longest sequence."""
    model.eval()
    length = int(enc.attention_mask.sum(dim=1).max())
    out = []
    for i in range(0, len(enc), batch_size):
        o = model(input_ids=enc.input_ids[i:i + batch_size, :length], attention_mask=enc.attention_mask[i:i + batch_size, :length],
                  output_hidden_states=True)
        out.append(o.hidden_states[start])
    return torch.cat(out)


def top_forward(model: nn.Module, h: torch.Tensor, mask: torch.Tensor, start: int) -> torch.Tensor:
    """Run a BERT encoder's layers ``start..`` on their input ``h`` ``(N, L, d)``: the final hidden states.

    Equal to ``model(...).last_hidden_state`` when ``h`` is ``hidden_states[start]`` of the same input
    (checked by the tests); builds the attention mask exactly as the model does.
    """
    am, _ = model._create_attention_masks(attention_mask=mask, encoder_attention_mask=None, embedding_output=h,
                                          encoder_hidden_states=None, cache=None)
    for layer in model.encoder.layer[start:]:
        h = layer(h, attention_mask=am)
        h = h[0] if isinstance(h, tuple) else h
    return h


@torch.no_grad()
def _top_all(model: nn.Module, h_in: torch.Tensor, mask: torch.Tensor, start: int, batch_size: int = 64) -> torch.Tensor:
    model.eval()
    L = h_in.shape[1]
    return torch.cat([top_forward(model, h_in[i:i + batch_size], mask[i:i + batch_size, :L], start)
                      for i in range(0, h_in.shape[0], batch_size)])


def _masked_sq(a: torch.Tensor, b: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    return (((a - b) ** 2).sum(dim=-1) * mask).sum()


def make_student(base: nn.Module, spec: AdapterSpec, layers: Sequence[int], seed: int) -> tuple[nn.Module, list[nn.Parameter]]:
    """A copy of ``base`` with ``spec``'s adapters on the query/value weights of ``layers``; returns it and its trainable parameters.

    ``torch.manual_seed(seed)`` is set before the adapters are created (``lora_A``, exp_norm's σ).
    """
    from ..nn.inject import apply_bora

    student = copy.deepcopy(base)
    torch.manual_seed(seed)
    pattern = r".*layer\.(" + "|".join(str(k) for k in layers) + r")\.attention\.self\.(query|value)"
    apply_bora(student, target_modules=pattern, r=spec.r, b=spec.b, sigma_param=spec.sigma_param)
    params = []
    for name, p in student.named_parameters():
        trainable = name.endswith(("lora_A", "lora_B")) or (name.endswith("sigma") and spec.train_sigma)
        p.requires_grad_(trainable)
        if trainable:
            params.append(p)
    return student, params


def distill(base: nn.Module, spec: AdapterSpec, h_in: torch.Tensor, mask: torch.Tensor, h_teacher: torch.Tensor, *,
            layers: Sequence[int], lr: float, steps: int, batch_size: int, seed: int) -> tuple[nn.Module, list[float]]:
    """A student trained to match the teacher's final hidden states ``h_teacher`` on inputs ``h_in`` of layer ``min(layers)``.

    Loss: masked mean squared error of the final hidden states (eval mode: no dropout). Adam with
    cosine decay to 0; batches are epochs of ``torch.randperm`` from ``Generator().manual_seed(seed)``.
    """
    start = min(layers)
    student, params = make_student(base, spec, layers, seed)
    opt = torch.optim.Adam(params, lr=lr)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, _cosine(steps))
    gen = torch.Generator().manual_seed(seed)
    student.eval()
    losses: list[float] = []
    N = h_in.shape[0]
    order, pos = torch.randperm(N, generator=gen), 0
    for _ in range(steps):
        if pos + batch_size > N:
            order, pos = torch.randperm(N, generator=gen), 0
        idx = order[pos:pos + batch_size]
        pos += batch_size
        mk = mask[idx]
        length = int(mk.sum(dim=1).max())
        mk = mk[:, :length]
        h = top_forward(student, h_in[idx, :length], mk, start)
        loss = _masked_sq(h, h_teacher[idx, :length], mk.float()) / (mk.sum() * h.shape[-1])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        losses.append(float(loss.detach()))
    return student, losses


def normalised_error(h_s: torch.Tensor, h_t: torch.Tensor, h_0: torch.Tensor, mask: torch.Tensor) -> float:
    """$\\sum \\|h_s - h_t\\|^2 / \\sum \\|h_0 - h_t\\|^2$ over valid tokens (1: no better than the unadapted model)."""
    m = mask[:, : h_t.shape[1]].float()
    return float(_masked_sq(h_s, h_t, m) / _masked_sq(h_0, h_t, m))


def _adapter_layers(model: nn.Module) -> dict[str, BoRALinear]:
    out = {}
    for name, module in model.named_modules():
        parts = name.split(".")
        if isinstance(module, BoRALinear) and "layer" in parts:
            out[f"layer{parts[parts.index('layer') + 1]}.{parts[-1]}"] = module
    return out


def _weight_recovery(student: nn.Module, added: dict[str, np.ndarray]) -> float:
    with torch.no_grad():
        return float(np.mean([relative_residual(layer.delta_weight(), added[name])
                              for name, layer in _adapter_layers(student).items()]))


def run_functional(config: FunctionalConfig, *, base: nn.Module | None = None, tokenizer: Any = None,
                   data: Any = None, log: Any = None, partial: str | None = None) -> dict[str, Any]:
    """Distil every teacher kind into every adapter of `functional_methods`.

    ``base``/``tokenizer``/``data`` default to the shipped MiniLM (bare encoder) and the
    deduplicated BBC headlines (stratified 60/20/20 split, seed 0: train inputs, validation for
    the learning rate, test for the reported error). Returns ``{"config", "runs", "teachers",
    "split"}``; a run records the normalised validation and test errors
    (`normalised_error`), the weight recovery (mean relative residual of the student's ΔW
    against the teacher's ΔW* over the perturbed weights) and the loss every 10 steps.
    """
    from .finetune import encode

    if base is None:
        from ..models import load_pretrained

        base, tokenizer = load_pretrained()
    if data is None:
        data, (tr, va, te) = _headline_split()
    else:
        from .data import stratified_split

        tr, va, te = stratified_split(data.labels, (0.6, 0.2, 0.2), seed=0)
    if config.max_train is not None:
        tr = tr[: config.max_train]
    if config.max_eval is not None:
        va, te = va[: config.max_eval], te[: config.max_eval]
    base.eval()
    for p in base.parameters():
        p.requires_grad_(False)
    start = min(config.layers)
    enc = encode(tokenizer, data, config.max_length)
    parts = {"train": _subset(enc, tr), "val": _subset(enc, va), "test": _subset(enc, te)}
    h_in = {k: layer_inputs(base, v, start) for k, v in parts.items()}
    masks = {k: v.attention_mask[:, : h_in[k].shape[1]] for k, v in parts.items()}
    h0 = {k: _top_all(base, h_in[k], masks[k], start) for k in ("val", "test")}
    runs: list[dict[str, Any]] = []
    teachers: dict[str, Any] = {}
    m, n = next(iter(_qv_linears(base).values())).weight.shape
    methods = functional_methods(config, m, n)
    for kind in config.teachers:
        chosen: dict[str, float] = {}
        teachers[kind] = {"per_seed": {}}
        for si, seed in enumerate(config.seeds):
            teacher = copy.deepcopy(base)
            added = perturb(teacher, kind, config, seed)
            ht = {k: _top_all(teacher, h_in[k], masks[k], start) for k in ("train", "val", "test")}
            mt = masks["test"].float()
            teachers[kind]["per_seed"][str(seed)] = {
                "output_change_test": float(torch.sqrt(_masked_sq(h0["test"], ht["test"], mt)
                                                       / _masked_sq(ht["test"], torch.zeros_like(ht["test"]), mt))),
                "weight_ranks": {k: int(np.linalg.matrix_rank(v)) for k, v in added.items()},
                "eckart_young_rank8": {k: eckart_young_floor(v, config.r) for k, v in added.items()},
            }
            del teacher
            for spec in methods:
                for lr in (config.lrs if si == 0 else (chosen[spec.name],)):
                    t0 = time.perf_counter()
                    student, losses = distill(base, spec, h_in["train"], masks["train"], ht["train"], layers=config.layers,
                                              lr=lr, steps=config.steps, batch_size=config.batch_size, seed=seed)
                    err = {k: normalised_error(_top_all(student, h_in[k], masks[k], start), ht[k], h0[k], masks[k])
                           for k in ("val", "test")}
                    row = {"teacher": kind, "method": spec.name, "r": spec.r, "b": spec.b, "sigma_param": spec.sigma_param,
                           "lr": lr, "seed": seed, "params": sum(p.numel() for p in student.parameters() if p.requires_grad),
                           "val_error": err["val"], "test_error": err["test"],
                           "weight_recovery": _weight_recovery(student, added),
                           "loss_curve": losses[::10] + [losses[-1]], "seconds": time.perf_counter() - t0}
                    if not (math.isfinite(row["val_error"]) and math.isfinite(row["test_error"])):
                        row["val_error"] = row["test_error"] = float("nan")
                    runs.append(row)
                    _append_jsonl(partial, row)
                    if log:
                        log(f"{kind:8s} {spec.name:26s} lr={lr:g} seed={seed} val={row['val_error']:.4f} "
                            f"test={row['test_error']:.4f} W={row['weight_recovery']:.3f} ({row['seconds']:.0f}s)")
                    del student
                if si == 0:
                    cands = [r for r in runs if r["teacher"] == kind and r["method"] == spec.name and r["seed"] == seed]
                    chosen[spec.name] = min(cands, key=lambda r: r["val_error"] if math.isfinite(r["val_error"]) else math.inf)["lr"]
        teachers[kind]["chosen_lr"] = chosen
    return {"config": asdict(config), "runs": runs, "teachers": teachers,
            "split": {"train": len(tr), "val": len(va), "test": len(te)}}


def input_weighted_floors(config: FunctionalConfig, *, ranks: Sequence[int] = (8, 9, 16, 32, 64), base: nn.Module | None = None,
                          tokenizer: Any = None, data: Any = None) -> dict[str, Any]:
    """How much of the teachers' ΔW* the headline inputs can see, at the first perturbed layer.

    A weight's update acts on inputs $x$ only through $\\Delta W x$, so over the training inputs
    the relevant size of an error $E$ is $\\lVert E\\, C^{1/2} \\rVert_F$ with $C = \\frac{1}{T}\\sum_t x_t x_t^T$
    the second moment of the layer's input over the $T$ valid tokens. For the first perturbed
    layer (whose input the perturbation does not change) this returns the spectrum of $C$ (its
    participation ratio $(\\mathrm{tr}\\,C)^2 / \\mathrm{tr}\\,C^2$ and the number of eigenvalues
    holding 90% / 99% of the trace) and, per teacher kind and seed, the exact rank-$R$ LoRA optimum
    of the query target in this data-weighted norm (Eckart–Young on $\\Delta W^* C^{1/2}$), next to
    the unweighted one.
    """
    from .finetune import encode

    if base is None:
        from ..models import load_pretrained

        base, tokenizer = load_pretrained()
    if data is None:
        data, (tr, _, _) = _headline_split()
    else:
        from .data import stratified_split

        tr = stratified_split(data.labels, (0.6, 0.2, 0.2), seed=0)[0]
    start = min(config.layers)
    part = _subset(encode(tokenizer, data, config.max_length), tr)
    h = layer_inputs(base, part, start)
    x = h[part.attention_mask[:, : h.shape[1]].bool()].double().numpy()  # (T, d) valid tokens
    C = x.T @ x / x.shape[0]
    ev = np.clip(np.linalg.eigvalsh(C)[::-1], 0.0, None)
    root = (np.linalg.eigh(C)[1] * np.sqrt(np.clip(np.linalg.eigh(C)[0], 0.0, None))) @ np.linalg.eigh(C)[1].T
    share = np.cumsum(ev) / ev.sum()
    out: dict[str, Any] = {"layer": start, "tokens": int(x.shape[0]), "participation_ratio": float(ev.sum() ** 2 / (ev ** 2).sum()),
                           "eigs_for_90pct": int(np.searchsorted(share, 0.9) + 1), "eigs_for_99pct": int(np.searchsorted(share, 0.99) + 1),
                           "floors": {}}
    for kind in config.teachers:
        for seed in config.seeds:
            teacher = copy.deepcopy(base)
            added = perturb(teacher, kind, config, seed)
            key = f"layer{start}.query"
            t = added[key].astype(np.float64)
            out["floors"].setdefault(kind, {})[str(seed)] = {
                "plain": {str(R): eckart_young_floor(t, R) for R in ranks},
                "data_weighted": {str(R): eckart_young_floor(t @ root, R) for R in ranks},
            }
            del teacher
    return out


def summarise_functional(result: dict[str, Any]) -> list[dict[str, Any]]:
    """Per (teacher, method): the runs at the chosen learning rate, test error mean ± sd over seeds."""
    out = []
    for kind, info in result["teachers"].items():
        for method, lr in info["chosen_lr"].items():
            rows = sorted((r for r in result["runs"] if r["teacher"] == kind and r["method"] == method and r["lr"] == lr),
                          key=lambda r: r["seed"])
            item = {"teacher": kind, "method": method, "lr": lr, "params": rows[0]["params"], "seeds": [r["seed"] for r in rows]}
            for metric in ("test_error", "val_error", "weight_recovery"):
                v = np.array([r[metric] for r in rows], dtype=np.float64)
                item[metric] = {"mean": float(v.mean()), "sd": float(v.std(ddof=1)) if len(v) > 1 else 0.0,
                                "values": v.tolist()}
            out.append(item)
    return out


# --------------------------------------------------------------------------------------------
# Environment, plots, command line
# --------------------------------------------------------------------------------------------


def _append_jsonl(path: str | Path | None, row: dict[str, Any]) -> None:
    """Append one finished run to the partial-results file (if any), so an interrupted run keeps it."""
    if path:
        with open(path, "a", encoding="utf-8") as fh:
            fh.write(json.dumps(row) + "\n")


def environment(command: str) -> dict[str, Any]:
    """Versions, CPU, torch threads, date (UTC) and the exact command, for the results file."""
    try:
        import transformers

        tv = transformers.__version__
    except ImportError:  # pragma: no cover - the models extra is missing
        tv = None
    cpu = cpu_model()
    return {"python": sys.version.split()[0], "numpy": np.__version__, "torch": torch.__version__, "transformers": tv,
            "cpu": cpu, "cpu_count": os.cpu_count(), "torch_threads": torch.get_num_threads(),
            "date_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "platform": platform.platform(),
            "command": command}


def _label(method: str) -> str:
    """Adapter names with the Σ parameterisation always spelled out (``AdapterSpec`` omits the default exp_norm)."""
    return f"{method}, Σ exp_norm" if method.startswith("BoRA") and "Σ" not in method else method


def _short(target: str) -> str:
    return target.replace("BoRA-structured", "BoRA-struct.").replace("fine-tune ΔW ", "full-FT ΔW ")


def plot_matrix(result: dict[str, Any], path: str | os.PathLike[str]) -> None:
    """Relative residual vs trainable parameters, one panel per target, with the Eckart–Young line."""
    from ..report.style import legend_outside, new_figure, series_style

    summary = summarise(result["runs"])
    targets = list(dict.fromkeys(r["target"] for r in result["runs"]))
    cfg = result["config"]
    m, n = cfg["m"], cfg["n"]
    ncols = 5
    nrows = math.ceil(len(targets) / ncols)
    fig, axes = new_figure(ncols, nrows, width=3.3, height=2.9)
    floor_ranks = sorted(int(k) for k in next(iter(next(iter(result["floors"].values())).values())))
    for ax, target in zip(axes, targets):
        fl = result["floors"][target]
        ys = np.array([[fl[s][str(R)] for R in floor_ranks] for s in fl])
        ax.plot([R * (m + n) / 1e3 for R in floor_ranks], np.maximum(ys.mean(axis=0), 1e-8), color="0.45", linestyle="-",
                linewidth=1.2, marker=None, label="LoRA optimum (Eckart–Young, exact)")
        rows = [s for s in summary if s["target"] == target]
        lora = sorted((s for s in rows if s["method"].startswith("LoRA")), key=lambda s: s["params"])
        st = series_style(0)
        ax.plot([s["params"] / 1e3 for s in lora for _ in s["values"]], [max(v, 1e-8) for s in lora for v in s["values"]],
                color=st["color"], marker=st["marker"], linestyle="none", markersize=5, markerfacecolor="none",
                label="LoRA fit (r = 8, 9, 16, 32, 64)")
        for i, b in enumerate(cfg["bs"]):
            for j, sp in enumerate(("raw", "exp_norm")):
                sel = [s for s in rows if s["method"] == f"BoRA r={cfg['r']} b={b}" + ("" if sp == "exp_norm" else f", Σ {sp}")]
                if not sel:
                    continue
                s = sel[0]
                st = series_style(1 + 2 * i + j)
                ax.plot([s["params"] / 1e3] * len(s["values"]), [max(v, 1e-8) for v in s["values"]], color=st["color"],
                        marker=st["marker"], linestyle="none", markersize=6,
                        markerfacecolor="none" if sp == "exp_norm" else st["color"], label=f"BoRA b={b}, Σ {sp}")
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_ylim(1e-8, 1.5)
        ax.set_title(_short(target), fontsize="small")
        ax.set_xlabel("trainable parameters (thousands)")
        ax.set_ylabel("relative residual")
        ax.grid(True, which="major", alpha=0.3)
    for ax in axes[len(targets):]:
        ax.set_visible(False)
    fig.suptitle(f"relative residual ‖ΔW−ΔW*‖/‖ΔW*‖ of fits to {m}×{n} targets (one marker per seed, floored at 1e-8); "
                 "grey line: exact LoRA optimum", fontsize="medium")
    legend_outside(fig)
    fig.savefig(path, dpi=110)


def plot_matrix_b8(result: dict[str, Any], path: str | os.PathLike[str], b: int = 8) -> None:
    """Per target, the residual at (nearly) equal budget: LoRA r, equal-budget / r+1 LoRA, BoRA b raw / exp_norm, and LoRA b r."""
    from ..report.style import legend_outside, new_figure, series_style

    summary = summarise(result["runs"])
    cfg = result["config"]
    r = cfg["r"]
    targets = [t for t in dict.fromkeys(x["target"] for x in result["runs"])
               if "BoRA-structured" not in t or t.startswith(f"BoRA-structured b={b}")]
    methods = [f"LoRA r={r}", f"LoRA r={r + 1}", f"BoRA r={r} b={b}, Σ raw", f"BoRA r={r} b={b}", f"LoRA r={b * r}"]
    labels = [f"LoRA r={r} (= equal budget)", f"LoRA r={r + 1} (more params than BoRA)", f"BoRA b={b}, Σ raw",
              f"BoRA b={b}, Σ exp_norm", f"LoRA r={b * r} (8× params, ceiling)"]
    fig, (ax,) = new_figure(1, 1, width=8.5, height=3.8)
    x = np.arange(len(targets))
    for i, (meth, lab) in enumerate(zip(methods, labels)):
        xs, ys = [], []
        for k, t in enumerate(targets):
            sel = [s for s in summary if s["target"] == t and s["method"] == meth]
            if sel:
                xs += [k + (i - 2) * 0.13] * len(sel[0]["values"])
                ys += [max(v, 1e-8) for v in sel[0]["values"]]
        st = series_style(i)
        ax.plot(xs, ys, color=st["color"], marker=st["marker"], linestyle="none", markersize=6, alpha=0.8,
                markerfacecolor="none", label=lab)
    ax.set_yscale("log")
    ax.set_ylim(1e-8, 1.5)
    ax.set_xticks(x, [_short(t) for t in targets], rotation=30, ha="right", fontsize="small")
    ax.set_ylabel("relative residual ‖ΔW−ΔW*‖/‖ΔW*‖\n(one marker per seed; floor 1e-8)")
    ax.set_xlabel("target ΔW* (384 × 384)")
    ax.grid(True, axis="y", alpha=0.3)
    legend_outside(ax)
    fig.savefig(path, dpi=110)


def plot_matrix_gain(result: dict[str, Any], path: str | os.PathLike[str]) -> None:
    """BoRA's LoRA-equivalent rank (`equivalent_ranks`) per target, against its parameter budget in LoRA ranks.

    Left: block-structured targets (log scale); right: the others (linear scale), with BoRA's
    budget $r + b^2 r / (m + n)$ for each ``b`` as a dashed line: a point above its line means
    BoRA's extra parameters bought more than the same parameters spent on LoRA rank.
    """
    from ..report.style import legend_outside, new_figure, series_style

    cfg = result["config"]
    r, mn = cfg["r"], cfg["m"] + cfg["n"]
    eq = equivalent_ranks(result)
    targets = list(dict.fromkeys(x["target"] for x in result["runs"]))
    groups = [[t for t in targets if t.startswith("BoRA-structured")],
              [t for t in targets if not t.startswith("BoRA-structured") and not t.startswith(f"Gaussian rank {r}")]]
    fig, axes = new_figure(2, 1, width=4.6, height=3.8, gridspec_kw={"width_ratios": [1, 1.6]})
    methods = [(b, sp) for b in cfg["bs"] for sp in ("raw", "exp_norm")]
    for ax, group in zip(axes, groups):
        for i, (b, sp) in enumerate(methods):
            name = f"BoRA r={r} b={b}" + (", Σ raw" if sp == "raw" else "")
            xs, ys, es = [], [], []
            for k, t in enumerate(group):
                sel = [e for e in eq if e["target"] == t and e["method"] == name]
                if sel:
                    xs.append(k + (i - (len(methods) - 1) / 2) * 0.12)
                    ys.append(sel[0]["eq_rank"])
                    es.append(sel[0]["sd"])
            st = series_style(i)
            ax.errorbar(xs, ys, yerr=es, color=st["color"], marker=st["marker"], linestyle="none", markersize=6, capsize=2,
                        markerfacecolor="none" if sp == "exp_norm" else st["color"], label=f"BoRA b={b}, Σ {sp}")
        ax.set_xticks(range(len(group)), [_short(t) for t in group], rotation=30, ha="right", fontsize="small")
        ax.set_ylabel("LoRA-equivalent rank")
        ax.set_xlabel("target ΔW*")
        ax.grid(True, axis="y", alpha=0.3)
    axes[0].set_yscale("log", base=2)
    axes[0].set_title("block-structured targets", fontsize="small")
    axes[1].set_title("generic and fine-tune targets", fontsize="small")
    for j, b in enumerate(cfg["bs"]):
        budget = r + b * b * r / mn
        axes[1].axhline(budget, color=series_style(2 * j)["color"], linestyle=(0, (4, 2 + j)), linewidth=1,
                        label=f"budget of BoRA b={b}: {budget:.2f} LoRA ranks")
    axes[1].axhline(r, color="0.4", linestyle=":", linewidth=1, label=f"LoRA r={r}")
    legend_outside(fig)
    fig.savefig(path, dpi=110)


def plot_functional(result: dict[str, Any], path: str | os.PathLike[str]) -> None:
    """Normalised student–teacher error on held-out headlines, per teacher and adapter (mean ± sd, seeds as dots)."""
    from ..report.style import legend_outside, new_figure, series_style

    summary = summarise_functional(result)
    kinds = list(result["teachers"])
    methods = list(dict.fromkeys(s["method"] for s in summary))
    fig, (ax,) = new_figure(1, 1, width=6.0, height=3.6)
    for i, meth in enumerate(methods):
        st = series_style(i)
        for k, kind in enumerate(kinds):
            sel = [s for s in summary if s["teacher"] == kind and s["method"] == meth]
            if not sel:
                continue
            s = sel[0]["test_error"]
            xpos = k + (i - (len(methods) - 1) / 2) * 0.15
            ax.errorbar([xpos], [s["mean"]], yerr=[s["sd"]], color=st["color"], marker=st["marker"], markersize=7,
                        linestyle="none", capsize=3, label=_label(meth) if k == 0 else None)
            ax.plot([xpos] * len(s["values"]), s["values"], linestyle="none", marker=".", color=st["color"], alpha=0.5)
    ax.set_xticks(range(len(kinds)), [f"{k} teacher" for k in kinds])
    ax.set_ylabel("held-out error / error of the base model")
    ax.set_xlabel("teacher perturbation ΔW* (matched Frobenius norm)")
    ax.set_ylim(bottom=0)
    ax.grid(True, axis="y", alpha=0.3)
    legend_outside(ax)
    fig.savefig(path, dpi=110)


def _cell(mean: float, sd: float) -> str:
    if not math.isfinite(mean):
        return "diverged"
    if mean < 1e-3:
        return f"{mean:.1e} ± {sd:.0e}"
    return f"{mean:.4f} ± {sd:.4f}"


def matrix_tables(result: dict[str, Any]) -> str:
    """Markdown tables of the matrix level: residuals (mean ± sd over seeds, best learning rate) and LoRA-equivalent ranks."""
    summary = summarise(result["runs"])
    cfg = result["config"]
    r = cfg["r"]
    get = {(s["target"], s["method"]): s for s in summary}
    targets = list(dict.fromkeys(x["target"] for x in result["runs"]))
    lora_ranks = sorted({s["params"] // (cfg["m"] + cfg["n"]) for s in summary if s["method"].startswith("LoRA")})
    lines = ["| target ΔW* | " + " | ".join(f"LoRA r={R}" for R in lora_ranks) + " |",
             "| --- |" + " --- |" * len(lora_ranks)]
    for t in targets:
        cells = []
        for R in lora_ranks:
            s = get.get((t, f"LoRA r={R}"))
            cells.append("" if s is None else f"{_cell(s['mean'], s['sd'])}<br>EY {s['eckart_young']:.4f}")
        lines.append(f"| {t} | " + " | ".join(cells) + " |")
    lines += ["", "| target ΔW* | " + " | ".join(f"BoRA b={b} Σ {sp}" for b in cfg["bs"] for sp in ("raw", "exp_norm")) + " |",
              "| --- |" + " --- |" * (2 * len(cfg["bs"]))]
    for t in targets:
        cells = []
        for b in cfg["bs"]:
            for sp in ("raw", "exp_norm"):
                s = get.get((t, f"BoRA r={r} b={b}" + (", Σ raw" if sp == "raw" else "")))
                cells.append("" if s is None else _cell(s["mean"], s["sd"]))
        lines.append(f"| {t} | " + " | ".join(cells) + " |")
    eq = {(e["target"], e["method"]): e for e in equivalent_ranks(result)}
    lines += ["", "| target ΔW* | " + " | ".join(f"b={b} Σ {sp}" for b in cfg["bs"] for sp in ("raw", "exp_norm")) + " |",
              "| --- |" + " --- |" * (2 * len(cfg["bs"]))]
    lines.append("| parameters as LoRA ranks | " + " | ".join(
        f"{r + b * b * r / (cfg['m'] + cfg['n']):.2f}" for b in cfg["bs"] for _ in (0, 1)) + " |")
    for t in targets:
        cells = []
        for b in cfg["bs"]:
            for sp in ("raw", "exp_norm"):
                e = eq.get((t, f"BoRA r={r} b={b}" + (", Σ raw" if sp == "raw" else "")))
                cells.append("" if e is None else f"{e['eq_rank']:.2f} ± {e['sd']:.2f}")
        lines.append(f"| {t} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def functional_table(result: dict[str, Any]) -> str:
    """Markdown table of the functional level (test error, weight recovery; mean ± sd over seeds)."""
    lines = ["| teacher | adapter | trainable params | lr | held-out error (base = 1) | per seed | minus LoRA r=8, paired | ‖ΔW−ΔW*‖/‖ΔW*‖ |",
             "| --- | --- | ---: | ---: | --- | --- | --- | --- |"]
    summary = summarise_functional(result)
    ref_name = f"LoRA r={result['config']['r']}"
    for s in summary:
        te, w = s["test_error"], s["weight_recovery"]
        ref = next((x for x in summary if x["teacher"] == s["teacher"] and x["method"] == ref_name), None)
        diff = ""
        if ref is not None and s["method"] != ref_name and ref["seeds"] == s["seeds"]:
            d = np.array(te["values"]) - np.array(ref["test_error"]["values"])
            diff = f"{d.mean():+.4f} ± {d.std(ddof=1) if len(d) > 1 else 0.0:.4f}"
        lines.append(f"| {s['teacher']} | {_label(s['method'])} | {s['params']:,} | {s['lr']:g} | {te['mean']:.4f} ± {te['sd']:.4f} | "
                     + ", ".join(f"{v:.4f}" for v in te["values"]) + f" | {diff} | {w['mean']:.3f} ± {w['sd']:.3f} |")
    return "\n".join(lines)


MATRIX_SETTINGS = {
    "cpu": MatrixConfig(),
    "smoke": MatrixConfig(m=48, n=48, r=2, bs=(2, 4), seeds=(0,), steps=300, lrs=(3e-2,), gaussian_ranks=(2, 8),
                          positive_bs=(), ft_delta=None, checkpoints=(100,)),
}
FUNCTIONAL_SETTINGS = {
    "cpu": FunctionalConfig(),
    "cpu_long": FunctionalConfig(steps=500, lora_ranks=(64,)),
    "smoke": FunctionalConfig(seeds=(0,), lrs=(1e-2,), steps=5, batch_size=8, max_train=32, max_eval=16),
}


def _write(path: str, obj: dict[str, Any]) -> None:
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", encoding="utf-8") as fh:
        json.dump(obj, fh, indent=1, default=float)
        fh.write("\n")


def _partial_path(out: str) -> str:
    import tempfile

    return os.path.join(tempfile.gettempdir(), Path(out).name + ".partial.jsonl")


def main(argv: Sequence[str] | None = None) -> int:
    """Command line: ``finetune``, ``matrix``, ``functional`` or ``plots`` (see the module docstring)."""
    parser = argparse.ArgumentParser(prog="python -m bora_ref.experiments.teacher", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="part", required=True)
    p = sub.add_parser("finetune", help="full fine-tune of MiniLM's q/v weights; saves their ΔW (.npz)")
    p.add_argument("--out", default="docs/evidence/data/teacher_ft_delta.npz")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--epochs", type=int, default=3)
    p.add_argument("--keep", nargs="+", default=["layer0.query", "layer0.value", "layer5.query", "layer5.value"],
                   help="which ΔW to save (all 12 q/v weights are 6.8 MB; regenerate them with the same seed)")
    for part in ("matrix", "functional"):
        p = sub.add_parser(part)
        p.add_argument("--out", required=True)
        p.add_argument("--setting", default="cpu", choices=tuple((MATRIX_SETTINGS if part == "matrix" else FUNCTIONAL_SETTINGS)))
        if part == "matrix":
            p.add_argument("--ft-delta", default=None, help="override the .npz of fine-tune ΔW ('' for none)")
    p = sub.add_parser("inputs", help="data-weighted Eckart–Young floors of the functional teachers (JSON)")
    p.add_argument("--out", default="docs/evidence/data/teacher_inputs.json")
    p = sub.add_parser("tables", help="print the markdown tables of the results files")
    p.add_argument("--matrix", default="docs/evidence/data/teacher_matrix.json")
    p.add_argument("--functional", nargs="+", default=["docs/evidence/data/teacher_functional.json",
                                                       "docs/evidence/data/teacher_functional_long.json"])
    p = sub.add_parser("plots")
    p.add_argument("--matrix", default="docs/evidence/data/teacher_matrix.json")
    p.add_argument("--functional", nargs="+", default=["docs/evidence/data/teacher_functional.json",
                                                       "docs/evidence/data/teacher_functional_long.json"])
    p.add_argument("--outdir", default="docs/evidence")
    args = parser.parse_args(argv)
    command = "python -m bora_ref.experiments.teacher " + " ".join(sys.argv[1:] if argv is None else argv)

    def log(line: str) -> None:
        print(time.strftime("%H:%M:%S"), line, flush=True)

    if args.part == "finetune":
        deltas, info = full_finetune_delta(seed=args.seed, epochs=args.epochs, log=log)
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        missing = sorted(set(args.keep) - set(deltas))
        if missing:
            raise BoRAValueError(f"--keep names {missing}, not among {sorted(deltas)}")
        np.savez_compressed(args.out, **{k: deltas[k] for k in args.keep})
        _write(str(Path(args.out).with_suffix(".json")), {"environment": environment(command), "info": info,
                                                         "arrays": {k: list(deltas[k].shape) for k in args.keep}})
        log(f"val accuracy {info['val_accuracy_before']:.3f} -> {info['val_accuracy_after']:.3f}; saved {args.out}")
    elif args.part == "matrix":
        config = MATRIX_SETTINGS[args.setting]
        if args.ft_delta is not None:
            config = MatrixConfig(**{**asdict(config), "ft_delta": args.ft_delta or None})
        t0 = time.perf_counter()
        result = run_matrix(config, log=log, partial=_partial_path(args.out))
        result["summary"] = summarise(result["runs"])
        result["wall_seconds"] = time.perf_counter() - t0
        result["environment"] = environment(command)
        _write(args.out, result)
    elif args.part == "functional":
        config = FUNCTIONAL_SETTINGS[args.setting]
        t0 = time.perf_counter()
        result = run_functional(config, log=log, partial=_partial_path(args.out))
        result["summary"] = summarise_functional(result)
        result["wall_seconds"] = time.perf_counter() - t0
        result["environment"] = environment(command)
        _write(args.out, result)
    elif args.part == "inputs":
        t0 = time.perf_counter()
        result = input_weighted_floors(FUNCTIONAL_SETTINGS["cpu"])
        result["config"] = asdict(FUNCTIONAL_SETTINGS["cpu"])
        result["wall_seconds"] = time.perf_counter() - t0
        result["environment"] = environment(command)
        _write(args.out, result)
        log(json.dumps({k: v for k, v in result.items() if k in ("participation_ratio", "eigs_for_90pct", "eigs_for_99pct")}))
    elif args.part == "tables":
        for path, fn in ((args.matrix, matrix_tables), *((f, functional_table) for f in args.functional)):
            if os.path.exists(path):
                with open(path, encoding="utf-8") as fh:
                    print(fn(json.load(fh)), end="\n\n")
    else:
        out = Path(args.outdir)
        if os.path.exists(args.matrix):
            with open(args.matrix, encoding="utf-8") as fh:
                res = json.load(fh)
            plot_matrix(res, out / "teacher_matrix.png")
            plot_matrix_b8(res, out / "teacher_matrix_b8.png")
            plot_matrix_gain(res, out / "teacher_matrix_gain.png")
        for path in args.functional:
            if os.path.exists(path):
                with open(path, encoding="utf-8") as fh:
                    plot_functional(json.load(fh), out / (Path(path).stem + ".png"))
    return 0


if __name__ == "__main__":
    torch.set_num_threads(1)
    sys.exit(main())
