"""The Σ parameterisation registry: every entry keeps the promises the rest of the library relies on."""

import pytest
import torch
from torch import nn

from bora_ref import (
    BoRALinear, BoRAValueError, apply_bora, bora_from_peft, bora_layers, load_adapter, numpy_ref, save_adapter,
)
from bora_ref.nn.config import BoRAConfig
from bora_ref.nn.sigma import DEFAULT_SIGMA_PARAM, SIGMA_PARAMS, SIGMA_REGISTRY, SigmaParam, get_sigma_param

PARAMS = list(SIGMA_REGISTRY.values())


def test_default_is_the_papers_exp_norm():
    assert DEFAULT_SIGMA_PARAM == "exp_norm" == SIGMA_PARAMS[0]
    assert set(SIGMA_PARAMS) == set(SIGMA_REGISTRY)


@pytest.mark.parametrize("param", PARAMS, ids=lambda p: p.name)
def test_identity_value_gives_exactly_lora(param):
    sigma = torch.full((3, 3, 4), param.identity_value, dtype=torch.float64)
    assert torch.equal(param.effective(sigma), torch.ones_like(sigma))


@pytest.mark.parametrize("param", PARAMS, ids=lambda p: p.name)
def test_may_freeze_iff_the_initial_sigma_is_identity(param):
    sigma = torch.empty(4, 4, 3, dtype=torch.float64)
    param.init_(sigma, 50)
    is_identity = torch.equal(param.effective(sigma), torch.ones_like(sigma))
    assert is_identity == param.may_freeze


@pytest.mark.parametrize("param", PARAMS, ids=lambda p: p.name)
def test_effective_is_differentiable_and_shape_preserving(param):
    sigma = torch.randn(2, 2, 5, dtype=torch.float64, requires_grad=True)
    eff = param.effective(sigma)
    assert eff.shape == sigma.shape
    eff.sum().backward()
    assert sigma.grad is not None and torch.isfinite(sigma.grad).all()


def test_exp_norm_matches_its_formula_and_its_fixed_spread():
    sigma = torch.randn(3, 3, 4, dtype=torch.float64)
    expected = torch.exp(sigma / sigma.abs().mean())
    got = SIGMA_REGISTRY["exp_norm"].effective(sigma)
    torch.testing.assert_close(got, expected, rtol=0, atol=0)
    # mean |ln Σ| = 1 exactly for any non-zero σ: the normalisation fixes the spread.
    assert torch.log(got).abs().mean().item() == pytest.approx(1.0, abs=1e-12)


