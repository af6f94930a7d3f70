"""Rank measures on singular values: effective, stable and energy rank, and the paper's measure.

Every function takes the singular values ``S`` of one matrix, shape ``(k,)``, non-negative (any
order; NumPy array or torch tensor), e.g. from [`bora_ref.singular_values`][bora_ref.singular_values] or
``RankInfo.singular_values``. The zero matrix has every measure equal to 0.

| measure | definition | scale-invariant |
| --- | --- | --- |
| [`effective_rank`][bora_ref.analysis.measures.effective_rank] | $\\exp H(p)$, $p_k = \\sigma_k / \\sum \\sigma$ (Roy & Vetterli 2007) | yes |
| [`stable_rank`][bora_ref.analysis.measures.stable_rank] | $\\sum \\sigma_k^2 / \\sigma_1^2 = \\|M\\|_F^2 / \\|M\\|_2^2$ | yes |
| [`energy_rank`][bora_ref.analysis.measures.energy_rank] | smallest $k$ with $\\sum_{i \\le k} \\sigma_i^2 \\ge \\tau \\sum \\sigma^2$ | yes |
| [`threshold_rank`][bora_ref.analysis.measures.threshold_rank] | $\\#\\{\\sigma_k > 0.005\\}$ (the BoRA paper's) | **no** |
| [`spectral_energy`][bora_ref.analysis.measures.spectral_energy] | $\\sum \\sigma_k^2 = \\|M\\|_F^2$ (the BoRA paper's) | **no** |
"""

from __future__ import annotations

import math
import numbers
from dataclasses import dataclass
from typing import Any

import numpy as np

from .._arrays import as_float64
from .._validation import BoRAValueError

__all__ = [
    "PAPER_THRESHOLD",
    "RankMeasures",
    "effective_rank",
    "energy_rank",
    "rank_measures",
    "spectral_energy",
    "stable_rank",
    "threshold_rank",
]

PAPER_THRESHOLD = 0.005
"""The absolute cut-off the BoRA paper used to count the singular values of trained updates."""


def _spectrum(S: Any) -> np.ndarray:
    """``S`` as a float64 vector sorted descending; rejects negative entries (not singular values)."""
    arr, _ = as_float64("S", S, ndim=1)
    if arr.min() < 0:
        raise BoRAValueError(f"S must hold singular values (all >= 0), got a minimum of {arr.min():g}")
    return np.sort(arr)[::-1]


def effective_rank(S: Any) -> float:
    """Effective rank of Roy & Vetterli (2007): the exponential of the entropy of $\\sigma/\\|\\sigma\\|_1$.

    $$\\mathrm{erank} = \\exp\\Big(-\\sum_k p_k \\log p_k\\Big), \\qquad p_k = \\frac{\\sigma_k}{\\sum_i \\sigma_i}$$

    with $0 \\log 0 = 0$. It lies in ``[1, rank]`` for a non-zero matrix and equals ``k`` for
    ``k`` equal non-zero singular values.

    Args:
        S: ``(k,)`` singular values, non-negative.

    Raises:
        ValueError: ``S`` not a non-empty 1-D float array, non-finite or negative entries.
    """
    s = _spectrum(S)
    total = s.sum()
    if total == 0:
        return 0.0
    p = s / total
    p = p[p > 0]  # 0 log 0 = 0 (also for values that underflow in the division)
    return float(np.exp(-(p * np.log(p)).sum()))


def stable_rank(S: Any) -> float:
    """Stable (numerical) rank: $\\sum_k \\sigma_k^2 / \\sigma_1^2 = \\|M\\|_F^2 / \\|M\\|_2^2$.

    Lies in ``[1, rank]`` for a non-zero matrix, equals ``k`` for ``k`` equal singular values,
    and unlike the rank it is continuous in the matrix.

    Args:
        S: ``(k,)`` singular values, non-negative.

    Raises:
        ValueError: as [`effective_rank`][bora_ref.analysis.measures.effective_rank].
    """
    s = _spectrum(S)
    return 0.0 if s[0] == 0 else float((s**2).sum() / s[0] ** 2)


