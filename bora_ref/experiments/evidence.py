"""The pre-registered paired test of BoRA against LoRA (protocol: ``docs/evidence/protocol.md``).

Two comparisons on all-MiniLM-L6-v2 + BBC News headlines: LoRA $r = 8$ against BoRA $r = 8,
b = 8$, and BoRA $r = 8, b = 16$ against LoRA with the same parameter budget ($r = 10$). The
design removes what made earlier differences hard to read:

- **duplicates**: repeated headlines are removed before any split (`bora_ref.experiments.data.deduplicate`);
- **splits**: every seed draws its own stratified 60/20/20 split (split seed = run seed);
- **pairing**: for one seed every method gets the same split, head initialisation, ``lora_A``
  draw (when shapes agree), batch order and dropout masks (`paired_model`, then
  ``torch.manual_seed(seed)`` right before training);
- **learning rate**: chosen per method by mean *validation* accuracy over tuning seeds that are
  not evaluation seeds;
- **clipping**: every comparison with and without gradient-norm clipping.

``python -m bora_ref.experiments.evidence run --out DIR --workers 2`` runs the design
resumably (one JSON line per finished run, per worker); ``... analyse --out DIR --json FILE``
gathers the runs, the environment and the paired statistics (`paired_stats`) and reads
them with `reading`.
"""

from __future__ import annotations

import argparse
import copy
import glob
import json
import math
import os
import platform
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field, replace
from typing import Any

import numpy as np
import torch
from torch import nn

from .._validation import BoRAValueError
from ._env import cpu_model
from .analysis import adapter_layers, trainable_parameters
from .data import TextDataset, deduplicate, load_bbc_news, stratified_split
from .finetune import AdapterSpec, Encoded, TrainConfig, encode, evaluate, reset_head, setup_adapters, train

__all__ = [
    "CLAIM",
    "Comparison",
    "EvidenceConfig",
    "paired_model",
    "paired_stats",
    "reading",
    "run_one",
    "student_t_quantile",
    "subset_encoded",
    "task_list",
]

CLAIM = (2.3, 4.1)
"""The paper's claimed gain of BoRA over LoRA, in accuracy points."""


@dataclass(frozen=True)
class Comparison:
    """A paired comparison: ``treatment`` minus ``baseline`` test accuracy, seed by seed."""

    name: str
    baseline: AdapterSpec
    treatment: AdapterSpec


def _default_comparisons() -> tuple[Comparison, ...]:
    return (
        Comparison("BoRA b=8 - LoRA r=8", AdapterSpec.lora(8), AdapterSpec.bora(8, 8)),
        Comparison("BoRA b=16 - LoRA r=10 (equal budget)", AdapterSpec.lora(10), AdapterSpec.bora(8, 16)),
    )


@dataclass(frozen=True)
class EvidenceConfig:
    """The design (defaults: the pre-registered one).

    Attributes:
        comparisons: the paired comparisons. lrs: learning rates tuned per method.
        tune_seeds: seeds (split and training) of the learning-rate tuning; disjoint from ``seeds``.
        seeds: evaluation seeds. clips: gradient-clipping settings (``None``: off).
        tune_clips: clip settings tuned separately; the others reuse the choice of ``tune_clips[0]``.
        train: optimiser settings (``lr`` and ``grad_clip`` are set per run).
        max_length, fractions, text_field, target_modules: data and adapter placement.
        max_examples: stratified cap on the deduplicated data (``None``: all; for tests).
    """

    comparisons: tuple[Comparison, ...] = field(default_factory=_default_comparisons)
    lrs: tuple[float, ...] = (2e-3, 3e-3, 5e-3, 7e-3, 1e-2, 1.5e-2)
    tune_seeds: tuple[int, ...] = (1000, 1001, 1002)
    seeds: tuple[int, ...] = tuple(range(30))
    clips: tuple[float | None, ...] = (None, 1.0)
    tune_clips: tuple[float | None, ...] = (None,)
    train: TrainConfig = field(default_factory=lambda: TrainConfig(epochs=2, batch_size=32, progress=False))
    max_length: int = 32
    fractions: tuple[float, float, float] = (0.6, 0.2, 0.2)
    text_field: str = "title"
    target_modules: tuple[str, ...] = ("query", "value")
    max_examples: int | None = None

    def methods(self) -> list[AdapterSpec]:
        """Every distinct adapter spec, in comparison order."""
        out: list[AdapterSpec] = []
        for c in self.comparisons:
            for spec in (c.baseline, c.treatment):
                if spec not in out:
                    out.append(spec)
        return out


