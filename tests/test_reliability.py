"""Reliability promises of issue 11: atomic adapter saves under threads and kills, size guards,
nothing changed after a refused call, and no silently wrong result (shared layers, merged state).

Each test is named after the promise it holds; ``docs/guides/guarantees.md`` lists them.
"""

from __future__ import annotations

import os
import random
import signal
import sys
import threading
import time

import numpy as np
import pytest
import torch
from torch import nn

import bora_ref
from bora_ref import BoRALinear, BoRAValueError, adapter_state_dict, apply_bora, bora_layers, load_adapter, save_adapter
from bora_ref.nn.adapter_io import CONFIG_NAME, WEIGHTS_NAME

# --- helpers -----------------------------------------------------------------------------------------------------------


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        torch.manual_seed(100)
        self.q = nn.Linear(6, 5)
        self.v = nn.Linear(5, 6)

    def forward(self, x):
        return self.v(torch.tanh(self.q(x)))


def _adapted(seed: int) -> nn.Module:
    """A small model whose adapters are random (seeded), so different seeds give different files."""
    model = apply_bora(Net(), target_modules=["q", "v"], r=2, b=2)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for layer in bora_layers(model):
            for p in (layer.lora_A, layer.lora_B, layer.sigma):
                p.copy_(torch.randn(p.shape, generator=g))
    return model


def _state(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in adapter_state_dict(model).items()}


def _which(directory, states: list[dict[str, torch.Tensor]]) -> int:
    """Index of the saved state the directory loads as (fails the test if it loads as none of them)."""
    loaded = adapter_state_dict(load_adapter(Net(), directory))
    for i, state in enumerate(states):
        if all(torch.equal(loaded[k], state[k]) for k in state):
            return i
    raise AssertionError("the directory loads as none of the saved adapters")


def snapshot(model: nn.Module):
    """Module tree (names, identities), parameter values, dtypes and requires_grad flags, buffers."""
    return (
        [(n, id(m), type(m)) for n, m in model.named_modules(remove_duplicate=False)],
        {k: (v.detach().clone(), v.requires_grad, v.dtype) for k, v in model.named_parameters(remove_duplicate=False)},
        {k: v.clone() for k, v in model.named_buffers()},
        [getattr(m, "merged", None) for m in model.modules()],
    )


def assert_unchanged(model: nn.Module, snap) -> None:
    now = snapshot(model)
    assert now[0] == snap[0]
    assert now[3] == snap[3]
    assert now[1].keys() == snap[1].keys() and now[2].keys() == snap[2].keys()
    for k, (v, grad, dtype) in snap[1].items():
        assert now[1][k][2] == dtype and torch.equal(now[1][k][0], v) and now[1][k][1] == grad, k
    for k, v in snap[2].items():
        assert torch.equal(now[2][k], v), k


# --- 1. atomic saves ---------------------------------------------------------------------------------------------------

THREAD_ROUNDS = 300
KILL_ROUNDS = 40


