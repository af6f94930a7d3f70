"""``check_implementation``: judge any BoRA kernel ``fn(x, B, A, sigma) -> x @ ΔW.T`` against the reference."""

from __future__ import annotations

import importlib
import math
import numbers
from collections.abc import Callable, Sequence

import numpy as np
import torch

from .._validation import BoRAValueError, check_int, check_positive_float
from ._truth import QUANTITIES, naive_bora_matmul, rss_scale, truth
from .cases import DEFAULT_CASES, OracleCase, case_values, get_case, place_inputs
from .results import Comparison, OracleFailure, OracleReport, describe_case, dtype_name

__all__ = ["check_implementation", "FLOAT64_RTOL", "DEFAULT_K", "DEFAULT_FLOOR"]

#: float64 tolerance, relative to ``max |truth|``. Sound float64 kernels on these shapes err by about
#: 1e-16 of it, a float32 detour by about 1e-7: 1e-10 is six decades above the first, three below the second.
FLOAT64_RTOL = 1e-10
#: Low precision: the implementation may err up to ``DEFAULT_K`` times the naive baseline (FlashAttention's
#: rule, with their factor 2 raised to 3: a fast path rounds at different points than ΔW-then-matmul).
DEFAULT_K = 3.0
#: Low precision floor, in units of ``eps(dtype)`` x the largest root-sum-square of an entry's terms. It
#: matters where the baseline is nearly exact by luck (short sums, cancellation); on 420 random shapes
#: torch fast paths needed at most 1.4 (with k = 3), so 4 leaves a margin while keeping bfloat16 checks
#: within a few percent of max |truth|.
DEFAULT_FLOOR = 4.0

_DTYPES = (torch.float64, torch.float32, torch.float16, torch.bfloat16)
_ARGS = ("x", "B", "A", "sigma")
Kernel = Callable[[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]


class _Misbehaved(Exception):
    """The implementation raised, returned the wrong thing or wrote into its inputs (message says which)."""


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
) -> OracleReport:
    """Check that ``fn(x, B, A, sigma)`` computes $y = x \\, \\Delta W^T$ (unscaled) on every case and dtype.

    Every case (:data:`~bora_ref.testing.cases.DEFAULT_CASES` unless ``cases`` is given) runs in every
    dtype: its inputs are drawn in float64 and rounded to the dtype; ``fn`` gets them on ``device``;
    the truth is :func:`bora_ref.numpy_ref.bora_matmul` in float64 on those same rounded values.
    With ``grad=True`` the gradients of $\\langle g, y \\rangle$ w.r.t. ``x``, ``B``, ``A`` and ``sigma``
    (for a fixed random cotangent ``g``) are checked the same way. Tolerance on the largest absolute
    error over each whole tensor:

    - float64: $\\mathrm{rtol} \\cdot \\max |y_{\\mathrm{true}}|$, ``rtol = rtol_float64`` (1e-10);
    - float32, float16, bfloat16 (FlashAttention's rule): $k \\cdot e_{\\mathrm{naive}} +
      \\mathrm{floor} \\cdot \\epsilon \\cdot \\max_i (\\sum_t \\mathrm{term}_{i,t}^2)^{1/2}$, where
      $e_{\\mathrm{naive}}$ is the error of a naive same-dtype torch baseline (ΔW block by block, then
      ``x @ ΔW.T``, run on the same device), $\\epsilon$ = ``torch.finfo(dtype).eps`` and the last factor
      is the largest root-sum-square of the products summed into one entry (the reference evaluated on
      squared inputs): the scale of rounding error whatever the summation order.

    Args:
        fn: the implementation; takes ``x (..., n)``, ``B (m, r)``, ``A (r, n)``, ``sigma (b, b, r)``,
            all of one dtype on one device, possibly non-contiguous; returns ``(..., m)`` in that dtype
            and device without modifying its inputs.
        dtypes: dtypes to run, in order; float64, float32, float16, bfloat16.
        device: where ``fn`` runs (the truth is always computed on the CPU).
        grad: also check gradients (``fn`` must be differentiable with torch autograd).
        seed: selects the random inputs (non-negative).
        cases: built-in case names or :class:`~bora_ref.testing.OracleCase` objects; ``None`` for all
            built-in cases.
        k: low-precision error factor over the naive baseline.
        floor: low-precision error floor in units of ``eps`` x the terms' largest root-sum-square.
        rtol_float64: float64 tolerance relative to ``max |truth|``.

    Returns:
        An :class:`~bora_ref.testing.OracleReport`: cases run, every comparison, worst
        error/tolerance per dtype.

    Raises:
        OracleFailure: (an ``AssertionError``) at the first case where ``fn`` raises, returns a
            non-tensor or the wrong shape, dtype or device, writes into an input, or errs beyond the
            tolerance; the message gives the case (shapes, b, r, layout), dtype, device, seed, max
            absolute and relative error, the tolerance and a one-line replay.
        BoRAValueError: ``fn`` not callable, an unknown dtype, device or case name, no cases, or a
            non-positive tolerance constant.
    """
    __tracebackhide__ = True  # pytest shows the caller's line and the message, not this function's body
    if not callable(fn):
        raise BoRAValueError(f"fn must be callable as fn(x, B, A, sigma), got {fn!r}")
    dtypes = tuple(dtypes)
    for dtype in dtypes:
        if dtype not in _DTYPES:
            raise BoRAValueError(f"dtypes must contain only {_DTYPES}, got {dtype!r}")
    if not dtypes:
        raise BoRAValueError("dtypes must name at least one dtype, got none")
    try:
        device = torch.device(device)
    except (RuntimeError, TypeError) as exc:
        raise BoRAValueError(f"device must be a torch device, got {device!r}: {exc}") from None
    seed = check_int("seed", seed, minimum=0)
    resolved = DEFAULT_CASES if cases is None else tuple(c if isinstance(c, OracleCase) else get_case(c) for c in cases)
    if not resolved:
        raise BoRAValueError("cases must name at least one case, got none (pass None for the built-in list)")
    k, rtol_float64 = check_positive_float("k", k), check_positive_float("rtol_float64", rtol_float64)
    if isinstance(floor, bool) or not isinstance(floor, numbers.Real) or not 0 <= float(floor) < math.inf:
        raise BoRAValueError(f"floor must be a finite number >= 0, got {floor!r}")
    limits = (k, float(floor), rtol_float64)

    done: list[Comparison] = []
    passed = 0  # (case, dtype) runs that passed, for the failure message
    for dtype in dtypes:
        for case in resolved:
            try:
                found = _run_case(fn, case, dtype, device, seed, grad, limits)
            except _Misbehaved as exc:
                found, problem = [], str(exc)
            else:
                bad = [c for c in found if not c.passed]
                problem = _describe_error(bad[0]) if bad else ""
            done.extend(found)
            if problem:
                message = _message(fn, case, dtype, device, seed, grad, limits, problem, passed)
                raise OracleFailure(message, case, dtype, OracleReport(tuple(done), str(device), bool(grad), seed))
            passed += 1
    return OracleReport(tuple(done), str(device), bool(grad), seed)


