"""BoRALinear: initialisation, forward against the reference, merge/unmerge, dtypes, errors."""

import math

import numpy as np
import pytest
import torch
from torch import nn

from bora_ref.nn.sigma import SIGMA_PARAMS
from bora_ref import BoRALinear, numpy_ref, param_count

SHAPES = [(24, 16, 4, 4), (13, 10, 3, 3), (9, 7, 5, 7), (16, 16, 2, 1)]  # (m, n, r, b): even, uneven, r > block, b = 1


def _trained(layer: BoRALinear, seed: int = 0) -> BoRALinear:
    """Give every adapter parameter non-trivial values (as after some training)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in (layer.lora_A, layer.lora_B, layer.sigma):
            p.copy_(torch.randn(p.shape, generator=g, dtype=torch.float64).to(p.dtype))
    return layer


def _reference_forward(layer: BoRALinear, x: torch.Tensor) -> np.ndarray:
    W = layer.base.weight.detach().double().numpy()
    bias = layer.base.bias.detach().double().numpy() if layer.base.bias is not None else 0.0
    B, A = layer.lora_B.detach().double().numpy(), layer.lora_A.detach().double().numpy()
    sigma = layer.effective_sigma().detach().double().numpy()
    xd = x.detach().double().numpy()
    return xd @ W.T + bias + layer.scaling * numpy_ref.bora_matmul(xd, B, A, sigma)


@pytest.mark.parametrize("sigma_param", SIGMA_PARAMS)
@pytest.mark.parametrize("shape", SHAPES)
def test_equals_base_at_init(shape, sigma_param):
    m, n, r, b = shape
    layer = BoRALinear(n, m, r, b, sigma_param=sigma_param, dtype=torch.float64)
    x = torch.randn(3, 4, n, dtype=torch.float64)
    assert torch.equal(layer(x), layer.base(x))
    assert torch.count_nonzero(layer.lora_A) == layer.lora_A.numel()  # A is random, B carries the zero
    bound = 1 / math.sqrt(n)
    assert layer.lora_A.abs().max() <= bound
    if sigma_param == "raw":
        assert torch.equal(layer.effective_sigma(), torch.ones(b, b, r, dtype=torch.float64))
    else:
        assert layer.sigma.abs().max() <= bound and torch.all(layer.effective_sigma() > 0)


@pytest.mark.parametrize("rslora", [False, True])
@pytest.mark.parametrize("sigma_param", SIGMA_PARAMS)
@pytest.mark.parametrize("shape", SHAPES)
def test_forward_equals_reference(shape, sigma_param, rslora):
    m, n, r, b = shape
    layer = _trained(BoRALinear(n, m, r, b, alpha=3.0, rslora=rslora, sigma_param=sigma_param, dtype=torch.float64))
    assert layer.scaling == (3.0 / math.sqrt(r) if rslora else 3.0 / r)
    x = torch.randn(2, 5, n, dtype=torch.float64)
    np.testing.assert_allclose(layer(x).detach().numpy(), _reference_forward(layer, x), rtol=1e-12, atol=1e-12)


def test_exp_norm_effective_sigma_formula():
    layer = _trained(BoRALinear(12, 8, 3, 4, dtype=torch.float64))
    s = layer.sigma.detach().numpy()
    np.testing.assert_allclose(layer.effective_sigma().detach().numpy(), np.exp(s / np.abs(s).mean()), rtol=1e-14)


def test_exp_norm_sigma_zero_gives_exactly_one_with_finite_gradient():
    layer = BoRALinear(12, 8, 3, 4, dtype=torch.float64)
    with torch.no_grad():
        layer.sigma.zero_()
    eff = layer.effective_sigma()
    assert torch.equal(eff, torch.ones(4, 4, 3, dtype=torch.float64))
    eff.sum().backward()
    assert torch.isfinite(layer.sigma.grad).all()


def test_exp_norm_is_scale_invariant():
    layer = _trained(BoRALinear(12, 8, 3, 4, dtype=torch.float64))
    before = layer.effective_sigma().detach().clone()
    with torch.no_grad():
        layer.sigma.mul_(7.5)
    torch.testing.assert_close(layer.effective_sigma(), before, rtol=1e-14, atol=0)


@pytest.mark.parametrize("shape", SHAPES)
def test_trainable_parameter_count_matches_formula(shape):
    m, n, r, b = shape
    layer = BoRALinear(n, m, r, b)
    assert sum(p.numel() for p in layer.parameters() if p.requires_grad) == param_count(m, n, r, b).total
    assert not layer.base.weight.requires_grad and not layer.base.bias.requires_grad


@pytest.mark.parametrize("sigma_param", SIGMA_PARAMS)
@pytest.mark.parametrize("shape", SHAPES)
def test_merge_unmerge_roundtrip(shape, sigma_param):
    m, n, r, b = shape
    layer = _trained(BoRALinear(n, m, r, b, alpha=2.0, sigma_param=sigma_param, dtype=torch.float64))
    x = torch.randn(7, n, dtype=torch.float64)
    W0 = layer.base.weight.detach().clone()
    y = layer(x)
    layer.merge(safe=True)
    assert layer.merged
    torch.testing.assert_close(layer.base.weight, W0 + layer.delta_weight(), rtol=0, atol=0)
    torch.testing.assert_close(layer(x), y, rtol=1e-12, atol=1e-12)
    layer.unmerge()
    assert not layer.merged
    torch.testing.assert_close(layer.base.weight, W0, rtol=0, atol=1e-13)
    torch.testing.assert_close(layer(x), y, rtol=1e-12, atol=1e-12)


def test_delta_weight_is_scaled_reference():
    layer = _trained(BoRALinear(13, 10, 3, 3, alpha=5.0, dtype=torch.float64))
    expected = layer.scaling * numpy_ref.delta_weight(
        layer.lora_B.detach().numpy(), layer.lora_A.detach().numpy(), layer.effective_sigma().detach().numpy())
    np.testing.assert_allclose(layer.delta_weight().detach().numpy(), expected, rtol=1e-13, atol=1e-13)


def test_safe_merge_refuses_non_finite_and_changes_nothing():
    layer = _trained(BoRALinear(8, 8, 2, 2, sigma_param="raw"))
    with torch.no_grad():
        layer.sigma[0, 0, 0] = float("inf")
    W0 = layer.base.weight.detach().clone()
    with pytest.raises(ValueError, match="merged weight contains NaN or infinity"):
        layer.merge(safe=True)
    assert not layer.merged and torch.equal(layer.base.weight, W0)


def test_double_merge_and_unmerge_warn_and_do_nothing():
    layer = _trained(BoRALinear(8, 8, 2, 2))
    with pytest.warns(UserWarning, match="not merged"):
        layer.unmerge()
    layer.merge()
    W = layer.base.weight.detach().clone()
    with pytest.warns(UserWarning, match="already merged"):
        layer.merge()
    assert torch.equal(layer.base.weight, W)


def test_from_linear_shares_and_freezes_weight():
    linear = nn.Linear(10, 6)
    layer = BoRALinear.from_linear(linear, r=2, b=2)
    assert layer.base is linear and layer.base.weight.data_ptr() == linear.weight.data_ptr()
    assert not linear.weight.requires_grad and not linear.bias.requires_grad
    x = torch.randn(4, 10)
    assert torch.equal(layer(x), linear(x))


def test_from_linear_rejects_bad_input_and_leaves_linear_untouched():
    linear = nn.Linear(10, 6)
    with pytest.raises(ValueError, match=r"b must satisfy 1 <= b <= min\(m, n\) = 6"):
        BoRALinear.from_linear(linear, r=2, b=7)
    assert linear.weight.requires_grad
    with pytest.raises(ValueError, match="linear must be a torch.nn.Linear, got Conv1d"):
        BoRALinear.from_linear(nn.Conv1d(3, 3, 1), r=2, b=1)
    with pytest.raises(ValueError, match=r"unknown keyword arguments \['rank'\]"):
        BoRALinear.from_linear(linear, r=2, b=2, rank=3)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"r": 0}, "r must be >= 1, got 0"),
        ({"r": 2.0}, "r must be an integer, got 2.0"),
        ({"b": 0}, r"b must be >= 1, got 0"),
        ({"b": 9}, r"got b=9"),
        ({"alpha": -1.0}, r"alpha must be a finite number > 0, got -1.0"),
        ({"alpha": float("nan")}, r"alpha must be a finite number > 0, got nan"),
        ({"sigma_param": "exp"}, r"sigma_param must be one of \('exp_norm', 'raw'\), got 'exp'"),
        ({"dropout": 1.0}, r"dropout must be a float in \[0, 1\), got 1.0"),
        ({"rslora": "yes"}, "rslora must be a bool, got 'yes'"),
        ({"in_features": 0}, "in_features must be >= 1, got 0"),
        ({"adapter_dtype": torch.int32}, r"adapter_dtype must be one of \(torch.float32, .*got torch.int32"),
    ],
)
def test_constructor_rejects_bad_arguments(kwargs, match):
    args = {"in_features": 10, "out_features": 6, "r": 2, "b": 2} | kwargs
    with pytest.raises(ValueError, match=match):
        BoRALinear(**args)


def test_forward_rejects_wrong_last_dim():
    layer = BoRALinear(10, 6, 2, 2)
    with pytest.raises((ValueError, RuntimeError)):
        layer(torch.randn(3, 9))


def test_bfloat16_base_uses_float32_adapter_and_matches_reference():
    layer = _trained(BoRALinear(64, 48, 4, 8, dtype=torch.bfloat16))
    assert layer.base.weight.dtype == torch.bfloat16 and layer.lora_A.dtype == torch.float32
    x = torch.randn(4, 64).to(torch.bfloat16)
    y = layer(x)
    assert y.dtype == torch.bfloat16
    expected = _reference_forward(layer, x)
    # bf16 base matmul and final rounding: error of order u_bf16 * sum|terms|.
    scale = np.abs(expected).max()
    np.testing.assert_allclose(y.detach().double().numpy(), expected, rtol=0, atol=2 * 2**-8 * scale)
    y.float().sum().backward()
    assert layer.lora_A.grad is not None and layer.sigma.grad is not None and layer.base.weight.grad is None


def test_dropout_applies_to_adapter_input_only():
    layer = _trained(BoRALinear(16, 8, 2, 2, dropout=0.5, dtype=torch.float64))
    x = torch.randn(5, 16, dtype=torch.float64)
    layer.eval()
    np.testing.assert_allclose(layer(x).detach().numpy(), _reference_forward(layer, x), rtol=1e-12, atol=1e-12)
    layer.train()
    torch.manual_seed(3)
    y = layer(x)
    torch.manual_seed(3)
    x_dropped = torch.nn.functional.dropout(x, 0.5, training=True)
    expected = layer.base(x) + layer.scaling * (x_dropped @ layer.delta_weight().T / layer.scaling)
    torch.testing.assert_close(y, expected, rtol=1e-12, atol=1e-12)


def test_extra_repr_names_the_configuration():
    text = repr(BoRALinear(10, 6, 2, 3, alpha=4))
    for part in ("in_features=10", "out_features=6", "r=2", "b=3", "alpha=4", "scaling=2", "sigma_param='exp_norm'"):
        assert part in text
