"""save_adapter / load_adapter: bit-exact round trip, file layout, atomic writes, all-or-nothing loading."""

from __future__ import annotations

import hashlib
import json
import os
import pickle
import struct

import numpy as np
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
    assert header["__metadata__"] == {"format": "pt", "bora_ref_format_version": "2"}
    assert sorted(k for k in header if k != "__metadata__") == sorted(
        f"base_model.model.{i}.{t}.{p}" for i in (0, 1) for t in TARGETS for p in ("lora_A.weight", "lora_B.weight", "lora_sigma")
    )
    assert header["base_model.model.0.query.lora_B.weight"]["shape"] == [14, 3]  # (m, r)
    assert header["base_model.model.0.query.lora_A.weight"]["shape"] == [3, 10]  # (r, n)
    assert header["base_model.model.0.query.lora_sigma"]["shape"] == [4, 4, 3]  # (b, b, r)

    config = json.loads((tmp_path / CONFIG_NAME).read_text())
    assert config["peft_type"] == "BORA" and config["library_version"] == bora_ref.__version__
    assert config["format_version"] == 2 and config["split_rule"] == "array_split"
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


def _version_1_adapter(directory, B, A, sigma, *, alpha=4.0):
    """A format-1 adapter for ``nn.Sequential(nn.Linear(n, m))``, written by hand (no split_rule field: version 1
    predates it, and every version-1 file was cut by array_split)."""
    (m, r), (b, n) = B.shape, (sigma.shape[0], A.shape[1])
    data = safetensors.torch.save({"base_model.model.0.lora_A.weight": A, "base_model.model.0.lora_B.weight": B,
                                   "base_model.model.0.lora_sigma": sigma}, metadata={"format": "pt"})
    layer = {"in_features": n, "out_features": m, "r": r, "b": b, "alpha": alpha, "rslora": False,
             "sigma_param": "raw", "dropout": 0.0, "dtype": "float64"}
    config = {"peft_type": "BORA", "library": "bora_ref", "library_version": "0.1.0", "format_version": 1,
              **{k: layer[k] for k in ("r", "b", "alpha", "rslora", "sigma_param", "dropout")},
              "target_modules": ["0"], "layers": {"0": layer}, "safetensors_sha256": hashlib.sha256(data).hexdigest()}
    directory.mkdir()
    (directory / WEIGHTS_NAME).write_bytes(data)
    (directory / CONFIG_NAME).write_text(json.dumps(config, indent=2))


