"""Shared argument checks, so every public entry point rejects bad input the same way.

Every check raises [`BoRAValueError`][bora_ref.BoRAValueError] (a `ValueError`) whose message names the
argument, the value it got and the rule it broke. Nothing here mutates its inputs.

This module never imports torch: a value can only be a torch tensor if torch is already
imported, so `is_tensor` looks torch up in ``sys.modules`` (this keeps
``import bora_ref.numpy_ref`` free of torch).
"""

from __future__ import annotations

import numbers
import sys
from typing import TYPE_CHECKING, Any, Literal

import numpy as np

if TYPE_CHECKING:
    import torch

Backend = Literal["numpy", "torch"]


class BoRAValueError(ValueError):
    """Raised for invalid arguments anywhere in `bora_ref`.

    Examples:
        >>> from bora_ref import BoRAValueError, block_sizes
        >>> try:
        ...     block_sizes(10, 0)
        ... except ValueError as err:  # a BoRAValueError is a ValueError
        ...     print(type(err).__name__, "-", err)
        BoRAValueError - b must satisfy 1 <= b <= dim=10 so that every block is non-empty, got b=0
    """


def is_tensor(value: Any) -> bool:
    """``isinstance(value, torch.Tensor)`` without importing torch (no torch loaded: no tensor)."""
    torch_module = sys.modules.get("torch")
    return torch_module is not None and isinstance(value, torch_module.Tensor)


