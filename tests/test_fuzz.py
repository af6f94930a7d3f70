"""Fuzz every public entry point with hostile arguments (hypothesis).

Promise: a call either succeeds or raises :class:`bora_ref.BoRAValueError` (the command line:
exit status 2 with a one-line message, or argparse's own usage error, also exit 2); and a
refused call changes nothing -- not the model (module tree, parameter values, dtypes,
``requires_grad`` flags, merged state), not the array arguments, not the files on disk.

Covered: every callable of ``bora_ref.__all__`` (``BoRALinear`` and its ``forward``, ``merge``,
``unmerge``, ``reset_adapter_parameters``, ``load_state_dict``), of ``bora_ref.numpy_ref`` and
``bora_ref.torch_ref``, ``save_adapter``/``load_adapter`` on hostile paths and files, and the
``bora-ref rank`` / ``bora-ref report`` command lines. ``ParamCount`` and ``RankInfo`` are
plain records (no validation promised). The oracle (``bora_ref.testing``, ``bora-ref check``)
is fuzzed in its own tests.

Run with ``-s`` to print how many inputs were tried and held per entry point.
"""

from __future__ import annotations

import contextlib
import inspect
import os
import shutil
import tempfile
from collections import defaultdict
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st
from torch import nn

import bora_ref
from bora_ref import BoRALinear, BoRAValueError, apply_bora, bora_layers, numpy_ref, save_adapter, torch_ref

from .test_reliability import Net, assert_unchanged, snapshot

COUNTS: dict[str, list[int]] = defaultdict(lambda: [0, 0])  # entry point -> [inputs tried, inputs held]

# --- hostile values ----------------------------------------------------------------------------------------------------

SCALARS = st.one_of(
    st.none(), st.booleans(), st.integers(-3, 9), st.sampled_from([10**9, 2**70, -(10**9)]),
    st.floats(allow_nan=True, allow_infinity=True), st.text(max_size=4),
    st.sampled_from(["cpu", "exp_norm", "raw", "auto", "float16", "cuda", "nonsense", "default"]),
    st.just([]), st.just({}), st.just(()), st.builds(object), st.just(b"x"),
)
TORCH_DTYPES = [torch.float32, torch.float64, torch.float16, torch.bfloat16, torch.int64, torch.bool, torch.complex64,
                torch.float8_e5m2]
NUMPY_DTYPES = [np.float64, np.float32, np.float16, np.int64, np.bool_, np.complex128, object]
DTYPES = st.one_of(st.sampled_from(TORCH_DTYPES), st.sampled_from(NUMPY_DTYPES), st.sampled_from(["float32", "bfloat16", "int8"]))
SHAPES = st.lists(st.integers(0, 5), max_size=3).map(tuple)


def _poison(value: np.ndarray, how: str) -> np.ndarray:
    if how != "finite" and value.size and np.issubdtype(value.dtype, np.floating):
        value = value.copy()
        value.flat[0] = np.nan if how == "nan" else np.inf
    return value


@st.composite
def numpy_arrays(draw, shape=None):
    shape = draw(SHAPES) if shape is None else shape
    dtype = draw(st.sampled_from(NUMPY_DTYPES))
    values = np.random.default_rng(draw(st.integers(0, 9))).standard_normal(shape)
    values = _poison(values, draw(st.sampled_from(["finite", "finite", "nan", "inf"])))
    with np.errstate(invalid="ignore"):  # NaN/inf cast to int: whatever it gives is hostile enough
        return values.astype(dtype)


@st.composite
def tensors(draw, shape=None):
    shape = draw(SHAPES) if shape is None else shape
    dtype = draw(st.sampled_from(TORCH_DTYPES))
    g = torch.Generator().manual_seed(draw(st.integers(0, 9)))
    values = torch.randn(shape, generator=g, dtype=torch.float64)
    values = torch.from_numpy(_poison(values.numpy(), draw(st.sampled_from(["finite", "finite", "nan", "inf"]))))
    out = values.to(dtype) if dtype not in (torch.complex64,) else torch.complex(values, values).to(dtype)
    if draw(st.booleans()) and dtype in (torch.float32, torch.float64) and out.ndim == 2:
        out = out.to_sparse()  # a sparse layout
    return out