# ---------------------------------------------------------------------------------------------
# Pairing


def paired_model(pristine: nn.Module, spec: AdapterSpec, seed: int, target_modules: Sequence[str]) -> nn.Module:
    """A fresh copy of ``pristine`` with ``spec``'s adapters, initialised from ``seed`` alone.

    The head is drawn first from ``torch.manual_seed(seed)`` (identical for every spec); then each
    adapted layer ``k`` is re-initialised from its own seed (``lora_A`` first, then σ), so two
    specs with the same ``lora_A`` shape get the same ``lora_A``, and σ's draws never shift
    anything else. All of it runs under ``torch.random.fork_rng``: the global RNG stream is left
    as it was, and the caller reseeds before training (see `run_one`).
    """
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = copy.deepcopy(pristine)
        reset_head(model)
        setup_adapters(model, spec, target_modules)
        for k, layer in enumerate(adapter_layers(model).values()):
            torch.manual_seed(_layer_seed(seed, k))
            layer.reset_adapter_parameters()
    return model


def _layer_seed(seed: int, k: int) -> int:
    return (seed * 1_000_003 + 7919 * (k + 1)) % (2**63 - 1)


def subset_encoded(enc: Encoded, idx: np.ndarray) -> Encoded:
    """Rows ``idx`` of a tokenised dataset."""
    t = torch.as_tensor(np.asarray(idx, dtype=np.int64))
    return Encoded(enc.input_ids[t], enc.attention_mask[t], enc.labels[t])


def run_one(pristine: nn.Module, enc: Encoded, labels: np.ndarray, spec: AdapterSpec, seed: int, lr: float,
            clip: float | None, config: EvidenceConfig, *, with_test: bool = True) -> dict[str, Any]:
    """Train ``spec`` on seed ``seed``'s split and return its record (accuracies, wall time, ...).

    ``enc``/``labels``: the whole deduplicated dataset, tokenised; the split is
    ``stratified_split(labels, config.fractions, seed=seed)``. The global RNG is reseeded with
    ``seed`` right before training, so every method sees the same dropout masks.
    """
    t0 = time.perf_counter()
    train_idx, val_idx, test_idx = stratified_split(labels, config.fractions, seed=seed)
    model = paired_model(pristine, spec, seed, config.target_modules)
    cfg = replace(config.train, lr=lr, grad_clip=clip)
    torch.manual_seed(seed)
    log = train(model, subset_encoded(enc, train_idx), cfg, seed=seed)
    val = evaluate(model, subset_encoded(enc, val_idx), batch_size=cfg.eval_batch_size)
    test = evaluate(model, subset_encoded(enc, test_idx), batch_size=cfg.eval_batch_size) if with_test else None
    norms = np.asarray(log.grad_norms)
    return {
        "method": spec.name, "seed": seed, "lr": lr, "clip": clip, "val": val, "test": test,
        "n_train": int(train_idx.size), "n_val": int(val_idx.size), "n_test": int(test_idx.size),
        "trainable": trainable_parameters(model), "steps": len(log.losses),
        "final_loss": float(np.mean(log.losses[-5:])), "diverged": bool(not np.isfinite(log.losses).all()),
        "clipped_fraction": float((norms > clip).mean()) if clip is not None and norms.size else None,
        "median_grad_norm": float(np.median(norms)) if norms.size else None,
        "wall_s": time.perf_counter() - t0,
    }


# ---------------------------------------------------------------------------------------------
# Statistics


