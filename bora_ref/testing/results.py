"""What the oracle hands back: one [`Comparison`][bora_ref.testing.Comparison] per checked quantity, an [`OracleReport`][bora_ref.testing.OracleReport]
on success, an [`OracleFailure`][bora_ref.testing.OracleFailure] (an ``AssertionError``) on failure."""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch

from ..partition import block_sizes
from .cases import OracleCase

__all__ = ["Comparison", "OracleReport", "OracleFailure", "dtype_name", "describe_case"]


def dtype_name(dtype: torch.dtype) -> str:
    """``torch.bfloat16 -> "bfloat16"``."""
    return str(dtype).removeprefix("torch.")


def describe_case(case: OracleCase) -> str:
    """Shapes, blocks, layout and factor kind of a case, as one line for messages."""
    m, n, r, b = case.m, case.n, case.r, case.b
    return (
        f"x {case.x_shape}, B ({m}, {r}), A ({r}, {n}), sigma ({b}, {b}, {r}) -> y {case.y_shape}; "
        f"m={m}, n={n}, r={r}, b={b}, row blocks {block_sizes(m, b)}, column blocks {block_sizes(n, b)}; "
        f"layout {case.layout}, factors {case.factors}"
    )


@dataclass(frozen=True)
class Comparison:
    """One quantity (``"y"`` or a gradient) of one case in one dtype, against the float64 truth.

    Attributes:
        case: the case.
        dtype: the dtype the implementation ran in.
        quantity: ``"y"``, ``"grad x"``, ``"grad B"``, ``"grad A"`` or ``"grad sigma"``.
        max_abs_error: ``max |implementation - truth|`` over the whole tensor (NaN/inf if the
            implementation produced them).
        max_abs_truth: ``max |truth|``.
        naive_error: ``max |baseline - truth|`` of the naive same-dtype torch baseline (``None`` in
            float64, whose tolerance is relative).
        tolerance: the allowed ``max_abs_error`` (see [`bora_ref.testing.check_implementation`][bora_ref.testing.check_implementation]).
        rule: how ``tolerance`` was computed, in words with numbers.
        index: where the largest error is (``()`` for an empty tensor).
        got_value: the implementation's value there.
        true_value: the truth there.
        call: which of the oracle's calls on the case (``0`` first, ``1`` second, on fresh inputs).

    Examples:
        >>> from bora_ref import torch_ref
        >>> from bora_ref.testing import check_implementation, get_case
        >>> report = check_implementation(torch_ref.bora_matmul, cases=[get_case("even-square")])
        >>> worst = max(report.comparisons, key=lambda c: c.ratio)  # error / tolerance
        >>> worst.passed, worst.ratio < 1
        (True, True)
    """

    case: OracleCase
    dtype: torch.dtype
    quantity: str
    max_abs_error: float
    max_abs_truth: float
    naive_error: float | None
    tolerance: float
    rule: str
    index: tuple[int, ...]
    got_value: float
    true_value: float
    call: int = 0

    @property
    def relative_error(self) -> float:
        """``max_abs_error / max_abs_truth`` (0 when both are 0, inf when only the truth is 0)."""
        return _ratio(self.max_abs_error, self.max_abs_truth)

    @property
    def ratio(self) -> float:
        """``max_abs_error / tolerance``: at most 1 passes (0 when both are 0; NaN error gives inf)."""
        return _ratio(self.max_abs_error, self.tolerance)

    @property
    def passed(self) -> bool:
        return self.ratio <= 1.0


def _short(ratio: float) -> str:
    """A ratio in at most 7 characters: ``0.414``, ``9.7e+09``, ``inf``."""
    return f"{ratio:.3f}" if ratio < 100 else f"{ratio:.1e}"


def _ratio(num: float, den: float) -> float:
    if math.isnan(num):
        return math.inf
    if num == 0.0:
        return 0.0
    return num / den if den > 0 else math.inf


