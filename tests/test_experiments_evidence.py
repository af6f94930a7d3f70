"""The pre-registered paired experiment (bora_ref.experiments.evidence) on tiny configurations.

Deduplication, the pairing of methods (same head, ``lora_A``, batch order and dropout masks for
one seed), the learning-rate choice and the paired statistics (against scipy and by hand).
"""

from __future__ import annotations

import hashlib
import math

import numpy as np
import pytest
import torch
from torch import nn

from bora_ref import BoRAValueError
from bora_ref.experiments import data, evidence, finetune
from bora_ref.experiments.analysis import adapter_layers

pytest.importorskip("transformers")

TARGETS = ("query", "value")


@pytest.fixture(scope="module")
def tiny_bert(tokenizer):
    """2 layers, width 32, dropout 0.1 in attention and hidden states (as MiniLM)."""
    from transformers import BertConfig, BertForSequenceClassification

    torch.manual_seed(123)
    config = BertConfig(vocab_size=tokenizer.vocab_size, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                        intermediate_size=64, max_position_embeddings=64, num_labels=3,
                        hidden_dropout_prob=0.1, attention_probs_dropout_prob=0.1)
    return BertForSequenceClassification(config).eval()


@pytest.fixture(scope="module")
def toy(tokenizer):
    words = ("good great fine nice", "bad awful poor sad", "red blue green gray")
    rng = np.random.default_rng(7)
    texts, labels = [], []
    for k, vocab in enumerate(words):
        for _ in range(20):
            texts.append(" ".join(rng.choice(vocab.split(), size=int(rng.integers(2, 7)))))
            labels.append(k)
    ds = data.TextDataset(tuple(texts), np.array(labels, dtype=np.int64), ("pos", "neg", "colour"))
    return ds, finetune.encode(tokenizer, ds, 12)


def _config(**kw):
    comps = (evidence.Comparison("BoRA - LoRA", finetune.AdapterSpec.lora(4), finetune.AdapterSpec.bora(4, 2)),)
    base = dict(comparisons=comps, lrs=(1e-2, 3e-2), tune_seeds=(100, 101), seeds=(0, 1, 2), clips=(None, 1.0),
                train=finetune.TrainConfig(epochs=1, batch_size=8, progress=False), target_modules=TARGETS)
    base.update(kw)
    return evidence.EvidenceConfig(**base)


# --- deduplication ---------------------------------------------------------------------------


def test_deduplicate_keeps_first_of_each_text_and_drops_conflicts():
    texts = ("A b", "a  B ", "c", "C", "d", "a b\t", "e", "c")
    labels = np.array([0, 0, 1, 2, 1, 0, 2, 1])  # "c"/"C" carry labels 1 and 2: ambiguous
    out, info = data.deduplicate(data.TextDataset(texts, labels, ("x", "y", "z")))
    assert out.texts == ("A b", "d", "e") and out.labels.tolist() == [0, 1, 2]
    assert info == {"total": 8, "kept": 3, "removed": 5, "repeated_texts": 2, "conflicting_texts": 1}


def test_deduplicate_property_on_random_texts():
    rng = np.random.default_rng(0)
    vocab = ["alpha", "Beta", "gamma", "DELTA"]
    texts = tuple((" " * int(rng.integers(0, 3))).join([""] + list(rng.choice(vocab, size=2))) + rng.choice(["", " ", "\t"])
                  for _ in range(200))
    keys = [data.normalise_text(t) for t in texts]
    labels = np.array([sorted(set(keys)).index(k) % 3 for k in keys])  # one label per text: no conflicts
    out, info = data.deduplicate(data.TextDataset(texts, labels, ("a", "b", "c")))
    kept = [data.normalise_text(t) for t in out.texts]
    assert len(kept) == len(set(kept)) == len(set(keys)) == info["kept"]  # every text once
    first = sorted({k: i for i, k in reversed(list(enumerate(keys)))}.values())  # first occurrence of each key
    assert out.texts == tuple(texts[i] for i in first)
    assert info["removed"] == 200 - len(set(keys))


def test_bbc_headlines_have_129_repeats_and_no_split_shares_a_headline():
    ds, info = data.deduplicate(data.load_bbc_news("title"))
    assert info == {"total": 2225, "kept": 2096, "removed": 129, "repeated_texts": 129, "conflicting_texts": 0}
    for seed in (0, 7):
        parts = [{data.normalise_text(ds.texts[i]) for i in p} for p in data.stratified_split(ds.labels, seed=seed)]
        assert not (parts[0] & parts[1]) and not (parts[0] & parts[2]) and not (parts[1] & parts[2])


# --- pairing -------------------------------------------------------------------------------


def _record(model: nn.Module, log: list):
    """Hooks (kept by deepcopy) logging the RNG state at every dropout call and every batch's ids."""
    handles = []
    for module in model.modules():
        if isinstance(module, nn.Dropout) and module.p > 0:
            handles.append(module.register_forward_pre_hook(
                lambda m, args: log.append(("rng", hashlib.sha1(torch.get_rng_state().numpy().tobytes()).hexdigest()))
                if m.training else None))
    handles.append(model.register_forward_pre_hook(
        lambda m, args, kwargs: log.append(("ids", tuple(kwargs["input_ids"].flatten().tolist()))), with_kwargs=True))
    return handles