def _t_cdf(t: float, df: int) -> float:
    """Student-t CDF for an integer ``df`` (closed-form series in θ = atan(t/√df))."""
    theta = math.atan(t / math.sqrt(df))
    s, c = math.sin(theta), math.cos(theta)
    if df % 2 == 0:  # A = sinθ Σ_{k=0}^{df/2-1} c^{2k} (2k-1)!!/(2k)!!
        term, total = 1.0, 1.0
        for k in range(1, df // 2):
            term *= c * c * (2 * k - 1) / (2 * k)
            total += term
        a = s * total
    else:  # A = (2/π)(θ + sinθ Σ_{k=0}^{(df-3)/2} c^{2k+1} (2k)!!/(2k+1)!!)
        if df == 1:
            a = 2 * theta / math.pi
        else:
            term, total = c, c
            for k in range(1, (df - 1) // 2):
                term *= c * c * (2 * k) / (2 * k + 1)
                total += term
            a = 2 / math.pi * (theta + s * total)
    return 0.5 + 0.5 * a


def student_t_quantile(p: float, df: int) -> float:
    """The ``p``-quantile of Student's t with integer ``df >= 1`` (bisection on the exact CDF, to 1e-12).

    Raises:
        ValueError: ``p`` outside ``(0, 1)`` or ``df < 1``.
    """
    if not 0.0 < p < 1.0:
        raise BoRAValueError(f"p must be in (0, 1), got {p!r}")
    if isinstance(df, bool) or not isinstance(df, int) or df < 1:
        raise BoRAValueError(f"df must be an int >= 1, got {df!r}")
    if p < 0.5:
        return -student_t_quantile(1.0 - p, df)
    lo, hi = 0.0, 1.0
    while _t_cdf(hi, df) < p:
        hi *= 2.0
    while hi - lo > 1e-12 * max(1.0, hi):
        mid = 0.5 * (lo + hi)
        lo, hi = (mid, hi) if _t_cdf(mid, df) < p else (lo, mid)
    return 0.5 * (lo + hi)


def paired_stats(baseline: Sequence[float], treatment: Sequence[float], *, confidence: float = 0.95,
                 n_boot: int = 10000, boot_seed: int = 0) -> dict[str, Any]:
    """Paired differences ``treatment - baseline``: mean, t-interval, sign test and bootstrap interval.

    Args:
        baseline, treatment: ``(n,)`` paired scores (same seed at the same position), ``n >= 2``.
        confidence: two-sided level of both intervals.
        n_boot: bootstrap resamples of the seeds (percentile interval of the mean).
        boot_seed: seed of the bootstrap's ``numpy.random.default_rng``.

    Returns:
        ``n, mean, sd, se, t_quantile, ci_low, ci_high`` (Student t with ``n - 1`` degrees of
        freedom), ``wins, losses, ties``, ``sign_p`` (exact two-sided binomial test, ties dropped)
        and ``boot_low, boot_high``.

    Raises:
        ValueError: lengths differ, fewer than 2 pairs, or non-finite values.
    """
    a, b = np.asarray(baseline, dtype=np.float64), np.asarray(treatment, dtype=np.float64)
    if a.shape != b.shape or a.ndim != 1 or a.size < 2:
        raise BoRAValueError(f"baseline and treatment must be 1-D of one length >= 2, got shapes {a.shape} and {b.shape}")
    if not (np.isfinite(a).all() and np.isfinite(b).all()):
        raise BoRAValueError("baseline and treatment must be finite")
    d = b - a
    n = d.size
    mean, sd = float(d.mean()), float(d.std(ddof=1))
    se = sd / math.sqrt(n)
    q = student_t_quantile(0.5 + confidence / 2, n - 1)
    wins, losses = int((d > 0).sum()), int((d < 0).sum())
    m = wins + losses
    k = min(wins, losses)
    sign_p = min(1.0, 2 * sum(math.comb(m, i) for i in range(k + 1)) / 2**m) if m else 1.0
    rng = np.random.default_rng(boot_seed)
    boot = d[rng.integers(0, n, size=(n_boot, n))].mean(axis=1)
    alpha = 1 - confidence
    return {"n": n, "mean": mean, "sd": sd, "se": se, "t_quantile": q, "ci_low": mean - q * se, "ci_high": mean + q * se,
            "wins": wins, "losses": losses, "ties": int(n - m), "sign_p": sign_p,
            "boot_low": float(np.quantile(boot, alpha / 2)), "boot_high": float(np.quantile(boot, 1 - alpha / 2))}


def reading(ci_low: float, ci_high: float, claim: tuple[float, float] = CLAIM) -> str:
    """The pre-registered reading of a 95% interval (in points) against the claimed gain.

    ``"refuted"`` if the upper bound is below the claim's low end; ``"consistent"`` if the interval
    excludes 0 (lies above it) and reaches the claimed range (``ci_high >= low`` and
    ``ci_low <= high``); ``"inconclusive"`` otherwise.
    """
    low, high = claim
    if ci_high < low:
        return "refuted"
    if ci_low > 0 and ci_high >= low and ci_low <= high:
        return "consistent"
    return "inconclusive"


# ---------------------------------------------------------------------------------------------
# The runner: a task list, two workers claiming tasks, one JSON line per finished run


def _key(task: dict[str, Any]) -> str:
    return f"{task['phase']}|{task['method']}|{task['seed']}|{task['lr']!r}|{task['clip']!r}"


def task_list(config: EvidenceConfig, chosen_lr: dict[str, float] | None = None) -> list[dict[str, Any]]:
    """Tuning tasks (``chosen_lr=None``) or main tasks, in the pre-registered order.

    Main order: the first clip setting for every seed (all methods of one seed together), then
    the next clip setting; a run cut short therefore leaves complete pairs.
    """
    if chosen_lr is None:
        return [{"phase": "tune", "method": s.name, "seed": seed, "lr": lr, "clip": clip}
                for clip in config.tune_clips for seed in config.tune_seeds for s in config.methods() for lr in config.lrs]
    return [{"phase": "main", "method": s.name, "seed": seed, "lr": chosen_lr[_lr_key(s.name, clip, config)], "clip": clip}
            for clip in config.clips for seed in config.seeds for s in config.methods()]


def _lr_key(method: str, clip: float | None, config: EvidenceConfig) -> str:
    tuned = clip if clip in config.tune_clips else config.tune_clips[0]
    return f"{method}|{tuned!r}"


def choose_lrs(runs: Sequence[dict[str, Any]], config: EvidenceConfig) -> tuple[dict[str, float], list[dict[str, Any]]]:
    """Per method and tuned clip setting: the learning rate of best mean validation accuracy over the tuning seeds.

    Ties go to the smaller rate. Returns the choices (keyed ``"method|clip"``) and the table of means.
    """
    table, chosen = [], {}
    for clip in config.tune_clips:
        for spec in config.methods():
            means = {}
            for lr in config.lrs:
                vals = [r["val"] for r in runs if r["phase"] == "tune" and r["method"] == spec.name and r["lr"] == lr
                        and r["clip"] == clip]
                if len(vals) != len(config.tune_seeds):
                    raise BoRAValueError(f"tuning of {spec.name} lr={lr} clip={clip} has {len(vals)} of "
                                         f"{len(config.tune_seeds)} runs")
                means[lr] = float(np.mean(vals))
            best = max(config.lrs, key=lambda lr: (means[lr], -lr))
            chosen[f"{spec.name}|{clip!r}"] = best
            table += [{"method": spec.name, "clip": clip, "lr": lr, "mean_val": v, "chosen": lr == best} for lr, v in means.items()]
    return chosen, table


def _read_runs(out: str) -> list[dict[str, Any]]:
    runs = []
    for path in sorted(glob.glob(os.path.join(out, "runs-*.jsonl"))):
        with open(path, encoding="utf-8") as fh:
            for line in fh:
                line = line.strip()
                if line:
                    try:
                        runs.append(json.loads(line))
                    except json.JSONDecodeError:  # a line cut by a kill: that run is redone
                        pass
    return runs


def _claim(out: str, task: dict[str, Any]) -> bool:
    path = os.path.join(out, "claims", _key(task).replace("/", "_").replace("|", "__").replace(" ", "_"))
    try:
        os.close(os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY))
        return True
    except FileExistsError:
        return False


def _prepare(config: EvidenceConfig) -> tuple[TextDataset, dict[str, int], Encoded, Any]:
    from ..models import load_pretrained

    data, info = deduplicate(load_bbc_news(config.text_field))
    if config.max_examples is not None and config.max_examples < len(data):
        keep = stratified_split(data.labels, (config.max_examples / len(data), 1 - config.max_examples / len(data)), seed=0)[0]
        data = data.subset(keep)
    pristine, tokenizer = load_pretrained(None, num_labels=len(data.label_names))
    return data, info, encode(tokenizer, data, config.max_length), pristine


def _work(out: str, worker: int, config: EvidenceConfig, deadline: float | None) -> None:
    torch.set_num_threads(1)
    data, _, enc, pristine = _prepare(config)
    specs = {s.name: s for s in config.methods()}
    path = os.path.join(out, f"runs-{worker}.jsonl")

    def do(tasks: list[dict[str, Any]]) -> None:
        done = {_key(r) for r in _read_runs(out)}
        for task in tasks:
            if deadline is not None and time.time() > deadline:
                print(f"worker {worker}: deadline reached", flush=True)
                return
            if _key(task) in done or not _claim(out, task):
                continue
            run = run_one(pristine, enc, data.labels, specs[task["method"]], task["seed"], task["lr"], task["clip"], config,
                          with_test=task["phase"] == "main")
            run["phase"], run["worker"] = task["phase"], worker
            with open(path, "a", encoding="utf-8") as fh:
                fh.write(json.dumps(run) + "\n")
                fh.flush()
                os.fsync(fh.fileno())
            print(f"{time.strftime('%H:%M:%S')} w{worker} {task['phase']} {task['method']} seed {task['seed']} "
                  f"lr {task['lr']:g} clip {task['clip']} val {run['val']:.4f} test {run['test']} {run['wall_s']:.1f}s", flush=True)

    tune = task_list(config)
    do(tune)
    while True:  # the main phase needs every tuning run, including the other worker's
        runs = _read_runs(out)
        if {_key(t) for t in tune} <= {_key(r) for r in runs}:
            break
        if deadline is not None and time.time() > deadline:
            return
        time.sleep(5)
    chosen, _ = choose_lrs(runs, config)
    do(task_list(config, chosen))


def environment(command: str) -> dict[str, Any]:
    """Versions, CPU, threads, date and command, for the results file."""
    import transformers

    cpu = cpu_model()
    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, check=False).stdout.strip()
    except OSError:  # pragma: no cover
        commit = ""
    return {"python": sys.version.split()[0], "torch": torch.__version__, "transformers": transformers.__version__,
            "numpy": np.__version__, "cpu": cpu, "cpu_count": os.cpu_count(), "torch_threads_per_worker": 1,
            "date_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "git_commit": commit, "command": command,
            "platform": platform.platform()}


