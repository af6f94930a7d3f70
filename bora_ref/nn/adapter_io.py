"""Save and load BoRA adapters as ``adapter_model.safetensors`` + ``adapter_config.json``.

The layout follows PEFT's: a directory with the adapter tensors under PEFT-like keys
(``base_model.model.<module>.lora_A.weight`` ``(r, n)``, ``...lora_B.weight`` ``(m, r)``, and
BoRA's ``...lora_sigma`` ``(b, b, r)``, the raw σ) and a JSON config with ``r``, ``b``,
``alpha``, ``rslora``, ``sigma_param``, the target modules, every layer's shapes and dtype, the
library version and the SHA-256 of the tensor file. ``peft_type`` is ``"BORA"``, which PEFT
does not know, so PEFT refuses these files instead of misreading them as LoRA.

Safety: writes go to a temporary file in the same directory and are moved into place with
``os.replace`` (atomic per file; the tensor file first, the config last, and a mismatched pair
is caught by the hash). Loading parses JSON and safetensors only — nothing is unpickled — and
checks everything before the first tensor is copied: on any error the model is unchanged.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import tempfile
from pathlib import Path
from typing import Any

import safetensors.torch
import torch
from torch import nn

from .._validation import BoRAValueError
from .inject import adapter_state_dict, apply_bora, load_adapter_state_dict
from .layer import BoRALinear

__all__ = ["CONFIG_NAME", "FORMAT_VERSION", "WEIGHTS_NAME", "load_adapter", "save_adapter"]

WEIGHTS_NAME = "adapter_model.safetensors"
CONFIG_NAME = "adapter_config.json"
FORMAT_VERSION = 1
_PREFIX = "base_model.model."  # PEFT's key prefix (PeftModel.base_model.model is the user's model)
_FILE_SUFFIX = {"lora_A": "lora_A.weight", "lora_B": "lora_B.weight", "sigma": "lora_sigma"}
# Per-layer settings that must agree between the file and the model, with their JSON types.
_LAYER_FIELDS: dict[str, type | tuple[type, ...]] = {
    "in_features": int, "out_features": int, "r": int, "b": int, "alpha": (int, float), "rslora": bool,
    "sigma_param": str, "dropout": (int, float), "dtype": str,
}


def _file_key(state_key: str) -> str:
    """``"<module>.lora_A"`` (as in :func:`adapter_state_dict`) -> ``"base_model.model.<module>.lora_A.weight"``."""
    module, _, param = state_key.rpartition(".")
    return _PREFIX + (module + "." if module else "") + _FILE_SUFFIX[param]


def _layer_settings(layer: BoRALinear) -> dict[str, Any]:
    dropout = layer.dropout.p if isinstance(layer.dropout, nn.Dropout) else 0.0
    return {
        "in_features": layer.in_features, "out_features": layer.out_features, "r": layer.r, "b": layer.b,
        "alpha": layer.alpha, "rslora": layer.rslora, "sigma_param": layer.sigma_param, "dropout": dropout,
        "dtype": str(layer.lora_A.dtype).removeprefix("torch."),
    }


def _bora_named_layers(model: Any) -> dict[str, BoRALinear]:
    if not isinstance(model, nn.Module):
        raise BoRAValueError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    return {name: m for name, m in model.named_modules() if isinstance(m, BoRALinear)}


def _directory(path: Any) -> Path:
    if not isinstance(path, (str, os.PathLike)):
        raise BoRAValueError(f"path must be a str or os.PathLike, got {type(path).__name__}")
    return Path(path)


def _atomic_write(path: Path, data: bytes) -> None:
    """Write ``data`` to a temporary file next to ``path``, fsync it, then ``os.replace`` it into place."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o644)  # mkstemp creates 0600; adapter files are ordinary shareable files
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def save_adapter(model: nn.Module, path: str | os.PathLike[str]) -> Path:
    """Write ``model``'s BoRA adapters to the directory ``path`` (created if missing).

    Writes ``adapter_model.safetensors`` (only ``lora_A (r, n)``, ``lora_B (m, r)`` and raw
    ``sigma (b, b, r)`` of every :class:`~bora_ref.BoRALinear`, bit for bit) and
    ``adapter_config.json``. Existing files of those names are replaced atomically.

    Args:
        model: a module with at least one ``BoRALinear`` (merged or not: the adapter tensors
            are the same).
        path: target directory.

    Returns:
        The directory as a :class:`~pathlib.Path`.

    Raises:
        ValueError: ``model`` has no BoRA layer, an adapter tensor contains NaN or infinity (it
            could not be loaded back), or ``path`` is not a str / ``os.PathLike`` or exists and is
            not a directory. Nothing is written then.
    """
    layers = _bora_named_layers(model)
    if not layers:
        raise BoRAValueError("model has no BoRALinear layers to save; call apply_bora first")
    state = adapter_state_dict(model)
    for key, value in state.items():
        if not bool(torch.isfinite(value).all()):
            raise BoRAValueError(f"adapter tensor {key!r} contains NaN or infinity; refusing to save it")
    directory = _directory(path)
    if directory.exists() and not directory.is_dir():
        raise BoRAValueError(f"path={os.fspath(path)!r} exists and is not a directory")

    from .._version import __version__

    tensors = {_file_key(k): v.detach().to("cpu").contiguous() for k, v in state.items()}
    data = safetensors.torch.save(tensors, metadata={"format": "pt", "bora_ref_format_version": str(FORMAT_VERSION)})
    settings = {name: _layer_settings(layer) for name, layer in layers.items()}
    config: dict[str, Any] = {"peft_type": "BORA", "library": "bora_ref", "library_version": __version__,
                              "format_version": FORMAT_VERSION}
    for field in ("r", "b", "alpha", "rslora", "sigma_param", "dropout"):
        values = {s[field] for s in settings.values()}
        config[field] = values.pop() if len(values) == 1 else None  # None: differs per layer, see "layers"
    config["target_modules"] = list(layers)
    config["layers"] = settings
    config["safetensors_sha256"] = hashlib.sha256(data).hexdigest()

    directory.mkdir(parents=True, exist_ok=True)
    _atomic_write(directory / WEIGHTS_NAME, data)
    _atomic_write(directory / CONFIG_NAME, (json.dumps(config, indent=2) + "\n").encode())
    return directory