def test_paired_model_shares_head_and_lora_A_and_leaves_the_global_rng(tiny_bert):
    state = torch.get_rng_state()
    lora = evidence.paired_model(tiny_bert, finetune.AdapterSpec.lora(4), 5, TARGETS)
    bora = evidence.paired_model(tiny_bert, finetune.AdapterSpec.bora(4, 2), 5, TARGETS)
    assert torch.equal(torch.get_rng_state(), state)
    assert torch.equal(lora.classifier.weight, bora.classifier.weight)
    for a, b in zip(adapter_layers(lora).values(), adapter_layers(bora).values(), strict=True):
        assert torch.equal(a.lora_A, b.lora_A) and not a.lora_B.any() and not b.lora_B.any()
    other = evidence.paired_model(tiny_bert, finetune.AdapterSpec.lora(4), 6, TARGETS)
    assert not torch.equal(other.classifier.weight, lora.classifier.weight)


def test_reseeding_gives_two_methods_the_same_batches_and_dropout_masks(tiny_bert, toy):
    ds, enc = toy
    cfg = _config()
    model = __import__("copy").deepcopy(tiny_bert)
    logs = {}
    for spec in cfg.methods():
        log: list = []
        handles = _record(model, log)
        run = evidence.run_one(model, enc, ds.labels, spec, 3, 1e-2, None, cfg)
        for h in handles:
            h.remove()
        logs[spec.name] = [e for e in log if e[0] == "rng" or len(e[1]) > 0][: 5 * 20]
        assert run["steps"] == math.ceil(run["n_train"] / 8) and run["n_train"] + run["n_val"] + run["n_test"] == len(ds)
    a, b = logs.values()
    assert len(a) > 20 and a == b  # same ids per batch, same RNG state at every dropout call
    # Control: the earlier set-up (seed, copy, head, adapters, train) gives different dropout masks,
    # because BoRA's σ initialisation draws from the global RNG.
    old = {}
    for spec in cfg.methods():
        log = []
        handles = _record(model, log)
        torch.manual_seed(3)
        m = __import__("copy").deepcopy(model)
        finetune.reset_head(m)
        finetune.setup_adapters(m, spec, TARGETS)
        finetune.train(m, enc, finetune.TrainConfig(epochs=1, batch_size=8, progress=False), seed=3)
        for h in handles:
            h.remove()
        old[spec.name] = [e for e in log if e[0] == "rng"]
    x, y = old.values()
    assert x != y


def test_grad_clip_option(tiny_bert, toy):
    with pytest.raises(BoRAValueError, match="grad_clip"):
        finetune.TrainConfig(grad_clip=0.0)
    _, enc = toy
    model = evidence.paired_model(tiny_bert, finetune.AdapterSpec.lora(4), 0, TARGETS)
    log = finetune.train(model, enc, finetune.TrainConfig(epochs=1, batch_size=16, lr=1e-2, grad_clip=1e-3, progress=False),
                         seed=0)
    assert len(log.grad_norms) == len(log.losses) == math.ceil(len(enc) / 16) and min(log.grad_norms) > 0
    # After clipping, the gradient that reached the optimiser has norm <= grad_clip.
    grads = [p.grad for p in model.parameters() if p.requires_grad]
    assert float(torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(g) for g in grads]))) <= 1e-3 * (1 + 1e-5)
    plain = finetune.train(model, enc, finetune.TrainConfig(epochs=1, batch_size=16, progress=False), seed=0)
    assert plain.grad_norms == []


# --- design and learning-rate choice -----------------------------------------------------


def test_task_list_order_and_lr_choice():
    cfg = _config()
    tune = evidence.task_list(cfg)
    assert len(tune) == 2 * 2 * 2 and {t["clip"] for t in tune} == {None}
    runs = []
    vals = {("LoRA r=4", 1e-2): [0.5, 0.7], ("LoRA r=4", 3e-2): [0.6, 0.6],  # tie of means: the smaller lr
            ("BoRA r=4 b=2", 1e-2): [0.5, 0.5], ("BoRA r=4 b=2", 3e-2): [0.9, 0.2]}  # 0.55 > 0.5
    for (method, lr), v in vals.items():
        runs += [{"phase": "tune", "method": method, "lr": lr, "clip": None, "seed": s, "val": x}
                 for s, x in zip(cfg.tune_seeds, v)]
    chosen, table = evidence.choose_lrs(runs, cfg)
    assert chosen == {"LoRA r=4|None": 1e-2, "BoRA r=4 b=2|None": 3e-2} and sum(r["chosen"] for r in table) == 2
    main = evidence.task_list(cfg, chosen)
    assert [(t["clip"], t["seed"], t["method"]) for t in main[:3]] == [(None, 0, "LoRA r=4"), (None, 0, "BoRA r=4 b=2"),
                                                                         (None, 1, "LoRA r=4")]
    assert [t["lr"] for t in main if t["method"] == "BoRA r=4 b=2"] == [3e-2] * 6  # clipped runs reuse the choice
    with pytest.raises(BoRAValueError, match="has 1 of 2 runs"):
        evidence.choose_lrs(runs[1:], cfg)


