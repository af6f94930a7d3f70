"""save_adapter / load_adapter: bit-exact round trip, file layout, atomic writes, all-or-nothing loading."""

from __future__ import annotations

import hashlib
import json
import os
import pickle
import struct

import pytest
import safetensors.torch
import torch
from torch import nn

import bora_ref
from bora_ref import BoRALinear, adapter_state_dict, apply_bora, bora_layers, load_adapter, merge_bora, save_adapter
from bora_ref.nn.adapter_io import CONFIG_NAME, WEIGHTS_NAME

TARGETS = ["query", "value"]


class Block(nn.Module):
    def __init__(self, d: int = 10):
        super().__init__()
        self.query = nn.Linear(d, 14)  # uneven blocks for b = 3 or 4
        self.value = nn.Linear(14, d)
        self.out = nn.Linear(d, d)

    def forward(self, x):
        return self.out(self.value(torch.tanh(self.query(x))))


def _model(seed: int = 0, **kwargs) -> nn.Module:
    """A base model (same base weights for every seed of the adapters) with random BoRA adapters."""
    torch.manual_seed(100)
    model = nn.Sequential(Block(), Block())
    if kwargs.get("plain"):
        return model
    apply_bora(model, target_modules=TARGETS, r=kwargs.get("r", 3), b=kwargs.get("b", 4), alpha=5.0,
               sigma_param=kwargs.get("sigma_param", "exp_norm"), adapter_dtype=kwargs.get("adapter_dtype"))
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for layer in bora_layers(model):
            for p in (layer.lora_A, layer.lora_B, layer.sigma):
                p.copy_(torch.randn(p.shape, generator=g, dtype=torch.float64).to(p.dtype))
    return model


def _snapshot(model: nn.Module):
    """Everything load_adapter could touch: module tree, parameters (values, dtype, requires_grad), buffers."""
    return (
        [(n, type(m), getattr(m, "merged", None)) for n, m in model.named_modules()],
        {k: (v.detach().clone(), v.requires_grad) for k, v in model.named_parameters()},
        {k: v.clone() for k, v in model.named_buffers()},
    )


def _assert_unchanged(model: nn.Module, snap) -> None:
    modules, params, buffers = _snapshot(model)
    assert modules == snap[0]
    assert params.keys() == snap[1].keys() and buffers.keys() == snap[2].keys()
    for k, (v, grad) in snap[1].items():
        assert params[k][0].dtype == v.dtype and torch.equal(params[k][0], v) and params[k][1] == grad, k


def _rewrite(directory, mutate) -> None:
    """Replace the tensor file by ``mutate(tensors)`` and record its correct hash (a consistent but wrong file)."""
    tensors = safetensors.torch.load_file(directory / WEIGHTS_NAME)
    mutate(tensors)
    data = safetensors.torch.save(tensors)
    (directory / WEIGHTS_NAME).write_bytes(data)
    _edit_config(directory, lambda c: c.update(safetensors_sha256=hashlib.sha256(data).hexdigest()))


def _edit_config(directory, mutate) -> None:
    config = json.loads((directory / CONFIG_NAME).read_text())
    mutate(config)
    (directory / CONFIG_NAME).write_text(json.dumps(config))


@pytest.mark.parametrize(
    ("sigma_param", "adapter_dtype"),
    [("exp_norm", None), ("raw", torch.float64), ("exp_norm", torch.bfloat16), ("raw", torch.float16)],
)
@pytest.mark.parametrize("into", ["plain", "adapted"])
def test_round_trip_is_bit_exact(tmp_path, sigma_param, adapter_dtype, into):
    source = _model(seed=1, sigma_param=sigma_param, adapter_dtype=adapter_dtype)
    assert save_adapter(source, tmp_path / "adapter") == tmp_path / "adapter"
    target = _model(plain=True) if into == "plain" else _model(seed=2, sigma_param=sigma_param, adapter_dtype=adapter_dtype)
    assert load_adapter(target, tmp_path / "adapter") is target
    saved, loaded = adapter_state_dict(source), adapter_state_dict(target)
    assert saved.keys() == loaded.keys()
    for k in saved:
        assert loaded[k].dtype == saved[k].dtype and torch.equal(loaded[k], saved[k]), k
    assert {n for n, p in target.named_parameters() if p.requires_grad} == set(saved)
    x = torch.randn(4, 10)
    assert torch.equal(target(x), source(x))