def test_a_version_1_file_without_split_rule_loads_with_array_split_blocks(tmp_path):
    from bora_ref import numpy_ref

    m, n, r, b, alpha = 14, 10, 2, 4, 4.0  # uneven blocks: rows 4, 4, 3, 3 and columns 3, 3, 2, 2
    g = torch.Generator().manual_seed(5)
    B, A, sigma = (torch.randn(shape, generator=g, dtype=torch.float64) for shape in ((m, r), (r, n), (b, b, r)))
    _version_1_adapter(tmp_path / "v1", B, A, sigma, alpha=alpha)
    torch.manual_seed(0)
    model = load_adapter(nn.Sequential(nn.Linear(n, m, dtype=torch.float64)), tmp_path / "v1")
    layer = model[0]
    assert torch.equal(layer.lora_B, B) and torch.equal(layer.lora_A, A) and torch.equal(layer.sigma, sigma)
    # The function the layer computes is the reference's, with numpy.array_split blocks (sigma_param="raw": Σ = σ).
    x = torch.randn(5, n, generator=g, dtype=torch.float64)
    want = (x @ layer.base.weight.T + layer.base.bias).detach().numpy() + (alpha / r) * numpy_ref.bora_matmul(
        x.numpy(), B.numpy(), A.numpy(), sigma.numpy())
    np.testing.assert_allclose(model(x).detach().numpy(), want, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize(
    ("edit", "match"),
    [
        (lambda c: c.update(split_rule="even-first"), r"v1/adapter_config.json has split_rule='even-first' \(format_version=1\); "
                                                      r"this bora_ref cuts blocks by the 'array_split' rule only"),
        (lambda c: c.update(format_version=0), r"v1/adapter_config.json has format_version=0; this bora_ref reads format versions 1, 2"),
        (lambda c: c.update(format_version="1"), r"has format_version='1'"),
    ],
    ids=["v1-names-another-rule", "version-0", "version-as-string"],
)
def test_refused_old_files_leave_model_and_files_unchanged(tmp_path, edit, match):
    g = torch.Generator().manual_seed(6)
    _version_1_adapter(tmp_path / "v1", *(torch.randn(s, generator=g, dtype=torch.float64) for s in ((14, 2), (2, 10), (4, 4, 2))))
    _edit_config(tmp_path / "v1", edit)
    files = {p.name: p.read_bytes() for p in (tmp_path / "v1").iterdir()}
    for target in (_model(seed=2), _model(plain=True)):
        snap = _snapshot(target)
        with pytest.raises(bora_ref.BoRAValueError, match=match):
            load_adapter(target, tmp_path / "v1")
        _assert_unchanged(target, snap)
    assert {p.name: p.read_bytes() for p in (tmp_path / "v1").iterdir()} == files


def test_loading_never_unpickles(tmp_path, monkeypatch):
    save_adapter(_model(seed=1), tmp_path)

    def forbidden(*args, **kwargs):
        raise AssertionError("load_adapter must not unpickle")

    for name in ("load", "loads", "Unpickler"):
        monkeypatch.setattr(pickle, name, forbidden)
    monkeypatch.setattr(torch, "load", forbidden)
    load_adapter(_model(plain=True), tmp_path)


def _loaded_state(directory):
    """The adapter the directory loads as, via load_adapter into a fresh plain model."""
    return adapter_state_dict(load_adapter(_model(plain=True), directory))


def _same_state(a, b) -> bool:
    return a.keys() == b.keys() and all(a[k].dtype == b[k].dtype and torch.equal(a[k], b[k]) for k in a)


# save_adapter's steps, in order: fsync #1 the tensor temp file, replace #1 it to the pending name, fsync #2 the
# config temp file, replace #2 it over adapter_config.json (the commit), fsync #3 the directory, replace #3 the
# pending file over adapter_model.safetensors, fsync #4 the directory.
SAVE_STEPS = [("fsync", 1, "old"), ("replace", 1, "old"), ("fsync", 2, "old"), ("replace", 2, "old"),
              ("fsync", 3, "new"), ("replace", 3, "new"), ("fsync", 4, "new")]


@pytest.mark.parametrize(("op", "call", "loads_as"), SAVE_STEPS, ids=[f"{o}-{c}" for o, c, _ in SAVE_STEPS])
def test_a_failure_at_any_step_of_a_save_leaves_the_old_or_the_new_adapter(tmp_path, monkeypatch, op, call, loads_as):
    """Failure injection at every os.fsync / os.replace of a save over an existing adapter."""
    old, new, third = _model(seed=1), _model(seed=2), _model(seed=3)
    save_adapter(old, tmp_path)
    real = getattr(os, op)
    calls = []

    def failing(*args, **kwargs):
        calls.append(args)
        if len(calls) == call:
            raise OSError(f"injected failure in {op} #{call}")
        return real(*args, **kwargs)

    monkeypatch.setattr(os, op, failing)
    with pytest.raises(OSError, match=f"injected failure in {op} #{call}"):
        save_adapter(new, tmp_path)
    monkeypatch.undo()
    expected = adapter_state_dict(old if loads_as == "old" else new)
    assert _same_state(_loaded_state(tmp_path), expected)
    target = _model(seed=4)
    load_adapter(target, tmp_path)  # into an adapted model as well
    assert _same_state(adapter_state_dict(target), expected)
    # The next save finishes or discards what the failed one left, and the folder is clean again.
    save_adapter(third, tmp_path)
    assert sorted(os.listdir(tmp_path)) == [CONFIG_NAME, WEIGHTS_NAME]
    assert _same_state(_loaded_state(tmp_path), adapter_state_dict(third))


def test_a_failed_save_into_a_new_directory_leaves_nothing_loadable_but_no_garbage(tmp_path, monkeypatch):
    def broken_fsync(fd):
        raise OSError("disk full")

    monkeypatch.setattr(os, "fsync", broken_fsync)
    with pytest.raises(OSError, match="disk full"):
        save_adapter(_model(seed=2), tmp_path / "a")
    monkeypatch.undo()
    assert os.listdir(tmp_path / "a") == []
    with pytest.raises(ValueError, match="adapter_config.json does not exist"):
        load_adapter(_model(plain=True), tmp_path / "a")


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
    "future-format": (lambda d: _edit_config(d, lambda c: c.update(format_version=3)),
                      "has format_version=3; this bora_ref reads format versions 1, 2"),
    "no-format-version": (lambda d: _edit_config(d, lambda c: c.pop("format_version")), "has format_version='<missing>'"),
    "other-split-rule": (lambda d: _edit_config(d, lambda c: c.update(split_rule="contiguous")),
                         r"adapter_config.json has split_rule='contiguous' \(format_version=2\); this bora_ref cuts blocks by "
                         r"the 'array_split' rule only"),
    "no-split-rule": (lambda d: _edit_config(d, lambda c: c.pop("split_rule")),
                      r"adapter_config.json has split_rule='<missing>' \(format_version=2\); .* 'array_split' rule"),
    "v1-other-split-rule": (lambda d: _edit_config(d, lambda c: c.update(format_version=1, split_rule="even")),
                            r"has split_rule='even' \(format_version=1\)"),
    "bad-sha": (lambda d: _edit_config(d, lambda c: c.update(safetensors_sha256="abc")), "safetensors_sha256 must be a 64-digit hex string"),
    "bad-field-type": (lambda d: _edit_config(d, lambda c: c["layers"]["0.query"].update(b="4")), r"layer '0.query' has b='4', which is not of type"),
    "bad-dtype": (lambda d: _edit_config(d, lambda c: c["layers"]["0.query"].update(dtype="int8")), "dtype='int8', not one of \\('float32', 'float64', 'float16', 'bfloat16'\\)"),
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


# --- bounded reads: regular files only, sizes checked before reading -------------------------------------------------


def _replace_with(path, make):
    path.unlink()
    make(path)


SPECIAL_FILES = {
    "fifo": (os.mkfifo, "is a FIFO; an adapter file must be a regular file"),
    "dev-zero": (lambda p: os.symlink("/dev/zero", p), "is a character device; an adapter file must be a regular file"),
    "directory": (os.mkdir, "is a directory; an adapter file must be a regular file"),
}


@pytest.mark.parametrize("which", [CONFIG_NAME, WEIGHTS_NAME])
@pytest.mark.parametrize("kind", list(SPECIAL_FILES))
def test_special_files_are_refused_without_reading(tmp_path, monkeypatch, which, kind):
    """A FIFO (would block), /dev/zero (endless) or a directory in place of either file: refused, nothing read."""
    save_adapter(_model(seed=1), tmp_path)
    make, match = SPECIAL_FILES[kind]
    _replace_with(tmp_path / which, make)
    read = []
    real_read = os.read
    monkeypatch.setattr(os, "read", lambda fd, n: read.append(n) or real_read(fd, n))
    for target in (_model(seed=2), _model(plain=True)):
        snap = _snapshot(target)
        with pytest.raises(bora_ref.BoRAValueError, match=match):
            load_adapter(target, tmp_path)
        _assert_unchanged(target, snap)
    config_size = (tmp_path / CONFIG_NAME).stat().st_size if which == WEIGHTS_NAME else 0
    assert sum(read) <= 2 * config_size  # only the config (once per load), never the special file


def test_a_sparse_2_gib_tensor_file_is_refused_before_reading(tmp_path, monkeypatch):
    save_adapter(_model(seed=1), tmp_path)
    data = (tmp_path / WEIGHTS_NAME).read_bytes()
    with open(tmp_path / WEIGHTS_NAME, "r+b") as f:  # same valid header, then a 2 GiB hole: cheap to create
        f.truncate(2**31)
    with open(tmp_path / WEIGHTS_NAME, "rb") as f:
        assert os.fstat(f.fileno()).st_size == 2**31 and f.read(8) == data[:8]
    read = []
    real_read = os.read
    monkeypatch.setattr(os, "read", lambda fd, n: read.append(n) or real_read(fd, n))
    target = _model(plain=True)
    snap = _snapshot(target)
    with pytest.raises(bora_ref.BoRAValueError, match=r"has 2147483648 bytes .* it was not read"):
        load_adapter(target, tmp_path)
    _assert_unchanged(target, snap)
    assert sum(read) <= (tmp_path / CONFIG_NAME).stat().st_size + 8  # the config and the 8-byte header length


def test_a_huge_header_length_is_refused_before_reading(tmp_path):
    save_adapter(_model(seed=1), tmp_path)
    data = bytearray((tmp_path / WEIGHTS_NAME).read_bytes())
    data[:8] = (2**40).to_bytes(8, "little")
    (tmp_path / WEIGHTS_NAME).write_bytes(bytes(data))
    with pytest.raises(bora_ref.BoRAValueError, match=r"a header of 1099511627776\), .* it was not read"):
        load_adapter(_model(plain=True), tmp_path)


def test_an_oversized_config_is_refused_before_reading(tmp_path):
    from bora_ref.nn.adapter_io import MAX_CONFIG_BYTES

    save_adapter(_model(seed=1), tmp_path)
    with open(tmp_path / CONFIG_NAME, "r+b") as f:
        f.truncate(MAX_CONFIG_BYTES + 1)  # sparse
    with pytest.raises(bora_ref.BoRAValueError, match=f"has {MAX_CONFIG_BYTES + 1} bytes, more than the {MAX_CONFIG_BYTES}"):
        load_adapter(_model(plain=True), tmp_path)


def _set_layer(field, value):
    return lambda c: [layer.update({field: value}) for layer in c["layers"].values()]


BAD_CONFIGS = {
    "deeply-nested": (lambda d: (d / CONFIG_NAME).write_text("[" * 200_000 + "]" * 200_000), "is not valid JSON"),
    "huge-integer": (lambda d: (d / CONFIG_NAME).write_text((d / CONFIG_NAME).read_text().replace('"r": 3', '"r": ' + "9" * 5000, 1)),
                     "is not valid JSON"),
    "nan-alpha": (lambda d: (d / CONFIG_NAME).write_text((d / CONFIG_NAME).read_text().replace('"alpha": 5.0', '"alpha": NaN')),
                  "NaN is not a JSON number"),
    "float8-dtype": (lambda d: _edit_config(d, _set_layer("dtype", "float8_e5m2")), "dtype='float8_e5m2', not one of"),
    "bool-dropout": (lambda d: _edit_config(d, lambda c: (_set_layer("dropout", True)(c), c.update(dropout=True))),
                     "has dropout=True, which is not of type"),
    "bool-alpha": (lambda d: _edit_config(d, lambda c: (_set_layer("alpha", True)(c), c.update(alpha=True))),
                   "has alpha=True, which is not of type"),
    "zero-r": (lambda d: _edit_config(d, lambda c: (_set_layer("r", 0)(c), c.update(r=0))), "has r=0; it must be >= 1"),
    "top-level-r": (lambda d: _edit_config(d, lambda c: c.update(r=4)), r"top-level r=4 disagrees with the layers' r \(their common value is 3\)"),
    "top-level-b-bool": (lambda d: _edit_config(d, lambda c: c.update(b=True)), "top-level b=True disagrees"),
    "top-level-missing": (lambda d: _edit_config(d, lambda c: c.pop("sigma_param")), "top-level sigma_param='<missing>' disagrees"),
    "format-version-true": (lambda d: _edit_config(d, lambda c: c.update(format_version=True)), "has format_version=True"),
    "not-an-object": (lambda d: (d / CONFIG_NAME).write_text("[1, 2]"), "is not a BoRA adapter config"),
    "not-utf8": (lambda d: (d / CONFIG_NAME).write_bytes(b"\xff\xfe{}"), "is not valid JSON"),
}


@pytest.mark.parametrize("case", list(BAD_CONFIGS))
def test_hostile_configs_are_refused_with_BoRAValueError(tmp_path, case):
    save_adapter(_model(seed=1), tmp_path)
    corrupt, match = BAD_CONFIGS[case]
    corrupt(tmp_path)
    for target in (_model(seed=2), _model(plain=True)):
        snap = _snapshot(target)
        with pytest.raises(bora_ref.BoRAValueError, match=match):
            load_adapter(target, tmp_path)
        _assert_unchanged(target, snap)


@pytest.mark.parametrize("path", ["", b"adapter", "a\x00b"])
def test_save_to_an_empty_or_invalid_path_is_refused(tmp_path, monkeypatch, path):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(bora_ref.BoRAValueError, match="path must be"):
        save_adapter(_model(seed=1), path)
    with pytest.raises(bora_ref.BoRAValueError, match="path must be"):
        load_adapter(_model(plain=True), path)
    assert os.listdir(tmp_path) == []


def test_save_under_a_file_is_refused(tmp_path):
    (tmp_path / "file").write_text("x")
    with pytest.raises(bora_ref.BoRAValueError, match="cannot create the directory"):
        save_adapter(_model(seed=1), tmp_path / "file" / "adapter")
    assert sorted(os.listdir(tmp_path)) == ["file"]


class Shared(nn.Module):
    """One nn.Linear under two names (``a`` and ``b``), or two distinct ones of the same shape."""

    def __init__(self, shared: bool = True):
        super().__init__()
        torch.manual_seed(7)
        self.a = nn.Linear(8, 8)
        self.b = self.a if shared else nn.Linear(8, 8)
        self.c = nn.Linear(8, 8)

    def forward(self, x):
        return self.c(self.b(torch.tanh(self.a(x))))


def test_loading_separate_adapters_into_one_shared_linear_is_refused(tmp_path):
    save_adapter(apply_bora(Shared(shared=False), target_modules=["a", "b"], r=2, b=2), tmp_path)
    target = Shared(shared=True)
    snap = _snapshot(target)
    with pytest.raises(bora_ref.BoRAValueError, match="'a' and 'b' are one shared nn.Linear in the model"):
        load_adapter(target, tmp_path)
    _assert_unchanged(target, snap)
    assert target.a is target.b and type(target.a) is nn.Linear


@pytest.mark.parametrize("which", [CONFIG_NAME, WEIGHTS_NAME])
def test_save_over_a_directory_named_like_an_adapter_file_is_refused(tmp_path, which):
    save_adapter(_model(seed=1), tmp_path)
    _replace_with(tmp_path / which, os.mkdir)
    before = sorted(os.listdir(tmp_path))
    with pytest.raises(bora_ref.BoRAValueError, match=f"{which} is a directory; refusing to save an adapter over it"):
        save_adapter(_model(seed=2), tmp_path)
    assert sorted(os.listdir(tmp_path)) == before and (tmp_path / which).is_dir()
