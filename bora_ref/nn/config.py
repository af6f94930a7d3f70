"""``BoRAConfig``: a layer's BoRA settings, their defaults and their validation, in one place.

[`BoRALinear`][bora_ref.BoRALinear], [`apply_bora`][bora_ref.apply_bora], the adapter files
([`save_adapter`][bora_ref.save_adapter] / [`load_adapter`][bora_ref.load_adapter]), the PEFT conversions and
the experiments all build a ``BoRAConfig``; none of them re-implements a check.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, fields
from typing import Any

import torch

from .._arrays import FLOAT_DTYPE_NAMES
from .._validation import BoRAValueError, check_b, check_int, check_positive_float, check_probability
from .sigma import DEFAULT_SIGMA_PARAM, SigmaParam, get_sigma_param

__all__ = ["ADAPTER_DTYPES", "LAYER_KWARGS", "BoRAConfig"]

ADAPTER_DTYPES: tuple[torch.dtype, ...] = tuple(getattr(torch, name) for name in FLOAT_DTYPE_NAMES)
"""The dtypes adapter parameters may have: float32, float64, float16, bfloat16 (no float8: too coarse to train,
and not every op supports it)."""


@dataclass(frozen=True)
class BoRAConfig:
    """The settings of one BoRA adapter, validated on construction.

    The layer's scaling is $s = \\alpha / r$, or $s = \\alpha / \\sqrt{r}$ with ``rslora=True``.

    Attributes:
        r: rank of each block product, ``>= 1``.
        b: blocks per side, ``>= 1``; a layer also needs ``b <= min(m, n)`` ([`check_shape`][bora_ref.nn.config.BoRAConfig.check_shape]).
        alpha: the scaling numerator; ``None`` means ``r`` (stored as ``float(r)``, so that
            ``scaling = 1`` without rsLoRA and ``sqrt(r)`` with it).
        rslora: use $\\alpha / \\sqrt{r}$.
        sigma_param: a name registered in [`SIGMA_REGISTRY`][bora_ref.nn.sigma.SIGMA_REGISTRY].
        dropout: dropout probability on the adapter input, in ``[0, 1)``.
        adapter_dtype: dtype of ``lora_A``, ``lora_B``, ``sigma`` (``None``: chosen from the base
            layer, float32 for float16/bfloat16 bases); one of [`ADAPTER_DTYPES`][bora_ref.nn.config.ADAPTER_DTYPES].

    Raises:
        ValueError: any field out of its range (the message names it).

    Examples:
        >>> cfg = BoRAConfig(r=8, b=4, alpha=16)
        >>> cfg.scaling, cfg.sigma.name
        (2.0, 'exp_norm')
        >>> cfg.check_shape(m=384, n=384).b
        4
    """

    r: int
    b: int
    alpha: float | None = None
    rslora: bool = False
    sigma_param: str = DEFAULT_SIGMA_PARAM
    dropout: float = 0.0
    adapter_dtype: torch.dtype | None = None

    def __post_init__(self) -> None:
        set_ = object.__setattr__  # frozen: normalise through object.__setattr__
        r = check_int("r", self.r, minimum=1)
        set_(self, "r", r)
        set_(self, "b", check_int("b", self.b, minimum=1))
        set_(self, "alpha", float(r) if self.alpha is None else check_positive_float("alpha", self.alpha))
        if not isinstance(self.rslora, bool):
            raise BoRAValueError(f"rslora must be a bool, got {self.rslora!r}")
        get_sigma_param(self.sigma_param)
        set_(self, "dropout", check_probability("dropout", self.dropout))
        if self.adapter_dtype is not None and self.adapter_dtype not in ADAPTER_DTYPES:
            raise BoRAValueError(
                f"adapter_dtype must be one of {ADAPTER_DTYPES} (or None for the base layer's), got {self.adapter_dtype!r}"
            )

    @property
    def scaling(self) -> float:
        """$\\alpha / r$, or $\\alpha / \\sqrt{r}$ with ``rslora``."""
        alpha = float(self.alpha)  # type: ignore[arg-type]  # never None after __post_init__
        return alpha / (math.sqrt(self.r) if self.rslora else self.r)

    @property
    def sigma(self) -> SigmaParam:
        """The registered Σ parameterisation."""
        return get_sigma_param(self.sigma_param)

    def check_shape(self, m: int, n: int) -> BoRAConfig:
        """Check that this config fits an ``(m, n)`` weight (``1 <= b <= min(m, n)``); return ``self``.

        Raises:
            ValueError: ``b > min(m, n)`` (some block would be empty).
        """
        check_b(self.b, m, n)
        return self

    def adapter_dtype_for(self, base_dtype: torch.dtype) -> torch.dtype:
        """The adapter dtype on a base of ``base_dtype``: the configured one, else float32 for
        16-bit bases (as PEFT's ``autocast_adapter_dtype``) and the base dtype otherwise."""
        if self.adapter_dtype is not None:
            return self.adapter_dtype
        return torch.float32 if base_dtype in (torch.float16, torch.bfloat16) else base_dtype

    def layer_kwargs(self) -> dict[str, Any]:
        """The keyword arguments of [`BoRALinear`][bora_ref.BoRALinear] besides ``r`` and ``b``."""
        return {f.name: getattr(self, f.name) for f in fields(self) if f.name not in ("r", "b")}

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready settings (``adapter_dtype`` as its name, e.g. ``"float32"``, or ``None``)."""
        out = asdict(self)
        out["adapter_dtype"] = None if self.adapter_dtype is None else str(self.adapter_dtype).removeprefix("torch.")
        return out

    @classmethod
    def from_dict(cls, data: Any) -> BoRAConfig:
        """Inverse of [`to_dict`][bora_ref.nn.config.BoRAConfig.to_dict]; unknown keys and wrong types are refused.

        Raises:
            ValueError: ``data`` is not a mapping, has unknown keys, or any value is invalid.
        """
        if not isinstance(data, dict):
            raise BoRAValueError(f"a BoRA config must be a JSON object, got {type(data).__name__}")
        names = {f.name for f in fields(cls)}
        unknown = set(data) - names
        if unknown:
            raise BoRAValueError(f"unknown BoRA config keys {sorted(unknown)}; allowed: {sorted(names)}")
        data = dict(data)
        dtype = data.get("adapter_dtype")
        if dtype is not None:
            by_name = {str(d).removeprefix("torch."): d for d in ADAPTER_DTYPES}
            if not isinstance(dtype, str) or dtype not in by_name:
                raise BoRAValueError(f"adapter_dtype must be one of {sorted(by_name)} or null, got {dtype!r}")
            data["adapter_dtype"] = by_name[dtype]
        if "sigma_param" in data and not isinstance(data["sigma_param"], str):
            raise BoRAValueError(f"sigma_param must be a string, got {data['sigma_param']!r}")
        for key in ("r", "b"):
            if key not in data:
                raise BoRAValueError(f"a BoRA config needs {key!r}")
        return cls(**data)


LAYER_KWARGS: frozenset[str] = frozenset(f.name for f in fields(BoRAConfig)) - {"r", "b"}
"""The keyword settings of a layer besides ``r`` and ``b`` (what ``from_linear`` and ``apply_bora`` pass through)."""