# --- statistics ------------------------------------------------------------------------------


def test_student_t_quantile_against_scipy():
    stats = pytest.importorskip("scipy.stats")
    for df in (1, 2, 3, 4, 5, 9, 10, 29, 30, 59):
        for p in (0.6, 0.9, 0.975, 0.995, 0.025):
            assert evidence.student_t_quantile(p, df) == pytest.approx(stats.t.ppf(p, df), rel=1e-9, abs=1e-9)
    # df = 2 has a closed form: t_p = (2p - 1) / sqrt(2 p (1 - p)).
    assert evidence.student_t_quantile(0.975, 2) == pytest.approx(0.95 / math.sqrt(2 * 0.975 * 0.025), rel=1e-9)
    with pytest.raises(BoRAValueError, match="p must be in"):
        evidence.student_t_quantile(1.0, 3)
    with pytest.raises(BoRAValueError, match="df must be"):
        evidence.student_t_quantile(0.9, 0)


def test_paired_stats_by_hand_and_against_scipy():
    stats = pytest.importorskip("scipy.stats")
    base = [88.0, 89.0, 90.0, 87.5, 88.5]
    treat = [89.0, 89.0, 91.5, 87.0, 90.5]  # d = 1, 0, 1.5, -0.5, 2
    st = evidence.paired_stats(base, treat)
    d = np.array([1.0, 0.0, 1.5, -0.5, 2.0])
    sd = math.sqrt(((d - 0.8) ** 2).sum() / 4)  # mean 0.8
    q = 2.7764451051977987  # t_{0.975, 4}
    assert st["n"] == 5 and st["mean"] == pytest.approx(0.8) and st["sd"] == pytest.approx(sd)
    assert st["ci_low"] == pytest.approx(0.8 - q * sd / math.sqrt(5)) and st["ci_high"] == pytest.approx(0.8 + q * sd / math.sqrt(5))
    lo, hi = stats.t.interval(0.95, 4, loc=d.mean(), scale=stats.sem(d))
    assert (st["ci_low"], st["ci_high"]) == pytest.approx((lo, hi), rel=1e-9)
    assert (st["wins"], st["losses"], st["ties"]) == (3, 1, 1)
    assert st["sign_p"] == pytest.approx(stats.binomtest(3, 4, 0.5).pvalue) == pytest.approx(0.625)
    assert st["boot_low"] <= st["mean"] <= st["boot_high"] and d.min() <= st["boot_low"] and st["boot_high"] <= d.max()
    with pytest.raises(BoRAValueError, match="one length >= 2"):
        evidence.paired_stats([1.0], [2.0])


@pytest.mark.parametrize(("low", "high", "expected"), [
    (-1.0, 2.29, "refuted"), (-5.0, -1.0, "refuted"), (0.5, 2.2, "refuted"),
    (0.1, 2.3, "consistent"), (1.0, 5.0, "consistent"), (4.1, 6.0, "consistent"),
    (-0.1, 3.0, "inconclusive"), (0.0, 3.0, "inconclusive"), (4.2, 6.0, "inconclusive"),
])
def test_reading_rule(low, high, expected):
    assert evidence.reading(low, high) == expected


def test_worker_runs_the_design_resumably_and_analyse_reads_it(tiny_bert, toy, tmp_path, monkeypatch):
    ds, enc = toy
    cfg = _config(seeds=(0, 1), clips=(None, 1.0))
    monkeypatch.setattr(evidence, "_prepare", lambda config: (ds, {}, enc, tiny_bert))
    (tmp_path / "claims").mkdir()
    evidence._work(str(tmp_path), 0, cfg, None)
    runs = evidence._read_runs(str(tmp_path))
    assert len(runs) == len(evidence.task_list(cfg)) + 2 * 2 * 2  # tuning + (2 clips x 2 seeds x 2 methods)
    assert all(r["test"] is None for r in runs if r["phase"] == "tune") and all(r["test"] is not None for r in runs
                                                                             if r["phase"] == "main")
    evidence._work(str(tmp_path), 1, cfg, None)  # everything done or claimed: nothing is run twice
    assert len(evidence._read_runs(str(tmp_path))) == len(runs)
    res = evidence.analyse(str(tmp_path), cfg, "test")
    assert [(c["clip"], c["n"]) for c in res["comparisons"]] == [(None, 2), (1.0, 2)]
    assert res["environment"]["torch"] == torch.__version__ and res["dedupe"]["removed"] == 129
    for c in res["comparisons"]:
        d = np.subtract(c["treatment_test"], c["baseline_test"])
        assert c["mean"] == pytest.approx(d.mean()) and c["reading"] in ("refuted", "consistent", "inconclusive")
    md = evidence.markdown_summary(res)
    assert md.count("| BoRA - LoRA |") == 2 and "**" in md
    fig = evidence.plot_paired(res)
    assert len(fig.axes) == 1 and len(fig.axes[0].get_xticklabels()) == 2
