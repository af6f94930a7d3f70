"""Private helpers of the rank analysis: NumPy/torch input to float64, and dtype constants.

The analysis accepts NumPy arrays and torch tensors of any real floating dtype on any device.
Everything is computed on the CPU in float64, so the first step is always a float64 NumPy copy;
the input's dtype is kept alongside, because the tolerance policy depends on it.
"""

from __future__ import annotations

import sys
from typing import Any

import numpy as np
from threadpoolctl import threadpool_limits

from ._validation import BoRAValueError, check_dense, is_tensor

__all__ = ["as_float64", "dtype_eps", "single_blas_thread", "smallest_normal", "storage_dtype_name", "unit_roundoff"]

# Floating dtypes the tolerance policy knows, by canonical name, with their IEEE machine constants
# (eps = 2**-(mantissa bits), smallest normal = 2**(1 - exponent bias)); NumPy has no bfloat16,
# and torch is not imported here, so they are written out (tests compare them with torch.finfo).
_DTYPES: dict[str, tuple[float, float]] = {  # name -> (eps, smallest normal)
    "float16": (2.0**-10, 2.0**-14),
    "bfloat16": (2.0**-7, 2.0**-126),
    "float32": (2.0**-23, 2.0**-126),
    "float64": (2.0**-52, 2.0**-1022),
}
FLOAT_DTYPE_NAMES: tuple[str, ...] = ("float32", "float64", "float16", "bfloat16")
"""The floating dtypes bora_ref takes as torch tensors (adapter parameters, oracle and golden inputs), by torch
name: the dtypes above. No float8: too coarse to train or to check against a float64 truth."""
_ALIASES = {"half": "float16", "float": "float32", "single": "float32", "double": "float64"}

single_blas_thread = threadpool_limits.wrap(limits=1, user_api="blas")
"""Decorator: run the function with one BLAS thread, restoring the caller's limit on return.

For code that runs many small factorisations (sweeps: blocks of ``r`` columns, cores of at most
``(b r, b r)``): BLAS threads cannot help there, and on a busy machine their spin-waiting made a
sweep 15x slower."""


def as_float64(name: str, value: Any, *, ndim: int | None = None) -> tuple[np.ndarray, str]:
    """A float64 NumPy copy of ``value`` (moved to the CPU) and the canonical name of its dtype.

    Args:
        name: the argument's name, used in error messages.
        value: a NumPy array or torch tensor of a real floating dtype (any device).
        ndim: required number of dimensions (then the array must also be non-empty), or ``None``.

    Raises:
        ValueError: not an array, not a real floating dtype, wrong ``ndim``, empty, or non-finite.
    """
    if is_tensor(value):
        check_dense(name, value)
        if not value.dtype.is_floating_point:
            raise BoRAValueError(f"{name} must have a real floating dtype, got {value.dtype}")
        dtype = storage_dtype_name(value.dtype)
        # .to() returns the tensor itself when it is already float64 on the CPU: copy explicitly.
        arr = np.array(value.detach().cpu().double().numpy(), dtype=np.float64, copy=True)
    elif isinstance(value, np.ndarray):
        if not np.issubdtype(value.dtype, np.floating):
            raise BoRAValueError(f"{name} must have a real floating dtype, got {value.dtype}")
        dtype = storage_dtype_name(value.dtype)
        arr = value.astype(np.float64)  # always a copy: callers may not mutate the input
    else:
        raise BoRAValueError(f"{name} must be a numpy.ndarray or torch.Tensor, got {type(value).__name__}")
    if ndim is not None and (arr.ndim != ndim or arr.size == 0):
        kind = {1: "vector", 2: "matrix"}.get(ndim, "array")
        raise BoRAValueError(f"{name} must be a non-empty {ndim}-D {kind}, got shape {arr.shape}")
    if not np.isfinite(arr).all():
        raise BoRAValueError(f"{name} contains NaN or infinity; all its values must be finite")
    return arr, dtype


def storage_dtype_name(dtype: Any, *, name: str = "storage_dtype") -> str:
    """Canonical name (``"float16"``, ``"bfloat16"``, ``"float32"``, ``"float64"``) of a dtype.

    Accepts a torch dtype, a NumPy dtype or scalar type, or one of those names (or ``"half"``,
    ``"float"``, ``"single"``, ``"double"``).

    Raises:
        ValueError: anything that is not one of the four real floating dtypes.
    """
    torch_module = sys.modules.get("torch")
    if torch_module is not None and isinstance(dtype, torch_module.dtype):
        key = str(dtype).removeprefix("torch.")
    elif isinstance(dtype, str):
        key = _ALIASES.get(dtype, dtype)
    else:
        try:
            key = np.dtype(dtype).name
        except TypeError:
            key = None
    if key not in _DTYPES:
        raise BoRAValueError(f"{name} must be one of {tuple(_DTYPES)} (or the torch/NumPy dtype), got {dtype!r}")
    return key  # type: ignore[return-value]


def dtype_eps(dtype: str) -> float:
    """Machine epsilon (spacing of floats at 1.0) of a canonical dtype name."""
    return _DTYPES[dtype][0]


def unit_roundoff(dtype: str) -> float:
    """Unit roundoff ``u = eps / 2``: the largest relative error of rounding to nearest."""
    return dtype_eps(dtype) / 2


def smallest_normal(dtype: str) -> float:
    """Smallest positive normal number; below it rounding error is absolute (``<= smallest_normal * u``)."""
    return _DTYPES[dtype][1]