def analyse(out: str, config: EvidenceConfig, command: str) -> dict[str, Any]:
    """Gather every finished run of ``out``, the learning-rate choice and the paired statistics."""
    runs = _read_runs(out)
    data, info = deduplicate(load_bbc_news(config.text_field))
    chosen, table = choose_lrs(runs, config)
    results: dict[str, Any] = {
        "environment": environment(command), "config": _jsonable(asdict(config)), "dedupe": info,
        "lr_tuning": table, "chosen_lr": chosen, "comparisons": [], "runs": runs,
        "timing": {"runs": len(runs), "sum_run_wall_s": float(sum(r["wall_s"] for r in runs))},
    }
    main = [r for r in runs if r["phase"] == "main"]
    for comp in config.comparisons:
        for clip in config.clips:
            by_seed = {}
            for r in main:
                if r["clip"] == clip and r["method"] in (comp.baseline.name, comp.treatment.name):
                    by_seed.setdefault(r["seed"], {})[r["method"]] = 100.0 * r["test"]
            seeds = sorted(s for s, v in by_seed.items() if len(v) == 2)
            entry = {"comparison": comp.name, "baseline": comp.baseline.name, "treatment": comp.treatment.name, "clip": clip,
                     "seeds": seeds, "baseline_test": [by_seed[s][comp.baseline.name] for s in seeds],
                     "treatment_test": [by_seed[s][comp.treatment.name] for s in seeds]}
            if len(seeds) >= 2:
                st = paired_stats(entry["baseline_test"], entry["treatment_test"])
                entry.update(st, reading=reading(st["ci_low"], st["ci_high"]))
            results["comparisons"].append(entry)
    return results