def _run_case(
    fn: Kernel, case: OracleCase, dtype: torch.dtype, device: torch.device, seed: int, grad: bool,
    limits: tuple[float, float, float],
) -> list[Comparison]:
    """Run ``fn`` (and the naive baseline) on one case in one dtype; compare every quantity."""
    values = case_values(case, dtype, seed)
    *inputs, g = place_inputs(case, values, dtype, device)
    if grad:
        for t in inputs:
            t.requires_grad_(True)
    before = [t.detach().clone() for t in inputs]
    try:
        y = fn(*inputs)
    except Exception as exc:  # any failure of the implementation is a finding, reported with the case
        raise _Misbehaved(f"the implementation raised {type(exc).__name__}: {exc}") from exc
    _check_output("the output y", y, case.y_shape, inputs[0])
    _check_unchanged(inputs, before)
    got = {"y": y}
    if grad:
        if not y.requires_grad:
            raise _Misbehaved("the output does not require grad: fn detached it or ran under no_grad, so "
                              "gradients cannot reach x, B, A, sigma")
        try:
            grads = torch.autograd.grad(y, inputs, g, allow_unused=True)
        except Exception as exc:
            raise _Misbehaved(f"backward through the implementation raised {type(exc).__name__}: {exc}") from exc
        for name, t, gr in zip(_ARGS, inputs, grads):
            if gr is None:
                raise _Misbehaved(f"the gradient w.r.t. {name} is None: y does not depend on {name} in the "
                                  "autograd graph")
            _check_output(f"the gradient w.r.t. {name}", gr, tuple(t.shape), t)
            got[f"grad {name}"] = gr
        _check_unchanged(inputs, before)  # a custom backward may write too

    want = truth(values, grad)
    if dtype == torch.float64:
        naive, scale = {}, dict.fromkeys(want, 0.0)  # float64 tolerance is relative to max |truth| only
    else:
        naive, scale = _naive(inputs, g, grad), rss_scale(values, grad)
    return [_compare(case, dtype, q, got[q], want[q], naive.get(q), scale[q], limits) for q in want]


