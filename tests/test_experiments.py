"""bora_ref.experiments on tiny configurations: data, adapters, training, analysis, timing, tables.

The model here is a 2-layer, 32-wide BERT with random weights and the shipped MiniLM tokenizer
(seconds to build); the real checkpoint runs in notebooks/03_finetune.ipynb.
"""

from __future__ import annotations

import copy
import math

import numpy as np
import pytest
import torch
from torch import nn

from bora_ref.nn.sigma import SIGMA_PARAMS
from bora_ref import BoRALinear, BoRAValueError, numpy_ref, param_count
from bora_ref.experiments import analysis, baseline, data, experiment, finetune, tables, timing

pytest.importorskip("transformers")
pytest.importorskip("sklearn")

M = N = 32  # hidden size of the tiny BERT: every adapted projection is (32, 32)
TARGETS = ("query", "value")
N_LAYERS = 2 * len(TARGETS)


@pytest.fixture(scope="module")
def tiny_bert(tokenizer):
    from transformers import BertConfig, BertForSequenceClassification

    torch.manual_seed(123)
    config = BertConfig(vocab_size=tokenizer.vocab_size, hidden_size=M, num_hidden_layers=2, num_attention_heads=2,
                        intermediate_size=64, max_position_embeddings=64, num_labels=3)
    return BertForSequenceClassification(config).eval()


@pytest.fixture(scope="module")
def toy_data():
    """Three classes told apart by their words: learnable in a few steps."""
    words = (["good great fine nice"], ["bad awful poor sad"], ["red blue green gray"])
    rng = np.random.default_rng(7)
    texts, labels = [], []
    for k, (vocab,) in enumerate(words):
        for _ in range(16):
            texts.append(" ".join(rng.choice(vocab.split(), size=int(rng.integers(2, 7)))))
            labels.append(k)
    return data.TextDataset(tuple(texts), np.array(labels, dtype=np.int64), ("pos", "neg", "colour"))


def _head_params(model) -> int:
    return sum(p.numel() for p in model.classifier.parameters())


def _adapted(model, spec):
    model = copy.deepcopy(model)
    finetune.reset_head(model)
    return finetune.setup_adapters(model, spec, TARGETS)


def _randomise(model, seed=0):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for layer in analysis.adapter_layers(model).values():
            layer.lora_B.copy_(0.3 * torch.randn(layer.lora_B.shape, generator=g))
            if layer.sigma.requires_grad:
                layer.sigma.copy_(torch.randn(layer.sigma.shape, generator=g))


# --- data ---------------------------------------------------------------------------------


def test_bbc_news_titles_are_the_published_corpus():
    ds = data.load_bbc_news("title")
    assert ds.label_names == ("business", "entertainment", "politics", "sports", "tech")
    # Greene & Cunningham (2006): 510 / 386 / 417 / 511 / 401 articles.
    assert np.bincount(ds.labels).tolist() == [510, 386, 417, 511, 401]
    assert ds.texts[0] == "Ad sales boost Time Warner profit"  # business/001.txt, first line
    assert all(0 < len(t) < 120 and "\n" not in t for t in ds.texts)


def test_load_text_folder_selects_fields_and_skips_empty(tmp_path):
    (tmp_path / "b_class").mkdir()
    (tmp_path / "a_class").mkdir()
    (tmp_path / "a_class" / "1.txt").write_text("\n  Title one \n\nBody line.\nMore body.\n")
    (tmp_path / "a_class" / "2.txt").write_text("   \n")  # empty: skipped
    (tmp_path / "b_class" / "1.txt").write_text("Title two\nOnly body")
    (tmp_path / "b_class" / "x.md").write_text("not an example")
    titles = data.load_text_folder(tmp_path, field="title")
    assert titles.texts == ("Title one", "Title two") and titles.labels.tolist() == [0, 1]
    assert titles.label_names == ("a_class", "b_class")
    assert data.load_text_folder(tmp_path, field="body").texts == ("Body line. More body.", "Only body")
    assert data.load_text_folder(tmp_path, field="full").texts[0] == "Title one Body line. More body."


