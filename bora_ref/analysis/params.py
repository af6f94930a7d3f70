"""Parameter accounting for LoRA and BoRA, in closed form (any size answers at once).

Per adapted ``(m, n)`` layer: LoRA trains ``r (m + n)`` parameters (``A (r, n)`` and
``B (m, r)``); BoRA adds the ``b² r`` entries of ``sigma (b, b, r)``. To reach rank
``R = b r`` BoRA needs ``R ((m + n) / b + b)`` parameters against LoRA's ``R (m + n)``,
minimised at ``b = √(m + n)``.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass


from .._validation import BoRAValueError, check_b, check_int
from .rank import rank_bound

__all__ = [
    "ParamCount",
    "best_b",
    "bora_params_for_rank",
    "equal_budget_lora_rank",
    "lora_params_for_rank",
    "param_count",
    "sum_param_counts",
]


@dataclass(frozen=True)
class ParamCount:
    """Trainable parameters of one BoRA layer.

    Attributes:
        lora: ``r (m + n)``, the ``A`` and ``B`` factors (what LoRA of rank ``r`` trains).
        sigma: ``b² r``, the block diagonals.
        total: ``lora + sigma``.

    Examples:
        >>> from bora_ref import param_count
        >>> pc = param_count(4096, 4096, 8, 8)  # r = 8, b = 8 on a 4096 x 4096 weight
        >>> pc.lora, pc.sigma, pc.total, round(pc.overhead_pct, 2)
        (65536, 512, 66048, 0.78)
    """

    lora: int
    sigma: int
    total: int

    @property
    def overhead(self) -> float:
        """Extra parameters relative to LoRA of the same ``r``: ``sigma / lora`` (a fraction)."""
        return self.sigma / self.lora

    @property
    def overhead_pct(self) -> float:
        """[`overhead`][bora_ref.ParamCount.overhead] in percent: ``100 * sigma / lora``."""
        return 100.0 * self.overhead


def param_count(m: int, n: int, r: int, b: int) -> ParamCount:
    """Trainable parameters of a BoRA adapter on an ``(m, n)`` weight.

    $$\\underbrace{r(m + n)}_{\\text{lora}} + \\underbrace{b^2 r}_{\\text{sigma}}$$

    Args:
        m: out_features (rows of ``B``).
        n: in_features (columns of ``A``).
        r: rank per block product, ``>= 1``.
        b: blocks per side, ``1 <= b <= min(m, n)``.

    Returns:
        A [`ParamCount`][bora_ref.ParamCount] with int fields ``lora``, ``sigma``, ``total``.

    Raises:
        ValueError: non-integer or out-of-range arguments.

    Examples:
        >>> param_count(4096, 4096, 8, 8)
        ParamCount(lora=65536, sigma=512, total=66048)
    """
    m = check_int("m", m, minimum=1)
    n = check_int("n", n, minimum=1)
    r = check_int("r", r, minimum=1)
    b = check_b(b, m, n)
    lora = r * (m + n)
    sigma = b * b * r
    return ParamCount(lora=lora, sigma=sigma, total=lora + sigma)


def sum_param_counts(counts: Iterable[ParamCount]) -> ParamCount:
    """Field-wise sum of several [`ParamCount`][bora_ref.ParamCount] (e.g. every adapted layer of a model).

    Raises:
        ValueError: an item that is not a [`ParamCount`][bora_ref.ParamCount], or no items at all.
    """
    items = list(counts)
    if not items or not all(isinstance(c, ParamCount) for c in items):
        raise BoRAValueError(f"counts must be a non-empty iterable of ParamCount, got {items!r:.80}")
    lora = sum(c.lora for c in items)
    sigma = sum(c.sigma for c in items)
    return ParamCount(lora=lora, sigma=sigma, total=lora + sigma)


def equal_budget_lora_rank(m: int, n: int, r: int, b: int) -> int:
    """The largest LoRA rank whose parameters do not exceed BoRA's ``(r, b)`` on an ``(m, n)`` weight.

    $$R_\\text{LoRA} = \\max\\{R : R(m + n) \\le r(m + n) + b^2 r\\} = r + \\lfloor b^2 r / (m + n) \\rfloor$$

    Args:
        m: rows of the weight, as in [`param_count`][bora_ref.param_count].
        n: columns of the weight.
        r: rank per block product.
        b: blocks per side.

    Raises:
        ValueError: as [`param_count`][bora_ref.param_count].

    Examples:
        >>> equal_budget_lora_rank(384, 384, 8, 64)  # 64² * 8 = 32768 extra = 42.7 LoRA ranks
        50
    """
    pc = param_count(m, n, r, b)
    return pc.total // (m + n)


def _check_target_rank(m: int, n: int, R: int) -> tuple[int, int, int]:
    m = check_int("m", m, minimum=1)
    n = check_int("n", n, minimum=1)
    R = check_int("R", R, minimum=1)
    if R > min(m, n):
        raise BoRAValueError(f"R must be <= min(m, n) = {min(m, n)} (no update of an ({m}, {n}) weight has a higher rank), got R={R}")
    return m, n, R


def lora_params_for_rank(m: int, n: int, R: int) -> int:
    """Parameters LoRA needs to reach rank ``R`` on an ``(m, n)`` weight: $R (m + n)$.

    Raises:
        ValueError: non-integer arguments, or ``R`` outside ``[1, min(m, n)]``.
    """
    m, n, R = _check_target_rank(m, n, R)
    return R * (m + n)


def bora_params_for_rank(m: int, n: int, R: int, b: int) -> int:
    """Fewest BoRA parameters with ``b`` blocks whose rank bound reaches ``R``.

    Takes the smallest ``r`` with [`bora_ref.rank_bound`][bora_ref.rank_bound] ``(m, n, r, b) >= R`` and returns
    ``param_count(m, n, r, b).total``; for ``R = b r`` with even splits and ``r <= m/b, n/b``:

    $$r(m + n) + b^2 r = R\\Big(\\frac{m + n}{b} + b\\Big)$$

    Args:
        m: rows of the weight.
        n: columns of the weight.
        R: target rank, ``1 <= R <= min(m, n)``.
        b: blocks per side, ``1 <= b <= min(m, n)``.

    Raises:
        ValueError: non-integer or out-of-range arguments.

    Examples:
        >>> bora_params_for_rank(4096, 4096, 128, 16), lora_params_for_rank(4096, 4096, 128)
        (67584, 1048576)
    """
    m, n, R = _check_target_rank(m, n, R)
    b = check_b(b, m, n)
    # rank_bound is non-decreasing in r and reaches min(m, n) >= R by r = max(m, n): bisect, O(log max(m, n)).
    lo, hi = max(1, -(-R // b)), max(m, n)  # ceil(R / b) is enough when every block has >= r rows and columns
    while lo < hi:
        mid = (lo + hi) // 2
        if rank_bound(m, n, mid, b) >= R:
            hi = mid
        else:
            lo = mid + 1
    return param_count(m, n, lo, b).total


def best_b(m: int, n: int) -> int:
    """The ``b`` that minimises BoRA's parameters per unit of rank on an ``(m, n)`` weight.

    Per unit of rank BoRA costs $(m + n)/b + b$ (parameters ``r (m + n) + b² r`` for rank ``b r``), minimised over the reals at
    $b = \\sqrt{m + n}$; this returns the best integer in ``[1, min(m, n)]`` (the smaller on a tie).

    Raises:
        ValueError: non-integer or non-positive ``m``, ``n``.

    Examples:
        >>> best_b(4096, 4096), best_b(4096, 11008), best_b(384, 384)
        (91, 123, 28)
    """
    m = check_int("m", m, minimum=1)
    n = check_int("n", n, minimum=1)
    root = math.isqrt(m + n)
    candidates = {min(max(c, 1), min(m, n)) for c in (root, root + 1)}
    return min(sorted(candidates), key=lambda c: (m + n) / c + c)