def _check_output(what: str, out: object, shape: tuple[int, ...], like: torch.Tensor) -> None:
    if not isinstance(out, torch.Tensor):
        raise _Misbehaved(f"{what} is a {type(out).__name__}, not a torch.Tensor")
    if tuple(out.shape) != shape:
        raise _Misbehaved(f"{what} has shape {tuple(out.shape)}, expected {shape}")
    if out.dtype != like.dtype:
        raise _Misbehaved(f"{what} has dtype {dtype_name(out.dtype)} for {dtype_name(like.dtype)} inputs; "
                          "it must keep the inputs' dtype")
    if out.device != like.device:
        raise _Misbehaved(f"{what} is on device {out.device} for inputs on {like.device}")


def _check_unchanged(inputs: list[torch.Tensor], before: list[torch.Tensor]) -> None:
    for name, t, old in zip(_ARGS, inputs, before):
        if not torch.equal(t.detach(), old):
            changed = int((t.detach() != old).sum())
            raise _Misbehaved(f"the implementation wrote into its input {name} ({changed} of {old.numel()} "
                              f"entries changed); it must not modify x, B, A or sigma")


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
    naive: torch.Tensor | None, scale: float, limits: tuple[float, float, float],
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
        tol = k * naive_error + floor * eps * scale
        rule = (f"{k:g} x naive {dtype_name(dtype)} baseline error {naive_error:.3e} + {floor:g} x eps {eps:.3e} "
                f"x terms' root-sum-square {scale:.3e}")
    return Comparison(case, dtype, quantity, error, max_truth, naive_error, tol, rule, index, got_value, true_value)


def _describe_error(c: Comparison) -> str:
    quantity = "the output y" if c.quantity == "y" else f"the gradient w.r.t. {c.quantity.removeprefix('grad ')}"
    return (f"{quantity} differs from the float64 NumPy reference: max abs error {c.max_abs_error:.3e} at "
            f"index {c.index} (got {c.got_value!r}, expected {c.true_value!r}), max |truth| "
            f"{c.max_abs_truth:.3e}, relative error {c.relative_error:.3e}, tolerance {c.tolerance:.3e} = {c.rule}")


def _message(
    fn: Kernel, case: OracleCase, dtype: torch.dtype, device: torch.device, seed: int, grad: bool,
    limits: tuple[float, float, float], problem: str, passed: int,
) -> str:
    return "\n".join([
        f"bora_ref oracle: case {case.name!r} failed in {dtype_name(dtype)} on {device} (seed {seed}, "
        f"grad={grad}; {passed} case/dtype pairs passed before it)",
        f"  problem: {problem}",
        f"  case: {describe_case(case)}",
        "  replay: " + _replay(fn, case, dtype, device, seed, grad, limits),
    ])


def _import_line(fn: Kernel) -> str | None:
    """``from module import name as fn`` when ``fn`` can be re-imported by its qualified name."""
    module, qualname = getattr(fn, "__module__", None), getattr(fn, "__qualname__", None)
    if not module or not qualname or "<" in qualname or module == "__main__":
        return None
    try:
        obj = importlib.import_module(module)
        for part in qualname.split("."):
            obj = getattr(obj, part)
    except (ImportError, AttributeError):
        return None
    if obj is not fn:
        return None
    top, _, rest = qualname.partition(".")
    return f"from {module} import {top}; fn = {qualname}" if rest else f"from {module} import {top} as fn"


def _replay(
    fn: Kernel, case: OracleCase, dtype: torch.dtype, device: torch.device, seed: int, grad: bool,
    limits: tuple[float, float, float],
) -> str:
    """One line of Python that re-runs exactly the failing case (the case's inputs depend only on seed)."""
    builtin = case in DEFAULT_CASES
    imports = "import torch; from bora_ref.testing import check_implementation" + ("" if builtin else ", OracleCase")
    fn_line = _import_line(fn)
    extra = "".join(f", {name}={value!r}" for name, value, default in
                    zip(("k", "floor", "rtol_float64"), limits, (DEFAULT_K, DEFAULT_FLOOR, FLOAT64_RTOL))
                    if value != default)
    case_expr = repr(case.name) if builtin else repr(case)
    call = (f"check_implementation(fn, cases=[{case_expr}], dtypes=[{dtype}], device={str(device)!r}, "
            f"grad={grad}, seed={seed}{extra})")
    if fn_line is None:
        return f"(with fn = your implementation) {imports}; {call}"
    return f"{imports}; {fn_line}; {call}"
