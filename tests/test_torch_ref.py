"""torch_ref against the NumPy reference: values, gradients, dtypes, allocations, errors."""

import numpy as np
import pytest
import torch
from hypothesis import given
from torch.utils._python_dispatch import TorchDispatchMode

from bora_ref import BoRAValueError, block_sizes, numpy_ref, torch_ref
from bora_ref.testing import DEFAULT_CASES, check_implementation
from bora_ref.testing._truth import truth
from bora_ref.testing import strategies as bst

from ._helpers import abs_bound, random_factors


def _t(*arrays):
    return tuple(torch.from_numpy(np.ascontiguousarray(a)) for a in arrays)


@given(bst.bora_inputs(max_batch_dims=3))
def test_all_four_paths_agree_in_float64(inputs):
    x, B, A, sigma = inputs
    truth = x @ numpy_ref.delta_weight(B, A, sigma).T  # (..., m)
    tol = 1e-12 * (1.0 + abs_bound(x, B, A, sigma))
    tx, tB, tA, ts = _t(x, B, A, sigma)
    results = {
        "numpy bora_matmul": numpy_ref.bora_matmul(x, B, A, sigma),
        "torch delta_weight": (tx @ torch_ref.delta_weight(tB, tA, ts).T).numpy(),
        "torch bora_matmul": torch_ref.bora_matmul(tx, tB, tA, ts).numpy(),
    }
    for name, y in results.items():
        assert y.shape == truth.shape, name
        assert np.all(np.abs(y - truth) <= tol), name
    dw = torch_ref.delta_weight(tB, tA, ts).numpy()
    assert np.all(np.abs(dw - numpy_ref.delta_weight(B, A, sigma)) <= 1e-12 * (1 + numpy_ref.delta_weight(np.abs(B), np.abs(A), np.abs(sigma))))


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
@pytest.mark.parametrize("shape", [(12, 8, 3, 4), (13, 7, 5, 3), (64, 48, 4, 8)])
def test_low_precision_keeps_dtype_and_stays_close(dtype, shape, rng):
    m, n, r, b = shape
    B, A, sigma = random_factors(rng, m, n, r, b)
    x = rng.standard_normal((2, 5, n))
    tx, tB, tA, ts = (t.to(dtype) for t in _t(x, B, A, sigma))
    y = torch_ref.bora_matmul(tx, tB, tA, ts)
    dw = torch_ref.delta_weight(tB, tA, ts)
    assert y.dtype == dtype and dw.dtype == dtype and y.shape == (2, 5, m)
    # Truth on the rounded inputs; error budget: a few units of roundoff per accumulation step.
    xr, Br, Ar, sr = (t.double().numpy() for t in (tx, tB, tA, ts))
    truth = numpy_ref.bora_matmul(xr, Br, Ar, sr)
    u = torch.finfo(dtype).eps
    tol = 4 * (n + b + r) * u * abs_bound(xr, Br, Ar, sr) + 1e-30
    assert np.all(np.abs(y.double().numpy() - truth) <= tol)


@pytest.mark.parametrize("shape", [(6, 4, 2, 2), (7, 5, 3, 3), (5, 6, 4, 5), (4, 4, 2, 1)])
def test_gradcheck_bora_matmul(shape, rng):
    m, n, r, b = shape
    B, A, sigma = random_factors(rng, m, n, r, b)
    x = rng.standard_normal((2, 3, n))
    args = tuple(t.requires_grad_() for t in _t(x, B, A, sigma))
    assert torch.autograd.gradcheck(torch_ref.bora_matmul, args)
    assert torch.autograd.gradcheck(torch_ref.delta_weight, args[1:])


def test_gradients_equal_those_of_the_dense_form(rng):
    m, n, r, b = 10, 9, 3, 3
    B, A, sigma = random_factors(rng, m, n, r, b)
    x = rng.standard_normal((4, n))
    g = rng.standard_normal((4, m))
    fast = [t.requires_grad_() for t in _t(x, B, A, sigma)]
    torch_ref.bora_matmul(*fast).backward(torch.from_numpy(g))
    dense = [t.requires_grad_() for t in _t(x, B, A, sigma)]
    (dense[0] @ torch_ref.delta_weight(*dense[1:]).T).backward(torch.from_numpy(g))
    for a, d in zip(fast, dense):
        torch.testing.assert_close(a.grad, d.grad, rtol=1e-12, atol=1e-12)


class _RecordShapes(TorchDispatchMode):
    def __init__(self):
        super().__init__()
        self.numels = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for t in out if isinstance(out, (tuple, list)) else [out]:
            if isinstance(t, torch.Tensor):
                self.numels.append((str(func), tuple(t.shape)))
        return out