def test_load_text_folder_rejects_bad_input(tmp_path):
    with pytest.raises(BoRAValueError, match="is not a directory"):
        data.load_text_folder(tmp_path / "missing")
    with pytest.raises(BoRAValueError, match=r"field must be one of \('title', 'body', 'full'\), got 'head'"):
        data.load_text_folder(tmp_path, field="head")
    (tmp_path / "only").mkdir()
    (tmp_path / "only" / "1.txt").write_text("x")
    with pytest.raises(BoRAValueError, match=r"has 1 class\(es\)"):
        data.load_text_folder(tmp_path)


def test_load_csv(tmp_path):
    path = tmp_path / "d.csv"
    path.write_text('text,label,other\n"hello, world",pos,1\n,neg,2\nbye,neg,3\nagain,,4\n')
    ds = data.load_csv(path, text_column="text", label_column="label")
    assert ds.texts == ("hello, world", "bye") and ds.labels.tolist() == [1, 0] and ds.label_names == ("neg", "pos")
    with pytest.raises(BoRAValueError, match=r"column 'sentiment' is not in the header"):
        data.load_csv(path, text_column="text", label_column="sentiment")
    with pytest.raises(BoRAValueError, match="is not a file"):
        data.load_csv(tmp_path / "none.csv", text_column="text", label_column="label")


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_stratified_split_partitions_every_class_in_proportion(seed):
    labels = np.random.default_rng(seed).integers(0, 4, size=203)
    fractions = (0.6, 0.25, 0.15)
    parts = data.stratified_split(labels, fractions, seed=seed)
    together = np.concatenate(parts)
    assert np.array_equal(np.sort(together), np.arange(labels.size))  # disjoint and complete
    for cls in range(4):
        count = int((labels == cls).sum())
        for part, fraction in zip(parts, fractions):
            assert abs(int((labels[part] == cls).sum()) - fraction * count) <= 1.0
    again = data.stratified_split(labels, fractions, seed=seed)
    assert all(np.array_equal(a, b) for a, b in zip(parts, again))
    other = data.stratified_split(labels, fractions, seed=seed + 10)
    assert not np.array_equal(parts[0], other[0])


def test_stratified_split_rejects_bad_input():
    with pytest.raises(BoRAValueError, match=r"fractions must be positive and sum to 1, got \(0.5, 0.4\)"):
        data.stratified_split([0, 1, 0, 1], (0.5, 0.4))
    with pytest.raises(BoRAValueError, match="labels must be a non-empty 1-D integer array"):
        data.stratified_split([0.5, 1.0], (0.5, 0.5))


# --- analysis -----------------------------------------------------------------------------


@pytest.mark.parametrize(("m", "n", "r", "b"), [(384, 384, 8, 8), (384, 384, 8, 16), (768, 768, 8, 16), (50, 30, 3, 7)])
def test_equal_budget_lora_rank_is_the_largest_that_fits(m, n, r, b):
    r_eq = analysis.equal_budget_lora_rank(m, n, r, b)
    total = param_count(m, n, r, b).total
    assert r_eq * (m + n) <= total < (r_eq + 1) * (m + n)


def test_equal_budget_lora_rank_known_values():
    # By hand: 8*768 + 8*64 = 6656 -> 8; 8*768 + 8*256 = 8192 -> 10; 8*1536 + 8*256 = 14336 -> 9.
    assert analysis.equal_budget_lora_rank(384, 384, 8, 8) == 8
    assert analysis.equal_budget_lora_rank(384, 384, 8, 16) == 10
    assert analysis.equal_budget_lora_rank(768, 768, 8, 16) == 9


def test_overhead_rows_match_the_issue():
    (row,) = analysis.overhead_rows([("RoBERTa", 768, 768)], 8, [16], layers=2, model_params=1_000_000)
    assert math.isclose(row["overhead_pct"], 100 * 2048 / 12288)  # +16.7%
    assert row["lora"] == 2 * 12288 and row["sigma"] == 2 * 2048
    assert math.isclose(row["extra_pct_of_model"], 100 * 4096 / 1_000_000)


