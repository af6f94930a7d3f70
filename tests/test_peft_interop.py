"""PEFT as an external oracle (BoRA with Σ ≡ 1 is PEFT's LoRA) and the conversions both ways."""

from __future__ import annotations

import copy
from collections import OrderedDict

import numpy as np
import pytest
import torch
from torch import nn

peft = pytest.importorskip("peft")
from peft import LoraConfig, get_peft_model  # noqa: E402

from bora_ref.nn.sigma import SIGMA_PARAMS
from bora_ref import (  # noqa: E402
    BoRALinear,
    apply_bora,
    bora_from_peft,
    bora_layers,
    bora_to_peft,
    lora_factors,
    merge_and_unload,
    merge_bora,
    numpy_ref,
)

TARGETS = ["fc1", "fc2"]
# float64 throughout: rounding of the two evaluation orders (PEFT's (xA^T)B^T against BoRA's
# block-wise mix) differs by a few ulp of values of order 10; 1e-12 leaves a wide margin.
TOL64 = {"rtol": 0.0, "atol": 1e-12}


def _base_model() -> nn.Module:
    """Named Linears with an uneven split for b = 3 (10 inputs, 16/12 outputs) and an untouched head."""
    torch.manual_seed(7)
    return nn.Sequential(OrderedDict(
        fc1=nn.Linear(10, 16), act1=nn.Tanh(), fc2=nn.Linear(16, 12), act2=nn.GELU(), head=nn.Linear(12, 5),
    )).double()


def _peft_layers(model: nn.Module) -> dict[str, nn.Module]:
    from peft.tuners.lora import Linear as LoraLinear

    return {name.rpartition(".")[2]: m for name, m in model.named_modules() if isinstance(m, LoraLinear)}


def _randomise_peft(pm: nn.Module, seed: int = 3) -> None:
    """Random A and B (PEFT starts with B = 0, which would hide everything)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for layer in _peft_layers(pm).values():
            for key in layer.lora_A:
                for w in (layer.lora_A[key].weight, layer.lora_B[key].weight):
                    w.copy_(torch.randn(w.shape, generator=g, dtype=w.dtype))


def _snapshot(model: nn.Module):
    return ([(n, type(m)) for n, m in model.named_modules()],
            {k: (v.detach().clone(), v.requires_grad) for k, v in model.named_parameters()})


def _assert_unchanged(model: nn.Module, snap) -> None:
    modules, params = _snapshot(model)
    assert modules == snap[0]
    assert params.keys() == snap[1].keys()
    for k, (v, grad) in snap[1].items():
        assert torch.equal(params[k][0], v) and params[k][1] == grad, k


@pytest.fixture
def x() -> torch.Tensor:
    return torch.randn(2, 7, 10, dtype=torch.float64, generator=torch.Generator().manual_seed(11))


@pytest.mark.parametrize("rslora", [False, True])
@pytest.mark.parametrize("sigma_param", SIGMA_PARAMS)
def test_bora_with_unit_sigma_is_peft_lora(x, rslora, sigma_param):
    """Same A, B in PEFT's LoRA and in BoRA (b = 3, Σ ≡ 1): forward, ΔW, merge, merge_and_unload agree."""
    base = _base_model()
    pm = get_peft_model(copy.deepcopy(base), LoraConfig(r=4, lora_alpha=6, use_rslora=rslora, target_modules=TARGETS))
    _randomise_peft(pm)
    bm = apply_bora(copy.deepcopy(base), target_modules=TARGETS, r=4, b=3, alpha=6, rslora=rslora, sigma_param=sigma_param)
    peft_layers = _peft_layers(pm)
    with torch.no_grad():
        for name, layer in zip(TARGETS, bora_layers(bm)):
            layer.lora_A.copy_(peft_layers[name].lora_A["default"].weight)
            layer.lora_B.copy_(peft_layers[name].lora_B["default"].weight)
            layer.sigma.fill_(1.0 if sigma_param == "raw" else 0.0)
            assert torch.equal(layer.effective_sigma(), torch.ones(3, 3, 4, dtype=torch.float64))
    # PEFT's scaling and ours come from the same formula
    for name, layer in zip(TARGETS, bora_layers(bm)):
        assert layer.scaling == peft_layers[name].scaling["default"]

    y_peft = pm(x)
    assert not torch.allclose(y_peft, base(x))  # the adapters do something
    torch.testing.assert_close(bm(x), y_peft, **TOL64)
    for name, layer in zip(TARGETS, bora_layers(bm)):
        torch.testing.assert_close(layer.delta_weight(), peft_layers[name].get_delta_weight("default"), **TOL64)

    pm.merge_adapter()
    merge_bora(bm)
    for name, layer in zip(TARGETS, bora_layers(bm)):
        torch.testing.assert_close(layer.base.weight, peft_layers[name].base_layer.weight, **TOL64)
    torch.testing.assert_close(bm(x), pm(x), **TOL64)

    pm.unmerge_adapter()
    plain_peft = pm.merge_and_unload()
    plain_bora = merge_and_unload(bm)
    assert [type(m) for m in plain_bora.modules()] == [type(m) for m in plain_peft.modules()]
    sd_peft, sd_bora = plain_peft.state_dict(), plain_bora.state_dict()
    assert sd_peft.keys() == sd_bora.keys()
    for k in sd_peft:
        torch.testing.assert_close(sd_bora[k], sd_peft[k], **TOL64)
    torch.testing.assert_close(plain_bora(x), y_peft, **TOL64)


