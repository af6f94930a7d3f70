"""Markdown tables from `bora_ref.experiments.experiment.run_experiment` results.

Accuracies are in percent; ``mean ± std`` is over seeds (sample standard deviation, ``ddof=1``;
``± 0.0`` marks a single seed). "Δ vs LoRA" is paired: the difference to LoRA(r) of the *same*
seed (same head initialisation and batch order), then mean ± std of those differences.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from ..analysis.params import equal_budget_lora_rank

__all__ = [
    "PAPER_GAIN",
    "accuracy_table",
    "all_tables",
    "lr_table",
    "mean_std",
    "overhead_table",
    "rank_table",
    "sigma_table",
    "timing_table",
    "upgrade_table",
    "verdict",
]

PAPER_GAIN = (2.3, 4.1)
"""The accuracy gain over LoRA the BoRA paper reports, in points."""


def mean_std(values: Sequence[float], scale: float = 1.0, digits: int = 1) -> str:
    """``"mean ± std"`` of ``values * scale`` (sample std, 0 for one value)."""
    v = np.asarray(list(values), dtype=np.float64) * scale
    std = float(v.std(ddof=1)) if v.size > 1 else 0.0
    return f"{v.mean():.{digits}f} ± {std:.{digits}f}"


def _md(header: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join(" --- " for _ in header) + "|"]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def _methods(runs: Sequence[dict[str, Any]]) -> list[str]:
    return list(dict.fromkeys(run["method"] for run in runs))


def _by_seed(runs: Sequence[dict[str, Any]], method: str, key: str) -> dict[int, float]:
    return {run["seed"]: run[key] for run in runs if run["method"] == method}


def accuracy_table(results: dict[str, Any]) -> str:
    """Per method: trainable parameters, val/test accuracy, paired Δ test vs LoRA(r), mean ranks over layers."""
    runs = results["runs"]
    methods = _methods(runs)
    ref = _by_seed(runs, methods[0], "test")
    rows = []
    for method in methods:
        test = _by_seed(runs, method, "test")
        mine = [run for run in runs if run["method"] == method]
        diffs = [test[s] - ref[s] for s in test if s in ref]
        energy = [np.mean([v["energy"] for v in run["ranks"].values()]) for run in mine]
        numerical = [np.mean([v["numerical"] for v in run["ranks"].values()]) for run in mine]
        bound = next(iter(mine[0]["ranks"].values()))["bound"]
        rows.append([method, f"{mine[0]['trainable']:,}", mean_std(_by_seed(runs, method, "val").values(), 100),
                     mean_std(list(test.values()), 100), "—" if method == methods[0] else mean_std(diffs, 100),
                     f"{np.mean(energy):.1f}", f"{np.mean(numerical):.0f} / {bound}"])
    base = results["baseline"]
    rows.append([f"frozen embeddings + logistic regression (C={base['C']:g})", "—", f"{100 * base['val_acc']:.1f}",
                 f"{100 * base['test_acc']:.1f}", f"{100 * base['test_acc'] - 100 * np.mean(list(ref.values())):+.1f} (vs mean)", "—", "—"])
    header = ["method", "trainable params", "val acc %", "test acc %", "Δ test vs " + methods[0] + " (paired)",
              "90%-energy rank", "numerical rank / bound"]
    return _md(header, rows)


def lr_table(results: dict[str, Any]) -> str:
    """Validation (and test) accuracy of every method at every learning rate tried on the first seed."""
    sweep = results["lr_sweep"]
    lrs = sorted({row["lr"] for row in sweep})
    rows = []
    for method in _methods(sweep):
        cells = {row["lr"]: row for row in sweep if row["method"] == method}
        rows.append([method] + [f"{'**' if cells[lr]['chosen'] else ''}{100 * cells[lr]['val']:.1f}"
                                f"{'**' if cells[lr]['chosen'] else ''} ({100 * cells[lr]['test']:.1f})" for lr in lrs])
    return _md(["method", *[f"lr {lr:g}: val % (test %)" for lr in lrs]], rows)


def upgrade_table(results: dict[str, Any]) -> str:
    """LoRA → BoRA Σ-only (both parameterisations) and the LoRA-continued control: test accuracy before/after."""
    ups = results["upgrade"]
    rows = []
    for method in _methods(ups):
        mine = [u for u in ups if u["method"] == method]
        rows.append([method, f"{mine[0]['trainable']:,}", mean_std([u["start_test"] for u in mine], 100),
                     mean_std([u["test"] for u in mine], 100), mean_std([u["test"] - u["start_test"] for u in mine], 100),
                     f"{max(u['max_logit_change_at_start'] for u in mine):.1e}"])
    return _md(["method", "trainable params", "test acc % before", "test acc % after", "Δ (paired)", "max abs Δ logit at start"], rows)


def timing_table(results: dict[str, Any]) -> str:
    """Step time (median over interleaved repeats) and memory per step, relative to the first entry (PEFT LoRA)."""
    timing = results["timing"]
    names = list(timing)
    ref = timing[names[0]]
    rows = []
    for name in names:
        c = timing[name]
        peak = "—" if c["cuda_peak_bytes"] is None else f"{c['cuda_peak_bytes'] / 2**20:.1f}"
        rows.append([name, f"{c['trainable']:,}", f"{1000 * c['seconds']:.0f}", f"{c['seconds'] / ref['seconds']:.2f}",
                     f"{c['activation_bytes'] / 2**20:.1f}", f"{c['activation_bytes'] / ref['activation_bytes']:.3f}",
                     f"{c['state_bytes'] / 2**10:.0f}", peak])
    header = ["method", "trainable", "ms / step", f"× {names[0]}", "saved activations MiB", "×",
              "param+grad+AdamW KiB", "CUDA peak MiB"]
    return _md(header, rows)


def rank_table(results: dict[str, Any], methods: Sequence[str] | None = None) -> str:
    """90%-energy rank of ΔW per adapted layer (mean over seeds) for each method, with the rank bound."""
    runs = results["runs"]
    methods = list(methods) if methods is not None else _methods(runs)
    layers = list(runs[0]["ranks"])
    rows = []
    for layer in layers:
        row = [".".join(p for p in layer.split(".") if p.isdigit() or p in ("query", "key", "value", "dense", "intermediate", "output"))]
        for method in methods:
            mine = [run["ranks"][layer] for run in runs if run["method"] == method]
            row.append(f"{np.mean([v['energy'] for v in mine]):.1f} (≤ {mine[0]['bound']})")
        rows.append(row)
    return _md(["layer", *methods], rows)


def sigma_table(results: dict[str, Any]) -> str:
    """Learned Σ per BoRA method: mean |ln Σ| and max |Σ − 1|, averaged over layers and seeds."""
    rows = []
    for method in _methods(results["runs"]):
        mine = [run for run in results["runs"] if run["method"] == method and run["b"] > 1]
        if mine:
            log = [v["mean_abs_log"] for run in mine for v in run["sigma"].values()]
            dev = [v["max_dev_from_1"] for run in mine for v in run["sigma"].values()]
            rows.append([method, f"{np.mean(log):.4f} (min {np.min(log):.4f}, max {np.max(log):.4f})", f"{np.mean(dev):.3g}"])
    return _md(["method", "mean abs ln Σ per layer", "max abs (Σ − 1) per layer, mean over layers"], rows)


def overhead_table(results: dict[str, Any]) -> str:
    """BoRA's extra parameters over LoRA of the same r: per layer, for all adapted layers, and of the whole model."""
    rows = [[f"{o['label']} ({o['m']}×{o['n']})", o["r"], o["b"], f"{o['lora']:,}", f"{o['sigma']:,}",
             f"+{o['overhead_pct']:.1f}%", f"{o['extra_pct_of_model']:.3f}%" if "extra_pct_of_model" in o else "—",
             o["equal_budget_r"]] for o in results["overhead"]]
    header = ["layer", "r", "b", f"LoRA params ({results['adapted_layers']} layers)", "extra b²r (same layers)",
              "per-layer overhead", "extra / model params", "equal-budget LoRA r"]
    return _md(header, rows)