@st.composite
def factor_triples(draw):
    """Consistent (B, A, sigma) of random backends/dtypes, sometimes with one part made hostile."""
    b = draw(st.integers(1, 3))
    m, n, r = draw(st.integers(b, 7)), draw(st.integers(b, 7)), draw(st.integers(1, 4))
    make = draw(st.sampled_from([numpy_arrays, tensors]))
    triple = [draw(make(shape=(m, r))), draw(make(shape=(r, n))), draw(make(shape=(b, b, r)))]
    if draw(st.booleans()):
        triple[draw(st.integers(0, 2))] = draw(ANY)
    return triple


MODEL_KINDS = ["plain", "adapted", "merged", "raw-inf", "linear", "bora", "relu", "shared", "tied", "mixed-flags"]


def make_model(kind: str) -> nn.Module:
    if kind == "linear":
        return nn.Linear(6, 5)
    if kind == "bora":
        return BoRALinear(6, 5, r=2, b=2)
    if kind == "relu":
        return nn.ReLU()
    model = Net()
    if kind == "plain":
        return model
    if kind == "mixed-flags":
        model.q.bias.requires_grad_(False)
        return model
    if kind == "shared":
        model.v2 = model.q
        return apply_bora(model, target_modules=["q"], r=2, b=2)
    if kind == "tied":
        model.t = nn.Linear(6, 5)
        model.t.weight = model.q.weight
        return apply_bora(model, target_modules=["q"], r=2, b=2)
    apply_bora(model, target_modules=["q", "v"], r=2, b=2, sigma_param="raw" if kind == "raw-inf" else "exp_norm")
    with torch.no_grad():
        for layer in bora_layers(model):
            nn.init.normal_(layer.lora_B)
    if kind == "merged":
        bora_ref.merge_bora(model)
    if kind == "raw-inf":
        with torch.no_grad():
            model.q.sigma[0, 0, 0] = float("inf")
    return model


MODELS = st.sampled_from(MODEL_KINDS).map(make_model)
ANY = st.one_of(SCALARS, DTYPES, numpy_arrays(), tensors(), MODELS)
INTS = st.one_of(st.integers(-2, 12), st.integers(-2, 12), st.sampled_from([10**9, 2**70, 10**5]), SCALARS)
TARGETS = st.one_of(
    st.sampled_from([["q"], ["v", "q"], "q|v", "q", [], "(", ["base"], ["q.base"], [""], [3], ".*", "nomatch", ["v2"], ("q",)]),
    SCALARS,
)


@st.composite
def state_dicts(draw):
    state = {k: v.clone() for k, v in bora_ref.adapter_state_dict(make_model("adapted")).items()}
    how = draw(st.sampled_from(["same", "missing", "extra", "dtype", "shape", "nan", "not-a-tensor", "sparse", "hostile"]))
    key = draw(st.sampled_from(sorted(state)))
    if how == "missing":
        del state[key]
    elif how == "extra":
        state["x.lora_A"] = state[key]
    elif how == "dtype":
        state[key] = state[key].double()
    elif how == "shape":
        state[key] = state[key][..., :1]
    elif how == "nan":
        state[key] = torch.full_like(state[key], float("nan"))
    elif how == "not-a-tensor":
        state[key] = state[key].tolist()
    elif how == "sparse":
        state[key] = state[key].to_sparse()
    elif how == "hostile":
        return draw(ANY)
    return state


def strategy_for(name: str) -> st.SearchStrategy:
    if name in ("model", "layer"):
        return st.one_of(MODELS, MODELS, MODELS, ANY)
    if name in ("B", "A", "sigma", "M", "x"):
        return st.one_of(numpy_arrays(), tensors(), ANY)
    if name in ("m", "n", "r", "b", "dim", "R", "in_features", "out_features", "threads"):
        return INTS
    if name == "state_dict":
        return state_dicts()
    if name == "target_modules":
        return TARGETS
    if name in ("dtype", "adapter_dtype", "storage_dtype"):
        return st.one_of(DTYPES, SCALARS)
    return ANY


# --- the contract ------------------------------------------------------------------------------------------------------


def _freeze(value: Any) -> Any:
    """A comparable copy of a mutable argument (models, arrays, tensors, dicts of tensors)."""
    if isinstance(value, nn.Module):
        return ("module", snapshot(value))
    if isinstance(value, torch.Tensor):
        return ("tensor", value.clone())
    if isinstance(value, np.ndarray):
        return ("array", value.copy())
    if isinstance(value, dict):
        return ("dict", {k: _freeze(v) for k, v in value.items()})
    return ("other", None)


def _bits(t: torch.Tensor) -> torch.Tensor:
    t = t.detach()
    t = (t.to_dense() if t.layout != torch.strided else t).reshape(-1).clone()
    return t.view(torch.uint8) if t.numel() else torch.empty(0, dtype=torch.uint8)