def test_concurrent_threads_saving_and_loading_one_directory_never_corrupt_it(tmp_path, monkeypatch):
    """300 rounds: 3 threads save different adapters into one directory while a 4th loads it.

    ``os.fsync`` is stubbed out here: it protects against power loss, not against other
    threads, and on this disk it made up 85 % of a save (the kill test keeps the real one).
    """
    monkeypatch.setattr(os, "fsync", lambda fd: None)
    models = [_adapted(seed) for seed in range(4)]
    states = [_state(m) for m in models]
    save_adapter(models[3], tmp_path)
    failures: list[BaseException] = []
    barrier = threading.Barrier(4)

    def saver(i: int) -> None:
        try:
            barrier.wait()
            save_adapter(models[i], tmp_path)
        except BaseException as exc:  # noqa: BLE001 - collected and reported below
            failures.append(exc)

    def loader() -> None:
        try:
            barrier.wait()
            _which(tmp_path, states)
        except BaseException as exc:  # noqa: BLE001
            failures.append(exc)

    for _ in range(THREAD_ROUNDS):
        threads = [threading.Thread(target=saver, args=(i,)) for i in range(3)] + [threading.Thread(target=loader)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert _which(tmp_path, states) in (0, 1, 2)
    assert failures == []
    assert sorted(os.listdir(tmp_path)) == [CONFIG_NAME, WEIGHTS_NAME]


@pytest.mark.skipif(not hasattr(os, "fork") or sys.platform == "darwin", reason="needs os.fork (Linux)")
def test_sigkill_at_random_times_during_saves_leaves_the_old_or_the_new_adapter(tmp_path):
    """40 rounds: a child process saves in a loop and is SIGKILLed at a random moment; the folder must load.

    The child alternates between three adapters, so a kill lands anywhere inside a save (or
    between two). Afterwards the folder must load as one of the adapters, and a new save must
    succeed and leave a clean folder.
    """
    models = [_adapted(seed) for seed in range(3)]
    states = [_state(m) for m in models]
    save_adapter(models[0], tmp_path)
    rng = random.Random(11)
    interrupted = 0  # kills that landed after a commit and before the tensor file's final rename
    for _ in range(KILL_ROUNDS):
        read_fd, write_fd = os.pipe()
        pid = os.fork()
        if pid == 0:  # child: save forever; never returns into pytest
            try:
                os.close(read_fd)
                os.write(write_fd, b"1")
                i = 0
                while True:
                    save_adapter(models[i % 3], tmp_path)
                    i += 1
            finally:
                os._exit(0)
        os.close(write_fd)
        os.read(read_fd, 1)  # the child is running
        os.close(read_fd)
        time.sleep(rng.uniform(0.0, 0.03))
        os.kill(pid, signal.SIGKILL)
        _, status = os.waitpid(pid, 0)
        assert os.WIFSIGNALED(status) and os.WTERMSIG(status) == signal.SIGKILL
        interrupted += any(name.endswith(".pending") for name in os.listdir(tmp_path))
        assert _which(tmp_path, states) in (0, 1, 2)
    save_adapter(models[1], tmp_path)
    assert sorted(os.listdir(tmp_path)) == [CONFIG_NAME, WEIGHTS_NAME]
    assert _which(tmp_path, states) == 1
    print(f"\nkill rounds: {KILL_ROUNDS}, 0 failures; {interrupted} left a save between its commit and its last rename")


# --- 3. size guards ----------------------------------------------------------------------------------------------------


def _blocks(dim: int, b: int) -> list[int]:
    return [len(chunk) for chunk in np.array_split(np.arange(dim), b)]  # NumPy's own split: the definition


def test_rank_bound_and_param_counts_match_the_block_sums_on_every_small_shape():
    from bora_ref.analysis.params import bora_params_for_rank

    for m in range(1, 10):
        for n in range(1, 10):
            for b in range(1, min(m, n) + 1):
                for r in range(1, 7):
                    rows = sum(min(r, s) for s in _blocks(m, b))
                    cols = sum(min(r, s) for s in _blocks(n, b))
                    assert bora_ref.rank_bound(m, n, r, b) == min(rows, cols), (m, n, r, b)
                    assert bora_ref.param_count(m, n, r, b).total == r * (m + n) + b * b * r
                for R in range(1, min(m, n) + 1):  # the smallest r whose bound reaches R, by search
                    r = next(r for r in range(1, max(m, n) + 1) if bora_ref.rank_bound(m, n, r, b) >= R)
                    assert bora_params_for_rank(m, n, R, b) == r * (m + n) + b * b * r, (m, n, R, b)


def test_rank_bound_and_param_counts_of_huge_shapes_allocate_nothing():
    import tracemalloc

    from bora_ref.analysis.params import bora_params_for_rank, equal_budget_lora_rank

    tracemalloc.start()
    try:
        assert bora_ref.rank_bound(10**9, 10**9, 8, 10**9) == 10**9  # 10**9 blocks of one row: min(8, 1) each
        assert bora_ref.rank_bound(10**12, 3 * 10**11, 10**6, 7) == 7 * 10**6
        assert bora_ref.param_count(10**9, 10**9, 8, 10**9).total == 8 * 2 * 10**9 + 10**18 * 8
        assert bora_params_for_rank(10**9, 10**9, 10**9, 10**9) == 2 * 10**9 + 10**18
        assert equal_budget_lora_rank(10**9, 10**9, 8, 10**9) == (16 * 10**9 + 8 * 10**18) // (2 * 10**9)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 1 << 20  # an O(b) tuple of 10**9 ints would be ~36 GB


def _cli(capsys, *argv: str) -> tuple[int, str, str]:
    from bora_ref.cli import main

    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


@pytest.mark.parametrize(
    "argv",
    [
        ("rank", "--m", "1000000000", "--n", "1000000000", "--r", "8", "--b", "16"),
        ("rank", "--m", "4096", "--n", "4096", "--r", "100000", "--b", "16"),
        ("rank", "--m", "12", "--n", "10", "--r", "100000", "--b", "3"),
    ],
    ids=["huge-m-n", "huge-r", "huge-r-small-shape"],
)
def test_cli_rank_above_the_memory_budget_is_a_one_line_error_with_exit_2(capsys, argv):
    code, out, err = _cli(capsys, *argv)
    assert code == 2 and out == ""
    assert err.count("\n") == 1 and err.startswith("bora-ref rank: error: bora-ref rank with m=")
    assert "above the memory budget of 2 GiB" in err


def test_cli_rank_with_r_far_above_the_block_sizes_answers_exactly(capsys):
    code, out, _ = _cli(capsys, "rank", "--m", "12", "--n", "10", "--r", "2000", "--b", "3")
    assert code == 0
    assert "rank bound               10\n" in out and "measured rank            10 " in out


def test_cli_report_above_the_memory_budget_is_refused_before_computing_or_creating_out(capsys, tmp_path):
    out_dir = tmp_path / "report"
    code, out, err = _cli(capsys, "report", "--out", str(out_dir), "--models", "MiniLM-L6", "--r", "100000", "--b", "2")
    assert code == 2 and out == "" and err.count("\n") == 1
    assert "r=100000, b=2 needs about" in err and "above the memory budget" in err
    assert not out_dir.exists()


@pytest.mark.parametrize("make_out", [lambda t: t / "file" / "sub", lambda t: t / "file"], ids=["under-a-file", "a-file"])
def test_report_into_an_unusable_folder_is_refused_before_computing(capsys, tmp_path, monkeypatch, make_out):
    import bora_ref.report.writer as writer

    (tmp_path / "file").write_text("x")
    monkeypatch.setattr(writer, "rank_sweep", lambda *a, **k: pytest.fail("computed before checking --out"))
    code, out, err = _cli(capsys, "report", "--out", str(make_out(tmp_path)), "--models", "MiniLM-L6", "--r", "4", "--b", "2")
    assert code == 2 and out == "" and err.count("\n") == 1 and "out" in err
    assert sorted(os.listdir(tmp_path)) == ["file"] and (tmp_path / "file").read_text() == "x"


def test_report_temporary_files_have_unique_names(tmp_path):
    """Two writers of one report file never share a temporary name (the old fixed '.name.tmp' raced)."""
    from bora_ref._io import atomic_write  # what write_report writes every file with

    seen = []

    def write(f):
        seen.extend(name for name in os.listdir(tmp_path) if name != "report.md")  # the temporary file being written
        f.write(str(len(seen)).encode())

    atomic_write(tmp_path / "report.md", write, durable=False)
    atomic_write(tmp_path / "report.md", write, durable=False)
    assert len(seen) == 2 and len(set(seen)) == 2 and all(name.startswith(".report.md.") for name in seen)
    assert os.listdir(tmp_path) == ["report.md"] and (tmp_path / "report.md").read_text() == "2"


def test_structured_svd_above_the_memory_budget_is_refused(monkeypatch):
    import bora_ref.analysis.budget as budget

    rng = np.random.default_rng(0)
    B, A, sigma = rng.standard_normal((40, 30)), rng.standard_normal((30, 50)), rng.standard_normal((5, 5, 30))
    S = bora_ref.singular_values(B, A, sigma)  # within the default budget
    need = budget.structured_svd_bytes(40, 50, 30, 5)
    monkeypatch.setattr(budget, "MEMORY_BUDGET_BYTES", need - 1)
    for call in (bora_ref.singular_values, bora_ref.structured_svd, bora_ref.factor_rank):
        with pytest.raises(BoRAValueError, match=r"the structured SVD with m=40, n=50, r=30, b=5 needs about .* above the memory budget"):
            call(B, A, sigma)
    monkeypatch.setattr(budget, "MEMORY_BUDGET_BYTES", need)
    np.testing.assert_array_equal(bora_ref.singular_values(B, A, sigma), S)


# --- 4. nothing changed after a refused call ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"r": 2, "b": 2, "adapter_dtype": torch.float8_e5m2}, "adapter_dtype must be one of"),
        ({"r": 10**9, "b": 2}, r"BoRALinear's adapter \(lora_A, lora_B, sigma\) with m=5, n=6, r=1000000000"),
        ({"r": 2, "b": 6}, "b must satisfy 1 <= b <= min"),
    ],
    ids=["float8", "r=10**9", "b-too-large-for-one-target"],
)
def test_a_refused_apply_bora_leaves_the_model_bit_identical(kwargs, match):
    model = Net()
    model.v.weight.requires_grad_(False)  # a mix of flags must survive too
    snap = snapshot(model)
    with pytest.raises(BoRAValueError, match=match):
        apply_bora(model, target_modules=["q", "v"], **kwargs)
    assert_unchanged(model, snap)