def test_layer_ranks_and_spectra_against_the_numpy_reference(tiny_bert):
    model = _adapted(tiny_bert, finetune.AdapterSpec.bora(4, 3))  # 32 = 11 + 11 + 10: uneven blocks
    _randomise(model)
    spectra = analysis.layer_spectra(model)
    ranks = analysis.layer_ranks(model)
    assert len(spectra) == N_LAYERS
    for name, layer in analysis.adapter_layers(model).items():
        B, A = layer.lora_B.detach().double().numpy(), layer.lora_A.detach().double().numpy()
        sigma = layer.effective_sigma().detach().double().numpy()
        dense = layer.scaling * numpy_ref.delta_weight(B, A, sigma)  # (32, 32), the ground truth
        S_ref = np.linalg.svd(dense, compute_uv=False)
        np.testing.assert_allclose(spectra[name], S_ref, rtol=0, atol=1e-12 * S_ref[0])
        assert ranks[name]["bound"] == 12 and ranks[name]["numerical"] == 12  # generic factors reach min(b r, 32)
        assert 1 <= ranks[name]["energy"] <= 12


def test_trainable_parameters_counts_shared_tensors_once():
    lin = nn.Linear(5, 3)
    model = nn.Sequential(lin, nn.ReLU(), lin, nn.Linear(3, 2, bias=False))
    model[3].weight.requires_grad_(False)
    assert analysis.trainable_parameters(model) == 5 * 3 + 3


# --- adapters -----------------------------------------------------------------------------


def test_lora_spec_is_exactly_lora(tiny_bert):
    model = _adapted(tiny_bert, finetune.AdapterSpec.lora(4))
    _randomise(model, seed=1)
    layer = model.bert.encoder.layer[1].attention.self.value
    assert layer.b == 1 and not layer.sigma.requires_grad and torch.equal(layer.effective_sigma(), torch.ones(1, 1, 4))
    x = torch.randn(3, 5, N, dtype=torch.float32)
    x64, W = x.double().numpy(), layer.base.weight.detach().double().numpy()
    B, A = layer.lora_B.detach().double().numpy(), layer.lora_A.detach().double().numpy()
    expected = x64 @ (W + layer.scaling * B @ A).T + layer.base.bias.detach().double().numpy()  # plain LoRA, float64
    np.testing.assert_allclose(layer(x).detach().double().numpy(), expected, rtol=0, atol=1e-5)


@pytest.mark.parametrize("spec", [finetune.AdapterSpec.lora(4), finetune.AdapterSpec.bora(4, 8), finetune.AdapterSpec.bora(2, 4, "raw")])
def test_setup_adapters_trains_exactly_the_adapters_and_head(tiny_bert, spec):
    model = _adapted(tiny_bert, spec)
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    expected = {f"bert.encoder.layer.{i}.attention.self.{t}.{p}" for i in range(2) for t in TARGETS
                for p in ("lora_A", "lora_B", "sigma") if p != "sigma" or spec.train_sigma}
    assert trainable == expected | {"classifier.weight", "classifier.bias"}
    sigma = spec.b**2 * spec.r if spec.train_sigma else 0
    assert analysis.trainable_parameters(model) == N_LAYERS * (spec.r * (M + N) + sigma) + _head_params(model)
    batch = {"input_ids": torch.randint(0, 1000, (2, 7))}
    reference = copy.deepcopy(tiny_bert)
    reference.classifier.load_state_dict(model.classifier.state_dict())
    with torch.no_grad():  # lora_B = 0: the adapted model computes what the base model computes
        torch.testing.assert_close(model.eval()(**batch).logits, reference(**batch).logits, rtol=0, atol=0)