@pytest.mark.parametrize("sigma_param", SIGMA_PARAMS)
def test_bora_from_peft_keeps_outputs_and_trains_sigma(x, sigma_param):
    pm = get_peft_model(_base_model(), LoraConfig(r=4, lora_alpha=8, target_modules=TARGETS, lora_dropout=0.1))
    _randomise_peft(pm)
    pm.eval()
    y_peft = pm(x)
    A_peft = {n: layer.lora_A["default"].weight.detach().clone() for n, layer in _peft_layers(pm).items()}

    model = bora_from_peft(pm, b=3, sigma_param=sigma_param)
    assert model is pm.get_base_model()
    assert [n for n, m in model.named_modules() if isinstance(m, BoRALinear)] == TARGETS
    for name, layer in zip(TARGETS, bora_layers(model)):
        assert (layer.r, layer.b, layer.alpha, layer.sigma_param, layer.dropout.p) == (4, 3, 8.0, sigma_param, 0.1)
        assert torch.equal(layer.effective_sigma(), torch.ones(3, 3, 4, dtype=torch.float64))
        assert torch.equal(layer.lora_A, A_peft[name])  # copied, not re-initialised
    assert {n for n, p in model.named_parameters() if p.requires_grad} == {
        f"{t}.{p}" for t in TARGETS for p in ("lora_A", "lora_B", "sigma")
    }
    model.eval()
    torch.testing.assert_close(model(x), y_peft, **TOL64)

    # It now trains as BoRA: sigma gets gradients and moves the output.
    model(x).square().sum().backward()
    for layer in bora_layers(model):
        assert layer.sigma.grad is not None and bool(layer.sigma.grad.abs().gt(0).any())


def test_bora_from_peft_modules_to_save_rank_pattern_and_set_scale(x):
    config = LoraConfig(r=4, lora_alpha=8, target_modules=TARGETS, rank_pattern={"fc2": 2}, modules_to_save=["head"])
    pm = get_peft_model(_base_model(), config)
    _randomise_peft(pm)
    saved_head = pm.base_model.model.head.modules_to_save["default"]
    with torch.no_grad():
        saved_head.weight.add_(0.5)  # the trained copy differs from the original head
    _peft_layers(pm)["fc1"].set_scale("default", 0.5)  # PEFT changes scaling without changing lora_alpha
    y_peft = pm(x)
    model = bora_from_peft(pm, b=2)
    fc1, fc2 = bora_layers(model)
    assert (fc1.r, fc2.r) == (4, 2)
    assert fc1.scaling == 2.0 * 0.5
    assert model.head is saved_head and all(p.requires_grad for p in model.head.parameters())
    torch.testing.assert_close(model(x), y_peft, **TOL64)