@pytest.mark.parametrize("name", SIGMA_PARAMS)
def test_layer_uses_the_registry(name):
    layer = BoRALinear(12, 10, r=3, b=2, sigma_param=name, dtype=torch.float64)
    with torch.no_grad():
        layer.lora_B.normal_()
        layer.sigma.normal_()
    param = get_sigma_param(name)
    torch.testing.assert_close(layer.effective_sigma(), param.effective(layer.sigma), rtol=0, atol=0)
    # the layer's ΔW is the NumPy reference on the effective Σ (not on the raw σ)
    expected = layer.scaling * numpy_ref.delta_weight(
        layer.lora_B.detach().numpy(), layer.lora_A.detach().numpy(), layer.effective_sigma().detach().numpy()
    )
    torch.testing.assert_close(layer.delta_weight().detach(), torch.from_numpy(expected), rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("bad", ["exp", "", None, 3, "RAW"])
def test_unknown_names_are_refused(bad):
    with pytest.raises(BoRAValueError, match=r"sigma_param must be one of \('exp_norm', 'raw'\), got "):
        get_sigma_param(bad)


# --- adding a parameterisation: one entry in SIGMA_REGISTRY, nothing else ---------------------------------------

def _init_near_minus_one_(sigma: torch.Tensor, fan_in: int) -> None:
    with torch.no_grad():
        sigma.uniform_(-1.5, -0.5)


# Σ = σ²; Σ = 1 at σ = -1 (deliberately neither built-in's 0 or 1), and its random initial σ is not that.
SQUARE = SigmaParam(name="square", description="Σ = σ² (a throwaway test parameterisation)",
                    init_=_init_near_minus_one_, effective=torch.square, identity_value=-1.0, may_freeze=False)


@pytest.fixture
def square(monkeypatch):
    """Register SQUARE the way a new parameterisation is added in the source (one dict entry); undone after."""
    monkeypatch.setitem(SIGMA_REGISTRY, SQUARE.name, SQUARE)
    yield SQUARE
    monkeypatch.undo()
    assert "square" not in SIGMA_REGISTRY


def _square_model() -> nn.Module:
    torch.manual_seed(11)
    return nn.Sequential(nn.Linear(10, 14), nn.Tanh(), nn.Linear(14, 9)).double()


def test_a_new_parameterisation_works_in_the_layer_and_apply_bora(square):
    layer = BoRALinear(12, 10, r=3, b=2, sigma_param="square", dtype=torch.float64)
    assert ((layer.sigma >= -1.5) & (layer.sigma <= -0.5)).all()  # its own init_ ran
    with torch.no_grad():
        layer.lora_B.normal_()
    expected = layer.scaling * numpy_ref.delta_weight(
        layer.lora_B.detach().numpy(), layer.lora_A.detach().numpy(), layer.sigma.detach().numpy() ** 2)
    torch.testing.assert_close(layer.delta_weight().detach(), torch.from_numpy(expected), rtol=1e-12, atol=1e-12)
    assert get_sigma_param("square") is square and "square" in str(BoRAConfig(r=2, b=2, sigma_param="square"))
    with pytest.raises(BoRAValueError, match=r"sigma_param must be one of \('exp_norm', 'raw', 'square'\), got 'cube'"):
        BoRAConfig(r=2, b=2, sigma_param="cube")

    model = apply_bora(_square_model(), target_modules=["0", "2"], r=2, b=3, sigma_param="square")
    assert [m.sigma_param for m in bora_layers(model)] == ["square", "square"]


def test_a_new_parameterisation_round_trips_through_adapter_files(square, tmp_path):
    source = apply_bora(_square_model(), target_modules=["0", "2"], r=2, b=3, sigma_param="square")
    with torch.no_grad():
        for layer in bora_layers(source):
            layer.lora_B.normal_()
    save_adapter(source, tmp_path)
    target = load_adapter(_square_model(), tmp_path)  # layers created from the file's sigma_param
    x = torch.randn(4, 10, dtype=torch.float64)
    assert [m.sigma_param for m in bora_layers(target)] == ["square", "square"]
    assert torch.equal(target(x), source(x))


def test_a_new_parameterisation_starts_from_lora_exactly_via_its_identity_value(square):
    """PEFT import and the LoRA -> BoRA upgrade set σ to the entry's identity_value, giving Σ = 1 exactly."""
    from bora_ref.experiments import finetune

    lora = apply_bora(_square_model(), target_modules=["0", "2"], r=2, b=1, sigma_param="raw")
    with torch.no_grad():
        for layer in bora_layers(lora):
            layer.lora_B.normal_()
    x = torch.randn(4, 10, dtype=torch.float64)
    before = lora(x)
    finetune.upgrade_to_bora(lora, 2, "square")
    assert all(torch.equal(m.effective_sigma(), torch.ones(2, 2, 2, dtype=torch.float64)) for m in bora_layers(lora))
    torch.testing.assert_close(lora(x), before, rtol=0, atol=1e-12)
    assert finetune.AdapterSpec.bora(2, 2, "square").sigma_param == "square"
    with pytest.raises(BoRAValueError, match=r"train_sigma=False needs a sigma_param whose initial Σ is 1 \['raw'\]"):
        finetune.AdapterSpec("frozen square", 2, 2, "square", train_sigma=False)  # may_freeze=False is honoured

    peft = pytest.importorskip("peft")
    peft_model = peft.get_peft_model(_square_model(), peft.LoraConfig(r=2, lora_alpha=4, target_modules=["0", "2"]))
    with torch.no_grad():
        for name, p in peft_model.named_parameters():
            if "lora_B" in name:
                p.normal_()
    before = peft_model(x)
    model = bora_from_peft(peft_model, b=3, sigma_param="square")
    assert [m.sigma_param for m in bora_layers(model)] == ["square", "square"]
    assert all(torch.equal(m.effective_sigma(), torch.ones(3, 3, 2, dtype=torch.float64)) for m in bora_layers(model))
    torch.testing.assert_close(model(x), before, rtol=0, atol=1e-12)
