"""Σ parameterisations: how a layer's raw trainable ``sigma (b, b, r)`` becomes the diagonals Σ.

Every other part of the library (the references, rank analysis, the oracle) works on the
*effective* Σ; the parameterisation is a training detail of [`BoRALinear`][bora_ref.BoRALinear].
Each parameterisation is one [`SigmaParam`][bora_ref.nn.sigma.SigmaParam] object in [`SIGMA_REGISTRY`][bora_ref.nn.sigma.SIGMA_REGISTRY], holding
everything the rest of the library needs to know about it:

| field | meaning |
| --- | --- |
| ``init_`` | fills the raw tensor in place at (re-)initialisation |
| ``effective`` | raw ``(b, b, r)`` → effective Σ ``(b, b, r)`` (differentiable) |
| ``identity_value`` | the raw value (every entry) whose effective Σ is exactly 1, i.e. LoRA |
| ``may_freeze`` | whether its initial σ already gives Σ = 1, so that σ may be frozen at init and the layer is exactly LoRA |

Adding a parameterisation means adding one ``SigmaParam`` to ``SIGMA_REGISTRY`` in this file (and
its tests): the layer, [`BoRAConfig`][bora_ref.nn.config.BoRAConfig] validation, injection, adapter files
(which store the name), PEFT import (which sets σ to ``identity_value``) and the experiments (LoRA → BoRA
upgrade, which σ may be frozen) all look it up here by name. A parameterisation added at run time
(``SIGMA_REGISTRY[p.name] = p``) works the same way.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch

from .._validation import BoRAValueError

__all__ = ["DEFAULT_SIGMA_PARAM", "SIGMA_PARAMS", "SIGMA_REGISTRY", "SigmaParam", "get_sigma_param"]


@dataclass(frozen=True)
class SigmaParam:
    """One Σ parameterisation (see the module docstring for the fields)."""

    name: str
    description: str
    init_: Callable[[torch.Tensor, int], None]
    effective: Callable[[torch.Tensor], torch.Tensor]
    identity_value: float
    may_freeze: bool


def _init_exp_norm_(sigma: torch.Tensor, fan_in: int) -> None:
    # Uniform with lora_A's bound: kaiming_uniform_(a=sqrt(5)) on a fan-in of n gives U(±1/sqrt(n)).
    bound = 1.0 / math.sqrt(fan_in)
    with torch.no_grad():
        sigma.uniform_(-bound, bound)


def _exp_norm(sigma: torch.Tensor) -> torch.Tensor:
    # Σ = exp(σ / mean|σ|) over the whole tensor. The denominator is guarded (replaced by 1 when
    # mean|σ| = 0) rather than the quotient, so σ = 0 gives Σ = 1 exactly with finite gradients.
    mav = sigma.abs().mean()
    denom = torch.where(mav > 0, mav, torch.ones_like(mav))
    return torch.exp(sigma / denom)


def _init_ones_(sigma: torch.Tensor, fan_in: int) -> None:
    with torch.no_grad():
        sigma.fill_(1.0)


def _raw(sigma: torch.Tensor) -> torch.Tensor:
    return sigma


SIGMA_REGISTRY: dict[str, SigmaParam] = {
    p.name: p
    for p in (
        SigmaParam(
            name="exp_norm",
            description="the paper's: Σ = exp(σ / mean|σ|), σ initialised like lora_A",
            init_=_init_exp_norm_,
            effective=_exp_norm,
            identity_value=0.0,
            may_freeze=False,
        ),
        SigmaParam(
            name="raw",
            description="Σ = σ, initialised to ones (step 0 is exactly LoRA)",
            init_=_init_ones_,
            effective=_raw,
            identity_value=1.0,
            may_freeze=True,
        ),
    )
}
"""Every Σ parameterisation by name; the first is the default."""

SIGMA_PARAMS: tuple[str, ...] = tuple(SIGMA_REGISTRY)
"""The names of the parameterisations defined in this module, default first (a snapshot: every lookup
goes through [`SIGMA_REGISTRY`][bora_ref.nn.sigma.SIGMA_REGISTRY] itself)."""

DEFAULT_SIGMA_PARAM: str = SIGMA_PARAMS[0]
"""The paper's parameterisation, ``"exp_norm"``."""


def get_sigma_param(name: object, *, argument: str = "sigma_param") -> SigmaParam:
    """The registered [`SigmaParam`][bora_ref.nn.sigma.SigmaParam] called ``name``.

    Examples:
        >>> get_sigma_param("raw").identity_value
        1.0

    Raises:
        ValueError: ``name`` is not a registered parameterisation.
    """
    if not isinstance(name, str) or name not in SIGMA_REGISTRY:
        raise BoRAValueError(f"{argument} must be one of {tuple(SIGMA_REGISTRY)}, got {name!r}")
    return SIGMA_REGISTRY[name]