def _assert_same(value: Any, frozen: Any) -> None:
    kind, saved = frozen
    if kind == "module":
        assert_unchanged(value, saved)
    elif kind == "tensor":
        assert value.dtype == saved.dtype and value.layout == saved.layout and value.shape == saved.shape
        assert torch.equal(_bits(value), _bits(saved))  # bit for bit (NaN included)
    elif kind == "array":
        assert value.dtype == saved.dtype and value.shape == saved.shape
        if value.dtype == object:
            assert all(x is y for x, y in zip(value.flat, saved.flat))
        else:
            assert value.tobytes() == saved.tobytes()  # bit for bit (NaN included)
    elif kind == "dict":
        assert value.keys() == saved.keys()
        for k in saved:
            _assert_same(value[k], saved[k])


def held(name: str, call, args: tuple = (), kwargs: dict | None = None, *, mutates: tuple[int, ...] = ()) -> Any:
    """Call ``call(*args, **kwargs)``: success, or BoRAValueError with every argument unchanged.

    ``mutates``: positions of arguments the call may legitimately change when it succeeds.
    """
    kwargs = kwargs or {}
    COUNTS[name][0] += 1
    frozen = [_freeze(a) for a in args]
    frozen_kw = {k: _freeze(v) for k, v in kwargs.items()}
    try:
        with np.errstate(all="ignore"), _no_warnings():
            result = call(*args, **kwargs)
    except BoRAValueError:
        for a, f in zip(args, frozen):
            _assert_same(a, f)
        for k, f in frozen_kw.items():
            _assert_same(kwargs[k], f)
        COUNTS[name][1] += 1
        return None
    except Exception as exc:
        raise AssertionError(f"{name}{_show(args, kwargs)} raised {type(exc).__name__}: {exc}") from exc
    for i, (a, f) in enumerate(zip(args, frozen)):
        if i not in mutates:
            _assert_same(a, f)
    for k, f in frozen_kw.items():
        _assert_same(kwargs[k], f)
    COUNTS[name][1] += 1
    return result


@contextlib.contextmanager
def _no_warnings():
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        yield


def _show(args: tuple, kwargs: dict) -> str:
    def short(v: Any) -> str:
        if isinstance(v, (torch.Tensor, np.ndarray)):
            return f"<{type(v).__name__} {tuple(v.shape)} {v.dtype}>"
        if isinstance(v, nn.Module):
            return f"<{type(v).__name__}>"
        return repr(v)[:60]

    return "(" + ", ".join([short(a) for a in args] + [f"{k}={short(v)}" for k, v in kwargs.items()]) + ")"


# --- entry points ------------------------------------------------------------------------------------------------------

PLAIN_FUNCTIONS = {
    **{f"bora_ref.{name}": getattr(bora_ref, name) for name in bora_ref.__all__
       if name not in ("BoRAValueError", "ParamCount", "RankInfo", "__version__", "save_adapter", "load_adapter")},
    **{f"numpy_ref.{name}": getattr(numpy_ref, name) for name in numpy_ref.__all__ if callable(getattr(numpy_ref, name))},
    **{f"torch_ref.{name}": getattr(torch_ref, name) for name in torch_ref.__all__ if callable(getattr(torch_ref, name))},
}
MUTATING = {"bora_ref.apply_bora", "bora_ref.merge_bora", "bora_ref.unmerge_bora", "bora_ref.merge_and_unload",
            "bora_ref.load_adapter_state_dict", "bora_ref.bora_from_peft", "bora_ref.bora_to_peft"}


def _draw_call(data, fn) -> tuple[tuple, dict]:
    args, kwargs = [], {}
    for p in inspect.signature(fn).parameters.values():
        if p.kind is p.VAR_KEYWORD:
            for extra in data.draw(st.lists(st.sampled_from(["rslora", "sigma_param", "dropout", "adapter_dtype", "bogus"]),
                                            max_size=2, unique=True)):
                kwargs[extra] = data.draw(strategy_for(extra))
        elif p.default is p.empty:
            value = data.draw(strategy_for(p.name))
            if p.kind is p.KEYWORD_ONLY:
                kwargs[p.name] = value
            else:
                args.append(value)
        elif data.draw(st.booleans()):
            kwargs[p.name] = data.draw(strategy_for(p.name))
    return tuple(args), kwargs