def test_file_layout_and_config(tmp_path):
    model = _model(seed=1)
    save_adapter(model, tmp_path)
    assert sorted(os.listdir(tmp_path)) == [CONFIG_NAME, WEIGHTS_NAME]  # no temporary files left
    data = (tmp_path / WEIGHTS_NAME).read_bytes()
    header_len = struct.unpack("<Q", data[:8])[0]  # safetensors: u64 header length, then a JSON header
    header = json.loads(data[8:8 + header_len])
    assert header["__metadata__"] == {"format": "pt", "bora_ref_format_version": "1"}
    assert sorted(k for k in header if k != "__metadata__") == sorted(
        f"base_model.model.{i}.{t}.{p}" for i in (0, 1) for t in TARGETS for p in ("lora_A.weight", "lora_B.weight", "lora_sigma")
    )
    assert header["base_model.model.0.query.lora_B.weight"]["shape"] == [14, 3]  # (m, r)
    assert header["base_model.model.0.query.lora_A.weight"]["shape"] == [3, 10]  # (r, n)
    assert header["base_model.model.0.query.lora_sigma"]["shape"] == [4, 4, 3]  # (b, b, r)

    config = json.loads((tmp_path / CONFIG_NAME).read_text())
    assert config["peft_type"] == "BORA" and config["library_version"] == bora_ref.__version__
    assert (config["r"], config["b"], config["alpha"], config["rslora"], config["sigma_param"]) == (3, 4, 5.0, False, "exp_norm")
    assert config["target_modules"] == ["0.query", "0.value", "1.query", "1.value"]
    assert config["layers"]["1.value"] == {
        "in_features": 14, "out_features": 10, "r": 3, "b": 4, "alpha": 5.0, "rslora": False,
        "sigma_param": "exp_norm", "dropout": 0.0, "dtype": "float32",
    }
    assert config["safetensors_sha256"] == hashlib.sha256(data).hexdigest()


def test_per_layer_settings_round_trip(tmp_path):
    model = _model(plain=True)
    apply_bora(model, target_modules=["0.query"], r=2, b=2, rslora=True)
    apply_bora(model, target_modules=["1.value"], r=4, b=3, sigma_param="raw", dropout=0.2)
    save_adapter(model, tmp_path)
    config = json.loads((tmp_path / CONFIG_NAME).read_text())
    assert config["r"] is None and config["b"] is None and config["alpha"] is None  # differ per layer
    fresh = load_adapter(_model(plain=True), tmp_path)
    assert [(n, m.r, m.b, m.rslora, m.sigma_param) for n, m in fresh.named_modules() if isinstance(m, BoRALinear)] == [
        ("0.query", 2, 2, True, "exp_norm"), ("1.value", 4, 3, False, "raw")
    ]
    assert fresh[1].value.dropout.p == 0.2


def test_loading_never_unpickles(tmp_path, monkeypatch):
    save_adapter(_model(seed=1), tmp_path)

    def forbidden(*args, **kwargs):
        raise AssertionError("load_adapter must not unpickle")

    for name in ("load", "loads", "Unpickler"):
        monkeypatch.setattr(pickle, name, forbidden)
    monkeypatch.setattr(torch, "load", forbidden)
    load_adapter(_model(plain=True), tmp_path)


def test_failed_write_leaves_no_partial_file(tmp_path, monkeypatch):
    """A crash while writing the tensors keeps the old pair; a crash between the two renames is detected by the hash."""
    old = _model(seed=1)
    save_adapter(old, tmp_path)
    before = {f: (tmp_path / f).read_bytes() for f in (CONFIG_NAME, WEIGHTS_NAME)}

    def broken_fsync(fd):
        raise OSError("disk full")

    monkeypatch.setattr(os, "fsync", broken_fsync)
    with pytest.raises(OSError, match="disk full"):
        save_adapter(_model(seed=2), tmp_path)
    monkeypatch.undo()
    assert sorted(os.listdir(tmp_path)) == [CONFIG_NAME, WEIGHTS_NAME]
    assert {f: (tmp_path / f).read_bytes() for f in before} == before

    real_replace = os.replace

    def replace_fails_for_config(src, dst):
        if os.fspath(dst).endswith(CONFIG_NAME):
            raise OSError("power cut")
        real_replace(src, dst)

    monkeypatch.setattr(os, "replace", replace_fails_for_config)
    with pytest.raises(OSError, match="power cut"):
        save_adapter(_model(seed=2), tmp_path)
    monkeypatch.undo()
    assert sorted(os.listdir(tmp_path)) == [CONFIG_NAME, WEIGHTS_NAME]  # temporary config removed
    target = _model(seed=3)
    snap = _snapshot(target)
    with pytest.raises(ValueError, match="does not match the safetensors_sha256"):  # new tensors + old config
        load_adapter(target, tmp_path)
    _assert_unchanged(target, snap)