def test_setup_adapters_rejects_bad_input_and_leaves_the_model_alone(tiny_bert):
    model = copy.deepcopy(tiny_bert)
    with pytest.raises(BoRAValueError, match=r"head_modules=\('head',\) matches no module"):
        finetune.setup_adapters(model, finetune.AdapterSpec.lora(4), TARGETS, head_modules=("head",))
    assert not analysis.adapter_layers(model)
    with pytest.raises(BoRAValueError, match="spec must be an AdapterSpec"):
        finetune.setup_adapters(model, {"r": 4}, TARGETS)
    with pytest.raises(BoRAValueError, match=r"train_sigma=False needs a sigma_param whose initial Σ is 1 \['raw'\], got 'exp_norm'"):
        finetune.AdapterSpec("x", 4, 2, "exp_norm", False)
    with pytest.raises(BoRAValueError, match=r"sigma_param must be one of \('exp_norm', 'raw'\)"):
        finetune.AdapterSpec.bora(4, 2, "exp")


@pytest.mark.parametrize("sigma_param", SIGMA_PARAMS)
def test_upgrade_to_bora_keeps_the_function_and_trains_only_sigma(tiny_bert, sigma_param):
    model = _adapted(tiny_bert, finetune.AdapterSpec.lora(4))
    _randomise(model, seed=2)
    batch = {"input_ids": torch.randint(0, 1000, (3, 9))}
    with torch.no_grad():
        before = model.eval()(**batch).logits
    finetune.upgrade_to_bora(model, 4, sigma_param)
    with torch.no_grad():
        after = model(**batch).logits
    torch.testing.assert_close(after, before, rtol=1e-6, atol=1e-6)
    assert {n.rsplit(".", 1)[-1] for n, p in model.named_parameters() if p.requires_grad} == {"sigma"}
    assert analysis.trainable_parameters(model) == N_LAYERS * 4**2 * 4
    for layer in analysis.adapter_layers(model).values():
        assert layer.b == 4 and layer.sigma_param == sigma_param
        torch.testing.assert_close(layer.effective_sigma(), torch.ones(4, 4, 4), rtol=0, atol=0)
    with pytest.raises(BoRAValueError, match="already has b=4; upgrade_to_bora starts from LoRA"):
        finetune.upgrade_to_bora(model, 2)


def test_upgrade_to_bora_rejects_invalid_b_without_changing_the_model(tiny_bert):
    model = _adapted(tiny_bert, finetune.AdapterSpec.lora(4))
    layers = analysis.adapter_layers(model)
    with pytest.raises(BoRAValueError, match=r"b must satisfy 1 <= b <= min\(m, n\) = 32"):
        finetune.upgrade_to_bora(model, 33)
    assert analysis.adapter_layers(model) == layers and all(l.lora_A.requires_grad for l in layers.values())
    with pytest.raises(BoRAValueError, match="has no BoRALinear layers"):
        finetune.upgrade_to_bora(copy.deepcopy(tiny_bert), 2)


def test_exp_norm_sigma_always_has_mean_abs_log_one():
    """Σ = exp(σ / mean|σ|) gives mean |ln Σ| = mean|σ| / mean|σ| = 1 for every σ != 0: it can never be ≈ 1."""
    layer = BoRALinear(24, 24, r=3, b=4)
    for scale in (1e-6, 1.0, 1e3):
        with torch.no_grad():
            layer.sigma.copy_(scale * torch.randn(4, 4, 3))
        mean_abs_log = layer.effective_sigma().detach().double().log().abs().mean()
        assert math.isclose(float(mean_abs_log), 1.0, rel_tol=1e-6)


# --- training -----------------------------------------------------------------------------