@pytest.mark.parametrize("name", sorted(PLAIN_FUNCTIONS))
@given(data=st.data())
def test_public_functions_raise_only_BoRAValueError_and_change_nothing_when_refusing(name, data):
    fn = PLAIN_FUNCTIONS[name]
    if name in ("bora_ref.factor_rank", "bora_ref.factor_rank_info", "bora_ref.singular_values",
                "bora_ref.structured_svd", "numpy_ref.delta_weight", "torch_ref.delta_weight") and data.draw(st.booleans()):
        args, kwargs = tuple(data.draw(factor_triples())), {}
    elif name in ("numpy_ref.bora_matmul", "torch_ref.bora_matmul") and data.draw(st.booleans()):
        B, A, sigma = data.draw(factor_triples())
        width = A.shape[-1] if isinstance(A, (np.ndarray, torch.Tensor)) and A.ndim else 3
        x = data.draw(st.one_of(numpy_arrays(shape=(2, width)), tensors(shape=(2, width)), ANY))
        args, kwargs = (x, B, A, sigma), {}
    else:
        args, kwargs = _draw_call(data, fn)
    held(name, fn, args, kwargs, mutates=(0,) if name in MUTATING else ())


@given(data=st.data())
def test_BoRALinear_methods_raise_only_BoRAValueError_and_change_nothing_when_refusing(data):
    layer = data.draw(st.sampled_from(["bora", "merged-bora"]).map(
        lambda k: BoRALinear(6, 5, r=2, b=2) if k == "bora" else _merged_layer()))
    method = data.draw(st.sampled_from(["forward", "merge", "unmerge", "reset_adapter_parameters", "load_state_dict"]))
    if method == "forward":
        x = data.draw(st.one_of(tensors(shape=(3, 6)), tensors(), numpy_arrays(shape=(3, 6)), ANY))
        held("BoRALinear.forward", layer, (x,))
    elif method == "merge":
        held("BoRALinear.merge", lambda s: layer.merge(safe=s), (data.draw(ANY),))
    elif method == "unmerge":
        held("BoRALinear.unmerge", layer.unmerge)
    elif method == "reset_adapter_parameters":
        held("BoRALinear.reset_adapter_parameters", _checked(layer, layer.reset_adapter_parameters))
    else:
        source = data.draw(st.sampled_from(["bora", "merged-bora"]))
        state = (BoRALinear(6, 5, r=2, b=2) if source == "bora" else _merged_layer()).state_dict()
        if data.draw(st.booleans()):
            state = {k: v for k, v in state.items() if not k.startswith("base")}
        held("BoRALinear.load_state_dict", _checked(layer, lambda: layer.load_state_dict(state, strict=False)))


def _merged_layer() -> BoRALinear:
    layer = BoRALinear(6, 5, r=2, b=2)
    with torch.no_grad():
        nn.init.normal_(layer.lora_B)
    layer.merge()
    return layer


def _checked(layer: nn.Module, call):
    """Run a mutating method; on BoRAValueError the layer must be unchanged."""

    def run():
        snap = snapshot(layer)
        try:
            return call()
        except BoRAValueError:
            assert_unchanged(layer, snap)
            raise

    return run


# --- files -------------------------------------------------------------------------------------------------------------

PATH_KINDS = ["saved", "saved-other", "empty-dir", "file", "missing", "", "fifo-config", "devzero-weights", "dir-config",
              "huge-config", "sparse-weights", "garbage-config", "under-a-file", "pending-only"]


def _make_path(root: Path, kind: str) -> Any:
    d = root / "adapter"
    if kind == "":
        return ""
    if kind in ("file", "under-a-file"):
        (root / "f").write_text("x")
        return root / "f" if kind == "file" else root / "f" / "adapter"
    if kind == "missing":
        return root / "missing"
    d.mkdir()
    if kind == "empty-dir":
        return d
    save_adapter(make_model("adapted") if kind != "saved-other" else apply_bora(Net(), target_modules=["q"], r=1, b=1), d)
    config, weights = d / "adapter_config.json", d / "adapter_model.safetensors"
    if kind == "fifo-config":
        config.unlink()
        os.mkfifo(config)
    elif kind == "devzero-weights":
        weights.unlink()
        os.symlink("/dev/zero", weights)
    elif kind == "dir-config":
        config.unlink()
        config.mkdir()
    elif kind == "huge-config":
        with open(config, "r+b") as f:
            f.truncate(17 * 2**20)
    elif kind == "sparse-weights":
        with open(weights, "r+b") as f:
            f.truncate(2**31)
    elif kind == "garbage-config":
        config.write_bytes(b'{"peft_type": "BORA", "format_version": 1, "layers": [' * 50)
    elif kind == "pending-only":
        weights.unlink()
    return d