def test_bora_from_peft_chooses_the_named_adapter(x):
    pm = get_peft_model(_base_model(), LoraConfig(r=4, target_modules=TARGETS))
    pm.add_adapter("other", LoraConfig(r=3, lora_alpha=5, target_modules=TARGETS))
    _randomise_peft(pm)
    pm.set_adapter("other")
    y_other = pm(x)
    snap = _snapshot(pm)
    with pytest.raises(ValueError, match=r"has adapters \['default', 'other'\]; pass adapter_name="):
        bora_from_peft(pm, b=2)
    with pytest.raises(ValueError, match="adapter_name='nope' is not an adapter of PEFT layer"):
        bora_from_peft(pm, b=2, adapter_name="nope")
    _assert_unchanged(pm, snap)
    model = bora_from_peft(pm, b=2, adapter_name="other")
    assert all(layer.r == 3 for layer in bora_layers(model))
    torch.testing.assert_close(model(x), y_other, **TOL64)


class _WithEmbedding(nn.Module):
    def __init__(self):
        super().__init__()
        self.emb = nn.Embedding(20, 10)
        self.fc1 = nn.Linear(10, 16)


def _peft(model=None, **config):
    return get_peft_model(model if model is not None else _base_model(), LoraConfig(r=4, **config))


def _merged(pm):
    pm.merge_adapter()
    return pm


def _disabled(pm):
    pm.base_model.disable_adapter_layers()
    return pm


@pytest.mark.parametrize(
    ("make", "b", "match"),
    [
        (lambda: _peft(target_modules=TARGETS, use_dora=True), 2, "PEFT layer 'fc1' uses a LoRA variant"),
        (lambda: _peft(target_modules=TARGETS, lora_bias=True), 2, "PEFT layer 'fc1' has lora_bias=True"),
        (lambda: _merged(_peft(target_modules=TARGETS)), 2, "PEFT layer 'fc1' is merged"),
        (lambda: _peft(_WithEmbedding(), target_modules=["emb", "fc1"]), 2, "'emb' is a PEFT Embedding; only LoRA on nn.Linear"),
        (lambda: _peft(target_modules=TARGETS), 11,
         r"cannot convert PEFT layer 'fc1' \(16x10\): b must satisfy 1 <= b <= min\(m, n\) = 10"),
        (lambda: _disabled(_peft(target_modules=TARGETS)), 2, "PEFT layer 'fc1' has its adapters disabled"),
        (lambda: _base_model(), 2, "has no PEFT LoRA layers"),
    ],
    ids=["dora", "lora_bias", "merged", "embedding", "b-too-large", "disabled", "no-lora"],
)
def test_bora_from_peft_refuses_and_changes_nothing(make, b, match):
    pm = make()
    snap = _snapshot(pm)
    with pytest.raises(ValueError, match=match):
        bora_from_peft(pm, b=b)
    _assert_unchanged(pm, snap)


def test_bora_from_peft_argument_errors():
    pm = get_peft_model(_base_model(), LoraConfig(r=4, target_modules=TARGETS))
    with pytest.raises(ValueError, match=r"sigma_param must be one of \('exp_norm', 'raw'\), got 'log'"):
        bora_from_peft(pm, b=2, sigma_param="log")
    with pytest.raises(ValueError, match="model must be a torch.nn.Module, got str"):
        bora_from_peft("model", b=2)


def _layer(m, n, r, b, sigma, seed=5, dtype=torch.float64) -> BoRALinear:
    layer = BoRALinear(n, m, r, b, sigma_param="raw", alpha=3.0, dtype=dtype)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        layer.lora_A.copy_(torch.randn(r, n, generator=g, dtype=dtype))
        layer.lora_B.copy_(torch.randn(m, r, generator=g, dtype=dtype))
        layer.sigma.copy_(sigma.to(dtype))
    return layer


def _reference_delta(layer: BoRALinear) -> np.ndarray:
    """scaling * ΔW from the NumPy ground truth, in float64."""
    B, A = layer.lora_B.detach().double().numpy(), layer.lora_A.detach().double().numpy()
    return layer.scaling * numpy_ref.delta_weight(B, A, layer.effective_sigma().detach().double().numpy())


