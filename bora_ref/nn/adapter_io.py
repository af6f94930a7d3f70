"""Save and load BoRA adapters as ``adapter_model.safetensors`` + ``adapter_config.json``.

The layout follows PEFT's: a directory with the adapter tensors under PEFT-like keys
(``base_model.model.<module>.lora_A.weight`` ``(r, n)``, ``...lora_B.weight`` ``(m, r)``, and
BoRA's ``...lora_sigma`` ``(b, b, r)``, the raw σ) and a JSON config with ``r``, ``b``,
``alpha``, ``rslora``, ``sigma_param``, the target modules, every layer's shapes and dtype, the
library version and the SHA-256 of the tensor file. ``peft_type`` is ``"BORA"``, which PEFT
does not know, so PEFT refuses these files instead of misreading them as LoRA.

Format version and split rule. The config records ``format_version``
([`FORMAT_VERSION`][bora_ref.nn.adapter_io.FORMAT_VERSION], now 2) and ``split_rule``, the rule that
cut ``m`` rows and ``n`` columns into ``b`` blocks: ``"array_split"`` (the first ``m % b`` row
blocks and ``n % b`` column blocks are one larger, as ``numpy.array_split``). The blocks of
``sigma`` are meaningless under another rule, so a loader refuses a file with an unknown or newer
``format_version`` or a ``split_rule`` other than ``"array_split"``, naming the file, the field and
its value. Version 1 files predate the field; they were all cut by ``array_split`` and still load.

Atomic saves. The config is the commit record: it names the tensor file by its SHA-256. A save
(1) writes the tensors to a temporary file, fsyncs it and renames it to the pending name
``.adapter_model.<sha256>.pending``; (2) writes the config the same way and renames it over
``adapter_config.json`` -- the single commit step; (3) renames the pending file over
``adapter_model.safetensors``. A failure or a kill before (2) leaves the old config, which
still describes the old tensor file; after (2), a loader that finds ``adapter_model.safetensors``
not matching the config's hash reads the pending file the config names, and the next save
finishes step (3). So the directory always loads as the old adapter or the new one. Savers take
an exclusive ``flock`` on the directory and loaders a shared one (where the platform has
``fcntl``), so concurrent savers in threads or processes serialise and a loader never sees a
save half done; temporary names are unique (``mkstemp``).

Bounded reads. Loading parses JSON and safetensors only -- nothing is unpickled -- and opens
regular files only (a FIFO, a device such as ``/dev/zero`` or a directory is refused without
reading). The config may hold at most [`MAX_CONFIG_BYTES`][bora_ref.nn.adapter_io.MAX_CONFIG_BYTES]; the tensor file must have
exactly the size the config and the model imply, checked before its data is read. Everything
is checked before the first tensor is copied: on any error the model is unchanged.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import math
import os
import re
import stat
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import safetensors.torch
import torch
from torch import nn

from .._io import atomic_write, fsync_directory
from .._validation import BoRAValueError
from ..partition import SPLIT_RULE, check_split_rule
from .config import ADAPTER_DTYPES as _DTYPES
from .config import BoRAConfig
from .inject import _all_or_nothing, adapter_state_dict, apply_bora, load_adapter_state_dict
from .inspect import named_bora_layers
from .layer import BoRALinear

try:  # POSIX: advisory directory locks
    import fcntl
except ImportError:  # pragma: no cover - Windows: saves stay atomic, concurrent savers are not serialised
    fcntl = None  # type: ignore[assignment]

__all__ = ["ADAPTER_DTYPES", "CONFIG_NAME", "FORMAT_VERSION", "MAX_CONFIG_BYTES", "WEIGHTS_NAME", "load_adapter",
           "save_adapter"]

WEIGHTS_NAME = "adapter_model.safetensors"
CONFIG_NAME = "adapter_config.json"
FORMAT_VERSION = 2
"""The ``format_version`` [`save_adapter`][bora_ref.save_adapter] writes.