def test_train_learns_is_deterministic_and_logs(tiny_bert, tokenizer, toy_data):
    enc = finetune.encode(tokenizer, toy_data, max_length=12)
    config = finetune.TrainConfig(epochs=6, batch_size=8, lr=3e-2, rank_every=6, progress=False)
    runs = []
    for _ in range(2):
        torch.manual_seed(0)
        model = _adapted(tiny_bert, finetune.AdapterSpec.bora(4, 4))
        log = finetune.train(model, enc, config, seed=5)
        runs.append((model, log))
    (model, log), (_, log2) = runs
    assert len(log.losses) == len(log.step_seconds) == 6 * math.ceil(48 / 8)
    assert log.losses == log2.losses  # same seeds, same run
    assert np.mean(log.losses[-6:]) < 0.7 * np.mean(log.losses[:6])
    assert [step for step, _ in log.ranks] == list(range(6, 37, 6))
    assert set(log.ranks[-1][1]) == set(analysis.adapter_layers(model))
    assert finetune.evaluate(model, enc, batch_size=5) > 0.6  # chance is 1/3


def test_evaluate_is_the_argmax_accuracy(tiny_bert, tokenizer, toy_data):
    model = _adapted(tiny_bert, finetune.AdapterSpec.lora(2))
    enc = finetune.encode(tokenizer, toy_data, max_length=12)
    with torch.no_grad():
        logits = model.eval()(input_ids=enc.input_ids, attention_mask=enc.attention_mask).logits
    expected = float((logits.argmax(-1) == enc.labels).double().mean())
    assert math.isclose(finetune.evaluate(model.train(), enc, batch_size=7), expected)
    assert model.training  # evaluate restores the mode


def test_encoded_batch_trims_padding(tokenizer, toy_data):
    enc = finetune.encode(tokenizer, toy_data, max_length=20)
    assert enc.input_ids.shape == (48, 20)
    inputs, labels = enc.batch(torch.tensor([0, 5]), "cpu")
    longest = int(enc.attention_mask[[0, 5]].sum(1).max())
    assert inputs["input_ids"].shape == (2, longest) and torch.equal(labels, enc.labels[[0, 5]])
    assert torch.equal(inputs["input_ids"], enc.input_ids[[0, 5], :longest])


def test_train_rejects_a_frozen_model(tiny_bert, tokenizer, toy_data):
    model = copy.deepcopy(tiny_bert).requires_grad_(False)
    with pytest.raises(BoRAValueError, match="no trainable parameters"):
        finetune.train(model, finetune.encode(tokenizer, toy_data, 8), finetune.TrainConfig(progress=False), seed=0)
    with pytest.raises(BoRAValueError, match="lr must be a finite number > 0, got 0"):
        finetune.TrainConfig(lr=0)


# --- baseline and timing ------------------------------------------------------------------


def test_mean_pooled_embeddings_match_a_manual_mean(tiny_bert, tokenizer, toy_data):
    enc = finetune.encode(tokenizer, toy_data, max_length=12)
    emb = baseline.mean_pooled_embeddings(tiny_bert, enc, batch_size=10)
    k = int(enc.attention_mask[3].sum())
    with torch.no_grad():
        h = tiny_bert.bert(input_ids=enc.input_ids[3:4, :k]).last_hidden_state[0].double()  # (k, d), no padding
    e = h.mean(0).numpy()
    np.testing.assert_allclose(emb[3], e / np.linalg.norm(e), rtol=0, atol=1e-6)
    result = baseline.frozen_embedding_baseline(tiny_bert, enc, enc, enc, Cs=(1.0, 10.0))
    assert result["C"] in (1.0, 10.0) and 0.0 <= result["test_acc"] <= 1.0 and result["test_acc"] == result["val_acc"]
    with pytest.raises(BoRAValueError, match="Cs must be a non-empty sequence of positive numbers"):
        baseline.frozen_embedding_baseline(tiny_bert, enc, enc, enc, Cs=())


class _Linear(nn.Module):
    def __init__(self, n: int, m: int):
        super().__init__()
        self.lin = nn.Linear(n, m)

    def forward(self, x):
        return self.lin(x)


