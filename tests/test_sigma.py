"""The Σ parameterisation registry: every entry keeps the promises the rest of the library relies on."""

import pytest
import torch

from bora_ref import BoRALinear, BoRAValueError, numpy_ref
from bora_ref.nn.sigma import DEFAULT_SIGMA_PARAM, SIGMA_PARAMS, SIGMA_REGISTRY, get_sigma_param

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