def energy_rank(S: Any, tau: float = 0.9) -> int:
    """Smallest number of singular values holding a fraction ``tau`` of the energy $\\sum \\sigma^2$.

    $$\\min\\Big\\{k : \\sum_{i \\le k} \\sigma_i^2 \\ge \\tau \\sum_i \\sigma_i^2\\Big\\}$$

    (singular values sorted descending; the comparison allows the rounding of the running sum,
    ``len(S) * eps`` of the total, so exact ties count). ``tau = 0.9`` and ``0.99`` are the usual
    choices. ``tau = 1`` counts the values until the remaining energy is at most
    ``len(S) * eps`` of the total: trailing values with $s_k^2$ below that allowance are not
    counted, so it is *not* the number of non-zero values (use a numerical rank for that).

    Args:
        S: ``(k,)`` singular values, non-negative.
        tau: fraction of the energy, ``0 < tau <= 1``.

    Raises:
        ValueError: as [`effective_rank`][bora_ref.analysis.measures.effective_rank], or ``tau`` outside ``(0, 1]``.
    """
    if isinstance(tau, bool) or not isinstance(tau, numbers.Real) or not 0 < float(tau) <= 1:
        raise BoRAValueError(f"tau must be a number in (0, 1], got {tau!r}")
    s = _spectrum(S)
    cumulative = np.cumsum(s**2)  # (k,), its last entry is the total energy
    if cumulative[-1] == 0:
        return 0
    # A running sum of k positive terms is exact to k eps of the total: allow that much, so that
    # exact ties (k equal values, tau k an integer) are not lost to rounding.
    target = (float(tau) - len(s) * np.finfo(np.float64).eps) * cumulative[-1]
    return int(np.searchsorted(cumulative, target, side="left")) + 1


def threshold_rank(S: Any, threshold: float = PAPER_THRESHOLD) -> int:
    """The BoRA paper's rank measure: the number of singular values above an absolute threshold.

    $$\\#\\{k : \\sigma_k > \\text{threshold}\\}, \\qquad \\text{threshold} = 0.005 \\text{ in the paper}$$

    It depends on the scale of the update (``alpha``, the learning rate, the training length):
    scaling $\\Delta W$ by 10 can raise it, so compare it only between adapters of the same scale.
    [`bora_ref.numerical_rank`][bora_ref.numerical_rank] uses a relative tolerance instead (see ``docs/rank.md``).

    Args:
        S: ``(k,)`` singular values, non-negative.
        threshold: absolute cut-off, ``>= 0``.

    Raises:
        ValueError: as [`effective_rank`][bora_ref.analysis.measures.effective_rank], or a negative or non-finite ``threshold``.
    """
    if (
        isinstance(threshold, bool) or not isinstance(threshold, numbers.Real)
        or not math.isfinite(threshold) or threshold < 0
    ):
        raise BoRAValueError(f"threshold must be a finite number >= 0, got {threshold!r}")
    return int((_spectrum(S) > threshold).sum())


def spectral_energy(S: Any) -> float:
    """Sum of squared singular values, $\\sum_k \\sigma_k^2 = \\|M\\|_F^2$ (the paper's second measure).

    Args:
        S: ``(k,)`` singular values, non-negative.

    Raises:
        ValueError: as [`effective_rank`][bora_ref.analysis.measures.effective_rank].
    """
    return float((_spectrum(S) ** 2).sum())


@dataclass(frozen=True)
class RankMeasures:
    """All measures of one spectrum (see the module table for the definitions).

    Attributes:
        effective: [`effective_rank`][bora_ref.analysis.measures.effective_rank].
        stable: [`stable_rank`][bora_ref.analysis.measures.stable_rank].
        energy_90: [`energy_rank`][bora_ref.analysis.measures.energy_rank] at ``tau = 0.9``.
        energy_99: [`energy_rank`][bora_ref.analysis.measures.energy_rank] at ``tau = 0.99``.
        threshold: [`threshold_rank`][bora_ref.analysis.measures.threshold_rank] at the threshold used.
        energy: [`spectral_energy`][bora_ref.analysis.measures.spectral_energy].
    """

    effective: float
    stable: float
    energy_90: int
    energy_99: int
    threshold: int
    energy: float


def rank_measures(S: Any, *, threshold: float = PAPER_THRESHOLD) -> RankMeasures:
    """Every rank measure of one spectrum at once.

    Args:
        S: ``(k,)`` singular values, non-negative.
        threshold: the absolute cut-off of [`threshold_rank`][bora_ref.analysis.measures.threshold_rank] (default the paper's 0.005).

    Raises:
        ValueError: as the individual measures.

    Examples:
        >>> m = rank_measures(np.array([4.0, 2.0, 2.0, 0.0]))
        >>> round(m.effective, 4), m.stable, m.energy_90, m.threshold, m.energy
        (2.8284, 1.5, 3, 3, 24.0)
    """
    return RankMeasures(
        effective=effective_rank(S),
        stable=stable_rank(S),
        energy_90=energy_rank(S, 0.9),
        energy_99=energy_rank(S, 0.99),
        threshold=threshold_rank(S, threshold),
        energy=spectral_energy(S),
    )