def _flip_data_byte(d):
    data = bytearray((d / WEIGHTS_NAME).read_bytes())
    data[-5] ^= 0x40  # inside the last tensor's bytes: the file still parses, only the hash can tell
    (d / WEIGHTS_NAME).write_bytes(bytes(data))


def _garbage_header(d):
    data = b"\x10\x00\x00\x00\x00\x00\x00\x00{not json at all}"
    (d / WEIGHTS_NAME).write_bytes(data)
    _edit_config(d, lambda c: c.update(safetensors_sha256=hashlib.sha256(data).hexdigest()))


def _set(key, value):
    return lambda t: t.__setitem__(key, value)


Q = "base_model.model.0.query"
BAD_FILES = {
    "missing-tensor": (lambda d: _rewrite(d, lambda t: t.pop(f"{Q}.lora_sigma")),
                       r"missing tensors \['base_model.model.0.query.lora_sigma'\], unexpected tensors \[\]"),
    "extra-tensor": (lambda d: _rewrite(d, _set(f"{Q}.lora_C.weight", torch.zeros(2))),
                     r"missing tensors \[\], unexpected tensors \['base_model.model.0.query.lora_C.weight'\]"),
    "wrong-shape": (lambda d: _rewrite(d, _set(f"{Q}.lora_A.weight", torch.zeros(3, 9))),
                    r"tensor 'base_model.model.0.query.lora_A.weight' has shape \(3, 9\), adapter_config.json implies \(3, 10\)"),
    "wrong-dtype": (lambda d: _rewrite(d, _set(f"{Q}.lora_B.weight", torch.zeros(14, 3, dtype=torch.float64))),
                    "tensor 'base_model.model.0.query.lora_B.weight' has dtype torch.float64, adapter_config.json says torch.float32"),
    "nan": (lambda d: _rewrite(d, _set(f"{Q}.lora_B.weight", torch.full((14, 3), float("nan")))), "contains NaN or infinity"),
    "flipped-byte": (_flip_data_byte, "does not match the safetensors_sha256 recorded in adapter_config.json"),
    "truncated": (lambda d: (d / WEIGHTS_NAME).write_bytes((d / WEIGHTS_NAME).read_bytes()[:-7]), "does not match the safetensors_sha256"),
    "garbage-header": (_garbage_header, "is not a readable safetensors file"),
    "no-weights": (lambda d: (d / WEIGHTS_NAME).unlink(), "adapter_model.safetensors does not exist"),
    "no-config": (lambda d: (d / CONFIG_NAME).unlink(), "adapter_config.json does not exist"),
    "bad-json": (lambda d: (d / CONFIG_NAME).write_text('{"peft_type": "BORA",'), "adapter_config.json is not valid JSON"),
    "lora-config": (lambda d: _edit_config(d, lambda c: c.update(peft_type="LORA")), r"not a BoRA adapter config \(peft_type must be 'BORA'\)"),
    "future-format": (lambda d: _edit_config(d, lambda c: c.update(format_version=2)), "has format_version=2; this bora_ref reads 1"),
    "bad-sha": (lambda d: _edit_config(d, lambda c: c.update(safetensors_sha256="abc")), "safetensors_sha256 must be a 64-digit hex string"),
    "bad-field-type": (lambda d: _edit_config(d, lambda c: c["layers"]["0.query"].update(b="4")), r"layer '0.query' has b='4', which is not of type"),
    "bad-dtype": (lambda d: _edit_config(d, lambda c: c["layers"]["0.query"].update(dtype="int8")), "dtype='int8', not a floating torch dtype"),
    "targets-disagree": (lambda d: _edit_config(d, lambda c: c["target_modules"].reverse()), "keys are 'target_modules', in order"),
}


@pytest.mark.parametrize("into", ["adapted", "plain"])
@pytest.mark.parametrize("case", list(BAD_FILES))
def test_bad_files_are_rejected_and_the_model_is_unchanged(tmp_path, case, into):
    save_adapter(_model(seed=1), tmp_path)
    corrupt, match = BAD_FILES[case]
    corrupt(tmp_path)
    target = _model(seed=2) if into == "adapted" else _model(plain=True)
    snap = _snapshot(target)
    with pytest.raises(ValueError, match=match):
        load_adapter(target, tmp_path)
    _assert_unchanged(target, snap)