def _clip_label(clip: float | None, none: str = "none") -> str:
    return none if clip is None else f"clip {clip:g}"


def plot_paired(results: dict[str, Any]) -> Any:
    """One panel per comparison: every seed's paired difference (dots), the mean and its 95% t-interval,
    per clip arm, against the claimed range (shaded)."""
    from matplotlib.figure import Figure

    comps = [c for c in results["comparisons"] if "mean" in c]
    names = list(dict.fromkeys(c["comparison"] for c in comps))
    fig = Figure(figsize=(5.2 * max(1, len(names)), 4.2), layout="constrained")
    axes = fig.subplots(1, max(1, len(names)), squeeze=False)[0]
    rng = np.random.default_rng(0)
    for ax, name in zip(axes, names):
        arms = [c for c in comps if c["comparison"] == name]
        ax.axhspan(*CLAIM, color="tab:green", alpha=0.15, label="claimed +2.3 to +4.1")
        ax.axhline(0.0, color="0.3", lw=0.8)
        for k, c in enumerate(arms):
            d = np.subtract(c["treatment_test"], c["baseline_test"])
            ax.scatter(k + 0.12 * rng.uniform(-1, 1, d.size) - 0.18, d, s=12, color="tab:blue", alpha=0.6,
                       label="one seed" if k == 0 else None)
            ax.errorbar([k + 0.18], [c["mean"]], yerr=[[c["mean"] - c["ci_low"]], [c["ci_high"] - c["mean"]]], fmt="o",
                        color="black", capsize=4, label="mean, 95% t-interval" if k == 0 else None)
        ax.set_xticks(range(len(arms)), [f"{_clip_label(c['clip'], 'no clipping')}\nn = {c['n']}" for c in arms])
        ax.set_xlim(-0.6, len(arms) - 0.4)
        ax.set_title(name, fontsize=10)
        ax.set_ylabel("test accuracy difference (points)")
        ax.grid(axis="y", alpha=0.3)
    axes[0].legend(loc="lower left", fontsize=8)
    return fig