@pytest.mark.parametrize("shape", [(256, 192, 4, 8), (250, 190, 4, 7)])
def test_bora_matmul_never_allocates_an_m_by_n_tensor(shape):
    m, n, r, b = shape
    B, A, sigma = (torch.randn(m, r, requires_grad=True), torch.randn(r, n, requires_grad=True),
                   torch.randn(b, b, r, requires_grad=True))
    x = torch.randn(3, 5, n, requires_grad=True)  # 15 tokens: the output (15, m) is far below m * n
    rec = _RecordShapes()
    with rec:
        torch_ref.bora_matmul(x, B, A, sigma).sum().backward()
    biggest = max(int(np.prod(s)) for _, s in rec.numels)
    assert biggest < m * n // 4, [entry for entry in rec.numels if int(np.prod(entry[1])) == biggest]


def test_non_contiguous_inputs(rng):
    m, n, r, b = 12, 8, 3, 4
    B, A, sigma = random_factors(rng, m, n, r, b)
    x = rng.standard_normal((n, 6))  # transposed view below
    tx, tB, tA, ts = _t(x, B, A, sigma)
    y = torch_ref.bora_matmul(tx.T, tB.T.contiguous().T, tA, ts)
    np.testing.assert_allclose(y.numpy(), numpy_ref.bora_matmul(x.T, B, A, sigma), rtol=1e-12, atol=1e-12)


def test_empty_batch(rng):
    B, A, sigma = _t(*random_factors(rng, 6, 4, 2, 2))
    assert torch_ref.bora_matmul(torch.zeros(0, 4, dtype=torch.float64), B, A, sigma).shape == (0, 6)


def _valid():
    return torch.randn(3, 6), torch.randn(8, 2), torch.randn(2, 6), torch.randn(2, 2, 2)


@pytest.mark.parametrize("fn", ["delta_weight", "bora_matmul"])
@pytest.mark.parametrize(
    ("change", "match"),
    [
        (lambda x, B, A, s: (x, B, A, s[:, :, :1]), r"sigma has shape \(2, 2, 1\) but r=2 from A requires \(2, 2, 2\)"),
        (lambda x, B, A, s: (x, B, A[:1], s), r"A has shape \(1, 6\) but B has shape \(8, 2\)"),
        (lambda x, B, A, s: (x, B, A, torch.ones(7, 7, 2)), r"b must satisfy 1 <= b <= min\(m, n\) = 6"),
        (lambda x, B, A, s: (x, B.numpy(), A, s), r"B must be a torch.Tensor .* got numpy"),
        (lambda x, B, A, s: (x, B, A, s.double()), r"sigma has dtype torch.float64 but B has dtype torch.float32"),
        (lambda x, B, A, s: (x, B.long(), A, s), r"B must have a real floating dtype, got torch.int64"),
        (lambda x, B, A, s: (x, B, A.to("meta"), s), r"A is on device meta but B is on cpu"),
    ],
)
def test_torch_ref_rejects_bad_factors(fn, change, match):
    x, B, A, sigma = change(*_valid())
    args = (B, A, sigma) if fn == "delta_weight" else (x, B, A, sigma)
    with pytest.raises(ValueError, match=match):
        getattr(torch_ref, fn)(*args)


@pytest.mark.parametrize(
    ("x", "match"),
    [
        (torch.randn(3, 5), r"x must have shape \(\.\.\., n\) with n=6 .* got shape \(3, 5\)"),
        (np.ones((3, 6), dtype=np.float32), r"x must be a torch.Tensor .* got numpy"),
        (torch.randn(3, 6, dtype=torch.float64), r"x has dtype torch.float64 but B has dtype torch.float32"),
    ],
)
def test_torch_bora_matmul_rejects_bad_x(x, match):
    _, B, A, sigma = _valid()
    with pytest.raises(ValueError, match=match):
        torch_ref.bora_matmul(x, B, A, sigma)


@pytest.mark.parametrize("dim", [1, 7, 12, 13, 896, 4096, 11008])
def test_fast_path_runs_tile_the_array_split_blocks(dim):
    # The fast path batches equal blocks into runs; they must reproduce block_sizes exactly.
    for b in sorted({1, 2, 3, 5, 7, 8, 16, dim} & set(range(1, min(dim, 16) + 1)) | {dim}):
        runs = torch_ref._runs(dim, b)
        assert len(runs) <= 2
        assert [run.size for run in runs for _ in range(run.count)] == list(block_sizes(dim, b))
        assert [run.first for run in runs] == [0, *([runs[0].count] if len(runs) == 2 else [])]
        assert [run.offset for run in runs] == [0, *([runs[0].count * runs[0].size] if len(runs) == 2 else [])]