@pytest.mark.parametrize(
    ("make_target", "match"),
    [
        (lambda: _model(b=2), r"layer '0.query' has b=4 in the file but b=2 in the model"),
        (lambda: _model(r=2), "layer '0.query' has r=3 in the file but r=2 in the model"),
        (lambda: _model(sigma_param="raw"), "has sigma_param='exp_norm' in the file but sigma_param='raw' in the model"),
        (lambda: _model(adapter_dtype=torch.float64), "has dtype='float32' in the file but dtype='float64' in the model"),
        (lambda: apply_bora(_model(plain=True), target_modules=TARGETS, r=3, b=4, alpha=7.0), "has alpha=5.0 in the file but alpha=7.0"),
        (lambda: apply_bora(_model(plain=True), target_modules=["query"], r=3, b=4, alpha=5.0), r"the model has \['0.query', '1.query'\]"),
        (lambda: merge_bora(_model(seed=2)), r"cannot load adapters into merged layers"),
        (lambda: nn.Sequential(Block()), "it has no module '1.query'"),
        (lambda: nn.Sequential(Block(), Block(d=12)), "'1.query' must be an nn.Linear with out_features=14, in_features=10"),
    ],
    ids=["b", "r", "sigma_param", "dtype", "alpha", "layer-names", "merged", "missing-module", "linear-shape"],
)
def test_config_that_does_not_match_the_model_is_rejected(tmp_path, make_target, match):
    save_adapter(_model(seed=1), tmp_path)
    target = make_target()
    snap = _snapshot(target)
    with pytest.raises(ValueError, match=match):
        load_adapter(target, tmp_path)
    _assert_unchanged(target, snap)


def test_dropout_may_differ(tmp_path):
    save_adapter(_model(seed=1), tmp_path)
    target = apply_bora(_model(plain=True), target_modules=TARGETS, r=3, b=4, alpha=5.0, dropout=0.3)
    load_adapter(target, tmp_path)
    assert torch.equal(target[0].query.lora_B, _model(seed=1)[0].query.lora_B)


def test_save_errors_write_nothing(tmp_path):
    with pytest.raises(ValueError, match="model has no BoRALinear layers to save"):
        save_adapter(_model(plain=True), tmp_path / "a")
    with pytest.raises(ValueError, match="model must be a torch.nn.Module, got dict"):
        save_adapter({}, tmp_path / "a")
    model = _model(seed=1)
    with torch.no_grad():
        model[1].value.sigma[0, 0, 0] = float("inf")
    with pytest.raises(ValueError, match=r"adapter tensor '1.value.sigma' contains NaN or infinity; refusing to save"):
        save_adapter(model, tmp_path / "a")
    (tmp_path / "file").write_text("x")
    with pytest.raises(ValueError, match="exists and is not a directory"):
        save_adapter(_model(seed=1), tmp_path / "file")
    assert sorted(os.listdir(tmp_path)) == ["file"]
    with pytest.raises(ValueError, match="is not a directory"):
        load_adapter(_model(seed=1), tmp_path / "file")
    with pytest.raises(ValueError, match="path must be a str or os.PathLike, got int"):
        save_adapter(_model(seed=1), 3)
    with pytest.raises(ValueError, match="path must be a str or os.PathLike, got NoneType"):
        load_adapter(_model(seed=1), None)


def test_peft_and_bora_adapter_directories_do_not_mix(tmp_path):
    """PEFT refuses a BoRA directory (unknown peft_type) and load_adapter refuses a PEFT LoRA directory."""
    peft = pytest.importorskip("peft")
    save_adapter(_model(seed=1), tmp_path / "bora")
    with pytest.raises(KeyError, match="BORA"):  # PEFT 0.21: PeftConfig.from_pretrained looks the type up in a dict
        peft.PeftConfig.from_pretrained(tmp_path / "bora")
    lora = peft.get_peft_model(_model(plain=True), peft.LoraConfig(r=3, target_modules=TARGETS))
    lora.save_pretrained(tmp_path / "lora")
    target = _model(plain=True)
    snap = _snapshot(target)
    with pytest.raises(ValueError, match=r"not a BoRA adapter config \(peft_type must be 'BORA'\)"):
        load_adapter(target, tmp_path / "lora")
    _assert_unchanged(target, snap)