def _read_config(path: Path) -> dict[str, Any]:
    """Parse and type-check ``adapter_config.json`` (no model involved yet)."""
    try:
        config = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise BoRAValueError(f"{path} does not exist; not a saved BoRA adapter directory") from None
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise BoRAValueError(f"{path} is not valid JSON: {exc}") from None
    if not isinstance(config, dict) or config.get("peft_type") != "BORA":
        raise BoRAValueError(f"{path} is not a BoRA adapter config (peft_type must be 'BORA')")
    if config.get("format_version") != FORMAT_VERSION:
        raise BoRAValueError(f"{path} has format_version={config.get('format_version')!r}; this bora_ref reads {FORMAT_VERSION}")
    layers, sha = config.get("layers"), config.get("safetensors_sha256")
    if not isinstance(sha, str) or not re.fullmatch(r"[0-9a-f]{64}", sha):
        raise BoRAValueError(f"{path}: safetensors_sha256 must be a 64-digit hex string, got {sha!r}")
    if not isinstance(layers, dict) or not layers or config.get("target_modules") != list(layers):
        raise BoRAValueError(f"{path}: 'layers' must be a non-empty object whose keys are 'target_modules', in order")
    for name, settings in layers.items():
        if not isinstance(settings, dict) or set(settings) != set(_LAYER_FIELDS):
            raise BoRAValueError(f"{path}: layer {name!r} must have exactly the keys {sorted(_LAYER_FIELDS)}")
        for field, kind in _LAYER_FIELDS.items():
            value = settings[field]
            if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
                raise BoRAValueError(f"{path}: layer {name!r} has {field}={value!r}, which is not of type {kind}")
        dtype = getattr(torch, settings["dtype"], None)
        if not (isinstance(dtype, torch.dtype) and dtype.is_floating_point):
            raise BoRAValueError(f"{path}: layer {name!r} has dtype={settings['dtype']!r}, not a floating torch dtype")
    return config


def _read_tensors(path: Path, config: dict[str, Any]) -> dict[str, torch.Tensor]:
    """Read the tensor file, check its hash, keys, shapes and dtypes against ``config``; return a state dict."""
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise BoRAValueError(f"{path} does not exist; not a saved BoRA adapter directory") from None
    if hashlib.sha256(data).hexdigest() != config["safetensors_sha256"]:
        raise BoRAValueError(
            f"{path} does not match the safetensors_sha256 recorded in {CONFIG_NAME}: the file is corrupted or was "
            "replaced after saving"
        )
    try:
        tensors = safetensors.torch.load(data)
    except Exception as exc:  # the parser's own error types vary by version; the bytes are untrusted
        raise BoRAValueError(f"{path} is not a readable safetensors file: {exc}") from None

    state: dict[str, torch.Tensor] = {}
    expected: dict[str, tuple[str, tuple[int, ...], torch.dtype]] = {}  # file key -> (state key, shape, dtype)
    for name, s in config["layers"].items():
        m, n, r, b = s["out_features"], s["in_features"], s["r"], s["b"]
        for param, shape in (("lora_A", (r, n)), ("lora_B", (m, r)), ("sigma", (b, b, r))):
            key = f"{name}.{param}" if name else param
            expected[_file_key(key)] = (key, shape, getattr(torch, s["dtype"]))
    missing, extra = sorted(set(expected) - set(tensors)), sorted(set(tensors) - set(expected))
    if missing or extra:
        raise BoRAValueError(f"{path} does not match {CONFIG_NAME}: missing tensors {missing}, unexpected tensors {extra}")
    for file_key, (key, shape, dtype) in expected.items():
        value = tensors[file_key]
        if tuple(value.shape) != shape:
            raise BoRAValueError(f"{path}: tensor {file_key!r} has shape {tuple(value.shape)}, {CONFIG_NAME} implies {shape}")
        if value.dtype != dtype:
            raise BoRAValueError(f"{path}: tensor {file_key!r} has dtype {value.dtype}, {CONFIG_NAME} says {dtype}")
        if not bool(torch.isfinite(value).all()):
            raise BoRAValueError(f"{path}: tensor {file_key!r} contains NaN or infinity")
        state[key] = value
    return state