def test_an_allocation_failure_in_the_last_layer_undoes_apply_bora(monkeypatch):
    model = Net()
    snap = snapshot(model)
    calls = []
    real = BoRALinear.reset_adapter_parameters

    def fail_second(self):
        calls.append(self)
        if len(calls) == 2:
            raise RuntimeError("DefaultCPUAllocator: can't allocate memory")
        real(self)

    monkeypatch.setattr(BoRALinear, "reset_adapter_parameters", fail_second)
    with pytest.raises(RuntimeError, match="can't allocate"):
        apply_bora(model, target_modules=["q", "v"], r=2, b=2)
    assert_unchanged(model, snap)
    assert all(p.requires_grad for p in model.parameters())


def test_a_refused_from_linear_leaves_the_linear_trainable():
    linear = nn.Linear(4, 4)
    with pytest.raises(BoRAValueError, match="memory budget"):
        BoRALinear.from_linear(linear, r=10**9, b=2)
    assert all(p.requires_grad for p in linear.parameters())


# --- 5. no silently wrong results --------------------------------------------------------------------------------------


class Shared(nn.Module):
    """``a`` and ``b`` are one nn.Linear; ``c`` is separate."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(3)
        self.a = nn.Linear(8, 8, dtype=torch.float64)
        self.b = self.a
        self.c = nn.Linear(8, 8, dtype=torch.float64)

    def forward(self, x):
        return self.c(self.b(torch.tanh(self.a(x))))


def _reference_shared(model: Shared, x: torch.Tensor) -> np.ndarray:
    """Ground truth from bora_ref.numpy_ref: W_a + s ΔW for both uses of the shared layer."""
    from bora_ref import numpy_ref

    layer = model.a
    W = layer.base.weight.detach().numpy() + layer.scaling * numpy_ref.delta_weight(
        layer.lora_B.detach().numpy(), layer.lora_A.detach().numpy(), layer.effective_sigma().detach().numpy())
    bias = layer.base.bias.detach().numpy()
    h = np.tanh(x.numpy() @ W.T + bias) @ W.T + bias
    return h @ model.c.weight.detach().numpy().T + model.c.bias.detach().numpy()


@pytest.mark.parametrize("targets", [["a"], ["b"], ["a", "b"], "a|b"])
def test_a_shared_linear_gets_one_adapter_under_every_name(targets):
    model = Shared()
    apply_bora(model, target_modules=targets, r=2, b=2)
    assert isinstance(model.a, BoRALinear) and model.a is model.b and type(model.c) is nn.Linear
    with torch.no_grad():
        nn.init.normal_(model.a.lora_B)
    x = torch.randn(5, 8, dtype=torch.float64)
    np.testing.assert_allclose(model(x).detach().numpy(), _reference_shared(model, x), rtol=1e-12, atol=1e-12)
    expected = _reference_shared(model, x)
    bora_ref.merge_bora(model)
    np.testing.assert_allclose(model(x).detach().numpy(), expected, rtol=1e-12, atol=1e-12)
    bora_ref.merge_and_unload(model)
    assert type(model.a) is nn.Linear and model.a is model.b
    np.testing.assert_allclose(model(x).detach().numpy(), expected, rtol=1e-12, atol=1e-12)


def test_a_shared_adapter_saves_once_and_loads_into_both_names(tmp_path):
    source = apply_bora(Shared(), target_modules=["a"], r=2, b=2)
    with torch.no_grad():
        nn.init.normal_(source.a.lora_B)
    save_adapter(source, tmp_path)
    target = load_adapter(Shared(), tmp_path)
    assert target.a is target.b and isinstance(target.a, BoRALinear)
    x = torch.randn(3, 8, dtype=torch.float64)
    assert torch.equal(target(x), source(x))


def test_merging_a_layer_with_tied_weights_is_refused_and_changes_nothing():
    model = Net()
    model.tied = nn.Linear(6, 5)
    model.tied.weight = model.q.weight  # the same Parameter in two modules
    apply_bora(model, target_modules=["q"], r=2, b=2)
    with torch.no_grad():
        nn.init.normal_(model.q.lora_B)
    snap = snapshot(model)
    for call in (bora_ref.merge_bora, bora_ref.merge_and_unload):
        with pytest.raises(BoRAValueError, match=r"base weight is tied to \(shared with\) \['tied'\]"):
            call(model)
        assert_unchanged(model, snap)


@pytest.mark.parametrize("targets", [["base"], ["q.base"], r".*\.base"])
def test_targeting_the_base_inside_a_bora_layer_is_refused(targets):
    model = apply_bora(Net(), target_modules=["q"], r=2, b=2)
    snap = snapshot(model)
    with pytest.raises(BoRAValueError, match="the frozen base layer of the BoRALinear 'q'; adapters cannot be nested"):
        apply_bora(model, target_modules=targets, r=2, b=2)
    assert_unchanged(model, snap)


def test_merge_and_unload_safe_refuses_a_non_finite_merge_and_changes_nothing():
    model = apply_bora(Net(), target_modules=["q", "v"], r=2, b=2, sigma_param="raw")
    with torch.no_grad():
        nn.init.normal_(model.v.lora_B)
        model.v.sigma[0, 1, 0] = float("inf")
    snap = snapshot(model)
    with pytest.raises(BoRAValueError, match="gives NaN or infinity; nothing merged"):
        bora_ref.merge_and_unload(model, safe=True)
    assert_unchanged(model, snap)
    with pytest.raises(BoRAValueError, match="safe must be a bool"):
        bora_ref.merge_and_unload(model, safe="yes")
    assert_unchanged(model, snap)


def test_reset_while_merged_is_refused_so_unmerge_restores_the_base():
    torch.manual_seed(0)
    layer = BoRALinear(6, 5, r=2, b=2, dtype=torch.float64)
    with torch.no_grad():
        nn.init.normal_(layer.lora_B)
    W = layer.base.weight.detach().clone()
    layer.merge()
    snap = snapshot(layer)
    with pytest.raises(BoRAValueError, match=r"the layer is merged; call unmerge\(\) first"):
        layer.reset_adapter_parameters()
    assert_unchanged(layer, snap)
    layer.unmerge()
    torch.testing.assert_close(layer.base.weight, W, rtol=0, atol=1e-14)
    layer.reset_adapter_parameters()  # allowed again once unmerged
    assert torch.equal(layer.lora_B, torch.zeros_like(layer.lora_B))


def test_loading_a_merged_state_dict_carries_the_merged_state():
    torch.manual_seed(0)
    source = BoRALinear(6, 5, r=2, b=2, dtype=torch.float64)
    with torch.no_grad():
        nn.init.normal_(source.lora_B)
    x = torch.randn(4, 6, dtype=torch.float64)
    y = source(x)
    assert set(source.state_dict()) == {"lora_A", "lora_B", "sigma", "base.weight", "base.bias"}  # unmerged: unchanged
    source.merge()
    target = BoRALinear(6, 5, r=2, b=2, dtype=torch.float64)
    target.load_state_dict(source.state_dict())  # merged weights into an unmerged layer
    assert target.merged
    torch.testing.assert_close(target(x), y, rtol=0, atol=1e-12)  # ΔW counted once, not twice
    source.unmerge()
    target.load_state_dict(source.state_dict())  # and back
    assert not target.merged
    torch.testing.assert_close(target(x), y, rtol=0, atol=1e-12)


def test_loading_adapter_tensors_alone_into_a_merged_layer_is_refused():
    layer = BoRALinear(6, 5, r=2, b=2)
    layer.merge()
    snap = snapshot(layer)
    other = BoRALinear(6, 5, r=2, b=2).state_dict()
    with pytest.raises(BoRAValueError, match="into a merged BoRALinear without its base.weight"):
        layer.load_state_dict({k: other[k] for k in ("lora_A", "lora_B", "sigma")}, strict=False)
    assert_unchanged(layer, snap)


# --- 7. raw errors become BoRAValueError -------------------------------------------------------------------------------


def test_float8_and_sparse_factors_are_refused():
    B, A, sigma = torch.randn(4, 2), torch.randn(2, 4), torch.randn(2, 2, 2)
    with pytest.raises(BoRAValueError, match="B must have a real floating dtype of 16 bits or more"):
        bora_ref.torch_ref.delta_weight(B.to(torch.float8_e5m2), A, sigma)
    for call in (bora_ref.singular_values, bora_ref.torch_ref.delta_weight):
        with pytest.raises(BoRAValueError, match=r"A must be a dense \(strided\) tensor, got layout torch.sparse_coo"):
            call(B, A.to_sparse(), sigma)


@pytest.mark.parametrize(
    ("args", "match"),
    [((0, 8, 2, 1), "m must be >= 1"), ((8, 8, 2, 9), "b must satisfy"), ((8, 8, None, 2), "r must be an integer"),
     ((8, 8, 2, 2, {"threads": 0}), "threads must be >= 1"), ((8, 8, 2, 2, {"device_type": np.zeros(0)}), "device_type must be")],
)
def test_choose_strategy_validates_its_arguments(args, match):
    *pos, kw = args if isinstance(args[-1], dict) else (*args, {})
    with pytest.raises(BoRAValueError, match=match):
        bora_ref.torch_ref.choose_strategy(*pos, **kw)


@pytest.mark.parametrize(
    "call",
    [
        lambda: list(bora_ref.bora_layers({})),
        lambda: bora_ref.adapter_state_dict([]),
        lambda: bora_ref.merge_bora("model"),
        lambda: bora_ref.unmerge_bora(3),
        lambda: bora_ref.merge_and_unload(None),
        lambda: bora_ref.load_adapter_state_dict(object(), {}),
    ],
    ids=["bora_layers", "adapter_state_dict", "merge_bora", "unmerge_bora", "merge_and_unload", "load_adapter_state_dict"],
)
def test_non_module_arguments_are_refused(call):
    with pytest.raises(BoRAValueError, match="model must be a torch.nn.Module, got"):
        call()


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"dtype": torch.int32}, "dtype must be None or one of"),
        ({"dtype": torch.float8_e4m3fn}, "dtype must be None or one of"),
        ({"device": "nonsense"}, "device must be None, a torch.device or a device string"),
        ({"device": 3.5}, "device must be None"),
        ({"bias": "yes"}, "bias must be a bool"),
    ],
)
def test_bad_layer_construction_arguments_are_refused(kwargs, match):
    with pytest.raises(BoRAValueError, match=match):
        BoRALinear(6, 5, r=2, b=2, **kwargs)


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_a_cuda_layer_without_cuda_is_refused():
    with pytest.raises(BoRAValueError, match="cannot create the base layer on device=device\\(type='cuda'\\)"):
        BoRALinear(6, 5, r=2, b=2, device="cuda")


@pytest.mark.parametrize(
    ("x", "match"),
    [
        ([[1.0] * 6], "x must be a torch.Tensor of shape \\(..., 6\\), got list"),
        (torch.ones(2, 6, dtype=torch.int64), "x must be a dense floating tensor of shape"),
        (torch.tensor(1.0), "x must be a dense floating tensor of shape"),
        (torch.ones(2, 5), "x must be a dense floating tensor of shape \\(..., 6\\), got shape \\(2, 5\\)"),
        (torch.ones(2, 6).to_sparse(), "x must be a dense floating tensor .* layout torch.sparse_coo"),
        (torch.ones(2, 6, dtype=torch.float64), "x has dtype torch.float64 but the base layer's weight is torch.float32"),
    ],
    ids=["list", "int", "0-d", "width", "sparse", "dtype"],
)
def test_bad_forward_inputs_are_refused(x, match):
    layer = BoRALinear(6, 5, r=2, b=2)
    with pytest.raises(BoRAValueError, match=match):
        layer(x)
    layer.merge()
    with pytest.raises(BoRAValueError, match=match):  # merged too
        layer(x)


def test_converting_a_shared_bora_layer_to_peft_is_refused():
    pytest.importorskip("peft")
    model = apply_bora(Shared(), target_modules=["a"], r=2, b=1)
    snap = snapshot(model)
    with pytest.raises(BoRAValueError, match=r"BoRA layers \['b'\] are shared with other names of the model"):
        bora_ref.bora_to_peft(model)
    assert_unchanged(model, snap)