def markdown_summary(results: dict[str, Any]) -> str:
    """Markdown tables: the learning-rate tuning, per-method accuracy and the paired comparisons."""
    lines = ["| method | " + " | ".join(f"{lr:g}" for lr in sorted({r["lr"] for r in results["lr_tuning"]})) + " |",
             "| --- |" + " --- |" * len({r["lr"] for r in results["lr_tuning"]})]
    for method in dict.fromkeys(r["method"] for r in results["lr_tuning"]):
        rows = sorted((r for r in results["lr_tuning"] if r["method"] == method), key=lambda r: r["lr"])
        lines.append(f"| {method} | " + " | ".join((f"**{100 * r['mean_val']:.1f}**" if r["chosen"] else f"{100 * r['mean_val']:.1f}")
                                                    for r in rows) + " |")
    out = ["Mean validation accuracy (%) over the tuning seeds; bold: chosen.", "", *lines, ""]
    main = [r for r in results["runs"] if r["phase"] == "main"]
    out += ["| method | clip | lr | n | val acc % | test acc % | steps clipped | s / run |", "| --- | --- | --- | --- | --- | --- | --- | --- |"]
    for clip in dict.fromkeys(r["clip"] for r in main):
        for method in dict.fromkeys(r["method"] for r in main):
            rs = [r for r in main if r["method"] == method and r["clip"] == clip]
            if not rs:
                continue
            val, test = 100 * np.array([r["val"] for r in rs]), 100 * np.array([r["test"] for r in rs])
            frac = [r["clipped_fraction"] for r in rs if r["clipped_fraction"] is not None]
            out.append(f"| {method} | {_clip_label(clip)} | {rs[0]['lr']:g} | {len(rs)} | "
                       f"{val.mean():.1f} ± {val.std(ddof=1) if len(rs) > 1 else 0:.1f} | {test.mean():.1f} ± "
                       f"{test.std(ddof=1) if len(rs) > 1 else 0:.1f} | {f'{100 * np.mean(frac):.0f}%' if frac else '-'} | "
                       f"{np.median([r['wall_s'] for r in rs]):.0f} |")
    out += ["", "| comparison | clip | n | mean Δ (points) | 95% t-interval | bootstrap 95% | wins / losses / ties | sign-test p | reading |",
            "| --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    for c in results["comparisons"]:
        if "mean" not in c:
            out.append(f"| {c['comparison']} | {_clip_label(c['clip'])} | {len(c['seeds'])} | "
                       "- | - | - | - | - | not run |")
            continue
        out.append(f"| {c['comparison']} | {_clip_label(c['clip'])} | {c['n']} | "
                   f"{c['mean']:+.2f} | [{c['ci_low']:+.2f}, {c['ci_high']:+.2f}] | [{c['boot_low']:+.2f}, {c['boot_high']:+.2f}] | "
                   f"{c['wins']} / {c['losses']} / {c['ties']} | {c['sign_p']:.3g} | **{c['reading']}** |")
    return "\n".join(out)


def _jsonable(x: Any) -> Any:
    if isinstance(x, dict):
        return {k: _jsonable(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_jsonable(v) for v in x]
    return x


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m bora_ref.experiments.evidence {run,work,analyse}``."""
    parser = argparse.ArgumentParser(prog="python -m bora_ref.experiments.evidence", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="cmd", required=True)
    for name in ("run", "work", "analyse", "report"):
        p = sub.add_parser(name)
        p.add_argument("--out", required=True, help="directory of the per-worker run logs (resumable)")
        p.add_argument("--seeds", type=int, default=30, help="number of evaluation seeds (0..N-1)")
        p.add_argument("--deadline", default=None, help="UTC time HH:MM after which no new run starts")
        p.add_argument("--epochs", type=int, default=2, help="training epochs of every run")
        if name == "run":
            p.add_argument("--workers", type=int, default=2)
        if name == "work":
            p.add_argument("--worker", type=int, required=True)
        if name in ("analyse", "report"):
            p.add_argument("--json", required=True, help="the results file (written by analyse, read by report)")
        if name == "report":
            p.add_argument("--png", required=True, help="write the paired-difference plot here")
    args = parser.parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    config = EvidenceConfig(seeds=tuple(range(args.seeds)))
    config = replace(config, train=replace(config.train, epochs=args.epochs))
    deadline = _deadline(args.deadline)
    os.makedirs(os.path.join(args.out, "claims"), exist_ok=True)
    if args.cmd == "run":
        for path in glob.glob(os.path.join(args.out, "claims", "*")):  # claims of unfinished runs (a restart)
            os.remove(path)
        extra = ["--deadline", args.deadline] if args.deadline else []
        procs = [subprocess.Popen([sys.executable, "-m", "bora_ref.experiments.evidence", "work", "--out", args.out,
                                   "--seeds", str(args.seeds), "--epochs", str(args.epochs), "--worker", str(w), *extra])
                 for w in range(args.workers)]
        return max(p.wait() for p in procs)
    if args.cmd == "work":
        _work(args.out, args.worker, config, deadline)
        return 0
    if args.cmd == "report":
        with open(args.json, encoding="utf-8") as fh:
            results = json.load(fh)
        plot_paired(results).savefig(args.png, dpi=120)
        print(markdown_summary(results))
        return 0
    results = analyse(args.out, config, " ".join(sys.argv))
    with open(args.json, "w", encoding="utf-8") as fh:
        json.dump(results, fh, indent=1)
    for c in results["comparisons"]:
        if "mean" in c:
            print(f"{c['comparison']:40s} clip={c['clip']}: n={c['n']} mean {c['mean']:+.2f} "
                  f"95% CI [{c['ci_low']:+.2f}, {c['ci_high']:+.2f}] boot [{c['boot_low']:+.2f}, {c['boot_high']:+.2f}] "
                  f"W/L/T {c['wins']}/{c['losses']}/{c['ties']} sign p={c['sign_p']:.3g} -> {c['reading']}")
    return 0


def _deadline(hhmm: str | None) -> float | None:
    if not hhmm:
        return None
    h, m = (int(x) for x in hhmm.split(":"))
    now = time.time()
    t = now - now % 86400 + 3600 * h + 60 * m
    return t if t > now - 3600 else t + 86400


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
