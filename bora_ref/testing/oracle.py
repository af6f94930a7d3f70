"""``check_implementation``: judge any BoRA kernel ``fn(x, B, A, sigma) -> x @ ΔW.T`` against the reference."""

from __future__ import annotations

import ctypes
import importlib
import math
import numbers
import sys
import threading
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch

from .._validation import BoRAValueError, check_int, check_positive_float
from ..partition import block_sizes
from ._truth import QUANTITIES, naive_bora_matmul, rss_scale, term_counts, truth
from .cases import _FLOAT_DTYPES, DEFAULT_CASES, OracleCase, case_values, get_case, place_inputs
from .results import Comparison, OracleFailure, OracleReport, describe_case, dtype_name

__all__ = ["check_implementation", "FLOAT64_RTOL", "DEFAULT_K", "DEFAULT_FLOOR", "CALLS_PER_CASE"]

FLOAT64_RTOL = 1e-10
"""float64 tolerance, relative to ``max |truth|``.

Sound float64 kernels on these shapes err by about 1e-16 of it, a float32 detour by about 1e-7:
1e-10 is six decades above the first, three below the second.

Examples:
    >>> import torch
    >>> from bora_ref import torch_ref
    >>> from bora_ref.testing import FLOAT64_RTOL, check_implementation, get_case
    >>> report = check_implementation(torch_ref.bora_matmul, cases=[get_case("even-square")], dtypes=[torch.float64])
    >>> all(c.tolerance == FLOAT64_RTOL * c.max_abs_truth for c in report.comparisons)
    True
"""
DEFAULT_K = 3.0
"""Low precision: the implementation may err up to ``DEFAULT_K`` times the naive baseline.

FlashAttention's rule, with their factor 2 raised to 3: a fast path rounds at different points
than ΔW-then-matmul.

Examples:
    >>> from bora_ref.testing import DEFAULT_K
    >>> DEFAULT_K  # the default of check_implementation(..., k=)
    3.0
"""
DEFAULT_FLOOR = 4.0
"""Low precision floor: how many roundings of the result's scale the tolerance adds to ``k`` x the baseline.

It matters where the baseline is nearly exact by luck (short sums, cancellation). Measured on
correct kernels (``docs/guides/data/oracle_margins.json``: six kernels, four dtypes, five seeds), 4
keeps every one below 0.65 of its tolerance, while accumulating a long positive reduction in
bfloat16 or float16 errs by 3 to 5 times it.

Examples:
    >>> from bora_ref.testing import DEFAULT_FLOOR
    >>> DEFAULT_FLOOR  # the default of check_implementation(..., floor=)
    4.0
"""
ACCUMULATOR_EPS = float(torch.finfo(torch.float32).eps)
"""Accumulator precision assumed below float64: float32's eps (float16 and bfloat16 kernels accumulate in float32)."""
CALLS_PER_CASE = 2
"""How many times ``fn`` is called per (case, dtype) run, on independent inputs of the same shapes.

Both forwards come first, then (with ``grad=True``) both backwards, so a kernel that keeps state
between calls (a cache keyed by shape, a reused output buffer, tensors saved outside ``ctx``) fails.

Examples:
    >>> import torch
    >>> from bora_ref import torch_ref
    >>> from bora_ref.testing import CALLS_PER_CASE, check_implementation
    >>> calls = []
    >>> def counted(x, B, A, sigma):
    ...     calls.append(tuple(x.shape))
    ...     return torch_ref.bora_matmul(x, B, A, sigma)
    >>> _ = check_implementation(counted, cases=["x-4d"], dtypes=[torch.float32])
    >>> len(calls) == CALLS_PER_CASE, calls[0] == calls[1]
    (True, True)
"""