def _paired(results: dict[str, Any], method: str, ref: str) -> np.ndarray:
    mine, base = _by_seed(results["runs"], method, "test"), _by_seed(results["runs"], ref, "test")
    return 100 * np.array([mine[s] - base[s] for s in mine if s in base])


def verdict(results: dict[str, Any]) -> str:
    """A paragraph, computed from the numbers, on BoRA's gain over LoRA against `PAPER_GAIN`.

    A paired gain counts as resolved when its mean is more than two standard errors from 0
    (with one seed nothing is resolved).
    """
    runs = results["runs"]
    methods = _methods(runs)
    lora = methods[0]
    m, n = results["layer_shape"]
    lines = []
    if results["setting"]["name"] == "smoke":
        lines.append("**Smoke setting**: a few steps on a tiny subset with one seed; these numbers are no evidence either way.")
    for method in (m for m in methods if m.startswith("BoRA")):
        d = _paired(results, method, lora)
        se = d.std(ddof=1) / np.sqrt(d.size) if d.size > 1 else np.inf
        where = ("within" if PAPER_GAIN[0] <= d.mean() <= PAPER_GAIN[1] else
                 "above" if d.mean() > PAPER_GAIN[1] else "below")
        resolved = "resolved from 0" if abs(d.mean()) > 2 * se else "not resolved from 0"
        text = (f"- **{method}** vs {lora}: {d.mean():+.1f} points (paired over {d.size} seed(s), std "
                f"{d.std(ddof=1) if d.size > 1 else 0:.1f}, {resolved} at 2 standard errors), {where} the paper's "
                f"+{PAPER_GAIN[0]}–{PAPER_GAIN[1]}")
        run = next(run for run in runs if run["method"] == method)
        r_eq = equal_budget_lora_rank(m, n, run["r"], run["b"])
        equal = next((x for x in methods if x.startswith(f"LoRA r={r_eq} ")), None) if r_eq != run["r"] else lora
        if equal is not None:
            text += f"; vs its equal-budget LoRA (r={r_eq}): {_paired(results, method, equal).mean():+.1f}"
        lines.append(text + ".")
    base = 100 * results["baseline"]["test_acc"]
    best = max(methods, key=lambda m: np.mean(list(_by_seed(runs, m, "test").values())))
    best_acc = 100 * np.mean(list(_by_seed(runs, best, "test").values()))
    lines.append(f"- Best fine-tuned method: {best} at {best_acc:.1f}% test accuracy; the frozen-embedding baseline "
                 f"reaches {base:.1f}% ({best_acc - base:+.1f} points).")
    return "\n".join(lines)


def all_tables(results: dict[str, Any]) -> str:
    """Every table with a heading, for the command line and the docs."""
    d = results["data"]
    head = (f"model: {results['model']} ({results['model_params']:,} params), device: {results['device']}, "
            f"setting: {results['setting']['name']}, seeds: {results['setting']['seeds']}, "
            f"data: BBC News {results['setting']['text_field']} train/val/test = {d['train']}/{d['val']}/{d['test']}")
    parts = [head, "## Accuracy", accuracy_table(results), "## Learning rates (first seed)", lr_table(results),
             "## LoRA → BoRA (Σ only)", upgrade_table(results),
             "## Learned Σ", sigma_table(results), "## Rank of ΔW by layer", rank_table(results),
             "## Step cost", timing_table(results), "## Parameter overhead", overhead_table(results),
             "## Verdict", verdict(results)]
    return "\n\n".join(parts)