def check_int(name: str, value: Any, *, minimum: int | None = None) -> int:
    """Return ``value`` as a Python ``int``; reject bools, floats and anything below ``minimum``."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise BoRAValueError(f"{name} must be an integer, got {value!r} of type {type(value).__name__}")
    value = int(value)
    if minimum is not None and value < minimum:
        raise BoRAValueError(f"{name} must be >= {minimum}, got {value}")
    return value


def check_b(b: Any, m: int, n: int) -> int:
    """Check ``1 <= b <= min(m, n)`` (every row block and every column block non-empty)."""
    b = check_int("b", b)
    if b < 1 or b > min(m, n):
        raise BoRAValueError(
            f"b must satisfy 1 <= b <= min(m, n) = {min(m, n)} (m={m}, n={n}) so that every block is "
            f"non-empty, got b={b}"
        )
    return b


def _kind(value: Any) -> str:
    if is_tensor(value):
        return "torch"
    if isinstance(value, np.ndarray):
        return "numpy"
    return type(value).__name__


def check_backend(backend: Backend, **arrays: Any) -> None:
    """All ``arrays`` must be NumPy arrays (``backend='numpy'``) or torch tensors (``'torch'``)."""
    other = "bora_ref.torch_ref" if backend == "numpy" else "bora_ref.numpy_ref"
    for name, value in arrays.items():
        if not (isinstance(value, np.ndarray) if backend == "numpy" else is_tensor(value)):
            raise BoRAValueError(
                f"{name} must be a {'numpy.ndarray' if backend == 'numpy' else 'torch.Tensor'} "
                f"(bora_ref.{backend}_ref does not mix backends; use {other} for the other one), "
                f"got {_kind(value)}"
            )
        check_dense(name, value)


def check_dense(name: str, value: Any) -> None:
    """torch tensors must have the ordinary strided layout (sparse and other layouts are refused)."""
    if is_tensor(value) and value.layout != sys.modules["torch"].strided:
        raise BoRAValueError(f"{name} must be a dense (strided) tensor, got layout {value.layout}; call .to_dense() first")


def check_float_dtype(name: str, value: np.ndarray | torch.Tensor) -> None:
    """Reject integer, boolean and complex arrays (BoRA is defined over the reals) and torch's float8
    types (8-bit storage formats: torch has no arithmetic for them)."""
    if is_tensor(value):
        ok = value.dtype.is_floating_point
    else:
        ok = np.issubdtype(value.dtype, np.floating)
    if not ok:
        raise BoRAValueError(f"{name} must have a real floating dtype, got {value.dtype}")
    if is_tensor(value) and value.dtype.itemsize < 2:
        raise BoRAValueError(f"{name} must have a real floating dtype of 16 bits or more (torch has no arithmetic for "
                             f"float8), got {value.dtype}")


def check_finite(name: str, value: np.ndarray | torch.Tensor) -> None:
    """Reject NaN and infinity (used where a non-finite value would silently poison a result)."""
    finite = bool(value.isfinite().all()) if is_tensor(value) else bool(np.isfinite(value).all())
    if not finite:
        raise BoRAValueError(f"{name} contains NaN or infinity; all its values must be finite")


def check_factors(B: Any, A: Any, sigma: Any, backend: Backend) -> tuple[int, int, int, int]:
    """Validate BoRA factors and return ``(m, n, r, b)``.

    Shapes: ``B`` is ``(m, r)``, ``A`` is ``(r, n)``, ``sigma`` is ``(b, b, r)``
    with ``1 <= b <= min(m, n)``.
    """
    check_backend(backend, B=B, A=A, sigma=sigma)
    for name, value in (("B", B), ("A", A), ("sigma", sigma)):
        check_float_dtype(name, value)
    if B.ndim != 2:
        raise BoRAValueError(f"B must be 2-D with shape (m, r), got shape {tuple(B.shape)}")
    if A.ndim != 2:
        raise BoRAValueError(f"A must be 2-D with shape (r, n), got shape {tuple(A.shape)}")
    m, r = (int(s) for s in B.shape)
    r_a, n = (int(s) for s in A.shape)
    if r_a != r:
        raise BoRAValueError(
            f"A has shape {tuple(A.shape)} but B has shape {tuple(B.shape)}: the rank r must agree "
            f"(A.shape[0] == B.shape[1]), got {r_a} != {r}"
        )
    if m == 0 or n == 0 or r == 0:
        raise BoRAValueError(f"B and A must be non-empty, got m={m}, n={n}, r={r}")
    if sigma.ndim != 3 or sigma.shape[0] != sigma.shape[1]:
        raise BoRAValueError(f"sigma must have shape (b, b, r), got shape {tuple(sigma.shape)}")
    b = int(sigma.shape[0])
    if int(sigma.shape[2]) != r:
        raise BoRAValueError(
            f"sigma has shape {tuple(sigma.shape)} but r={r} from A requires ({b}, {b}, {r})"
        )
    check_b(b, m, n)
    if backend == "torch":
        check_same_dtype_device(B=B, A=A, sigma=sigma)
    return m, n, r, b


def check_same_dtype_device(**tensors: torch.Tensor) -> None:
    """torch tensors that meet in one matmul must share dtype and device."""
    items = list(tensors.items())
    first_name, first = items[0]
    for name, t in items[1:]:
        if t.dtype != first.dtype:
            raise BoRAValueError(
                f"{name} has dtype {t.dtype} but {first_name} has dtype {first.dtype}; all tensors must share one dtype"
            )
        if t.device != first.device:
            raise BoRAValueError(
                f"{name} is on device {t.device} but {first_name} is on {first.device}; all tensors must share one device"
            )


def check_x(x: Any, n: int, backend: Backend) -> None:
    """``x`` is ``(..., n)`` with at least one dimension."""
    check_backend(backend, x=x)
    check_float_dtype("x", x)
    if x.ndim == 0 or int(x.shape[-1]) != n:
        raise BoRAValueError(
            f"x must have shape (..., n) with n={n} (in_features, from A), got shape {tuple(x.shape)}"
        )


def check_choice(name: str, value: Any, choices: tuple[str, ...]) -> str:
    if not isinstance(value, str) or value not in choices:  # isinstance first: arrays make `in` ambiguous
        raise BoRAValueError(f"{name} must be one of {choices}, got {value!r}")
    return value


def check_probability(name: str, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not 0.0 <= float(value) < 1.0:
        raise BoRAValueError(f"{name} must be a float in [0, 1), got {value!r}")
    return float(value)


def check_positive_float(name: str, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not np.isfinite(float(value)) or float(value) <= 0:
        raise BoRAValueError(f"{name} must be a finite number > 0, got {value!r}")
    return float(value)