def _tree(root: Path) -> dict[str, Any]:
    """Every entry under root: kind and, for small regular files, the bytes."""
    out = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            p = Path(dirpath) / name
            st_ = os.lstat(p)
            if os.path.islink(p) or not os.path.isfile(p) or st_.st_size > 2**20:
                out[str(p)] = ("special", st_.st_mode, st_.st_size)
            else:
                out[str(p)] = ("file", p.read_bytes())
    return out


@given(data=st.data())
def test_save_and_load_adapter_raise_only_BoRAValueError_and_change_nothing_when_refusing(data):
    root = Path(tempfile.mkdtemp(prefix="bora-fuzz-"))
    cwd = os.getcwd()
    try:
        os.chdir(root)  # a path of "" or "." must not write into the test's working directory
        path = data.draw(st.one_of(st.sampled_from(PATH_KINDS).map(lambda k: _make_path(root, k)), SCALARS))
        path = data.draw(st.sampled_from([path, str(path)])) if isinstance(path, Path) else path
        model = data.draw(st.one_of(MODELS, MODELS, ANY))
        before = _tree(root)
        if data.draw(st.booleans()):
            if held("save_adapter", save_adapter, (model, path)) is None:
                assert _tree(root) == before  # refused: not a byte written
        else:
            result = held("load_adapter", bora_ref.load_adapter, (model, path), mutates=(0,))
            assert _tree(root) == before  # loading never writes
            del result
    finally:
        os.chdir(cwd)
        shutil.rmtree(root, ignore_errors=True)


# --- the command line --------------------------------------------------------------------------------------------------

CLI_TOKENS = ["--m", "--n", "--r", "--b", "--sigma", "--seed", "0", "1", "2", "3", "7", "64", "-1", "1000000000",
              "99999999999999999999", "abc", "1.5", "random", "separable", "identical", "bogus", "--bogus"]


class _Computing(Exception):
    """Raised instead of running a report's sweep: the arguments were accepted."""


@given(data=st.data())
def test_cli_exits_0_1_or_2_with_a_one_line_error(data, tmp_path_factory):
    import io

    import bora_ref.report.writer as writer
    from bora_ref.cli import main

    command = data.draw(st.sampled_from(["rank", "report"]))
    argv = [command] + data.draw(st.lists(st.sampled_from(CLI_TOKENS), max_size=10))
    if command == "report":
        out = tmp_path_factory.mktemp("out")
        (out / "f").write_text("x")
        argv += data.draw(st.sampled_from([["--out", str(out / "r")], ["--out", str(out / "f" / "r")], ["--out", ""]]))
        argv += data.draw(st.sampled_from([["--models", "MiniLM-L6"], ["--models", "nope"], []]))
    COUNTS["bora-ref main"][0] += 1
    stdout, stderr = io.StringIO(), io.StringIO()
    real_sweep = writer.rank_sweep
    writer.rank_sweep = lambda *a, **k: (_ for _ in ()).throw(_Computing())  # stop where the real work would start
    try:
        with contextlib.redirect_stdout(stdout), contextlib.redirect_stderr(stderr):
            code = main(argv)
    except SystemExit as exc:  # argparse's usage errors
        code = exc.code
    except _Computing:
        code = 0
    except Exception as exc:
        raise AssertionError(f"bora-ref {' '.join(argv)} raised {type(exc).__name__}: {exc}") from exc
    finally:
        writer.rank_sweep = real_sweep
    err = stderr.getvalue()
    assert code in (0, 1, 2), (argv, code)
    if code == 2 and "usage:" not in err:
        assert err.count("\n") == 1 and err.startswith(f"bora-ref {command}: error: "), (argv, err)
    COUNTS["bora-ref main"][1] += 1


def test_zz_print_fuzz_counts():
    """Not a check: prints the inputs tried / held per entry point (run with -s)."""
    if COUNTS:
        tried = sum(t for t, _ in COUNTS.values())
        kept = sum(h for _, h in COUNTS.values())
        print(f"\nfuzz: {tried} inputs tried, {kept} held, over {len(COUNTS)} entry points")
        for name, (t, h) in sorted(COUNTS.items()):
            print(f"  {name:45s} {t:5d} tried {h:5d} held")
    assert all(t == h for t, h in COUNTS.values())