@pytest.mark.parametrize(("m", "n", "r", "b"), [(13, 10, 3, 1), (13, 10, 3, 3), (8, 8, 5, 4), (9, 7, 4, 7)])
def test_lora_factors_of_separable_sigma_reproduce_delta(m, n, r, b, rng):
    u, v = rng.standard_normal((b, r)), rng.standard_normal((b, r))
    sigma = torch.from_numpy(u[:, None, :] * v[None, :, :])  # Σ_ij = u_i ⊙ v_j, (b, b, r)
    layer = _layer(m, n, r, b, sigma)
    B_new, A_new = lora_factors(layer)
    assert B_new.shape == (m, r) and A_new.shape == (r, n) and B_new.dtype == torch.float64
    np.testing.assert_allclose(layer.scaling * (B_new @ A_new).numpy(), _reference_delta(layer), rtol=0, atol=1e-12)


def test_lora_factors_exact_cases(rng):
    # Σ ≡ 1: the LoRA factors come back bit for bit.
    layer = _layer(12, 9, 3, 3, torch.ones(3, 3, 3))
    B_new, A_new = lora_factors(layer)
    assert torch.equal(B_new, layer.lora_B) and torch.equal(A_new, layer.lora_A)
    # b = 1 with a random diagonal: the diagonal is folded into B exactly.
    s = torch.from_numpy(rng.standard_normal((1, 1, 4)))
    layer = _layer(6, 5, 4, 1, s)
    B_new, A_new = lora_factors(layer)
    assert torch.equal(B_new, layer.lora_B * s[0, 0]) and torch.equal(A_new, layer.lora_A)
    # A rank component whose Σ is all zero contributes nothing, and is still separable.
    sig = torch.from_numpy(rng.standard_normal((2, 1, 3)) * rng.standard_normal((1, 2, 3)))
    sig[:, :, 1] = 0
    layer = _layer(8, 6, 3, 2, sig)
    B_new, A_new = lora_factors(layer)
    np.testing.assert_allclose(layer.scaling * (B_new @ A_new).numpy(), _reference_delta(layer), rtol=0, atol=1e-12)


def test_lora_factors_float32_and_exp_norm(rng):
    """exp_norm with σ_ij = a_i + c_j (additive in log space) is separable; float32 within its eps."""
    a, c = rng.uniform(-1, 1, (3, 4)), rng.uniform(-1, 1, (3, 4))
    layer = BoRALinear(12, 9, 4, 3, sigma_param="exp_norm", dtype=torch.float32)
    with torch.no_grad():
        layer.lora_B.copy_(torch.from_numpy(rng.standard_normal((9, 4))))
        layer.sigma.copy_(torch.from_numpy(a[:, None, :] + c[None, :, :]))
    B_new, A_new = lora_factors(layer, rtol=1e-5)  # exp() in float32 rounds each Σ entry by ~1 ulp
    np.testing.assert_allclose((layer.scaling * (B_new @ A_new)).double().numpy(), _reference_delta(layer), rtol=0, atol=1e-5)


def test_lora_factors_refuses_non_separable(rng):
    layer = _layer(12, 9, 3, 3, torch.from_numpy(rng.standard_normal((3, 3, 3))))
    with pytest.raises(ValueError, match=r"not separable .* with b=3 the update can reach rank 9 > r=3"):
        lora_factors(layer)
    with pytest.raises(ValueError, match="rtol must be a finite number > 0, got -1"):
        lora_factors(layer, rtol=-1)
    with pytest.raises(ValueError, match="layer must be a BoRALinear, got Linear"):
        lora_factors(nn.Linear(3, 3))


def test_peft_bora_peft_round_trip_is_exact(x):
    pm = get_peft_model(_base_model(), LoraConfig(r=4, lora_alpha=8, target_modules=TARGETS, modules_to_save=["head"]))
    _randomise_peft(pm)
    y = pm(x)
    weights = {n: (layer.lora_A["default"].weight.detach().clone(), layer.lora_B["default"].weight.detach().clone())
               for n, layer in _peft_layers(pm).items()}
    back = bora_to_peft(bora_from_peft(pm, b=3), adapter_name="again", modules_to_save=["head"])
    for name, layer in _peft_layers(back).items():
        assert torch.equal(layer.lora_A["again"].weight, weights[name][0])
        assert torch.equal(layer.lora_B["again"].weight, weights[name][1])
        assert layer.scaling["again"] == 2.0
    assert torch.equal(back(x), y)


