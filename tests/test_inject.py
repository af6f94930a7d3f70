"""apply_bora and the adapter state-dict helpers on small real torch models."""

import copy

import pytest
import torch
from torch import nn

from bora_ref import (
    BoRALinear,
    adapter_state_dict,
    apply_bora,
    bora_layers,
    load_adapter_state_dict,
    merge_and_unload,
    merge_bora,
    param_count,
    unmerge_bora,
)


class Block(nn.Module):
    def __init__(self, d: int = 16):
        super().__init__()
        self.query = nn.Linear(d, d)
        self.value = nn.Linear(d, d)
        self.norm = nn.LayerNorm(d)
        self.mlp = nn.Sequential(nn.Linear(d, 2 * d), nn.GELU(), nn.Linear(2 * d, d))

    def forward(self, x):
        return self.norm(x + self.query(x) * torch.sigmoid(self.value(x))) + self.mlp(x)


class Tiny(nn.Module):
    def __init__(self):
        super().__init__()
        self.blocks = nn.ModuleList([Block(), Block()])
        self.head = nn.Linear(16, 3)

    def forward(self, x):
        for blk in self.blocks:
            x = blk(x)
        return self.head(x)


def _state(model):
    return {k: (v.detach().clone(), v.requires_grad) for k, v in model.named_parameters()}


def _assert_same_state(model, state):
    now = _state(model)
    assert now.keys() == state.keys()
    for k in state:
        assert torch.equal(now[k][0], state[k][0]) and now[k][1] == state[k][1], k


def _randomise_adapters(model, seed=0):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for layer in bora_layers(model):
            for p in (layer.lora_A, layer.lora_B, layer.sigma):
                p.copy_(torch.randn(p.shape, generator=g))


def test_apply_bora_replaces_by_suffix_and_freezes_the_rest():
    model = Tiny()
    x = torch.randn(4, 16)
    y0 = model(x)
    out = apply_bora(model, target_modules=["query", "value"], r=2, b=4, alpha=4, sigma_param="raw", dropout=0.1)
    assert out is model
    names = [n for n, m in model.named_modules() if isinstance(m, BoRALinear)]
    assert names == ["blocks.0.query", "blocks.0.value", "blocks.1.query", "blocks.1.value"]
    for layer in bora_layers(model):
        assert layer.scaling == 2.0 and layer.sigma_param == "raw" and layer.dropout.p == 0.1
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable == {f"{n}.{p}" for n in names for p in ("lora_A", "lora_B", "sigma")}
    assert sum(p.numel() for p in model.parameters() if p.requires_grad) == 4 * param_count(16, 16, 2, 4).total
    model.eval()
    torch.testing.assert_close(model(x), y0, rtol=0, atol=0)  # B = 0 at init


def test_apply_bora_with_regex_matches_whole_names():
    model = Tiny()
    apply_bora(model, target_modules=r"blocks\.\d+\.mlp\.(0|2)", r=2, b=2)
    assert [n for n, m in model.named_modules() if isinstance(m, BoRALinear)] == [
        "blocks.0.mlp.0", "blocks.0.mlp.2", "blocks.1.mlp.0", "blocks.1.mlp.2"]
    # "query" as a regex is a full match, so it matches nothing in Tiny (names are dotted paths)
    with pytest.raises(ValueError, match=r"target_modules='query' matches no module of the model"):
        apply_bora(Tiny(), target_modules="query", r=2, b=2)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"target_modules": ["keys"]}, r"target_modules=\['keys'\] matches no module of the model"),
        ({"target_modules": ["norm"]}, r"matches 'blocks.0.norm', a LayerNorm; only torch.nn.Linear can be adapted"),
        ({"target_modules": ["mlp"]}, r"matches 'blocks.0.mlp', a Sequential"),
        ({"target_modules": ["query", "head"], "b": 4}, r"cannot adapt 'head' \(3x16\): b must satisfy 1 <= b <= min\(m, n\) = 3"),
        ({"target_modules": ["query"], "r": 0}, r"^r must be >= 1, got 0"),
        ({"target_modules": []}, r"non-empty list"),
        ({"target_modules": "(unclosed"}, r"is not a valid regular expression"),
        ({"target_modules": 3}, r"target_modules must be a regex string or a list of module names, got int"),
        ({"target_modules": ["query"], "sigma_param": "bad"}, r"sigma_param must be one of"),
        ({"target_modules": ["query"], "ranks": 3}, r"unknown keyword arguments \['ranks'\]"),
    ],
)
def test_apply_bora_rejects_bad_input_and_leaves_model_unchanged(kwargs, match):
    model = Tiny()
    before = _state(model)
    structure = repr(model)
    args = {"r": 2, "b": 2} | kwargs
    with pytest.raises(ValueError, match=match):
        apply_bora(model, **args)
    assert repr(model) == structure
    _assert_same_state(model, before)