_ARGS = ("x", "B", "A", "sigma")
_ORDINAL = ("first", "second")
Kernel = Callable[[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]
Run = tuple[OracleCase, torch.dtype]


_CPYTHON = sys.implementation.name == "cpython" and hasattr(getattr(ctypes, "pythonapi", None), "PyThreadState_SetAsyncExc")


class _Misbehaved(Exception):
    """The implementation raised, returned the wrong thing or wrote into its inputs (message says which)."""


class _TimedOut(BaseException):
    """Raised asynchronously in the calling thread when a call to ``fn`` overruns ``timeout``.

    A ``BaseException`` so that a kernel's ``except Exception`` does not swallow it.
    """


def check_implementation(
    fn: Kernel,
    *,
    dtypes: Sequence[torch.dtype] = (torch.float64, torch.float32, torch.bfloat16),
    device: str | torch.device = "cpu",
    grad: bool = False,
    seed: int = 0,
    cases: Sequence[OracleCase | str] | None = None,
    k: float = DEFAULT_K,
    floor: float = DEFAULT_FLOOR,
    rtol_float64: float = FLOAT64_RTOL,
    collect: bool = False,
    timeout: float | None = None,
    before: Sequence[tuple[OracleCase | str, torch.dtype]] = (),
) -> OracleReport:
    """Check that ``fn(x, B, A, sigma)`` computes $y = x \\, \\Delta W^T$ (unscaled) on every case and dtype.

    Every case ([`DEFAULT_CASES`][bora_ref.testing.DEFAULT_CASES] unless ``cases`` is given) runs in every
    dtype, dtype by dtype in the order given, cases in list order. A run calls ``fn`` twice, on two
    independent draws of inputs with the case's shapes, kind and layout (so a kernel that keeps state
    between calls, such as a cache keyed by shape or an output buffer it reuses, is caught): first
    ``y1 = fn(*inputs1)``, then ``y2 = fn(*inputs2)``, then (with ``grad``) the backward of ``y1``,
    then that of ``y2``. ``sigma`` is the effective $\\Sigma$ diagonals, used as given (no
    parameterisation or mapping is applied). Inputs are drawn in float64 and rounded to the dtype;
    ``fn`` gets them on ``device``; the truth is [`bora_ref.numpy_ref.bora_matmul`][bora_ref.numpy_ref.bora_matmul] in float64 on
    those same rounded values. With ``grad=True`` the gradients of $\\langle g, y \\rangle$ w.r.t.
    ``x``, ``B``, ``A`` and ``sigma`` (for a random cotangent ``g``) are checked the same way.
    Tolerance on the largest absolute error over each whole tensor:

    - float64: $\\mathrm{rtol} \\cdot \\max |y_{\\mathrm{true}}|$, ``rtol = rtol_float64`` (1e-10);
    - float32, float16, bfloat16 (FlashAttention's rule, plus a floor): $k \\cdot e_{\\mathrm{naive}} +
      \\mathrm{floor} \\cdot (\\epsilon \\max(S, T) + \\sqrt{L} \\, \\epsilon_{32} S)$, where
      $e_{\\mathrm{naive}}$ is the error of a naive same-dtype torch baseline (ΔW block by block, then
      ``x @ ΔW.T``, run on the same device), $\\epsilon$ = ``torch.finfo(dtype).eps``, $S$ the largest
      root-sum-square of the products summed into one entry (the reference evaluated on squared
      inputs: the scale of one rounding whatever the summation order), $T = \\max |y_{\\mathrm{true}}|$
      (intermediate results rounded to the dtype are about as large as the result), $L$ the largest
      number of products summed into one entry (``n r`` for ``y``) and $\\epsilon_{32}$ float32's eps:
      a sum of $L$ terms kept in a float32 accumulator errs by about $\\sqrt{L}$ roundings. float16
      and bfloat16 kernels must accumulate in float32: accumulating a long sum in the working dtype
      fails.

    Args:
        fn: the implementation; takes ``x (..., n)``, ``B (m, r)``, ``A (r, n)``, ``sigma (b, b, r)``,
            all of one dtype on one device, possibly non-contiguous; returns a dense ``(..., m)``
            tensor in that dtype and device without modifying its inputs.
        dtypes: a list or tuple of dtypes to run, in order: float64, float32, float16, bfloat16.
        device: where ``fn`` runs (the truth is always computed on the CPU); must be available.
        grad: ``True`` to also check gradients (``fn`` must be differentiable with torch autograd).
        seed: selects the random inputs (non-negative).
        cases: a list or tuple of built-in case names or [`OracleCase`][bora_ref.testing.OracleCase]
            objects; ``None`` for all built-in cases.
        k: low-precision error factor over the naive baseline.
        floor: low-precision error floor, in roundings (see the rule above).
        rtol_float64: float64 tolerance relative to ``max |truth|``.
        collect: ``False`` stops at the first failing run; ``True`` runs everything and then raises
            one [`OracleFailure`][bora_ref.testing.OracleFailure] listing every failing run.
        timeout: ``None``, or the seconds one call of ``fn`` (or one backward) may take before the run
            fails. A watchdog thread raises an exception inside the calling thread when it expires,
            which Python delivers at its next bytecode: a call blocked inside native code (a long
            BLAS or device operation, ``time.sleep``) is only stopped when that returns, and a
            backward run by torch on another thread (CUDA) is not interrupted. CPython only.
        before: ``(case, dtype)`` runs made, and checked, before all others, in order. The replay
            line of a failure uses it to repeat the run that preceded the failing one, for a
            failure that depends on state an earlier call left in ``fn``.

    Returns:
        An [`OracleReport`][bora_ref.testing.OracleReport]: cases run, every comparison, worst
        error/tolerance per dtype.

    Raises:
        OracleFailure: (an ``AssertionError``) at the first run where ``fn`` raises (any exception,
            ``SystemExit`` included; ``KeyboardInterrupt`` propagates), overruns ``timeout``,
            returns a non-tensor, a sparse tensor, or the wrong shape, dtype or device, writes into
            an input, changes an output it returned earlier, or errs beyond the tolerance (with
            ``collect=True``: after all runs, listing every failure). The message gives the case
            (shapes, b, r, layout), dtype, device, seed, which call, max absolute and relative
            error, where the worst entry is (row and column block), the tolerance and a one-line
            replay. An exception raised by ``fn`` is chained as ``__cause__``.
        BoRAValueError: ``fn`` not callable, ``dtypes`` or ``cases`` not a list or tuple of valid
            entries, an unavailable device, a non-boolean ``grad`` or ``collect``, a non-positive
            tolerance constant or timeout.

    Examples:
        >>> from bora_ref import torch_ref
        >>> from bora_ref.testing import check_implementation, get_case
        >>> report = check_implementation(torch_ref.bora_matmul, cases=[get_case("even-square")])
        >>> report.cases_run, all(c.passed for c in report.comparisons)  # float64, float32, bfloat16
        (3, True)
    """
    __tracebackhide__ = True  # pytest shows the caller's line and the message, not this function's body
    dtypes, device, grad, collect, seed, resolved, limits, timeout, runs = _validated(
        fn, dtypes, device, grad, seed, cases, k, floor, rtol_float64, collect, timeout, before)

    done: list[Comparison] = []
    failures: list[OracleFailure] = []
    passed = 0  # runs that passed, for the failure message
    previous: Run | None = None
    for case, dtype in runs:
        cause: BaseException | None = None
        try:
            found = _run_case(fn, case, dtype, device, seed, grad, limits, timeout)
        except _Misbehaved as exc:
            found, problem, cause = [], str(exc), exc.__cause__
        else:
            bad = [c for c in found if not c.passed]
            problem = _describe_error(bad[0]) if bad else ""
        done.extend(found)
        if problem:
            message = _message(fn, case, dtype, device, seed, grad, limits, timeout, problem, passed, previous)
            failure = OracleFailure(message, case, dtype, OracleReport(tuple(done), str(device), grad, seed))
            failure.__cause__ = cause
            if not collect:
                raise failure from cause
            failures.append(failure)
        else:
            passed += 1
        previous = (case, dtype)
    report = OracleReport(tuple(done), str(device), grad, seed)
    if failures:
        header = (f"bora_ref oracle: {len(failures)} of {len(runs)} case/dtype runs failed on {device} "
                  f"(seed {seed}, grad={grad}); each failure follows with its replay line")
        body = "\n".join(f"[{i}] " + str(f) for i, f in enumerate(failures, 1))
        raise OracleFailure(f"{header}\n{body}", failures[0].case, failures[0].dtype, report,
                            failures=tuple(failures)) from failures[0].__cause__
    return report


def _validated(
    fn: Any, dtypes: Any, device: Any, grad: Any, seed: Any, cases: Any, k: Any, floor: Any, rtol_float64: Any,
    collect: Any, timeout: Any, before: Any,
) -> tuple:
    """Every argument of check_implementation checked and normalised (nothing runs)."""
    if not callable(fn):
        raise BoRAValueError(f"fn must be callable as fn(x, B, A, sigma), got {fn!r}")
    dtypes = _check_dtypes(dtypes)
    device = _check_device(device)
    for name, value in (("grad", grad), ("collect", collect)):
        if not isinstance(value, (bool, np.bool_)):
            raise BoRAValueError(f"{name} must be True or False, got {value!r}")
    grad, collect = bool(grad), bool(collect)
    seed = check_int("seed", seed, minimum=0)
    resolved = DEFAULT_CASES if cases is None else _check_cases(cases)
    k, rtol_float64 = check_positive_float("k", k), check_positive_float("rtol_float64", rtol_float64)
    if isinstance(floor, bool) or not isinstance(floor, numbers.Real) or not 0 <= float(floor) < math.inf:
        raise BoRAValueError(f"floor must be a finite number >= 0, got {floor!r}")
    if timeout is not None:
        timeout = check_positive_float("timeout", timeout)
        if not _CPYTHON:  # pragma: no cover
            raise BoRAValueError(f"timeout needs CPython (it interrupts the call with PyThreadState_SetAsyncExc), "
                                 f"got timeout={timeout!r} on {sys.implementation.name}")
    limits = (k, float(floor), rtol_float64)
    runs = _check_before(before) + [(case, dtype) for dtype in dtypes for case in resolved]
    return dtypes, device, grad, collect, seed, resolved, limits, timeout, runs


def _check_dtypes(dtypes: Any) -> tuple[torch.dtype, ...]:
    if isinstance(dtypes, torch.dtype):
        raise BoRAValueError(f"dtypes must be a list or tuple of torch dtypes, got the single dtype {dtypes!r} "
                             f"(write dtypes=[{dtypes}])")
    if not isinstance(dtypes, (list, tuple)):
        raise BoRAValueError(f"dtypes must be a list or tuple of torch dtypes, got {dtypes!r}")
    for dtype in dtypes:
        if dtype not in _FLOAT_DTYPES:
            raise BoRAValueError(f"dtypes must contain only {_FLOAT_DTYPES}, got {dtype!r}")
    if not dtypes:
        raise BoRAValueError("dtypes must name at least one dtype, got none")
    return tuple(dtypes)


def _check_device(device: Any) -> torch.device:
    try:
        device = torch.device(device)
    except (RuntimeError, TypeError, ValueError) as exc:
        raise BoRAValueError(f"device must be a torch device, got {device!r}: {exc}") from None
    if device.type != "meta":
        try:
            torch.empty(1, device=device)
        except Exception as exc:  # torch raises AssertionError, RuntimeError or others for a missing backend
            reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise BoRAValueError(f"device must be available on this machine, got {str(device)!r}: {reason}") from None
    return device


def _check_cases(cases: Any) -> tuple[OracleCase, ...]:
    if isinstance(cases, (str, OracleCase)) or not isinstance(cases, (list, tuple)):
        raise BoRAValueError(f"cases must be a list or tuple of case names or OracleCase objects (or None), "
                             f"got {cases!r}")
    resolved = tuple(c if isinstance(c, OracleCase) else get_case(c) for c in cases)
    if not resolved:
        raise BoRAValueError("cases must name at least one case, got none (pass None for the built-in list)")
    return resolved


def _check_before(before: Any) -> list[Run]:
    if not isinstance(before, (list, tuple)):
        raise BoRAValueError(f"before must be a list or tuple of (case, dtype) pairs, got {before!r}")
    runs = []
    for item in before:
        if not isinstance(item, (list, tuple)) or len(item) != 2:
            raise BoRAValueError(f"before must hold (case, dtype) pairs, got {item!r}")
        case, dtype = item
        runs.append((_check_cases([case])[0], _check_dtypes([dtype])[0]))
    return runs


class _Deadline:
    """``with _Deadline(seconds):`` raises `_TimedOut` in this thread if the block overruns."""

    def __init__(self, seconds: float | None) -> None:
        self.seconds = seconds
        self.fired = False

    def _fire(self) -> None:
        with self._lock:
            if self._active:
                self.fired = True
                ctypes.pythonapi.PyThreadState_SetAsyncExc(ctypes.c_ulong(self._thread), ctypes.py_object(_TimedOut))

    def __enter__(self) -> _Deadline:
        if self.seconds is not None:
            self._thread, self._lock, self._active = threading.get_ident(), threading.Lock(), True
            self._timer = threading.Timer(self.seconds, self._fire)
            self._timer.daemon = True
            self._timer.start()
        return self

    def __exit__(self, exc_type: Any, *rest: Any) -> bool:
        if self.seconds is None:
            return False
        self._timer.cancel()
        with self._lock:
            self._active = False
            if self.fired:  # withdraw it if Python has not delivered it yet
                ctypes.pythonapi.PyThreadState_SetAsyncExc(ctypes.c_ulong(self._thread), None)
        if self.fired and exc_type is None:
            raise _TimedOut  # overran, then returned (or swallowed the interruption): still a failure
        return False


def _call(what: str, timeout: float | None, call: Callable[[], Any]) -> Any:
    """Run user code; turn anything it raises (but KeyboardInterrupt) into `_Misbehaved`."""
    try:
        with _Deadline(timeout):
            return call()
    except KeyboardInterrupt:
        raise
    except _TimedOut:
        raise _Misbehaved(f"{what} did not finish within the timeout of {timeout:g} s") from None
    except BaseException as exc:  # SystemExit too: a kernel that exits must fail, not end the run quietly
        hint = " (fn must return y, not exit the interpreter)" if isinstance(exc, SystemExit) else ""
        raise _Misbehaved(f"{what} raised {type(exc).__name__}: {exc}{hint}") from exc


def _run_case(
    fn: Kernel, case: OracleCase, dtype: torch.dtype, device: torch.device, seed: int, grad: bool,
    limits: tuple[float, float, float], timeout: float | None,
) -> list[Comparison]:
    """Run ``fn`` twice (and the naive baseline) on one case in one dtype; compare every quantity."""
    draws = [case_values(case, dtype, seed, call) for call in range(CALLS_PER_CASE)]
    placed = [place_inputs(case, values, dtype, device) for values in draws]
    inputs = [list(p[:4]) for p in placed]
    cotangents = [p[4] for p in placed]
    if grad:
        for t in (t for group in inputs for t in group):
            t.requires_grad_(True)
    befores = [[t.detach().clone() for t in group] for group in inputs]
    outputs, first_copy = [], None
    for call, group in enumerate(inputs):
        what = f"the implementation ({_ORDINAL[call]} call)"
        y = _call(what, timeout, lambda: fn(*group))
        _check_output(f"the output y of the {_ORDINAL[call]} call", y, case.y_shape, group[0])
        _check_unchanged(group, befores[call], call)
        if call == 0:
            first_copy = y.detach().clone()
        outputs.append(y)
    if not _same(outputs[0].detach(), first_copy):
        changed = int((~_equal_or_both_nan(outputs[0].detach(), first_copy)).sum())
        raise _Misbehaved(f"the output of the first call changed when fn was called again ({changed} of "
                          f"{first_copy.numel()} entries): fn must return a new tensor, not a buffer it reuses")
    got: list[dict[str, torch.Tensor]] = [{"y": y} for y in outputs]
    if grad:
        for call, (y, group, g) in enumerate(zip(outputs, inputs, cotangents)):
            if not y.requires_grad:
                raise _Misbehaved(f"the output of the {_ORDINAL[call]} call does not require grad: fn detached it "
                                  "or ran under no_grad, so gradients cannot reach x, B, A, sigma")
            grads = _call(f"backward through the implementation ({_ORDINAL[call]} call)", timeout,
                          lambda: torch.autograd.grad(y, group, g, allow_unused=True))
            for name, t, gr in zip(_ARGS, group, grads):
                if gr is None:
                    raise _Misbehaved(f"the gradient w.r.t. {name} is None: y does not depend on {name} in the "
                                      "autograd graph")
                _check_output(f"the gradient w.r.t. {name} ({_ORDINAL[call]} call)", gr, tuple(t.shape), t)
                got[call][f"grad {name}"] = gr
            _check_unchanged(group, befores[call], call)  # a custom backward may write too

    comparisons = []
    for call, values in enumerate(draws):
        want = truth(values, grad)
        if dtype == torch.float64:
            naive, scale, count = {}, dict.fromkeys(want, 0.0), dict.fromkeys(want, 0)  # relative tolerance only
        else:
            naive, scale = _naive(inputs[call], cotangents[call], grad), rss_scale(values, grad)
            count = term_counts(values, grad)
        comparisons += [_compare(case, dtype, q, got[call][q], want[q], naive.get(q), scale[q], limits, call,
                                 count[q]) for q in want]
    return comparisons


def _equal_or_both_nan(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return (a == b) | (torch.isnan(a) & torch.isnan(b))


def _same(a: torch.Tensor, b: torch.Tensor) -> bool:
    return a.shape == b.shape and bool(_equal_or_both_nan(a, b).all())


def _check_output(what: str, out: object, shape: tuple[int, ...], like: torch.Tensor) -> None:
    if not isinstance(out, torch.Tensor):
        raise _Misbehaved(f"{what} is a {type(out).__name__}, not a torch.Tensor")
    if out.layout != torch.strided:
        raise _Misbehaved(f"{what} is a tensor of layout {out.layout} (sparse or otherwise not dense); it must "
                          "be a dense (torch.strided) tensor")
    if tuple(out.shape) != shape:
        raise _Misbehaved(f"{what} has shape {tuple(out.shape)}, expected {shape}")
    if out.dtype != like.dtype:
        raise _Misbehaved(f"{what} has dtype {dtype_name(out.dtype)} for {dtype_name(like.dtype)} inputs; "
                          "it must keep the inputs' dtype")
    if out.device != like.device:
        raise _Misbehaved(f"{what} is on device {out.device} for inputs on {like.device}")


def _check_unchanged(inputs: list[torch.Tensor], before: list[torch.Tensor], call: int) -> None:
    for name, t, old in zip(_ARGS, inputs, before):
        if not _same(t.detach(), old):
            changed = int((~_equal_or_both_nan(t.detach(), old)).sum())
            raise _Misbehaved(f"the implementation ({_ORDINAL[call]} call) wrote into its input {name} ({changed} "
                              f"of {old.numel()} entries changed); it must not modify x, B, A or sigma")


def _naive(inputs: list[torch.Tensor], g: torch.Tensor, grad: bool) -> dict[str, torch.Tensor]:
    """The same-dtype baseline's output (and gradients) on fresh copies of the same inputs."""
    copies = [t.detach().clone().requires_grad_(grad) for t in inputs]
    y = naive_bora_matmul(*copies)
    out = {"y": y.detach()}
    if grad:
        out.update(zip(QUANTITIES[1:], torch.autograd.grad(y, copies, g)))
    return out


def _max_abs_error(got: torch.Tensor, want: np.ndarray) -> tuple[float, tuple[int, ...], float, float]:
    """Largest ``|got - want|`` (NaN if ``got`` has NaN), where it is, and both values there."""
    if want.size == 0:
        return 0.0, (), 0.0, 0.0
    values = got.detach().double().cpu().numpy()
    err = np.abs(values - want)
    where = np.unravel_index(np.argmax(np.nan_to_num(err, nan=np.inf)), err.shape)
    return float(err[where]), tuple(int(i) for i in where), float(values[where]), float(want[where])


def _compare(
    case: OracleCase, dtype: torch.dtype, quantity: str, got: torch.Tensor, want: np.ndarray,
    naive: torch.Tensor | None, scale: float, limits: tuple[float, float, float], call: int = 0, terms: int = 0,
) -> Comparison:
    k, floor, rtol = limits
    error, index, got_value, true_value = _max_abs_error(got, want)
    max_truth = float(np.abs(want).max()) if want.size else 0.0
    if naive is None:
        tol, naive_error = rtol * max_truth, None
        rule = f"float64: {rtol:g} x max |truth| {max_truth:.3e}"
    else:
        naive_error = _max_abs_error(naive, want)[0]
        eps = torch.finfo(dtype).eps
        tol = k * naive_error + floor * (eps * max(scale, max_truth) + math.sqrt(terms) * ACCUMULATOR_EPS * scale)
        rule = (f"{k:g} x naive {dtype_name(dtype)} baseline error {naive_error:.3e} + {floor:g} x (eps {eps:.3e} x "
                f"max(terms' root-sum-square {scale:.3e}, max |truth| {max_truth:.3e}) + sqrt({terms} terms) x "
                f"float32 eps {ACCUMULATOR_EPS:.3e} x {scale:.3e})")
    return Comparison(case, dtype, quantity, error, max_truth, naive_error, tol, rule, index, got_value, true_value,
                      call)


def _block_of(case: OracleCase, quantity: str, index: tuple[int, ...]) -> str:
    """Which (row block, column block) of $\\Delta W$ the entry ``index`` of ``quantity`` belongs to, in words.

    ``y (..., m)`` and ``grad B (m, r)`` index rows of $\\Delta W$ (row block ``i``, all column blocks
    contribute), ``grad x (..., n)`` and ``grad A (r, n)`` columns (column block ``j``), ``grad sigma``
    ``(b, b, r)`` names the block ``(i, j)`` itself.
    """
    if not index:
        return ""

    def locate(p: int, dim: int, what: str) -> str:
        sizes = block_sizes(dim, case.b)
        start = 0
        for i, size in enumerate(sizes):
            if p < start + size:
                return f"{what} block {i} of {case.b} ({what}s {start}..{start + size - 1} of ΔW)"
            start += size
        return f"{what} {p} (outside ΔW's {dim} {what}s)"

    if quantity in ("y", "grad B"):
        p = index[-1] if quantity == "y" else index[0]
        return f"{locate(p, case.m, 'row')}, every column block contributing"
    if quantity in ("grad x", "grad A"):
        return f"{locate(index[-1], case.n, 'column')}, every row block contributing"
    i, j, channel = index
    return f"block (row block {i}, column block {j}), rank channel {channel}"


def _describe_error(c: Comparison, calls: bool = True) -> str:
    quantity = "the output y" if c.quantity == "y" else f"the gradient w.r.t. {c.quantity.removeprefix('grad ')}"
    where = _block_of(c.case, c.quantity, c.index)
    which = f" of the {_ORDINAL[c.call]} call" if calls else ""
    return (f"{quantity}{which} differs from the float64 NumPy reference: max abs error "
            f"{c.max_abs_error:.3e} at index {c.index}{' in ' + where if where else ''} (got {c.got_value!r}, "
            f"expected {c.true_value!r}), max |truth| {c.max_abs_truth:.3e}, relative error {c.relative_error:.3e}, "
            f"tolerance {c.tolerance:.3e} = {c.rule}")


def _message(
    fn: Kernel, case: OracleCase, dtype: torch.dtype, device: torch.device, seed: int, grad: bool,
    limits: tuple[float, float, float], timeout: float | None, problem: str, passed: int, previous: Run | None,
) -> str:
    alone = _replay(fn, [], case, dtype, device, seed, grad, limits, timeout)
    lines = [
        f"bora_ref oracle: case {case.name!r} failed in {dtype_name(dtype)} on {device} (seed {seed}, "
        f"grad={grad}; {passed} case/dtype runs passed before it)",
        f"  problem: {problem}",
        f"  case: {describe_case(case)}",
    ]
    if previous is None:
        lines.append("  replay: " + alone)
    else:
        lines.append("  replay (with the run before it, in case fn keeps state between calls): "
                     + _replay(fn, [previous], case, dtype, device, seed, grad, limits, timeout))
        lines.append("  this case alone: " + alone)
    return "\n".join(lines)


def _import_line(fn: Kernel) -> str | None:
    """``from module import name as fn`` when ``fn`` can be re-imported by name from its module."""
    module = getattr(fn, "__module__", None)
    if not module or module == "__main__":
        return None
    try:
        obj = importlib.import_module(module)
    except Exception:
        return None
    qualname = getattr(fn, "__qualname__", None)
    if isinstance(qualname, str) and "<" not in qualname:
        found: Any = obj
        for part in qualname.split("."):
            found = getattr(found, part, None)
        if found is fn:
            top, _, rest = qualname.partition(".")
            return f"from {module} import {top}; fn = {qualname}" if rest else f"from {module} import {top} as fn"
    # an object (a callable instance, say) bound to a module-level name
    for name, value in vars(obj).items():
        if value is fn and name.isidentifier():
            return f"from {module} import {name} as fn"
    return None


def _case_expr(case: OracleCase) -> str:
    return repr(case.name) if case in DEFAULT_CASES else repr(case)


def _replay(
    fn: Kernel, before: list[Run], case: OracleCase, dtype: torch.dtype, device: torch.device, seed: int,
    grad: bool, limits: tuple[float, float, float], timeout: float | None,
) -> str:
    """One line of Python that re-runs exactly the failing case (the case's inputs depend only on seed),
    after the runs in ``before``."""
    custom = not all(c in DEFAULT_CASES for c in [case, *(c for c, _ in before)])
    imports = "import torch; from bora_ref.testing import check_implementation" + (", OracleCase" if custom else "")
    fn_line = _import_line(fn)
    extra = "".join(f", {name}={value!r}" for name, value, default in
                    zip(("k", "floor", "rtol_float64"), limits, (DEFAULT_K, DEFAULT_FLOOR, FLOAT64_RTOL))
                    if value != default)
    if timeout is not None:
        extra += f", timeout={timeout!r}"
    prefix = ("before=[" + ", ".join(f"({_case_expr(c)}, {d})" for c, d in before) + "], ") if before else ""
    call = (f"check_implementation(fn, {prefix}cases=[{_case_expr(case)}], dtypes=[{dtype}], device={str(device)!r}, "
            f"grad={grad}, seed={seed}{extra})")
    if fn_line is None:
        return f"(with fn = your implementation) {imports}; {call}"
    return f"{imports}; {fn_line}; {call}"