def test_bora_to_peft_matches_bora_for_b1_and_separable(x, rng):
    model = apply_bora(_base_model(), target_modules=TARGETS, r=3, b=2, alpha=5.0, sigma_param="raw")
    g = torch.Generator().manual_seed(2)
    with torch.no_grad():
        for layer in bora_layers(model):
            layer.lora_B.copy_(torch.randn(layer.lora_B.shape, generator=g, dtype=torch.float64))
            u, v = rng.uniform(0.5, 2, (2, 3)), rng.uniform(0.5, 2, (2, 3))
            layer.sigma.copy_(torch.from_numpy(u[:, None, :] * v[None, :, :]))
    y = model(x)
    deltas = [layer.delta_weight().detach().clone() for layer in bora_layers(model)]
    pm = bora_to_peft(model)
    torch.testing.assert_close(pm(x), y, **TOL64)
    for name, delta in zip(TARGETS, deltas):
        torch.testing.assert_close(_peft_layers(pm)[name].get_delta_weight("default"), delta, **TOL64)
    assert {n for n, p in pm.named_parameters() if p.requires_grad} == {
        f"base_model.model.{t}.lora_{ab}.default.weight" for t in TARGETS for ab in "AB"
    }


def test_bora_to_peft_refuses_and_changes_nothing(rng):
    model = apply_bora(_base_model(), target_modules=TARGETS, r=3, b=2, sigma_param="raw")
    with torch.no_grad():
        model.fc2.sigma.copy_(torch.from_numpy(rng.standard_normal((2, 2, 3))))
        model.fc2.lora_B.copy_(torch.from_numpy(rng.standard_normal(tuple(model.fc2.lora_B.shape))))  # B = 0 is rank 0
    snap = _snapshot(model)
    with pytest.raises(ValueError, match=r"cannot convert BoRA layer 'fc2' to LoRA: effective sigma is not separable"):
        bora_to_peft(model)
    _assert_unchanged(model, snap)

    mixed = apply_bora(_base_model(), target_modules=["fc1"], r=3, b=2)
    apply_bora(mixed, target_modules=["fc2"], r=2, b=2)
    with pytest.raises(ValueError, match=r"differ in \(r, alpha, rslora, dropout\): 'fc1' has \(3, 3.0, False, 0.0\), 'fc2' has \(2"):
        bora_to_peft(mixed)
    merged = merge_bora(apply_bora(_base_model(), target_modules=TARGETS, r=3, b=1))
    with pytest.raises(ValueError, match="BoRA layer 'fc1' is merged"):
        bora_to_peft(merged)
    with pytest.raises(ValueError, match="model has no BoRALinear layers"):
        bora_to_peft(_base_model())
    with pytest.raises(ValueError, match="adapter_name must be a non-empty str, got ''"):
        bora_to_peft(model, adapter_name="")
    with pytest.raises(ValueError, match="modules_to_save entries must name modules of the model, got 'haed'"):
        bora_to_peft(model, modules_to_save=["haed"])
    with pytest.raises(ValueError, match="modules_to_save must be a list of module names, got the string 'head'"):
        bora_to_peft(model, modules_to_save="head")
    _assert_unchanged(model, snap)


# --- exact whenever rank(ΔW) <= r, not only for separable Σ --------------------------------------


def _identity_channel_sigma(b: int, r: int) -> torch.Tensor:
    """Channel matrices M_0 = I (rank b), M_k = 0 for k >= 1: not separable, rank S = b."""
    sigma = torch.zeros(b, b, r, dtype=torch.float64)
    sigma[:, :, 0] = torch.eye(b, dtype=torch.float64)
    return sigma