def _check_model_matches(model: nn.Module, layers: dict[str, BoRALinear], config: dict[str, Any], where: Path) -> None:
    """A model that already has BoRA layers must have exactly the file's, with the same settings (dropout aside)."""
    if list(layers) != config["target_modules"]:
        raise BoRAValueError(
            f"{where} does not match the model: the file has BoRA layers {config['target_modules']}, the model has {list(layers)}"
        )
    for name, layer in layers.items():
        have = _layer_settings(layer)
        for field, want in config["layers"][name].items():
            if field != "dropout" and have[field] != want:  # dropout changes training, not the weights
                raise BoRAValueError(
                    f"{where} does not match the model: layer {name!r} has {field}={want!r} in the file but "
                    f"{field}={have[field]!r} in the model"
                )


def _check_injectable(model: nn.Module, config: dict[str, Any], where: Path) -> None:
    """A model without BoRA layers gets them from the config: every target must be a matching ``nn.Linear``."""
    for name, s in config["layers"].items():
        if not name:
            raise BoRAValueError(f"{where} adapts the root module itself; load it into a BoRALinear, not a plain model")
        try:
            linear = model.get_submodule(name)
        except AttributeError:
            raise BoRAValueError(f"{where} does not match the model: it has no module {name!r}") from None
        if type(linear) is not nn.Linear or (linear.out_features, linear.in_features) != (s["out_features"], s["in_features"]):
            raise BoRAValueError(
                f"{where} does not match the model: {name!r} must be an nn.Linear with out_features={s['out_features']}, "
                f"in_features={s['in_features']}, got {linear!r}"
            )
        try:
            BoRALinear._check_config(s["out_features"], s["in_features"], s["r"], s["b"], s["alpha"], s["rslora"],
                                     s["sigma_param"], s["dropout"])
        except BoRAValueError as exc:
            raise BoRAValueError(f"{where}: layer {name!r} has invalid settings: {exc}") from None


def load_adapter(model: nn.Module, path: str | os.PathLike[str]) -> nn.Module:
    """Load adapters written by :func:`save_adapter` into ``model``; all-or-nothing, never unpickles.

    If ``model`` already has BoRA layers, their names, shapes, ``r``, ``b``, ``alpha``,
    ``rslora``, ``sigma_param`` and adapter dtype must equal the file's. If it has none, they
    are created first with :func:`~bora_ref.apply_bora` from the config (the model is then
    trainable exactly like after ``apply_bora``). The loaded tensors are bit-identical to the
    saved ones.

    Args:
        model: the model to load into (the same architecture the adapter was saved from).
        path: directory containing ``adapter_model.safetensors`` and ``adapter_config.json``.

    Returns:
        ``model``.

    Raises:
        ValueError: a missing file, invalid JSON or a config of another format, corrupted tensor
            bytes (hash mismatch), missing or extra tensors, wrong shapes or dtypes, non-finite
            values, a config that does not match the model, or merged layers. The message names
            the problem; the model is left exactly as it was.
    """
    layers = _bora_named_layers(model)
    directory = _directory(path)
    if not directory.is_dir():
        raise BoRAValueError(f"path={os.fspath(path)!r} is not a directory")
    config = _read_config(directory / CONFIG_NAME)
    state = _read_tensors(directory / WEIGHTS_NAME, config)
    if layers:
        _check_model_matches(model, layers, config, directory)
    else:
        _check_injectable(model, config, directory)
        # One apply_bora per target: layers may differ in r, b, ... (exact-name regex, as PEFT's fullmatch).
        for name, s in config["layers"].items():
            apply_bora(model, target_modules=re.escape(name), r=s["r"], b=s["b"], alpha=s["alpha"], rslora=s["rslora"],
                       sigma_param=s["sigma_param"], dropout=s["dropout"], adapter_dtype=getattr(torch, s["dtype"]))
    load_adapter_state_dict(model, state)  # copy_() moves each tensor to its layer's device
    return model