def test_apply_bora_twice_on_the_same_module_is_an_error():
    model = apply_bora(Tiny(), target_modules=["query"], r=2, b=2)
    with pytest.raises(ValueError, match="already is a BoRALinear"):
        apply_bora(model, target_modules=r".*query", r=2, b=2)
    apply_bora(model, target_modules=["value"], r=2, b=2)  # other modules: fine, both adapters stay trainable
    assert len(list(bora_layers(model))) == 4
    assert all(layer.lora_A.requires_grad for layer in bora_layers(model))


def test_adapter_state_dict_roundtrip_is_bit_exact():
    model = apply_bora(Tiny(), target_modules=["query", "value"], r=2, b=4)
    _randomise_adapters(model, seed=1)
    saved = {k: v.clone() for k, v in adapter_state_dict(model).items()}
    assert len(saved) == 12 and all(k.rsplit(".", 1)[1] in ("lora_A", "lora_B", "sigma") for k in saved)
    other = copy.deepcopy(model)
    _randomise_adapters(other, seed=2)
    load_adapter_state_dict(other, saved)
    for k, v in adapter_state_dict(other).items():
        assert torch.equal(v, saved[k])
    x = torch.randn(3, 16)
    torch.testing.assert_close(other(x), model(x), rtol=0, atol=0)


@pytest.mark.parametrize(
    ("mutate", "match"),
    [
        (lambda sd: sd.pop("blocks.0.query.sigma"), r"missing \['blocks.0.query.sigma'\]"),
        (lambda sd: sd.__setitem__("extra.lora_A", torch.zeros(1)), r"unexpected \['extra.lora_A'\]"),
        (lambda sd: sd.__setitem__("blocks.1.value.lora_B", torch.zeros(16, 3)), r"has shape \(16, 3\), the model needs \(16, 2\)"),
        (lambda sd: sd.__setitem__("blocks.1.value.lora_B", torch.zeros(16, 2, dtype=torch.float64)), r"has dtype torch.float64"),
        (lambda sd: sd.__setitem__("blocks.0.value.lora_A", torch.full((2, 16), float("nan"))), r"contains NaN"),
        (lambda sd: sd.__setitem__("blocks.0.value.lora_A", [[0.0]]), r"must be a torch.Tensor, got list"),
    ],
)
def test_load_adapter_state_dict_is_all_or_nothing(mutate, match):
    model = apply_bora(Tiny(), target_modules=["query", "value"], r=2, b=4)
    _randomise_adapters(model, seed=3)
    sd = {k: torch.randn_like(v) for k, v in adapter_state_dict(model).items()}
    mutate(sd)
    before = _state(model)
    with pytest.raises(ValueError, match=match):
        load_adapter_state_dict(model, sd)
    _assert_same_state(model, before)


def test_merge_unmerge_and_unload_whole_model():
    model = apply_bora(Tiny(), target_modules=["query", "value", "head"], r=2, b=3)
    _randomise_adapters(model)
    model.eval()
    x = torch.randn(5, 16)
    y = model(x)
    merge_bora(model, safe=True)
    assert all(layer.merged for layer in bora_layers(model))
    torch.testing.assert_close(model(x), y, rtol=1e-5, atol=1e-5)
    unmerge_bora(model)
    torch.testing.assert_close(model(x), y, rtol=1e-5, atol=1e-5)
    merge_and_unload(model)
    assert not list(bora_layers(model)) and isinstance(model.head, nn.Linear)
    torch.testing.assert_close(model(x), y, rtol=1e-5, atol=1e-5)


def test_training_step_changes_only_adapters():
    model = apply_bora(Tiny(), target_modules=["query", "value"], r=2, b=4)
    frozen = {k: v.detach().clone() for k, v in model.named_parameters() if not v.requires_grad}
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    for _ in range(3):
        opt.zero_grad()
        model(torch.randn(8, 16)).pow(2).mean().backward()
        opt.step()
    for k, v in model.named_parameters():
        if k in frozen:
            assert torch.equal(v, frozen[k]), k
    assert all(layer.lora_B.abs().sum() > 0 for layer in bora_layers(model))


def test_replace_submodule_swaps_nested_and_top_level_modules_and_refuses_the_root():
    from bora_ref import BoRAValueError
    from bora_ref.nn._modules import replace_submodule

    model = nn.Sequential(nn.Sequential(nn.Linear(3, 3)), nn.ReLU())
    new, top = nn.Linear(3, 3), nn.Tanh()
    replace_submodule(model, "0.0", new)
    replace_submodule(model, "1", top)
    assert model[0][0] is new and model[1] is top and [n for n, _ in model.named_modules()] == ["", "0", "0.0", "1"]
    with pytest.raises(BoRAValueError, match=r"name must name a submodule, got ''"):
        replace_submodule(model, "", new)
    with pytest.raises(AttributeError):
        replace_submodule(model, "2.0", new)
