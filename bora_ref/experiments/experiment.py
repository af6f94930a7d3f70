"""The whole BoRA-vs-LoRA comparison, as one function and one command.

``python -m bora_ref.experiments --setting cpu --json results.json`` runs it and prints the
tables (`bora_ref.experiments.tables`). Settings: ``smoke`` (seconds-scale, for CI),
``cpu`` (~30 min on two busy shared cores), ``cuda`` (more epochs, seeds and learning rates).
`setting_from_env` picks one: ``BORA_SETTING`` if set, else ``smoke`` when
``BORA_SMOKE=1``, else ``cuda`` when a GPU is present, else ``cpu``.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import sys
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field, replace
from typing import Any

import numpy as np
import torch

from .._validation import BoRAValueError
from ..models import load_pretrained
from ..analysis.params import equal_budget_lora_rank
from .analysis import adapter_layers, layer_ranks, layer_spectra, overhead_rows, trainable_parameters
from .baseline import frozen_embedding_baseline
from .data import load_bbc_news, stratified_split
from .finetune import AdapterSpec, TrainConfig, encode, evaluate, reset_head, setup_adapters, train, upgrade_to_bora
from .timing import step_costs

__all__ = ["SETTINGS", "Setting", "adapter_specs", "main", "run_experiment", "setting_from_env"]


@dataclass(frozen=True)
class Setting:
    """Everything that defines one run of the experiment (see ``SETTINGS``).

    Attributes:
        name: the setting's name. text_field: BBC News text field (``"title"``: headlines).
        max_length: tokens per text. fractions, split_seed: the train/val/test split.
        max_train, max_eval: stratified caps on the train and on each eval part (``None``: all).
        seeds: training seeds (head init, adapter init, batch order, dropout).
        r, bs: LoRA/BoRA rank and BoRA block counts. target_modules: adapted projections.
        train: optimisation of every adapter (its ``lr`` is replaced by the chosen one).
        lrs: learning rates tried per method on the first seed; the best by validation accuracy
        is used for every seed. upgrade_epochs, upgrade_b: the LoRA → BoRA Σ-only experiment (at
        LoRA's learning rate). timing_*: the step-cost measurement.
    """

    name: str
    text_field: str = "title"
    max_length: int = 32
    fractions: tuple[float, float, float] = (0.6, 0.2, 0.2)
    split_seed: int = 0
    max_train: int | None = None
    max_eval: int | None = None
    seeds: tuple[int, ...] = (0, 1, 2)
    r: int = 8
    bs: tuple[int, ...] = (8, 16)
    target_modules: tuple[str, ...] = ("query", "value")
    train: TrainConfig = field(default_factory=TrainConfig)
    upgrade_epochs: int = 1
    upgrade_b: int = 8
    lrs: tuple[float, ...] = (1e-3, 3e-3)
    timing_batch: int = 32
    timing_steps: int = 5
    timing_repeats: int = 5


SETTINGS: dict[str, Setting] = {
    "smoke": Setting("smoke", max_train=60, max_eval=40, seeds=(0,), lrs=(1e-2,), train=TrainConfig(epochs=1, batch_size=16),
                     timing_batch=8, timing_steps=1, timing_repeats=1),
    "cpu": Setting("cpu", seeds=(0, 1, 2), lrs=(3e-3, 1e-2, 3e-2), train=TrainConfig(epochs=2, batch_size=32),
                   timing_steps=3, timing_repeats=5),
    "cuda": Setting("cuda", seeds=(0, 1, 2, 3, 4), lrs=(1e-3, 3e-3, 1e-2, 3e-2), train=TrainConfig(epochs=10, batch_size=32),
                    upgrade_epochs=3, timing_steps=20, timing_repeats=10),
}


def setting_from_env(env: Mapping[str, str] | None = None) -> Setting:
    """``BORA_SETTING`` (a key of ``SETTINGS``), else ``smoke`` if ``BORA_SMOKE=1``, else cuda/cpu by device.

    Raises:
        ValueError: ``BORA_SETTING`` names no setting.
    """
    env = os.environ if env is None else env
    name = env.get("BORA_SETTING") or ("smoke" if env.get("BORA_SMOKE") == "1" else None)
    if name is None:
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name not in SETTINGS:
        raise BoRAValueError(f"BORA_SETTING={name!r} is not one of {tuple(SETTINGS)}")
    return SETTINGS[name]


def adapter_specs(setting: Setting, m: int, n: int) -> list[AdapterSpec]:
    """LoRA(r), equal-budget LoRA for every b (when larger than r), BoRA(r, b) for every b, BoRA raw Σ (smallest b)."""
    specs = [AdapterSpec.lora(setting.r)]
    for r_eq in sorted({equal_budget_lora_rank(m, n, setting.r, b) for b in setting.bs} - {setting.r}):
        specs.append(replace(AdapterSpec.lora(r_eq), name=f"LoRA r={r_eq} (equal budget)"))
    specs += [AdapterSpec.bora(setting.r, b) for b in setting.bs]
    specs.append(AdapterSpec.bora(setting.r, min(setting.bs), "raw"))
    return specs


def _split(setting: Setting) -> tuple[Any, ...]:
    data = load_bbc_news(setting.text_field)
    parts = stratified_split(data.labels, setting.fractions, seed=setting.split_seed)
    caps = (setting.max_train, setting.max_eval, setting.max_eval)
    out = []
    for idx, cap in zip(parts, caps):
        if cap is not None and cap < idx.size:  # a stratified subsample of this part
            keep = stratified_split(data.labels[idx], (cap / idx.size, 1 - cap / idx.size), seed=setting.split_seed)[0]
            idx = idx[keep]
        out.append(data.subset(idx))
    return tuple(out)


def _sigma_summary(model: torch.nn.Module) -> dict[str, dict[str, float]]:
    """Per layer: mean |ln Σ| (exactly 1 under exp_norm whenever σ != 0) and max |Σ - 1|."""
    out = {}
    for name, layer in adapter_layers(model).items():
        s = layer.effective_sigma().detach().double()
        out[name] = {"mean_abs_log": float(s.abs().log().abs().mean()), "max_dev_from_1": float((s - 1).abs().max())}
    return out


def _fresh(pristine: torch.nn.Module, spec: AdapterSpec, setting: Setting, seed: int, device: str) -> torch.nn.Module:
    torch.manual_seed(seed)
    model = copy.deepcopy(pristine)
    reset_head(model)
    return setup_adapters(model, spec, setting.target_modules).to(device)


def _logits(model: torch.nn.Module, batch: Mapping[str, torch.Tensor]) -> torch.Tensor:
    model.eval()
    with torch.no_grad():
        return model(**batch).logits


def run_experiment(
    setting: Setting, *, model_name_or_path: str | None = None, device: str | None = None, progress: bool = True
) -> dict[str, Any]:
    """Run every adapter on every seed, the baseline, the Σ-only upgrade and the timing.

    Returns:
        A JSON-serialisable dict: ``setting``, ``data``, ``overhead``, ``baseline``, ``runs``
        (one per adapter and seed: accuracies, losses, ranks, Σ summary, spectra for the first
        seed), ``upgrade`` and ``timing``.
    """
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    train_ds, val_ds, test_ds = _split(setting)
    pristine, tokenizer = load_pretrained(model_name_or_path, num_labels=len(train_ds.label_names))
    enc = {name: encode(tokenizer, ds, setting.max_length) for name, ds in (("train", train_ds), ("val", val_ds), ("test", test_ds))}
    cfg = replace(setting.train, progress=progress)

    def evaluate_all(model: torch.nn.Module) -> dict[str, float]:
        return {part: evaluate(model, enc[part], batch_size=cfg.eval_batch_size, device=device) for part in ("val", "test")}

    probe = _fresh(pristine, AdapterSpec.lora(setting.r), setting, 0, "cpu")
    layers = list(adapter_layers(probe).values())
    m, n, n_layers = layers[0].out_features, layers[0].in_features, len(layers)
    results: dict[str, Any] = {
        "setting": asdict(setting), "device": device, "torch": torch.__version__,
        "model": model_name_or_path or "all-MiniLM-L6-v2 (shipped)", "model_params": sum(p.numel() for p in pristine.parameters()),
        "data": {"labels": list(train_ds.label_names), **{k: len(v) for k, v in (("train", train_ds), ("val", val_ds), ("test", test_ds))}},
        "adapted_layers": n_layers, "layer_shape": [m, n],
        "head_params": trainable_parameters(probe) - sum(setting.r * (l.in_features + l.out_features) for l in layers),
    }
    results["overhead"] = (overhead_rows([("this model", m, n)], setting.r, setting.bs, layers=n_layers, model_params=results["model_params"])
                           + overhead_rows([("RoBERTa-base q/v", 768, 768)], setting.r, setting.bs, layers=n_layers))
    results["baseline"] = frozen_embedding_baseline(pristine.to(device), enc["train"], enc["val"], enc["test"], device=device)
    pristine.to("cpu")

    specs = adapter_specs(setting, m, n)
    rank_every = max(1, cfg.rank_every or (len(enc["train"]) // cfg.batch_size) // 4)

    def fit(spec: AdapterSpec, seed: int, lr: float) -> tuple[torch.nn.Module, dict[str, Any]]:
        model = _fresh(pristine, spec, setting, seed, device)
        log = train(model, enc["train"], replace(cfg, lr=lr, rank_every=rank_every), seed=seed, device=device,
                    desc=f"{spec.name} seed {seed} lr {lr:g}")
        run = {"method": spec.name, "seed": seed, "lr": lr, "b": spec.b, "r": spec.r, "sigma_param": spec.sigma_param,
               "train_sigma": spec.train_sigma,
               "trainable": trainable_parameters(model), **evaluate_all(model), "losses": log.losses,
               "step_seconds": float(np.median(log.step_seconds)), "rank_history": log.ranks,
               "ranks": layer_ranks(model), "sigma": _sigma_summary(model)}
        return model, run

    runs, sweep, upgrades = [], [], []
    for spec in specs:
        # Learning rate: each method gets the best of setting.lrs by validation accuracy on the first seed.
        first = setting.seeds[0]
        fitted = {lr: fit(spec, first, lr) for lr in setting.lrs}
        best = max(setting.lrs, key=lambda lr: fitted[lr][1]["val"])  # ties: the smaller lr (listed first)
        sweep += [{"method": spec.name, "lr": lr, "val": run["val"], "test": run["test"], "chosen": lr == best}
                  for lr, (_, run) in fitted.items()]
        for seed in setting.seeds:
            model, run = fitted.pop(best) if seed == first else fit(spec, seed, best)
            fitted.clear()  # the other learning rates' models are not needed any more
            if seed == first:
                # Past the rank bound a spectrum is zeros: keep twice the bound (plots, JSON size).
                run["spectra"] = {k: S[: 2 * run["ranks"][k]["bound"]].tolist() for k, S in layer_spectra(model).items()}
            runs.append(run)
            if spec == specs[0]:
                upgrades += _upgrade(model, run, setting, replace(cfg, lr=best), enc, evaluate_all, seed, device)
            del model
    results["runs"], results["lr_sweep"], results["upgrade"] = runs, sweep, upgrades
    results["timing"] = _timing(pristine, setting, specs, enc["train"], device)
    return results


def _upgrade(lora: torch.nn.Module, start: dict[str, Any], setting: Setting, cfg: TrainConfig, enc: Mapping[str, Any],
             evaluate_all: Callable[[torch.nn.Module], dict[str, float]], seed: int, device: str) -> list[dict[str, Any]]:
    """Σ-only training of a BoRA upgrade of the trained LoRA, both Σ parameterisations, and a LoRA control."""
    batch, _ = enc["val"].batch(torch.arange(min(64, len(enc["val"]))), device)
    before = _logits(lora, batch)
    ucfg = replace(cfg, epochs=setting.upgrade_epochs, rank_every=0)  # LoRA's learning rate
    out = []
    for variant in ("raw", "exp_norm", "control"):
        model = copy.deepcopy(lora)
        if variant == "control":  # the same extra steps for LoRA itself (A, B and head trainable)
            name = f"LoRA r={setting.r} + {setting.upgrade_epochs} more epoch(s)"
        else:
            upgrade_to_bora(model, setting.upgrade_b, variant)
            name = f"LoRA r={setting.r} → BoRA b={setting.upgrade_b}, Σ-only ({variant})"
        diff0 = float((_logits(model, batch) - before).abs().max())
        log = train(model, enc["train"], ucfg, seed=seed + 1000, device=device, desc=f"{name} seed {seed}")
        out.append({"method": name, "seed": seed, "variant": variant, "trainable": trainable_parameters(model),
                    "start_val": start["val"], "start_test": start["test"], **evaluate_all(model),
                    "max_logit_change_at_start": diff0, "losses": log.losses,
                    "sigma": _sigma_summary(model) if variant != "control" else {}})
    return out


def _timing(pristine: torch.nn.Module, setting: Setting, specs: Sequence[AdapterSpec], data: Any, device: str) -> dict[str, Any]:
    """Step cost of PEFT's LoRA (when installed) and of every adapter spec, on one training batch."""
    models = {}
    try:
        from peft import LoraConfig, get_peft_model

        torch.manual_seed(0)
        peft_model = copy.deepcopy(pristine)
        config = LoraConfig(task_type="SEQ_CLS", r=setting.r, lora_alpha=setting.r, lora_dropout=0.0,
                            target_modules=list(setting.target_modules))
        models[f"PEFT LoRA r={setting.r}"] = get_peft_model(peft_model, config).to(device)
    except ImportError:  # pragma: no cover - the peft extra is optional
        pass
    for spec in specs:
        models[spec.name] = _fresh(pristine, spec, setting, 0, device)
    inputs, labels = data.batch(torch.arange(min(setting.timing_batch, len(data))), device)
    costs = step_costs(models, inputs, labels, steps=setting.timing_steps, repeats=setting.timing_repeats, lr=setting.train.lr)
    return {name: asdict(cost) for name, cost in costs.items()}


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m bora_ref.experiments``: run a setting, print the tables, optionally save JSON."""
    from .tables import all_tables

    parser = argparse.ArgumentParser(prog="python -m bora_ref.experiments", description=__doc__.splitlines()[0])
    parser.add_argument("--setting", choices=tuple(SETTINGS), default=None, help="default: from BORA_SETTING/BORA_SMOKE/device")
    parser.add_argument("--model", default=None, help="model id or local path (default: the shipped all-MiniLM-L6-v2)")
    parser.add_argument("--device", default=None, help="torch device (default: cuda if available, else cpu)")
    parser.add_argument("--json", default=None, help="write all results to this JSON file")
    parser.add_argument("--no-progress", action="store_true", help="hide the tqdm bars")
    args = parser.parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    setting = SETTINGS[args.setting] if args.setting else setting_from_env()
    results = run_experiment(setting, model_name_or_path=args.model, device=args.device, progress=not args.no_progress)
    if args.json:
        with open(args.json, "w", encoding="utf-8") as fh:
            json.dump(results, fh)
    print(all_tables(results))
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