def test_activation_bytes_counts_the_saved_input_not_the_weights():
    model = _Linear(512, 3)
    x, y = torch.randn(16, 512), torch.randint(0, 3, (16,))
    saved = timing.activation_bytes(model, {"x": x}, y)
    # The matmul saves x (16 x 512 float32) for the weight gradient; the loss saves a few (16, 3)
    # tensors; the weight itself (a parameter) is not counted.
    assert 16 * 512 * 4 <= saved <= 16 * 512 * 4 + 4 * 16 * 3 * 8


def test_step_costs_reports_every_model():
    models = {"a": _Linear(8, 3), "b": _Linear(8, 3)}
    models["b"].lin.bias.requires_grad_(False)
    x, y = torch.randn(4, 8), torch.randint(0, 3, (4,))
    costs = timing.step_costs(models, {"x": x}, y, steps=2, repeats=2)
    assert costs["a"].trainable == 27 and costs["b"].trainable == 24 and costs["b"].state_bytes == 16 * 24
    assert all(len(c.seconds_all) == 2 and c.seconds > 0 and c.cuda_peak_bytes is None for c in costs.values())
    with pytest.raises(BoRAValueError, match="model 'c' has no trainable parameters"):
        timing.step_costs({"c": _Linear(8, 3).requires_grad_(False)}, {"x": x}, y)


# --- experiment settings and tables -------------------------------------------------------


def test_setting_from_env():
    assert experiment.setting_from_env({"BORA_SMOKE": "1"}).name == "smoke"
    assert experiment.setting_from_env({"BORA_SMOKE": "1", "BORA_SETTING": "cpu"}).name == "cpu"
    assert experiment.setting_from_env({}).name == ("cuda" if torch.cuda.is_available() else "cpu")
    with pytest.raises(BoRAValueError, match=r"BORA_SETTING='gpu' is not one of \('smoke', 'cpu', 'cuda'\)"):
        experiment.setting_from_env({"BORA_SETTING": "gpu"})


def test_adapter_specs_of_the_cpu_setting():
    specs = experiment.adapter_specs(experiment.SETTINGS["cpu"], 384, 384)
    assert [s.name for s in specs] == ["LoRA r=8", "LoRA r=10 (equal budget)", "BoRA r=8 b=8", "BoRA r=8 b=16",
                                       "BoRA r=8 b=8, Σ raw"]
    assert [(s.r, s.b, s.sigma_param, s.train_sigma) for s in specs] == [
        (8, 1, "raw", False), (10, 1, "raw", False), (8, 8, "exp_norm", True), (8, 16, "exp_norm", True), (8, 8, "raw", True)]


def test_tables_pair_seeds():
    ranks = {"l0": {"bound": 8, "numerical": 8, "energy": 3, "effective": 4.0}}
    runs = [{"method": "LoRA", "seed": s, "b": 1, "trainable": 10, "val": v, "test": t, "ranks": ranks, "sigma": {}}
            for s, v, t in ((0, 0.5, 0.50), (1, 0.6, 0.60))]
    runs += [{"method": "BoRA", "seed": s, "b": 2, "trainable": 12, "val": v, "test": t, "ranks": ranks,
              "sigma": {"l0": {"mean_abs_log": 1.0, "max_dev_from_1": 2.0}}} for s, v, t in ((1, 0.7, 0.70), (0, 0.5, 0.55))]
    results = {"runs": runs, "baseline": {"C": 1.0, "val_acc": 0.8, "test_acc": 0.9}}
    table = tables.accuracy_table(results)
    # test: LoRA 50, 60 -> 55.0 ± 7.1; BoRA - LoRA per seed: 5, 10 -> 7.5 ± 3.5 (sample std).
    assert "| LoRA | 10 | 55.0 ± 7.1 | 55.0 ± 7.1 | — |" in table
    assert "| BoRA | 12 | 60.0 ± 14.1 | 62.5 ± 10.6 | 7.5 ± 3.5 |" in table
    assert "| 90.0 | +35.0 (vs mean) |" in table
    assert tables.mean_std([0.25]) == "0.2 ± 0.0" and tables.mean_std([1, 2, 3], digits=2) == "2.00 ± 1.00"
