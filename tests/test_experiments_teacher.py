"""bora_ref.experiments.teacher on tiny configurations (seconds).

Ground truth here is independent of the optimiser: the Eckart–Young optimum of a matrix built
from known singular values, exact ranks of constructed targets, and parameter counts from the
formulas $R(m + n)$ and $r(m + n) + b^2 r$.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from bora_ref import numpy_ref
from bora_ref.experiments import teacher as T
from bora_ref.experiments.finetune import AdapterSpec


def _known_spectrum(m: int, n: int, s: np.ndarray, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    U, _ = np.linalg.qr(rng.standard_normal((m, len(s))))
    V, _ = np.linalg.qr(rng.standard_normal((n, len(s))))
    return (U * s) @ V.T


def test_eckart_young_floor_equals_tail_energy_of_the_constructed_spectrum():
    s = np.array([5.0, 3.0, 2.0, 1.0, 0.5, 0.25])
    target = _known_spectrum(20, 14, s)
    for R in range(len(s) + 2):
        expected = math.sqrt(float(np.sum(s[R:] ** 2) / np.sum(s ** 2)))
        assert T.eckart_young_floor(target, R) == pytest.approx(expected, rel=1e-10, abs=1e-12)


def test_relative_residual_is_scale_free_and_zero_at_the_target():
    rng = np.random.default_rng(1)
    t, d = rng.standard_normal((6, 5)), rng.standard_normal((6, 5))
    assert T.relative_residual(t, t) == 0.0
    assert T.relative_residual(3 * d, 3 * t) == pytest.approx(np.linalg.norm(d - t) / np.linalg.norm(t), rel=1e-12)
    assert T.relative_residual(torch.as_tensor(d), t) == pytest.approx(T.relative_residual(d, t), rel=1e-12)


@pytest.mark.parametrize("kind", T.TARGET_KINDS)
def test_targets_have_unit_norm_and_are_reproducible(kind):
    a = T.make_target(kind, 24, 18, seed=3, r=2, b=3, rank=4)
    assert np.linalg.norm(a) == pytest.approx(1.0, rel=1e-12)
    np.testing.assert_array_equal(a, T.make_target(kind, 24, 18, seed=3, r=2, b=3, rank=4))
    assert not np.allclose(a, T.make_target(kind, 24, 18, seed=4, r=2, b=3, rank=4))


@pytest.mark.parametrize("kind", ["bora", "bora_pos"])
def test_bora_target_has_rank_b_r_and_rank_r_blocks(kind):
    m, n, r, b = 24, 18, 2, 3
    t = T.make_target(kind, m, n, seed=0, r=r, b=b)
    s = np.linalg.svd(t, compute_uv=False)
    assert s[b * r - 1] > 1e-6 and s[b * r] < 1e-12  # exactly rank b r (generic draw)
    for i in range(b):
        for j in range(b):
            block = t[i * 8:(i + 1) * 8, j * 6:(j + 1) * 6]
            assert np.linalg.svd(block, compute_uv=False)[r] < 1e-12  # every block product has rank <= r


def test_gaussian_target_has_the_requested_rank_and_power_law_its_spectrum():
    s = np.linalg.svd(T.make_target("gaussian", 30, 20, seed=0, rank=5), compute_uv=False)
    assert s[4] > 1e-3 and s[5] < 1e-12
    s = np.linalg.svd(T.make_target("power_law", 30, 20, seed=0, exponent=1.0), compute_uv=False)
    np.testing.assert_allclose(s / s[0], 1.0 / np.arange(1, 21), rtol=1e-10)


def test_bad_target_arguments_raise_value_errors_naming_them():
    with pytest.raises(ValueError, match="kind"):
        T.make_target("nope", 4, 4, seed=0)
    with pytest.raises(ValueError, match="b must be"):
        T.make_target("bora", 4, 4, seed=0, b=5)


def test_bora_fits_its_own_structure_while_lora_stops_at_the_eckart_young_floor():
    m = n = 48
    r, b = 2, 4
    target = T.make_target("bora", m, n, seed=0, r=r, b=b)
    bora = T.fit_matrix(target, AdapterSpec.bora(r, b, "raw"), lr=3e-2, steps=500, seed=0)
    assert bora["residual"] < 1e-3
    assert bora["params"] == r * (m + n) + b * b * r
    floor = T.eckart_young_floor(target, r)
    assert floor > 0.2  # rank b r = 8 target, rank-2 LoRA: far from representable
    lora = T.fit_matrix(target, AdapterSpec.lora(r), lr=1e-2, steps=500, seed=0, checkpoints=(100, 500))
    assert lora["params"] == r * (m + n)
    assert floor - 1e-6 <= lora["residual"] <= floor + 1e-3  # cannot beat the optimum; the optimiser reaches it
    assert set(lora["curve"]) == {100, 500}
    assert all(v >= floor - 1e-6 for v in lora["curve"].values())


def test_matrix_methods_equal_budget_and_ceiling_ranks():
    cfg = T.MatrixConfig(m=384, n=384, r=8, bs=(2, 4, 8))
    names = [s.name for s in T.matrix_methods(cfg)]
    # b^2 r <= 512 < 768 = m + n extra parameters: the equal-budget LoRA rank is r itself for every b
    for b in (2, 4, 8):
        assert max(R for R in range(1, 100) if R * 768 <= 8 * 768 + b * b * 8) == 8
    assert names[:5] == ["LoRA r=8", "LoRA r=9", "LoRA r=16", "LoRA r=32", "LoRA r=64"]
    assert sum(n.startswith("BoRA") for n in names) == 6
    cfg = T.MatrixConfig(m=16, n=16, r=2, bs=(4,))
    names = [s.name for s in T.matrix_methods(cfg)]  # 16 r extra = one LoRA rank
    assert "LoRA r=3" in names and "LoRA r=4" in names and "LoRA r=8" in names


def test_summarise_picks_the_learning_rate_with_the_lowest_mean_and_skips_diverged_ones():
    runs = [
        {"target": "t", "method": "x", "lr": 0.1, "seed": 0, "residual": 0.1, "params": 5},
        {"target": "t", "method": "x", "lr": 0.1, "seed": 1, "residual": float("nan"), "params": 5},
        {"target": "t", "method": "x", "lr": 0.01, "seed": 0, "residual": 0.3, "params": 5},
        {"target": "t", "method": "x", "lr": 0.01, "seed": 1, "residual": 0.5, "params": 5},
        {"target": "t", "method": "x", "lr": 0.03, "seed": 1, "residual": 0.2, "params": 5},
        {"target": "t", "method": "x", "lr": 0.03, "seed": 0, "residual": 0.7, "params": 5},
    ]
    (row,) = T.summarise(runs)
    assert row["lr"] == 0.01  # mean 0.4 < 0.45 (lr 0.03); lr 0.1 has a diverged seed
    assert row["mean"] == pytest.approx(0.4)
    assert row["sd"] == pytest.approx(math.sqrt(0.02))
    assert row["values"] == [0.3, 0.5] and row["seeds"] == [0, 1]
    assert row["all_lrs"]["0.1"] == math.inf


def test_run_matrix_lora_never_beats_its_floor():
    cfg = T.MatrixConfig(m=16, n=16, r=1, bs=(2,), seeds=(0, 1), steps=200, lrs=(3e-2,), gaussian_ranks=(3,),
                         positive_bs=(), ft_delta=None, checkpoints=())
    result = T.run_matrix(cfg)
    targets = {r["target"] for r in result["runs"]}
    assert targets == {"BoRA-structured b=2", "Gaussian rank 3", "power law s_k ∝ 1/k"}
    lora = [r for r in result["runs"] if r["b"] == 1]
    assert lora and all(r["residual"] >= r["eckart_young"] - 1e-6 for r in lora)
    for r in lora:  # the stored floor curve agrees with the direct computation
        assert result["floors"][r["target"]][str(r["seed"])][str(r["r"])] == pytest.approx(r["eckart_young"], rel=1e-9, abs=1e-12)
    assert len(T.summarise(result["runs"])) == len({(r["target"], r["method"]) for r in result["runs"]})


# ---------------------------------------------------------------------------- functional level

pytest.importorskip("transformers")


@pytest.fixture(scope="module")
def tiny_bert(tokenizer):
    from transformers import BertConfig, BertModel

    torch.manual_seed(0)
    config = BertConfig(vocab_size=tokenizer.vocab_size, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                        intermediate_size=64, max_position_embeddings=64)
    model = BertModel(config, add_pooling_layer=False).eval()
    for p in model.parameters():
        p.requires_grad_(False)
    return model


@pytest.fixture(scope="module")
def toy_data():
    from bora_ref.experiments.data import TextDataset

    rng = np.random.default_rng(0)
    words = ["good", "great", "bad", "awful", "red", "blue", "news", "market", "team", "film"]
    texts = tuple(" ".join(rng.choice(words, size=int(rng.integers(3, 9)))) for _ in range(60))
    return TextDataset(texts, np.arange(60) % 3, ("a", "b", "c"))


def test_top_forward_equals_the_full_model_on_valid_tokens(tiny_bert, tokenizer, toy_data):
    from bora_ref.experiments.finetune import encode

    enc = encode(tokenizer, toy_data, 16)
    L = int(enc.attention_mask.sum(dim=1).max())
    with torch.no_grad():
        full = tiny_bert(input_ids=enc.input_ids[:, :L], attention_mask=enc.attention_mask[:, :L]).last_hidden_state
        h1 = T.layer_inputs(tiny_bert, enc, 1)
        top = T.top_forward(tiny_bert, h1, enc.attention_mask[:, :L], 1)
    mask = enc.attention_mask[:, :L].bool()
    torch.testing.assert_close(top[mask], full[mask], rtol=1e-5, atol=1e-5)


def test_perturb_adds_the_scaled_target_to_the_chosen_layers_only(tiny_bert):
    import copy

    cfg = T.FunctionalConfig(r=2, b=2, layers=(1,), rel_norm=0.3, generic_rank=4)
    teacher = copy.deepcopy(tiny_bert)
    added = T.perturb(teacher, "block", cfg, seed=0)
    assert sorted(added) == ["layer1.query", "layer1.value"]
    before, after = dict(tiny_bert.named_parameters()), dict(teacher.named_parameters())
    for name, p in before.items():
        key = next((k for k in added if name == f"encoder.layer.{k[5]}.attention.self.{k.split('.')[1]}.weight"), None)
        if key is None:
            torch.testing.assert_close(after[name], p, rtol=0, atol=0)
        else:
            d = (after[name] - p).double().numpy()
            np.testing.assert_allclose(d, added[key], rtol=1e-6, atol=1e-7)
            assert np.linalg.norm(d) == pytest.approx(0.3 * float(p.norm()), rel=1e-5)
            assert np.linalg.svd(d, compute_uv=False)[4] < 1e-6 * np.linalg.norm(d)  # rank <= b r = 4


def test_run_functional_tiny_student_starts_at_error_one_and_improves(tiny_bert, tokenizer, toy_data):
    import copy

    from bora_ref.experiments.finetune import encode

    cfg = T.FunctionalConfig(r=2, b=2, layers=(1,), teachers=("block", "generic"), rel_norm=0.5, generic_rank=4,
                             seeds=(0, 1), lrs=(1e-2, 3e-2), steps=30, batch_size=8, max_length=16)
    # an untrained student (lora_B = 0) is the base model: normalised error exactly 1
    enc = encode(tokenizer, toy_data, 16)
    h_in = T.layer_inputs(tiny_bert, enc, 1)
    mask = enc.attention_mask[:, : h_in.shape[1]]
    teacher = copy.deepcopy(tiny_bert)
    T.perturb(teacher, "generic", cfg, seed=0)
    with torch.no_grad():
        h_t = T.top_forward(teacher, h_in, mask, 1)
        h_0 = T.top_forward(tiny_bert, h_in, mask, 1)
        student, _ = T.make_student(tiny_bert, AdapterSpec.bora(2, 2, "raw"), (1,), seed=0)
        h_s = T.top_forward(student, h_in, mask, 1)
    assert T.normalised_error(h_s, h_t, h_0, mask) == pytest.approx(1.0, abs=1e-6)

    result = T.run_functional(cfg, base=tiny_bert, tokenizer=tokenizer, data=toy_data)
    methods = {r["method"] for r in result["runs"]}
    assert methods == {"LoRA r=2", "BoRA r=2 b=2, Σ raw", "BoRA r=2 b=2"}
    for kind in ("block", "generic"):
        chosen = result["teachers"][kind]["chosen_lr"]
        for method, lr in chosen.items():
            rows = [r for r in result["runs"] if r["teacher"] == kind and r["method"] == method]
            assert len(rows) == len(cfg.lrs) + 1  # all rates on the first seed, the chosen one on the next
            first = [r for r in rows if r["seed"] == 0]
            assert lr == min(first, key=lambda r: r["val_error"])["lr"]
            assert [r["lr"] for r in rows if r["seed"] == 1] == [lr]
    assert all(0 < r["test_error"] < 1 and r["loss_curve"][-1] < r["loss_curve"][0] for r in result["runs"])
    summary = T.summarise_functional(result)
    assert len(summary) == 2 * 3 and all(s["seeds"] == [0, 1] for s in summary)
    table = T.functional_table(result)
    assert table.count("\n| block |") == 3 and table.count("\n| generic |") == 3


def test_plots_write_png_files(tmp_path, tiny_bert, tokenizer, toy_data):
    cfg = T.MatrixConfig(m=16, n=16, r=1, bs=(2,), seeds=(0, 1), steps=20, lrs=(3e-2,), gaussian_ranks=(3,),
                         positive_bs=(), ft_delta=None, checkpoints=())
    result = T.run_matrix(cfg)
    T.plot_matrix(result, tmp_path / "m.png")
    T.plot_matrix_b8(result, tmp_path / "b.png", b=2)
    T.plot_matrix_gain(result, tmp_path / "g.png")
    fcfg = T.FunctionalConfig(r=2, b=2, layers=(1,), generic_rank=4, seeds=(0,), lrs=(1e-2,), steps=2, batch_size=8)
    T.plot_functional(T.run_functional(fcfg, base=tiny_bert, tokenizer=tokenizer, data=toy_data), tmp_path / "f.png")
    for name in ("m.png", "b.png", "g.png", "f.png"):
        assert (tmp_path / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_lora_equivalent_rank_inverts_the_floor_curve():
    floor = {"8": 0.5, "9": 0.4, "10": 0.2, "16": 0.0}
    assert T.lora_equivalent_rank(0.5, floor) == 8.0
    assert T.lora_equivalent_rank(0.45, floor) == pytest.approx(8.5)
    assert T.lora_equivalent_rank(0.3, floor) == pytest.approx(9.5)
    assert T.lora_equivalent_rank(0.9, floor) == 8.0  # worse than the smallest stored rank
    assert T.lora_equivalent_rank(0.0, floor) == pytest.approx(16.0)
    assert T.lora_equivalent_rank(0.1, floor) == pytest.approx(13.0)


def test_tables_and_cli_tables(tmp_path, capsys):
    cfg = T.MatrixConfig(m=16, n=16, r=1, bs=(2,), seeds=(0, 1), steps=20, lrs=(3e-2,), gaussian_ranks=(3,),
                         positive_bs=(), ft_delta=None, checkpoints=())
    result = T.run_matrix(cfg)
    text = T.matrix_tables(result)
    assert "| Gaussian rank 3 |" in text and "BoRA b=2 Σ exp_norm" in text
    path = tmp_path / "m.json"
    path.write_text(__import__("json").dumps(result))
    assert T.main(["tables", "--matrix", str(path), "--functional", str(tmp_path / "none.json")]) == 0
    assert capsys.readouterr().out.strip() == text


def test_input_weighted_floors_fall_with_rank_and_vanish_at_the_target_rank(tiny_bert, tokenizer, toy_data):
    cfg = T.FunctionalConfig(r=2, b=2, layers=(1,), teachers=("block", "generic"), generic_rank=4, seeds=(0,))
    out = T.input_weighted_floors(cfg, ranks=(1, 2, 4), base=tiny_bert, tokenizer=tokenizer, data=toy_data)
    assert 1.0 <= out["participation_ratio"] <= 32 and out["eigs_for_90pct"] <= out["eigs_for_99pct"] <= 32
    for kind in ("block", "generic"):
        f = out["floors"][kind]["0"]
        for key in ("plain", "data_weighted"):  # floors fall with rank; rank 4 fits both rank-4 targets exactly
            assert f[key]["1"] >= f[key]["2"] >= f[key]["4"] - 1e-12
            assert f[key]["4"] < 1e-6