@dataclass(frozen=True)
class OracleReport:
    """Everything [`check_implementation`][bora_ref.testing.check_implementation] compared, in order.

    Attributes:
        comparisons: one per (case, dtype, quantity) checked.
        device: the device the implementation ran on.
        grad: whether gradients were checked.
        seed: the seed of the inputs.

    Examples:
        >>> from bora_ref import torch_ref
        >>> from bora_ref.testing import check_implementation, get_case
        >>> report = check_implementation(torch_ref.bora_matmul, cases=[get_case("uneven-tall")], grad=True)
        >>> sorted({c.quantity for c in report.comparisons})
        ['grad A', 'grad B', 'grad sigma', 'grad x', 'y']
    """

    comparisons: tuple[Comparison, ...]
    device: str
    grad: bool
    seed: int
    _runs: dict[tuple[OracleCase, torch.dtype], list[Comparison]] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        # comparisons grouped by (case, dtype) run, in the order the runs happened
        runs: dict[tuple[OracleCase, torch.dtype], list[Comparison]] = {}
        for c in self.comparisons:
            runs.setdefault((c.case, c.dtype), []).append(c)
        object.__setattr__(self, "_runs", runs)

    @property
    def cases_run(self) -> int:
        """Number of (case, dtype) pairs checked."""
        return len(self._runs)

    @property
    def worst_ratio(self) -> dict[torch.dtype, float]:
        """Per dtype, the largest ``error / tolerance`` over all cases and quantities (at most 1 passes)."""
        worst: dict[torch.dtype, float] = {}
        for c in self.comparisons:
            worst[c.dtype] = max(worst.get(c.dtype, 0.0), c.ratio)
        return worst

    def table(self) -> str:
        """One line per (case, dtype): shapes, the quantity closest to its tolerance, error, ratio."""
        lines = [
            f"{'case':<18} {'dtype':<9} {'m':>4} {'n':>4} {'r':>3} {'b':>3} {'x shape':<14} "
            f"{'worst':<10} {'max abs err':>11} {'tolerance':>10} {'ratio':>7}  result"
        ]
        for (case, dtype), mine in self._runs.items():
            worst = max(mine, key=lambda c: c.ratio)
            lines.append(
                f"{case.name:<18} {dtype_name(dtype):<9} {case.m:>4} {case.n:>4} {case.r:>3} {case.b:>3} "
                f"{str(case.x_shape):<14} {worst.quantity:<10} {worst.max_abs_error:>11.2e} "
                f"{worst.tolerance:>10.2e} {_short(worst.ratio):>7}  {'ok' if all(c.passed for c in mine) else 'FAIL'}"
            )
        return "\n".join(lines)

    def __str__(self) -> str:
        worst = ", ".join(f"{dtype_name(d)} {v:.3f}" for d, v in self.worst_ratio.items())
        what = "outputs and gradients" if self.grad else "outputs"
        failed = sum(not all(c.passed for c in mine) for mine in self._runs.values())
        verdict = "all passed" if not failed else f"{failed} failed"
        return (f"{self.cases_run} case/dtype runs on {self.device} ({what}, seed {self.seed}), {verdict}; "
                f"worst error/tolerance: {worst}")


class OracleFailure(AssertionError):
    """A failing run (the first one, or with ``collect=True`` all of them). ``str(exc)`` says what failed
    and how to replay it; an exception raised by the implementation is chained as ``__cause__``.

    Attributes:
        case: the (first) failing case.
        dtype: its dtype.
        report: the comparisons made before (and including) the failure; with ``collect=True``, all.
        failures: every failure, each an [`OracleFailure`][bora_ref.testing.OracleFailure] of its own (just ``(self,)`` when the
            oracle stopped at the first).

    Examples:
        >>> from bora_ref import torch_ref
        >>> from bora_ref.testing import OracleFailure, check_implementation, get_case
        >>> def one_percent_off(x, B, A, sigma):
        ...     return 1.01 * torch_ref.bora_matmul(x, B, A, sigma)
        >>> try:
        ...     check_implementation(one_percent_off, cases=[get_case("even-square")])
        ... except OracleFailure as failure:
        ...     print(failure.case.name, failure.dtype)
        even-square torch.float64
    """

    def __init__(
        self, message: str, case: OracleCase, dtype: torch.dtype, report: OracleReport,
        failures: tuple[OracleFailure, ...] | None = None,
    ) -> None:
        super().__init__(message)
        self.case = case
        self.dtype = dtype
        self.report = report
        self.failures = failures if failures is not None else (self,)
