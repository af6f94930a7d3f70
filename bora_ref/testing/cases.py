"""The oracle's case list: BoRA shapes, input layouts and factor kinds, and their inputs.

A case fixes ``(m, n, r, b)`` (``B (m, r)``, ``A (r, n)``, ``sigma (b, b, r)``), the leading
dimensions of ``x (..., n)``, how the inputs are laid out in memory and what kind of factors they
hold. Its inputs are a pure function of ``(case, dtype, seed, call)``: values are drawn in float64
from a generator seeded by ``seed``, the case's name and the call number (the oracle calls the
implementation twice per case, on two independent draws of the same shapes), then rounded to the
dtype, so running one case alone (a replay) sees exactly the inputs it saw inside the full list.

The built-in list [`DEFAULT_CASES`][bora_ref.testing.DEFAULT_CASES] covers even and uneven splits (tall, wide, square, rows
only, columns only), ``r`` larger than a block, ``b = 1``, ``b = min(m, n)``, ``x`` of shape
``(n,)``, ``(t, n)``, ``(batch, t, n)``, three and four leading dimensions, single-token decode
steps ``(1, n)`` and ``(1, 1, n)`` and an empty batch, non-contiguous inputs (transposed, strided
and permuted views; the strided view's gaps hold NaN, so a kernel that ignores strides reads
poison), zero factors, large-magnitude factors, positive factors, long reductions (``n = 2048``)
and one case larger than a typical GPU tile.
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass
from typing import Literal

import numpy as np
import torch

from .._arrays import FLOAT_DTYPE_NAMES
from .._validation import BoRAValueError, check_b, check_choice, check_int

__all__ = [
    "OracleCase", "DEFAULT_CASES", "LAYOUTS", "FACTOR_KINDS", "get_case", "case_values", "make_inputs", "place_inputs",
]

Layout = Literal["contiguous", "x-transposed", "x-strided", "factors-permuted"]
FactorKind = Literal["gaussian", "zero-B", "zero-sigma", "large", "positive"]
LAYOUTS: tuple[str, ...] = ("contiguous", "x-transposed", "x-strided", "factors-permuted")
FACTOR_KINDS: tuple[str, ...] = ("gaussian", "zero-B", "zero-sigma", "large", "positive")

_FLOAT_DTYPES = tuple(getattr(torch, name) for name in FLOAT_DTYPE_NAMES)  # what an implementation may be checked in


@dataclass(frozen=True)
class OracleCase:
    """One oracle case: a BoRA shape, the leading dimensions of ``x``, a memory layout, a factor kind.

    Attributes:
        name: identifies the case in messages and (with the seed) selects its random inputs.
        m: out_features, rows of ``B (m, r)``.
        n: in_features, columns of ``A (r, n)``.
        r: rank per block product.
        b: blocks per side, ``1 <= b <= min(m, n)``.
        lead: leading dimensions of ``x``: ``x`` has shape ``lead + (n,)``; ``()`` gives ``x (n,)``.
        layout: ``"contiguous"``; ``"x-transposed"`` (``x`` is a view with its last dimension
            outermost in memory); ``"x-strided"`` (``x`` is every other column of a wider buffer whose
            other columns hold NaN); ``"factors-permuted"`` (``B``, ``A`` and ``sigma`` are permuted
            views, ``sigma``'s buffer stored ``(r, b, b)``).
        factors: ``"gaussian"`` (standard normal), ``"zero-B"`` or ``"zero-sigma"`` ($\\Delta W = 0$
            but non-zero gradients), ``"large"`` (``B``, ``A``, ``sigma`` scaled by
            ``finfo(dtype).max ** (1/8)``: about ``3e38`` in float64, past float32's range, ``7e4`` in
            float32 and bfloat16, ``4`` in float16), ``"positive"`` (every input, and the cotangent,
            is the absolute value of a standard normal draw: no cancellation, so every sum grows
            with its length, and an implementation that accumulates in the working dtype loses
            the small terms).

    Raises:
        BoRAValueError: a non-integer or out-of-range size, ``b`` outside ``[1, min(m, n)]``, a
            negative leading dimension, or an unknown layout or factor kind.

    Examples:
        >>> from bora_ref.testing import OracleCase
        >>> case = OracleCase("my-layer", m=24, n=10, r=3, b=4, lead=(2, 5))
        >>> case.x_shape, case.y_shape
        ((2, 5, 10), (2, 5, 24))
    """

    name: str
    m: int
    n: int
    r: int
    b: int
    lead: tuple[int, ...] = (6,)
    layout: Layout = "contiguous"
    factors: FactorKind = "gaussian"

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not self.name:
            raise BoRAValueError(f"name must be a non-empty string, got {self.name!r}")
        for field in ("m", "n", "r"):
            check_int(field, getattr(self, field), minimum=1)
        check_b(self.b, self.m, self.n)
        object.__setattr__(self, "lead", tuple(check_int("lead", d, minimum=0) for d in self.lead))
        check_choice("layout", self.layout, LAYOUTS)
        check_choice("factors", self.factors, FACTOR_KINDS)

    @property
    def x_shape(self) -> tuple[int, ...]:
        """``lead + (n,)``."""
        return self.lead + (self.n,)

    @property
    def y_shape(self) -> tuple[int, ...]:
        """``lead + (m,)``, the shape the implementation must return."""
        return self.lead + (self.m,)


# name, (m, n, r, b), extra fields. Shapes are small so the whole list runs in about a second.
DEFAULT_CASES: tuple[OracleCase, ...] = (
    # Splits: even and uneven, tall, wide, square; only rows or only columns uneven (a kernel
    # may branch on each dimension separately).
    OracleCase("even-square", 16, 16, 4, 4),
    OracleCase("even-tall", 24, 8, 3, 4),
    OracleCase("even-wide", 8, 24, 3, 4),
    OracleCase("uneven-square", 11, 11, 3, 3),
    OracleCase("uneven-tall", 23, 10, 4, 3),
    OracleCase("uneven-wide", 7, 19, 2, 3),
    OracleCase("uneven-rows-only", 10, 12, 3, 4),
    OracleCase("uneven-cols-only", 12, 10, 3, 4),
    # Ranks and block counts at their edges.
    OracleCase("r-exceeds-block", 12, 9, 8, 3),  # blocks of 4 and 3 rows/columns, r = 8
    OracleCase("b=1", 9, 7, 3, 1),  # plain LoRA shape
    OracleCase("b=min(m,n)-tall", 10, 6, 2, 6),  # one column per block, rows split 2,2,2,2,1,1
    OracleCase("b=m=n", 5, 5, 2, 5),  # every block 1 x 1
    OracleCase("scalar-blocks", 1, 1, 1, 1),
    # Leading dimensions of x: none, two, three, four (with size-1 dimensions a kernel might
    # squeeze), an empty batch, and the single-token steps of LLM decoding.
    OracleCase("x-vector", 10, 14, 3, 3, lead=()),
    OracleCase("x-3d", 12, 8, 2, 2, lead=(2, 3)),
    OracleCase("x-4d", 10, 9, 3, 3, lead=(2, 3, 4)),
    OracleCase("x-5d", 9, 11, 2, 3, lead=(3, 1, 2, 1)),
    OracleCase("empty-batch", 6, 4, 2, 2, lead=(0,)),
    OracleCase("decode-1xn", 21, 18, 4, 3, lead=(1,)),
    OracleCase("decode-1x1xn", 18, 21, 4, 3, lead=(1, 1)),
    # Memory layouts: a kernel that reads raw storage without strides gets wrong values or NaN.
    OracleCase("x-transposed", 9, 12, 3, 3, lead=(7,), layout="x-transposed"),
    OracleCase("x-strided", 12, 10, 3, 2, lead=(4, 3), layout="x-strided"),
    OracleCase("factors-permuted", 13, 11, 3, 3, layout="factors-permuted"),
    # Factor values.
    OracleCase("zero-B", 12, 12, 3, 3, factors="zero-B"),
    OracleCase("zero-sigma", 10, 12, 3, 4, factors="zero-sigma"),
    OracleCase("large-factors", 14, 10, 3, 3, factors="large"),
    # Larger than a 16/32/64 tile in every dimension, uneven, r = 20 > 16.
    OracleCase("multi-tile", 130, 97, 20, 4, lead=(3, 33)),
    # Long reductions (1024 terms per column block): accumulating in bfloat16 or float16 instead of
    # float32 fails here, on zero-mean values and, by far, on positive ones.
    OracleCase("long-n", 24, 2048, 4, 2, lead=(3,)),
    OracleCase("long-n-positive", 20, 2048, 4, 2, lead=(3,), factors="positive"),
)
"""The cases [`check_implementation`][bora_ref.testing.check_implementation] runs by default, in this order.

Even and uneven splits of tall, wide and square shapes; ranks and block counts at their edges
(``r`` larger than a block, ``b = 1``, ``b = min(m, n)``); ``x`` with zero to four leading
dimensions, an empty batch and decoding steps; non-contiguous memory layouts; special factor
values; shapes larger than a kernel tile; long reductions.

Examples:
    >>> from bora_ref.testing import DEFAULT_CASES
    >>> DEFAULT_CASES[0]
    OracleCase(name='even-square', m=16, n=16, r=4, b=4, lead=(6,), layout='contiguous', factors='gaussian')
    >>> len({case.name for case in DEFAULT_CASES}) == len(DEFAULT_CASES)  # names are unique
    True
"""


def get_case(name: str) -> OracleCase:
    """The built-in case called ``name`` (see [`DEFAULT_CASES`][bora_ref.testing.DEFAULT_CASES]).

    Raises:
        BoRAValueError: no built-in case has that name.

    Examples:
        >>> from bora_ref.testing import get_case
        >>> case = get_case("even-square")
        >>> case.m, case.n, case.r, case.b
        (16, 16, 4, 4)
    """
    for case in DEFAULT_CASES:
        if case.name == name:
            return case
    names = ", ".join(c.name for c in DEFAULT_CASES)
    raise BoRAValueError(f"case must be the name of a built-in case ({names}), got {name!r}")


def _rng(case: OracleCase, seed: int, call: int) -> np.random.Generator:
    # Seeded by (seed, name, call) only, so a case's inputs do not depend on its position in a list.
    # The first call keeps the two-word seed it has always had (the golden files hold its values).
    words = [seed, zlib.crc32(case.name.encode())] + ([call] if call else [])
    return np.random.default_rng(words)


def case_values(case: OracleCase, dtype: torch.dtype, seed: int, call: int = 0) -> dict[str, np.ndarray]:
    """The case's values, rounded to ``dtype`` and returned as float64 NumPy arrays.

    Args:
        case: the case.
        dtype: the dtype the implementation will receive (float64, float32, float16 or bfloat16).
        seed: non-negative integer.
        call: which of the oracle's calls on this case: ``0`` (the first) or ``1`` (the second,
            an independent draw of the same shapes and kind).

    Returns:
        ``{"x": lead + (n,), "B": (m, r), "A": (r, n), "sigma": (b, b, r), "g": lead + (m,)}``;
        ``g`` is the cotangent (upstream gradient of ``y``) used for gradient checks.

    Raises:
        BoRAValueError: ``dtype`` is not one of the four float dtypes, ``seed`` is negative or
            ``call`` is not 0 or 1.
    """
    if dtype not in _FLOAT_DTYPES:
        raise BoRAValueError(f"dtype must be one of {_FLOAT_DTYPES}, got {dtype!r}")
    seed = check_int("seed", seed, minimum=0)
    if isinstance(call, bool) or call not in (0, 1):
        raise BoRAValueError(f"call must be 0 (the first call) or 1 (the second), got {call!r}")
    m, n, r, b = case.m, case.n, case.r, case.b
    rng = _rng(case, seed, call)
    values = {
        "x": rng.standard_normal(case.x_shape),
        "B": rng.standard_normal((m, r)),
        "A": rng.standard_normal((r, n)),
        "sigma": rng.standard_normal((b, b, r)),
        "g": rng.standard_normal(case.y_shape),
    }
    if case.factors == "zero-B":
        values["B"][...] = 0.0
    elif case.factors == "zero-sigma":
        values["sigma"][...] = 0.0
    elif case.factors == "large":
        # Three scaled factors keep y near finfo.max ** (3/8): large, yet far from overflow.
        scale = float(torch.finfo(dtype).max) ** 0.125
        for key in ("B", "A", "sigma"):
            values[key] *= scale
    elif case.factors == "positive":
        values = {k: np.abs(v) for k, v in values.items()}
    # Round once, through torch, to what the implementation will see.
    return {k: torch.from_numpy(v).to(dtype).double().numpy() for k, v in values.items()}


def _place(value: np.ndarray, dtype: torch.dtype, device: torch.device, how: str) -> torch.Tensor:
    """Put ``value`` on ``device`` in ``dtype`` with the memory layout ``how`` (same values, same shape).

    ``"contiguous"``; ``"reversed"``: stored with all dimensions reversed, then viewed back (``B (m, r)``
    is a ``(r, m)`` buffer's ``.T``); ``"last-first"``: ``x (..., n)`` stored as ``(n, ...)``;
    ``"strided"``: ``x (..., n)`` is every other column of a ``(..., 2n)`` buffer whose other columns
    are NaN.
    """
    t = torch.from_numpy(value)
    if how == "reversed":
        dims = tuple(range(t.ndim - 1, -1, -1))
        return t.permute(dims).contiguous().to(device=device, dtype=dtype).permute(dims)
    if how == "last-first":
        return t.movedim(-1, 0).contiguous().to(device=device, dtype=dtype).movedim(0, -1)
    if how == "strided":
        buffer = torch.full(t.shape[:-1] + (2 * t.shape[-1],), float("nan"), dtype=dtype, device=device)
        buffer[..., ::2] = t.to(device=device, dtype=dtype)
        return buffer[..., ::2]
    return t.to(device=device, dtype=dtype)


def make_inputs(
    case: OracleCase, dtype: torch.dtype, device: str | torch.device = "cpu", seed: int = 0, call: int = 0
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """The case's inputs as torch tensors in ``dtype`` on ``device``, laid out as ``case.layout`` says.

    Args:
        case: the case.
        dtype: float64, float32, float16 or bfloat16.
        device: any torch device.
        seed: non-negative integer.
        call: ``0`` for the inputs of the oracle's first call on the case, ``1`` for the second.

    Returns:
        ``(x, B, A, sigma, g)`` with shapes ``lead + (n,)``, ``(m, r)``, ``(r, n)``, ``(b, b, r)``,
        ``lead + (m,)``; their values equal [`case_values`][bora_ref.testing.cases.case_values] exactly.

    Raises:
        BoRAValueError: as [`case_values`][bora_ref.testing.cases.case_values].

    Examples:
        >>> import torch
        >>> from bora_ref.testing import get_case, make_inputs
        >>> x, B, A, sigma, g = make_inputs(get_case("even-square"), torch.float32)
        >>> [tuple(t.shape) for t in (x, B, A, sigma, g)], x.dtype
        ([(6, 16), (16, 4), (4, 16), (4, 4, 4), (6, 16)], torch.float32)
    """
    return place_inputs(case, case_values(case, dtype, seed, call), dtype, device)


def place_inputs(
    case: OracleCase, values: dict[str, np.ndarray], dtype: torch.dtype, device: str | torch.device
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """[`make_inputs`][bora_ref.testing.make_inputs] from already computed [`case_values`][bora_ref.testing.cases.case_values] (same arguments, same result)."""
    device = torch.device(device)
    x_how = {"x-transposed": "last-first", "x-strided": "strided"}.get(case.layout, "contiguous")
    f_how = "reversed" if case.layout == "factors-permuted" else "contiguous"
    x = _place(values["x"], dtype, device, x_how)
    B, A, sigma = (_place(values[k], dtype, device, f_how) for k in ("B", "A", "sigma"))
    g = _place(values["g"], dtype, device, "contiguous")
    return x, B, A, sigma, g