Version 2 records the block split rule (``"split_rule": "array_split"``, see
[`bora_ref.partition.SPLIT_RULE`][bora_ref.partition.SPLIT_RULE]); version 1 files have no such field and were
all written with that rule, so they still load. Any other version is refused."""
_READABLE_VERSIONS = (1, FORMAT_VERSION)  # version 1: no split_rule field, array_split implied
MAX_CONFIG_BYTES = 16 * 1024**2
"""16 MiB: the largest ``adapter_config.json`` [`load_adapter`][bora_ref.load_adapter] reads (about 50 000 layers)."""
ADAPTER_DTYPES = tuple(str(d).removeprefix("torch.") for d in _DTYPES)
"""Adapter dtype names a file may declare ([`bora_ref.nn.config.ADAPTER_DTYPES`][bora_ref.nn.config.ADAPTER_DTYPES]; no float8)."""
_PREFIX = "base_model.model."  # PEFT's key prefix (PeftModel.base_model.model is the user's model)
_FILE_SUFFIX = {"lora_A": "lora_A.weight", "lora_B": "lora_B.weight", "sigma": "lora_sigma"}
_PENDING = ".adapter_model.{sha}.pending"  # the committed tensor file before step (3) (module docstring)
_TEMP_PREFIXES = (".adapter_model.", ".adapter_config.json.")  # leftovers of killed saves start with these
# Per-layer settings that must agree between the file and the model, with their JSON types.
_LAYER_FIELDS: dict[str, type | tuple[type, ...]] = {
    "in_features": int, "out_features": int, "r": int, "b": int, "alpha": (int, float), "rslora": bool,
    "sigma_param": str, "dropout": (int, float), "dtype": str,
}
_SHARED_FIELDS = ("r", "b", "alpha", "rslora", "sigma_param", "dropout")  # top level: the common value or None


def _file_key(state_key: str) -> str:
    """``"<module>.lora_A"`` (as in [`adapter_state_dict`][bora_ref.adapter_state_dict]) -> ``"base_model.model.<module>.lora_A.weight"``."""
    module, _, param = state_key.rpartition(".")
    return _PREFIX + (module + "." if module else "") + _FILE_SUFFIX[param]


def _layer_settings(layer: BoRALinear) -> dict[str, Any]:
    dropout = layer.dropout.p if isinstance(layer.dropout, nn.Dropout) else 0.0
    return {
        "in_features": layer.in_features, "out_features": layer.out_features, "r": layer.r, "b": layer.b,
        "alpha": layer.alpha, "rslora": layer.rslora, "sigma_param": layer.sigma_param, "dropout": dropout,
        "dtype": str(layer.lora_A.dtype).removeprefix("torch."),
    }


def _directory(path: Any) -> Path:
    if not isinstance(path, (str, os.PathLike)):
        raise BoRAValueError(f"path must be a str or os.PathLike, got {type(path).__name__}")
    text = os.fspath(path)
    if not isinstance(text, str) or not text or "\x00" in text:
        raise BoRAValueError(f"path must be a non-empty directory name without NUL characters, got {text!r}")
    return Path(text)


@contextlib.contextmanager
def _locked(directory: Path, *, exclusive: bool) -> Iterator[int | None]:
    """Hold a ``flock`` on ``directory`` (exclusive for savers, shared for loaders); yield its fd or ``None``.

    Without ``fcntl``, or on a file system that refuses locks, this does not lock (saves stay
    atomic; only the serialisation of concurrent savers is lost).
    """
    try:
        fd = os.open(directory, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    except OSError:
        yield None
        return
    try:
        if fcntl is not None:
            with contextlib.suppress(OSError):
                fcntl.flock(fd, fcntl.LOCK_EX if exclusive else fcntl.LOCK_SH)
        yield fd
    finally:
        os.close(fd)  # releases the lock


def _committed_sha(directory: Path) -> str | None:
    """The tensor hash the current config names, or ``None`` (no config, or not one of ours)."""
    try:
        config = json.loads(_read_regular(directory / CONFIG_NAME, limit=MAX_CONFIG_BYTES))
        sha = config["safetensors_sha256"]
    except Exception:  # anything unreadable: there is nothing to finish
        return None
    return sha if isinstance(sha, str) and re.fullmatch(r"[0-9a-f]{64}", sha) else None


def _finish_interrupted_save(directory: Path) -> None:
    """Complete step (3) of a save that was killed after its commit, then drop other leftovers."""
    sha = _committed_sha(directory)
    if sha is not None:
        pending = directory / _PENDING.format(sha=sha)
        if pending.is_file():
            os.replace(pending, directory / WEIGHTS_NAME)
            fsync_directory(directory)
    for entry in os.scandir(directory):
        if entry.name.startswith(_TEMP_PREFIXES) and entry.name.endswith((".tmp", ".pending")):
            with contextlib.suppress(OSError):
                os.unlink(entry.path)


def save_adapter(model: nn.Module, path: str | os.PathLike[str]) -> Path:
    """Write ``model``'s BoRA adapters to the directory ``path`` (created if missing), atomically.

    Writes ``adapter_model.safetensors`` (only ``lora_A (r, n)``, ``lora_B (m, r)`` and raw
    ``sigma (b, b, r)`` of every [`BoRALinear`][bora_ref.BoRALinear], bit for bit) and
    ``adapter_config.json``. An existing adapter in ``path`` is replaced as one step: after a
    failure or a kill at any point the directory loads as the old adapter or the new one, never
    a mix and never neither; concurrent saves to one directory are serialised (module docstring).
    Other files in ``path`` are left alone.

    Args:
        model: a module with at least one ``BoRALinear`` (merged or not: the adapter tensors
            are the same).
        path: target directory.

    Returns:
        The directory as a `Path`.

    Raises:
        ValueError: ``model`` is not an ``nn.Module`` or has no BoRA layer, an adapter tensor
            contains NaN or infinity (it could not be loaded back), or ``path`` is not a
            non-empty str / ``os.PathLike``, exists and is not a directory, cannot be
            created, or holds a directory under one of the two file names. Nothing is written then.
        OSError: writing failed (disk full, ...); the directory still holds the old adapter or
            the new one.

    Examples:
        >>> import tempfile
        >>> from torch import nn
        >>> from bora_ref import apply_bora, save_adapter
        >>> model = apply_bora(nn.Sequential(nn.Linear(16, 8)), target_modules=["0"], r=2, b=2)
        >>> with tempfile.TemporaryDirectory() as folder:
        ...     sorted(p.name for p in save_adapter(model, folder).iterdir())
        ['adapter_config.json', 'adapter_model.safetensors']
    """
    layers = dict(named_bora_layers(model))
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
                              "format_version": FORMAT_VERSION, "split_rule": SPLIT_RULE}
    for field in _SHARED_FIELDS:
        values = {s[field] for s in settings.values()}
        config[field] = values.pop() if len(values) == 1 else None  # None: differs per layer, see "layers"
    config["target_modules"] = list(layers)
    config["layers"] = settings
    sha = hashlib.sha256(data).hexdigest()
    config["safetensors_sha256"] = sha
    config_bytes = (json.dumps(config, indent=2) + "\n").encode()

    try:
        directory.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise BoRAValueError(f"path={os.fspath(path)!r}: cannot create the directory: {exc.strerror or exc}") from None
    with _locked(directory, exclusive=True):
        for name in (CONFIG_NAME, WEIGHTS_NAME):  # a rename cannot replace a directory: refuse before writing
            if os.path.isdir(directory / name) and not os.path.islink(directory / name):
                raise BoRAValueError(f"{directory / name} is a directory; refusing to save an adapter over it")
        _finish_interrupted_save(directory)
        pending = directory / _PENDING.format(sha=sha)
        # Files are fsynced before their rename; the directory only after (2) and (3), here, so that a
        # failure after the commit never reaches the clean-up of the pending file below.
        atomic_write(pending, data, sync_directory=False)  # (1)
        try:
            atomic_write(directory / CONFIG_NAME, config_bytes, sync_directory=False)  # (2) the commit
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(pending)
            raise
        fsync_directory(directory)
        os.replace(pending, directory / WEIGHTS_NAME)  # (3); if this fails the pending file stands in
        fsync_directory(directory)
    return directory


def _describe(mode: int) -> str:
    for test, name in ((stat.S_ISDIR, "a directory"), (stat.S_ISFIFO, "a FIFO"), (stat.S_ISCHR, "a character device"),
                       (stat.S_ISBLK, "a block device"), (stat.S_ISSOCK, "a socket")):
        if test(mode):
            return name
    return "not a regular file"


@contextlib.contextmanager
def _open_regular(path: Path) -> Iterator[tuple[int, int]]:
    """Open ``path`` (following links) without blocking and yield ``(fd, size)``; only regular files pass."""
    flags = os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_NOCTTY", 0) | getattr(os, "O_BINARY", 0)
    try:
        fd = os.open(path, flags)
    except FileNotFoundError:
        raise BoRAValueError(f"{path} does not exist; not a saved BoRA adapter directory") from None
    except OSError as exc:
        raise BoRAValueError(f"{path} cannot be opened: {exc.strerror or exc}") from None
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise BoRAValueError(f"{path} is {_describe(st.st_mode)}; an adapter file must be a regular file")
        yield fd, st.st_size
    finally:
        os.close(fd)


def _read_exact(fd: int, count: int, path: Path) -> bytes:
    chunks, left = [], count
    while left > 0:
        chunk = os.read(fd, min(left, 1 << 24))
        if not chunk:
            raise BoRAValueError(f"{path} ended early (it changed while being read)")
        chunks.append(chunk)
        left -= len(chunk)
    return b"".join(chunks)


def _read_regular(path: Path, *, limit: int) -> bytes:
    """All of a regular file of at most ``limit`` bytes."""
    with _open_regular(path) as (fd, size):
        if size > limit:
            raise BoRAValueError(f"{path} has {size} bytes, more than the {limit} bytes allowed for it")
        return _read_exact(fd, size, path)


def _reject_constant(name: str) -> None:
    raise ValueError(f"{name} is not a JSON number")


def _read_config(path: Path) -> dict[str, Any]:
    """Parse and type-check ``adapter_config.json`` (no model involved yet)."""
    raw = _read_regular(path, limit=MAX_CONFIG_BYTES)
    try:
        config = json.loads(raw.decode("utf-8"), parse_constant=_reject_constant)
    except (UnicodeDecodeError, ValueError) as exc:  # JSONDecodeError, NaN/Infinity, integers of > 4300 digits
        raise BoRAValueError(f"{path} is not valid JSON: {exc}") from None
    except RecursionError:
        raise BoRAValueError(f"{path} is not valid JSON: nested too deeply") from None
    if not isinstance(config, dict) or config.get("peft_type") != "BORA":
        raise BoRAValueError(f"{path} is not a BoRA adapter config (peft_type must be 'BORA')")
    version = config.get("format_version", "<missing>")
    if type(version) is not int or version not in _READABLE_VERSIONS:
        raise BoRAValueError(f"{path} has format_version={version!r:.80}; this bora_ref reads format versions "
                             f"{', '.join(map(str, _READABLE_VERSIONS))} (a newer bora_ref wrote it, or it is not ours)")
    check_split_rule(str(path), config, version)
    layers, sha = config.get("layers"), config.get("safetensors_sha256")
    if not isinstance(sha, str) or not re.fullmatch(r"[0-9a-f]{64}", sha):
        raise BoRAValueError(f"{path}: safetensors_sha256 must be a 64-digit hex string, got {sha!r:.80}")
    if not isinstance(layers, dict) or not layers or config.get("target_modules") != list(layers):
        raise BoRAValueError(f"{path}: 'layers' must be a non-empty object whose keys are 'target_modules', in order")
    for name, settings in layers.items():
        if not isinstance(settings, dict) or set(settings) != set(_LAYER_FIELDS):
            raise BoRAValueError(f"{path}: layer {name!r} must have exactly the keys {sorted(_LAYER_FIELDS)}")
        for field, kind in _LAYER_FIELDS.items():
            value = settings[field]
            if not isinstance(value, kind) or (kind is not bool and isinstance(value, bool)):
                raise BoRAValueError(f"{path}: layer {name!r} has {field}={value!r:.80}, which is not of type {kind}")
        for field in ("in_features", "out_features", "r", "b"):
            if settings[field] < 1:
                raise BoRAValueError(f"{path}: layer {name!r} has {field}={settings[field]}; it must be >= 1")
        if settings["dtype"] not in ADAPTER_DTYPES:
            raise BoRAValueError(f"{path}: layer {name!r} has dtype={settings['dtype']!r:.80}, not one of {ADAPTER_DTYPES}")
    for field in _SHARED_FIELDS:  # the top-level value is the layers' common value, or None when they differ
        values = [s[field] for s in layers.values()]
        common = values[0] if all(_same(v, values[0]) for v in values) else None
        if field not in config or not _same(config[field], common):
            raise BoRAValueError(
                f"{path}: top-level {field}={config.get(field, '<missing>')!r:.80} disagrees with the layers' {field} "
                f"({'their common value is ' + repr(common) if common is not None else 'they differ, so it must be null'})"
            )
    return config


def _same(a: Any, b: Any) -> bool:
    """JSON equality that keeps booleans apart from numbers (``true != 1``)."""
    if isinstance(a, bool) or isinstance(b, bool):
        return type(a) is type(b) and a == b
    return bool(a == b)


def _expected_tensors(config: dict[str, Any]) -> dict[str, tuple[str, tuple[int, ...], torch.dtype]]:
    """File key -> (state key, shape, dtype) of every tensor the config describes."""
    expected: dict[str, tuple[str, tuple[int, ...], torch.dtype]] = {}
    for name, s in config["layers"].items():
        m, n, r, b = s["out_features"], s["in_features"], s["r"], s["b"]
        for param, shape in (("lora_A", (r, n)), ("lora_B", (m, r)), ("sigma", (b, b, r))):
            key = f"{name}.{param}" if name else param
            expected[_file_key(key)] = (key, shape, getattr(torch, s["dtype"]))
    return expected


def _read_weights_file(path: Path, expected: dict[str, tuple[str, tuple[int, ...], torch.dtype]]) -> bytes:
    """The bytes of a safetensors file no larger than ``expected`` implies, its size checked before reading.

    A safetensors file is an 8-byte little-endian header length ``N``, an ``N``-byte JSON
    header and the tensors' data, packed: ``8 + N + sum(numel * itemsize)`` bytes in all. A
    larger file, or a header longer than its entries can need, is refused unread; a smaller or
    inconsistent one is read (it is small) and fails the hash or the key/shape checks.
    """
    data_bytes = sum(math.prod(shape) * dtype.itemsize for _, shape, dtype in expected.values())
    header_cap = 4096 + sum(256 + len(key) for key in expected)  # every entry: key, dtype, shape, offsets
    with _open_regular(path) as (fd, size):
        if size < 8:
            raise BoRAValueError(f"{path} has {size} bytes; it is not a safetensors file")
        prefix = _read_exact(fd, 8, path)
        header_len = int.from_bytes(prefix, "little")
        if header_len > header_cap or size > 8 + header_cap + data_bytes:
            raise BoRAValueError(
                f"{path} has {size} bytes (a header of {header_len}), but the tensors {CONFIG_NAME} describes take "
                f"8 + a header of at most {header_cap} + {data_bytes} data bytes: the file is corrupted or belongs to "
                "another config; it was not read"
            )
        return prefix + _read_exact(fd, size - 8, path)


def _read_tensors(directory: Path, config: dict[str, Any]) -> dict[str, torch.Tensor]:
    """Read the tensor file, check its size, hash, keys, shapes and dtypes against ``config``; return a state dict."""
    expected = _expected_tensors(config)
    path = directory / WEIGHTS_NAME
    try:
        data = _read_weights_file(path, expected)
        error = None if hashlib.sha256(data).hexdigest() == config["safetensors_sha256"] else BoRAValueError(
            f"{path} does not match the safetensors_sha256 recorded in {CONFIG_NAME}: the file is corrupted or was "
            "replaced after saving"
        )
    except BoRAValueError as exc:
        error = exc
    if error is not None:
        pending = directory / _PENDING.format(sha=config["safetensors_sha256"])
        if not os.path.lexists(pending):  # a save committed its config, then stopped before renaming the tensors
            raise error
        path = pending
        data = _read_weights_file(path, expected)
        if hashlib.sha256(data).hexdigest() != config["safetensors_sha256"]:
            raise error
    try:
        tensors = safetensors.torch.load(data)
    except Exception as exc:  # the parser's own error types vary by version; the bytes are untrusted
        raise BoRAValueError(f"{path} is not a readable safetensors file: {exc}") from None

    state: dict[str, torch.Tensor] = {}
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
            if field != "dropout" and not _same(have[field], want):  # dropout changes training, not the weights
                raise BoRAValueError(
                    f"{where} does not match the model: layer {name!r} has {field}={want!r} in the file but "
                    f"{field}={have[field]!r} in the model"
                )


def _check_injectable(model: nn.Module, config: dict[str, Any], where: Path) -> None:
    """A model without BoRA layers gets them from the config: every target must be a distinct matching ``nn.Linear``."""
    seen: dict[int, str] = {}
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
                f"in_features={s['in_features']}, got {linear!r:.200}"
            )
        if id(linear) in seen:
            raise BoRAValueError(
                f"{where} does not match the model: {seen[id(linear)]!r} and {name!r} are one shared nn.Linear in the "
                "model, but the file has a separate adapter for each"
            )
        seen[id(linear)] = name
        try:
            BoRAConfig(r=s["r"], b=s["b"], alpha=s["alpha"], rslora=s["rslora"], sigma_param=s["sigma_param"],
                       dropout=s["dropout"]).check_shape(s["out_features"], s["in_features"])
        except BoRAValueError as exc:
            raise BoRAValueError(f"{where}: layer {name!r} has invalid settings: {exc}") from None


def load_adapter(model: nn.Module, path: str | os.PathLike[str]) -> nn.Module:
    """Load adapters written by [`save_adapter`][bora_ref.save_adapter] into ``model``; all-or-nothing, never unpickles.

    If ``model`` already has BoRA layers, their names, shapes, ``r``, ``b``, ``alpha``,
    ``rslora``, ``sigma_param`` and adapter dtype must equal the file's. If it has none, they
    are created first with [`apply_bora`][bora_ref.apply_bora] from the config (the model is then
    trainable exactly like after ``apply_bora``). The loaded tensors are bit-identical to the
    saved ones. Only regular files are read, the config is at most [`MAX_CONFIG_BYTES`][bora_ref.nn.adapter_io.MAX_CONFIG_BYTES]
    and the tensor file's size is checked against the config and the model before it is read.

    Args:
        model: the model to load into (the same architecture the adapter was saved from).
        path: directory containing ``adapter_model.safetensors`` and ``adapter_config.json``.

    Returns:
        ``model``.

    Raises:
        ValueError: a missing file or one that is not a regular file, an oversized or invalid
            config or one of another format (an unknown or newer ``format_version``, a
            ``split_rule`` other than ``"array_split"``), a tensor file of the wrong size, corrupted tensor
            bytes (hash mismatch), missing or extra tensors, wrong shapes or dtypes, non-finite
            values, a config that does not match the model, or merged layers. The message names
            the problem; the model is left exactly as it was.

    Examples:
        >>> import tempfile, torch
        >>> from torch import nn
        >>> from bora_ref import apply_bora, load_adapter, save_adapter
        >>> model = apply_bora(nn.Sequential(nn.Linear(16, 8)), target_modules=["0"], r=2, b=2)
        >>> with tempfile.TemporaryDirectory() as folder:
        ...     _ = save_adapter(model, folder)
        ...     restored = load_adapter(nn.Sequential(nn.Linear(16, 8)), folder)  # BoRA layers created from the file
        >>> type(restored[0]).__name__, torch.equal(restored[0].sigma, model[0].sigma)
        ('BoRALinear', True)
    """
    layers = dict(named_bora_layers(model))
    directory = _directory(path)
    if not directory.is_dir():
        raise BoRAValueError(f"path={os.fspath(path)!r} is not a directory")
    with _locked(directory, exclusive=False):
        config = _read_config(directory / CONFIG_NAME)
        if layers:  # the model's own shapes bound how much is read below
            _check_model_matches(model, layers, config, directory)
        else:
            _check_injectable(model, config, directory)
        state = _read_tensors(directory, config)
    if layers:
        load_adapter_state_dict(model, state)  # checks everything (merged layers too) before the first copy
        return model
    with _all_or_nothing(model):
        # One apply_bora per target: layers may differ in r, b, ... (exact-name regex, as PEFT's fullmatch).
        for name, s in config["layers"].items():
            apply_bora(model, target_modules=re.escape(name), r=s["r"], b=s["b"], alpha=s["alpha"], rslora=s["rslora"],
                       sigma_param=s["sigma_param"], dropout=s["dropout"], adapter_dtype=getattr(torch, s["dtype"]))
        load_adapter_state_dict(model, state)  # copy_() moves each tensor to its layer's device
    return model