@pytest.mark.parametrize(("m", "n", "r"), [(8, 6, 2), (9, 7, 3), (12, 12, 2)])
def test_lora_factors_convert_the_non_separable_rank_r_counterexample(m, n, r):
    """b = 2, M_0 = I, M_1.. = 0: Σ is not separable, yet rank ΔW = 2 <= r, so a rank-r LoRA is exact."""
    layer = _layer(m, n, r, 2, _identity_channel_sigma(2, r))
    M0 = layer.effective_sigma().detach()[:, :, 0].numpy()
    assert np.linalg.matrix_rank(M0) == 2  # not u vᵀ: Σ is not separable
    ref = _reference_delta(layer)  # scaling * ΔW, NumPy ground truth
    assert np.linalg.matrix_rank(ref) == 2 <= r
    B_new, A_new = lora_factors(layer)
    assert B_new.shape == (m, r) and A_new.shape == (r, n) and B_new.dtype == torch.float64
    np.testing.assert_allclose(layer.scaling * (B_new @ A_new).numpy(), ref, rtol=0, atol=1e-14 * np.abs(ref).max() * max(m, n))
    if r > 2:  # the channel beyond the rank: zero column of B', unit row of A' (trainable, adds nothing)
        assert torch.equal(B_new[:, 2:], torch.zeros(m, r - 2, dtype=torch.float64))
        np.testing.assert_allclose(torch.linalg.norm(A_new[2:], dim=1).numpy(), 1.0, rtol=1e-12)


def test_lora_factors_refuse_a_generic_update_of_rank_2r_naming_rank_and_tolerance(rng):
    layer = _layer(10, 9, 2, 2, torch.from_numpy(rng.standard_normal((2, 2, 2))))
    assert np.linalg.matrix_rank(_reference_delta(layer)) == 4
    with pytest.raises(ValueError, match=r"not separable .* numerical rank 4 > r=2 \(structured SVD, tolerance \d\.\d+e-\d+\)"):
        lora_factors(layer)


@pytest.mark.parametrize(("where", "value"), [("sigma", float("nan")), ("lora_B", float("nan")), ("lora_A", float("inf")),
                                              ("sigma", float("-inf"))])
def test_lora_factors_refuse_non_finite_factors(where, value, rng):
    layer = _layer(8, 6, 2, 2, torch.ones(2, 2, 2))  # separable: the folding route would be taken
    with torch.no_grad():
        getattr(layer, where).view(-1)[3] = value
    name = {"sigma": "effective sigma", "lora_B": "lora_B", "lora_A": "lora_A"}[where]
    with pytest.raises(ValueError, match=rf"{name} has 1 non-finite value\(s\) \(NaN or inf\)"):
        lora_factors(layer)


def test_bora_to_peft_converts_the_counterexample_and_refuses_nan(x):
    model = apply_bora(_base_model(), target_modules=TARGETS, r=2, b=2, alpha=5.0, sigma_param="raw")
    g = torch.Generator().manual_seed(4)
    with torch.no_grad():
        for layer in bora_layers(model):
            layer.lora_B.copy_(torch.randn(layer.lora_B.shape, generator=g, dtype=torch.float64))
            layer.sigma.copy_(_identity_channel_sigma(2, 2))
    y = model(x)
    deltas = [layer.delta_weight().detach().clone() for layer in bora_layers(model)]
    nan_model = copy.deepcopy(model)
    with torch.no_grad():
        nan_model.fc1.sigma[0, 1, 1] = float("nan")
    snap = _snapshot(nan_model)
    with pytest.raises(ValueError, match=r"cannot convert BoRA layer 'fc1' to LoRA: effective sigma has 1 non-finite"):
        bora_to_peft(nan_model)
    assert [(n, type(m)) for n, m in nan_model.named_modules()] == snap[0]  # nothing replaced
    for k, p in nan_model.named_parameters():
        torch.testing.assert_close(p.detach(), snap[1][k][0], rtol=0, atol=0, equal_nan=True)  # nothing changed
    pm = bora_to_peft(model)
    torch.testing.assert_close(pm(x), y, **TOL64)
    for name, delta in zip(TARGETS, deltas):
        torch.testing.assert_close(_peft_layers(pm)[name].get_delta_weight("default"), delta, **TOL64)
