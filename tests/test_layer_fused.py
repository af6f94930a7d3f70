"""The fused layer path: the scaled update added in place into the base output.

``BoRALinear.forward`` passes the base layer's output to the fast path as ``out`` (when the
adapter dtype equals the output dtype) and folds ``scaling`` into the mixing. Everything here
is checked against the NumPy reference or against autograd through the dense form
``x @ torch_ref.delta_weight(B, A, sigma).T``, never against the fast path itself.
"""

import numpy as np
import pytest
import torch
from torch.func import functional_call

from bora_ref import BoRALinear, numpy_ref, torch_ref

from ._helpers import random_factors

SHAPES = [(12, 8, 3, 4), (13, 7, 5, 3), (9, 7, 5, 7), (10, 9, 3, 1)]  # even, uneven, r > block, b = 1
IDS = ["even", "uneven", "r>block", "b=1"]
STRATEGIES = ["bmm", "dense"]


def _t(*arrays):
    return tuple(torch.from_numpy(np.ascontiguousarray(a)) for a in arrays)


@pytest.mark.parametrize("strategy", STRATEGIES)
@pytest.mark.parametrize("shape", SHAPES, ids=IDS)
def test_scale_and_out_add_the_scaled_update_into_out(strategy, shape, rng):
    m, n, r, b = shape
    B, A, sigma = random_factors(rng, m, n, r, b)
    x, base, g = rng.standard_normal((2, 3, n)), rng.standard_normal((2, 3, m)), rng.standard_normal((2, 3, m))
    s = 0.37
    tx, tB, tA, ts, tbase = (t.requires_grad_() for t in _t(x, B, A, sigma, base))
    out = tbase * 1.0  # a non-leaf, as the base layer's output
    y = torch_ref._bora_matmul(tx, tB, tA, ts, strategy, scale=s, out=out)
    assert y is out
    np.testing.assert_allclose(y.detach().numpy(), base + s * numpy_ref.bora_matmul(x, B, A, sigma), rtol=1e-12, atol=1e-12)
    y.backward(torch.from_numpy(g))
    dW = numpy_ref.delta_weight(B, A, sigma)
    np.testing.assert_allclose(tx.grad.numpy(), s * g @ dW, rtol=1e-12, atol=1e-12)  # d/dx of s x ΔW^T
    np.testing.assert_array_equal(tbase.grad.numpy(), g)  # the output's gradient passes through
    dense = [t.requires_grad_() for t in _t(B, A, sigma)]
    (s * torch.from_numpy(x) @ torch_ref.delta_weight(*dense).T).backward(torch.from_numpy(g))
    for fast, ref in zip((tB, tA, ts), dense):
        torch.testing.assert_close(fast.grad, ref.grad, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("strategy", STRATEGIES)
@pytest.mark.parametrize("shape", SHAPES, ids=IDS)
def test_gradcheck_with_scale_and_out(strategy, shape, rng):
    m, n, r, b = shape
    B, A, sigma = random_factors(rng, m, n, r, b)
    args = tuple(t.requires_grad_() for t in _t(rng.standard_normal((2, n)), B, A, sigma, rng.standard_normal((2, m))))

    def f(x, B, A, sigma, base):
        return torch_ref._bora_matmul(x, B, A, sigma, strategy, scale=-1.5, out=base * 1.0)

    assert torch.autograd.gradcheck(f, args)
    assert torch.autograd.gradcheck(lambda *a: torch_ref._bora_matmul(*a, strategy, scale=2.5), args[:4])


@pytest.mark.parametrize("strategy", STRATEGIES)
def test_scale_leaves_the_caller_sigma_untouched(strategy):
    # b = 1: sigma.permute(2, 0, 1) is already contiguous, so a careless in-place scale would write into sigma.
    sigma = torch.randn(1, 1, 3, dtype=torch.float64)
    before = sigma.clone()
    torch_ref._bora_matmul(torch.randn(4, 5, dtype=torch.float64), torch.randn(6, 3, dtype=torch.float64),
                           torch.randn(3, 5, dtype=torch.float64), sigma, strategy, scale=3.0)
    assert torch.equal(sigma, before)


@pytest.mark.parametrize("shape", [(24, 40, 3, 7), (64, 16, 2, 16), (48, 48, 4, 5)])
def test_aligned_block_writes_into_out_leave_the_neighbouring_blocks_exact(shape, rng, monkeypatch):
    # Forced block-by-block writes widened to a cache line: the widened columns belong to the
    # previous block and must only gain zero, also when adding into a non-zero out.
    monkeypatch.setattr(torch_ref, "_ALIGNED_WRITES_MIN_BYTES", 0)
    m, n, r, b = shape
    B, A, sigma = random_factors(rng, m, n, r, b)
    x, base, g = rng.standard_normal((6, n)), rng.standard_normal((6, m)), rng.standard_normal((6, m))
    tx, tB, tA, ts = (t.requires_grad_() for t in _t(x, B, A, sigma))
    y = torch_ref._bora_matmul(tx, tB, tA, ts, "bmm", scale=0.5, out=torch.from_numpy(base.copy()))
    np.testing.assert_allclose(y.detach().numpy(), base + 0.5 * numpy_ref.bora_matmul(x, B, A, sigma), rtol=1e-12, atol=1e-12)
    y.backward(torch.from_numpy(g))
    np.testing.assert_allclose(tx.grad.numpy(), 0.5 * g @ numpy_ref.delta_weight(B, A, sigma), rtol=1e-12, atol=1e-12)


# --- the layer ---


def _layer(m, n, r, b, **kwargs):
    layer = BoRALinear(n, m, r, b, alpha=3.0, dtype=torch.float64, **kwargs)
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in (layer.lora_A, layer.lora_B, layer.sigma):
            p.copy_(torch.randn(p.shape, generator=g, dtype=torch.float64))
    return layer


def _dense_forward(layer, x, x_adapter=None):
    """``base(x) + s (x_a ΔW^T)`` with ΔW formed by torch_ref.delta_weight (plain autograd)."""
    x_a = x if x_adapter is None else x_adapter
    dW = torch_ref.delta_weight(layer.lora_B, layer.lora_A, layer.effective_sigma())
    return layer.base(x) + layer.scaling * (x_a @ dW.T)


def _grads(layer, x):
    """Gradients of x, lora_A, lora_B, sigma, base.weight, base.bias (None where not required)."""
    tensors = (x, layer.lora_A, layer.lora_B, layer.sigma, layer.base.weight, layer.base.bias)
    return [None if t.grad is None else t.grad.clone() for t in tensors]


def _zero(layer, x):
    for t in (x, *layer.parameters()):
        t.grad = None


@pytest.mark.parametrize("shape", SHAPES, ids=IDS)
def test_layer_gradients_equal_the_dense_form_base_unfrozen(shape):
    # Unfreezing the base weight checks that adding into its output leaves its own backward intact.
    m, n, r, b = shape
    layer = _layer(m, n, r, b)
    layer.base.requires_grad_(True)
    x = torch.randn(2, 3, n, dtype=torch.float64, requires_grad=True)
    g = torch.randn(2, 3, m, dtype=torch.float64)
    y = layer(x)
    np.testing.assert_allclose(y.detach().numpy(), _dense_forward(layer, x).detach().numpy(), rtol=1e-12, atol=1e-12)
    y.backward(g)
    fast = _grads(layer, x)
    _zero(layer, x)
    _dense_forward(layer, x).backward(g)
    for a, d in zip(fast, _grads(layer, x)):
        torch.testing.assert_close(a, d, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("shape", SHAPES[:2], ids=IDS[:2])
def test_layer_gradcheck(shape):
    m, n, r, b = shape
    layer = _layer(m, n, r, b)
    args = (torch.randn(3, n, dtype=torch.float64, requires_grad=True),
            *(p.detach().clone().requires_grad_() for p in (layer.lora_A, layer.lora_B, layer.sigma)))

    def f(x, A, B, sigma):
        return functional_call(layer, {"lora_A": A, "lora_B": B, "sigma": sigma}, (x,))

    assert torch.autograd.gradcheck(f, args)


def test_layer_with_dropout_equals_the_dense_form_on_the_same_mask():
    layer = _layer(12, 8, 3, 4, dropout=0.4)
    layer.train()
    x = torch.randn(5, 8, dtype=torch.float64, requires_grad=True)
    g = torch.randn(5, 12, dtype=torch.float64)
    torch.manual_seed(11)
    layer(x).backward(g)
    fast = _grads(layer, x)[:4]
    _zero(layer, x)
    torch.manual_seed(11)
    x_dropped = torch.nn.functional.dropout(x, 0.4, training=True)
    _dense_forward(layer, x, x_dropped).backward(g)
    for a, d in zip(fast, _grads(layer, x)[:4]):
        torch.testing.assert_close(a, d, rtol=1e-12, atol=1e-12)


def test_layer_input_without_gradient_still_trains_the_adapter():
    layer = _layer(12, 8, 3, 4)
    x = torch.randn(5, 8, dtype=torch.float64)  # the first layer's input: no gradient
    g = torch.randn(5, 12, dtype=torch.float64)
    layer(x).backward(g)
    fast = [p.grad.clone() for p in (layer.lora_A, layer.lora_B, layer.sigma)]
    for p in layer.parameters():
        p.grad = None
    _dense_forward(layer, x).backward(g)
    for a, p in zip(fast, (layer.lora_A, layer.lora_B, layer.sigma)):
        torch.testing.assert_close(a, p.grad, rtol=1e-12, atol=1e-12)


def test_merged_layer_returns_the_base_output_with_its_gradients():
    layer = _layer(12, 8, 3, 4)
    x = torch.randn(5, 8, dtype=torch.float64, requires_grad=True)
    expected = _dense_forward(layer, x).detach()
    layer.merge()
    y = layer(x)
    torch.testing.assert_close(y, expected, rtol=1e-12, atol=1e-12)
    y.sum().backward()
    torch.testing.assert_close(x.grad, layer.base.weight.detach().sum(0).expand(5, 8), rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("base_dtype", [torch.float16, torch.bfloat16])
def test_low_precision_base_with_float32_adapter_adds_out_of_place(base_dtype):
    layer = BoRALinear(64, 48, 4, 8, dtype=base_dtype)
    with torch.no_grad():
        layer.lora_B.normal_()
    assert layer.lora_A.dtype == torch.float32
    x = torch.randn(4, 64).to(base_dtype)
    base_out = layer.base(x)
    y = layer(x)
    assert y.dtype == base_dtype
    # Truth: base output in its dtype, plus the float32 update rounded once to it.
    x32 = x.float().numpy().astype(np.float64)
    update = layer.scaling * numpy_ref.bora_matmul(
        x32, *(t.detach().double().numpy() for t in (layer.lora_B, layer.lora_A, layer.effective_sigma())))
    expected = base_out.detach().double().numpy() + update
    eps = torch.finfo(base_dtype).eps
    np.testing.assert_allclose(y.detach().double().numpy(), expected, rtol=0, atol=2 * eps * np.abs(expected).max())
    y.float().sum().backward()
    assert layer.sigma.grad is not None and layer.sigma.grad.dtype == torch.float32


def test_autocast_keeps_a_float32_adapter_out_of_place_and_correct():
    layer = BoRALinear(32, 24, 4, 4)
    with torch.no_grad():
        layer.lora_B.normal_()
    x = torch.randn(6, 32)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y = layer(x)
    assert y.dtype == torch.bfloat16
    xd = x.double().numpy()
    W, bias = layer.base.weight.detach().double().numpy(), layer.base.bias.detach().double().numpy()
    update = layer.scaling * numpy_ref.bora_matmul(
        xd, *(t.detach().double().numpy() for t in (layer.lora_B, layer.lora_A, layer.effective_sigma())))
    expected = xd @ W.T + bias + update
    np.testing.assert_allclose(y.detach().double().numpy(), expected, rtol=0, atol=4 * 2**-8 * np.abs(expected).max())
    y.float().sum().backward()
    assert layer.lora_A.grad is not None


def test_inference_mode_adds_in_place_and_matches_the_reference():
    layer = _layer(12, 8, 3, 4)
    x = torch.randn(2, 5, 8, dtype=torch.float64)
    expected = _dense_forward(layer, x).detach()
    with torch.inference_mode():
        y = layer(x)
    torch.testing.assert_close(y, expected, rtol=1e-12, atol=1e-12)


def test_layer_refuses_higher_order_gradients():
    layer = _layer(12, 8, 3, 4)
    x = torch.randn(5, 8, dtype=torch.float64, requires_grad=True)
    with pytest.raises(RuntimeError, match=r"first-order differentiable only: backward\(create_graph=True\)"):
        torch.autograd.grad(layer(x).sum(), x, create_graph=True)