@pytest.mark.parametrize("wanted", ["x", "B", "A", "sigma"])
@pytest.mark.parametrize("shape", [(12, 8, 3, 4), (13, 7, 5, 3)])
def test_backward_computes_exactly_the_requested_gradients(wanted, shape, rng):
    m, n, r, b = shape
    B, A, sigma = random_factors(rng, m, n, r, b)
    x = rng.standard_normal((2, 3, n))
    w = rng.standard_normal((m, 3, 2))  # permuted below: a non-contiguous upstream gradient
    names = ("x", "B", "A", "sigma")
    fast = dict(zip(names, _t(x, B, A, sigma)))
    fast[wanted].requires_grad_()
    (torch_ref.bora_matmul(*fast.values()) * torch.from_numpy(w).permute(2, 1, 0)).sum().backward()
    dense = [t.requires_grad_() for t in _t(x, B, A, sigma)]
    (dense[0] @ torch_ref.delta_weight(*dense[1:]).T * torch.from_numpy(w).permute(2, 1, 0)).sum().backward()
    for name, d in zip(names, dense):
        if name == wanted:
            torch.testing.assert_close(fast[name].grad, d.grad, rtol=1e-12, atol=1e-12)
        else:
            assert fast[name].grad is None


def test_autocast_does_not_change_the_dtype(rng):
    m, n, r, b = 24, 20, 4, 4
    B, A, sigma = random_factors(rng, m, n, r, b)
    x = rng.standard_normal((5, n))
    tx, tB, tA, ts = (t.float() for t in _t(x, B, A, sigma))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y = torch_ref.bora_matmul(tx, tB, tA, ts)
    assert y.dtype == torch.float32
    # float32 accuracy, not bfloat16's: the budget is float32 roundoff on the rounded inputs.
    xr, Br, Ar, sr = (t.double().numpy() for t in (tx, tB, tA, ts))
    tol = 4 * (n + b + r) * torch.finfo(torch.float32).eps * abs_bound(xr, Br, Ar, sr)
    assert np.all(np.abs(y.double().numpy() - numpy_ref.bora_matmul(xr, Br, Ar, sr)) <= tol)


def test_second_derivatives_raise_a_clear_error():
    x, B, A, sigma = (t.double().requires_grad_() for t in _valid())
    with pytest.raises(RuntimeError, match=r"first-order differentiable only: backward\(create_graph=True\)"):
        torch.autograd.grad(torch_ref.bora_matmul(x, B, A, sigma).sum(), x, create_graph=True)


@pytest.mark.parametrize("shape", [(24, 40, 3, 7), (64, 16, 2, 16), (48, 48, 4, 5)])
def test_block_by_block_aligned_writes_match_the_dense_form(shape, rng, monkeypatch):
    # Large outputs with blocks off the cache line are written block by block from aligned starts
    # (on CPU); force that path on small float64 shapes, blocks narrower than a line included.
    monkeypatch.setattr(torch_ref, "_ALIGNED_WRITES_MIN_BYTES", 0)
    m, n, r, b = shape
    B, A, sigma = random_factors(rng, m, n, r, b)
    x, g = rng.standard_normal((6, n)), rng.standard_normal((6, m))
    fast = [t.requires_grad_() for t in _t(x, B, A, sigma)]
    rec = _RecordShapes()
    with rec:
        y = torch_ref.bora_matmul(*fast)
        y.backward(torch.from_numpy(g))
    assert sum(name == "aten.addmm_.default" for name, _ in rec.numels) == 2 * b  # the lift and gx, per block
    dense = [t.requires_grad_() for t in _t(x, B, A, sigma)]
    y_dense = dense[0] @ torch_ref.delta_weight(*dense[1:]).T
    y_dense.backward(torch.from_numpy(g))
    torch.testing.assert_close(y, y_dense, rtol=1e-12, atol=1e-12)
    for a, d in zip(fast, dense):
        torch.testing.assert_close(a.grad, d.grad, rtol=1e-12, atol=1e-12)


# --- strategies: every one must equal the NumPy reference, whatever choose_strategy picks ---

_STRATEGIES = [s for s in torch_ref.STRATEGIES if s != "auto"]


@pytest.mark.parametrize("strategy", _STRATEGIES)
@pytest.mark.parametrize(
    "shape",
    [(12, 8, 3, 4), (13, 7, 5, 3), (9, 7, 5, 7), (4, 4, 6, 4), (10, 9, 3, 1), (7, 11, 2, 7), (40, 36, 6, 5)],
    ids=["even", "uneven", "b=min(m,n)-uneven", "r>block", "b=1", "b=min(m,n)", "uneven-wide-blocks"],
)
def test_each_strategy_equals_the_numpy_reference_with_gradients(strategy, shape, rng):
    m, n, r, b = shape
    B, A, sigma = random_factors(rng, m, n, r, b)
    x, g = rng.standard_normal((2, 3, n)), rng.standard_normal((2, 3, m))
    args = [t.requires_grad_() for t in _t(x, B, A, sigma)]
    y = torch_ref.bora_matmul(*args, strategy=strategy)
    y.backward(torch.from_numpy(g))
    values = {"x": x, "B": B, "A": A, "sigma": sigma, "g": g}
    expected = truth(values, grad=True)  # float64 NumPy reference and its vector-Jacobian product
    tol = 1e-12 * (1.0 + abs_bound(x, B, A, sigma).max())
    np.testing.assert_allclose(y.detach().numpy(), expected["y"], rtol=0, atol=tol)
    for t, name in zip(args, ("grad x", "grad B", "grad A", "grad sigma")):
        scale = 1.0 + np.abs(expected[name]).max()
        np.testing.assert_allclose(t.grad.numpy(), expected[name], rtol=0, atol=1e-11 * scale, err_msg=name)


