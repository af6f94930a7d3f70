"""Parameter accounting: per layer, per model, equal-budget LoRA, parameters per rank, best b."""

import pytest
from hypothesis import given
from hypothesis import strategies as st
from torch import nn

from bora_ref import BoRALinear, apply_bora, param_count, rank_bound
from bora_ref.analysis.params import (
    best_b,
    bora_params_for_rank,
    equal_budget_lora_rank,
    lora_params_for_rank,
    sum_param_counts,
)
from bora_ref.nn.inspect import ModelParamCount, model_param_count
from bora_ref.testing import strategies as bst


@given(bst.shapes(max_dim=40, max_r=10))
def test_param_count_matches_a_real_layer(shape):
    m, n, r, b = shape
    layer = BoRALinear(n, m, r, b)
    trainable = sum(p.numel() for p in layer.parameters() if p.requires_grad)
    pc = param_count(m, n, r, b)
    assert trainable == pc.total
    assert pc.lora == layer.lora_A.numel() + layer.lora_B.numel()
    assert pc.sigma == layer.sigma.numel() == b * b * r
    assert pc.total == pc.lora + pc.sigma


def test_param_count_named_case_from_the_issue():
    # 768 x 768, r = 8, b = 16: extra 16² * 8 = 2048 over 8 * 1536 = 12288 -> +16.7 %.
    pc = param_count(768, 768, 8, 16)
    assert (pc.lora, pc.sigma, pc.total) == (12288, 2048, 14336)
    assert pc.overhead == pytest.approx(2048 / 12288)


@pytest.mark.parametrize(
    ("args", "match"),
    [((0, 4, 2, 1), "m must be >= 1, got 0"), ((4, 4, 0, 1), "r must be >= 1, got 0"),
     ((4, 4, 2, 5), r"b must satisfy 1 <= b <= min\(m, n\) = 4"), ((4, 4, 2.5, 1), "r must be an integer")],
)
def test_param_count_rejects_bad_input(args, match):
    with pytest.raises(ValueError, match=match):
        param_count(*args)


# --- extended accounting ------------------------------------------------------------------------


@given(bst.shapes(max_dim=400, max_r=16))
def test_equal_budget_lora_rank_is_the_largest_rank_within_boras_budget(shape):
    m, n, r, b = shape
    R = equal_budget_lora_rank(m, n, r, b)
    budget = param_count(m, n, r, b).total
    assert R * (m + n) <= budget < (R + 1) * (m + n)
    assert R >= r  # BoRA never has fewer parameters than LoRA of the same r


@given(st.integers(1, 64), st.integers(1, 64), st.integers(1, 6), st.integers(1, 8), st.integers(1, 8))
def test_params_for_rank_match_the_closed_forms_on_even_splits(b, r, k_m, k_n, extra):
    # Even splits with r <= m/b, n/b: BoRA reaches R = b r with R((m + n)/b + b) parameters.
    m, n = b * (r + k_m - 1) * extra, b * (r + k_n - 1)
    R = b * r  # <= min(m, n) by construction
    assert lora_params_for_rank(m, n, R) == R * (m + n)
    assert bora_params_for_rank(m, n, R, b) * b == R * ((m + n) + b * b)


@given(bst.shapes(max_dim=60, max_r=12), st.data())
def test_bora_params_for_rank_uses_the_smallest_sufficient_r(shape, data):
    m, n, _, b = shape
    R = data.draw(st.integers(1, min(m, n)), label="R")
    total = bora_params_for_rank(m, n, R, b)
    r = total // (m + n + b * b)  # total = r (m + n + b²)
    assert total == r * (m + n + b * b)
    assert rank_bound(m, n, r, b) >= R and (r == 1 or rank_bound(m, n, r - 1, b) < R)


@given(st.integers(1, 3000), st.integers(1, 3000))
def test_best_b_is_the_integer_minimiser_by_brute_force(m, n):
    costs = {b: (m + n) / b + b for b in range(1, min(m, n) + 1)}
    best = min(costs.values())
    assert best_b(m, n) == min(b for b, c in costs.items() if c == best)


def test_best_b_named_cases():
    assert (best_b(4096, 4096), best_b(4096, 11008), best_b(384, 384)) == (91, 123, 28)  # ≈ √8192, √15104, √768


def test_model_param_count_per_layer_and_total_match_the_real_parameters():
    model = nn.Sequential(nn.Linear(20, 30), nn.ReLU(), nn.Linear(30, 12))
    apply_bora(model, target_modules=["0"], r=3, b=5)
    apply_bora(model, target_modules=["2"], r=2, b=4)
    counts = model_param_count(model)
    assert isinstance(counts, ModelParamCount) and list(counts.layers) == ["0", "2"]
    for name, layer in (("0", model[0]), ("2", model[2])):
        pc = counts.layers[name]
        assert pc.lora == layer.lora_A.numel() + layer.lora_B.numel() and pc.sigma == layer.sigma.numel()
    assert counts.total == sum(p.numel() for p in model.parameters() if p.requires_grad)
    assert (counts.lora, counts.sigma) == (3 * 50 + 2 * 42, 3 * 25 + 2 * 16)
    assert counts.overhead_pct == pytest.approx(100 * counts.sigma / counts.lora)


def test_sum_param_counts_adds_field_wise():
    total = sum_param_counts([param_count(768, 768, 8, 16), param_count(10, 20, 2, 1)])
    assert (total.lora, total.sigma, total.total) == (12288 + 60, 2048 + 2, 12288 + 60 + 2050)


@pytest.mark.parametrize(
    ("call", "match"),
    [
        (lambda: lora_params_for_rank(8, 6, 7), r"R must be <= min\(m, n\) = 6 .* got R=7"),
        (lambda: bora_params_for_rank(8, 6, 0, 2), "R must be >= 1, got 0"),
        (lambda: bora_params_for_rank(8, 6, 3, 7), r"b must satisfy 1 <= b <= min\(m, n\) = 6"),
        (lambda: best_b(0, 5), "m must be >= 1, got 0"),
        (lambda: equal_budget_lora_rank(4, 4, 2, 5), r"b must satisfy 1 <= b <= min\(m, n\) = 4"),
        (lambda: sum_param_counts([]), "counts must be a non-empty iterable of ParamCount"),
        (lambda: model_param_count(nn.Linear(3, 3)), r"model \(Linear\) has no BoRALinear layers"),
        (lambda: model_param_count("model"), "model must be a torch.nn.Module, got str"),
    ],
)
def test_extended_accounting_rejects_bad_input(call, match):
    with pytest.raises(ValueError, match=match):
        call()