@pytest.mark.parametrize("strategy", _STRATEGIES)
def test_each_strategy_passes_the_oracle_in_every_dtype_with_gradients(strategy):
    # The oracle's cases (even/uneven splits, b = 1, b = min(m, n), r > block, non-contiguous x, ...)
    # against the float64 NumPy truth, in float64, float32, float16 and bfloat16.
    def fn(x, B, A, sigma):
        return torch_ref.bora_matmul(x, B, A, sigma, strategy=strategy)

    dtypes = (torch.float64, torch.float32, torch.float16, torch.bfloat16)
    report = check_implementation(fn, grad=True, dtypes=dtypes)  # raises OracleFailure naming a failing run
    assert report.cases_run == len(dtypes) * len(DEFAULT_CASES)
    assert {c.quantity for c in report.comparisons} >= {"y", "grad x", "grad B", "grad A", "grad sigma"}
    assert all(c.passed for c in report.comparisons)


@pytest.mark.parametrize("strategy", _STRATEGIES)
@pytest.mark.parametrize("shape", [(256, 192, 4, 8), (250, 190, 4, 7)])
def test_no_strategy_allocates_an_m_by_n_tensor(strategy, shape):
    m, n, r, b = shape
    B, A, sigma = (torch.randn(m, r, requires_grad=True), torch.randn(r, n, requires_grad=True),
                   torch.randn(b, b, r, requires_grad=True))
    x = torch.randn(3, 5, n, requires_grad=True)
    rec = _RecordShapes()
    with rec:
        torch_ref.bora_matmul(x, B, A, sigma, strategy=strategy).sum().backward()
    biggest = max(int(np.prod(s)) for _, s in rec.numels)
    assert biggest < m * n // 4, [entry for entry in rec.numels if int(np.prod(entry[1])) == biggest]


@pytest.mark.parametrize("strategy", _STRATEGIES)
def test_each_strategy_is_first_order_only(strategy):
    x, B, A, sigma = (t.double().requires_grad_() for t in _valid())
    with pytest.raises(RuntimeError, match=r"first-order differentiable only"):
        torch.autograd.grad(torch_ref.bora_matmul(x, B, A, sigma, strategy=strategy).sum(), x, create_graph=True)


def test_choose_strategy_rule():
    choose = torch_ref.choose_strategy
    assert choose(4096, 4096, 16, 1, threads=1) == "dense"  # b = 1: exactly LoRA's two products
    assert choose(4096, 4096, 16, 1, device_type="cuda") == "dense"
    assert choose(4096, 4096, 8, 2, device_type="cuda") == "bmm"
    for threads in (1, 2, 8):
        limit = torch_ref._DENSE_MAX_BR[min(threads, 2)]
        assert choose(4096, 4096, 64, 16, threads=threads) == "bmm"
        if limit >= 2:  # the largest b r that still runs "dense", and the next b up
            assert choose(4096, 4096, limit // 2, 2, threads=threads) == "dense"
            assert choose(4096, 4096, limit // 2, 3, threads=threads) == "bmm"
            # The expanded (n, b r) and (b r, m) factors must stay far below (m, n).
            assert choose(2 * limit - 1, 4096, limit // 2, 2, threads=threads) == "bmm"
        else:
            assert choose(4096, 4096, 8, 2, threads=threads) == "bmm"
    # "auto" runs the chosen strategy: the same result as forcing it.
    x, B, A, sigma = (torch.randn(5, 64), torch.randn(64, 8), torch.randn(8, 64), torch.randn(2, 2, 8))
    chosen = choose(64, 64, 8, 2)
    torch.testing.assert_close(torch_ref.bora_matmul(x, B, A, sigma), torch_ref.bora_matmul(x, B, A, sigma, strategy=chosen),
                               rtol=0, atol=0)


def test_unknown_strategy_is_refused_naming_it():
    x, B, A, sigma = _valid()
    with pytest.raises(BoRAValueError, match=r"strategy must be one of 'auto', 'bmm', 'dense', got 'fast'"):
        torch_ref.bora_matmul(x, B, A, sigma, strategy="fast")
