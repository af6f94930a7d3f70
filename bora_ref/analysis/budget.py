"""The memory budget: calls whose working memory would exceed it are refused before allocating.

Some quantities are formulas (the rank bound, the parameter counts) and are answered in closed
form whatever the size. Others need arrays: the structured SVD of a BoRA update, the Gaussian
factors ``bora-ref rank`` and ``bora-ref report`` draw, a layer's adapter tensors. For those the
working memory is estimated from the shapes first and the call is refused with a
[`BoRAValueError`][bora_ref.BoRAValueError] (exit status 2 on the command line) when the estimate exceeds
`MEMORY_BUDGET_BYTES`, so a typo such as ``--m 1000000000`` is a one-line error instead
of a 60 GiB allocation.

Estimates (float64 = 8 bytes; $k_i = \\min(r, m_i)$, $l_j = \\min(r, n_j)$, $K = \\sum_i k_i$,
$L = \\sum_j l_j$):

- factors ``B (m, r)``, ``A (r, n)``, ``sigma (b, b, r)`` in float64: $8 (m r + r n + b^2 r)$;
- structured SVD on top of its float64 copies of the factors: LAPACK's working copies of the
  blocks $8 (m + n) r$, the per-block triangular factors $8 (K + L) r$, the array that forms
  the core $8 b r L$, the core with its SVD workspace $3 \\cdot 8 K L$, and the ``(r, r)``
  Gram matrices of the default rank tolerance (`bora_ref.analysis.tolerance.abs_norm_factors`)
  $3 \\cdot 8 b r^2$; with the singular vectors also the blocks' orthonormal factors
  $8 (m + n) r$ and the vectors themselves $8 (m + n) \\min(K, L)$;
- a layer's adapter: $(r n + m r + b^2 r)$ times the adapter dtype's item size.

This module never imports torch.
"""

from __future__ import annotations

from .._validation import BoRAValueError

__all__ = [
    "MEMORY_BUDGET_BYTES",
    "adapter_bytes",
    "blocked_min",
    "check_budget",
    "factor_bytes",
    "structured_svd_bytes",
]

MEMORY_BUDGET_BYTES = 2 * 1024**3
"""2 GiB: the most working memory one call may plan to allocate (module docstring)."""


def blocked_min(dim: int, b: int, r: int) -> int:
    """$\\sum_k \\min(r, d_k)$ over the ``b`` blocks of ``dim`` (``numpy.array_split`` sizes), in O(1).

    ``dim mod b`` blocks have ``⌊dim/b⌋ + 1`` entries and the others ``⌊dim/b⌋``
    ([`bora_ref.partition.block_sizes`][bora_ref.block_sizes]). Arguments are trusted (checked by the caller).
    """
    q, rem = divmod(dim, b)
    return rem * min(r, q + 1) + (b - rem) * min(r, q)


def factor_bytes(m: int, n: int, r: int, b: int) -> int:
    """Bytes of float64 factors ``B (m, r)``, ``A (r, n)`` and ``sigma (b, b, r)``."""
    return 8 * (m * r + r * n + b * b * r)


def structured_svd_bytes(m: int, n: int, r: int, b: int, *, vectors: bool = False) -> int:
    """Working memory of the structured SVD of an ``(m, n)`` update (float64 factor copies included);
    ``vectors``: with the singular vectors ([`structured_svd`][bora_ref.structured_svd])."""
    K, L = blocked_min(m, b, r), blocked_min(n, b, r)
    nbytes = factor_bytes(m, n, r, b) + 8 * (m + n + K + L) * r + 8 * b * r * L + 3 * 8 * K * L + 3 * 8 * b * r * r
    return nbytes + 8 * (m + n) * (r + min(K, L)) if vectors else nbytes


def adapter_bytes(m: int, n: int, r: int, b: int, itemsize: int) -> int:
    """Bytes of one layer's ``lora_A (r, n)``, ``lora_B (m, r)`` and ``sigma (b, b, r)``."""
    return (r * n + m * r + b * b * r) * itemsize


def _gib(nbytes: int) -> str:
    return f"{nbytes / 1024**3:.3g} GiB"


def check_budget(what: str, nbytes: int, shape: str, budget: int | None = None) -> None:
    """Refuse ``what`` when its estimated working memory ``nbytes`` exceeds the budget.

    Args:
        what: the refused call, in words (starts the message).
        nbytes: the estimate, from one of this module's functions.
        shape: the arguments that set the size, e.g. ``"m=10, n=10, r=100000, b=2"``.
        budget: bytes; default `MEMORY_BUDGET_BYTES`.

    Raises:
        ValueError: ``nbytes > budget``; the message names the arguments, the estimate and the budget.
    """
    budget = MEMORY_BUDGET_BYTES if budget is None else budget
    if nbytes > budget:
        raise BoRAValueError(
            f"{what} with {shape} needs about {_gib(nbytes)} of memory, above the memory budget of {_gib(budget)} "
            "(bora_ref.analysis.budget.MEMORY_BUDGET_BYTES); use smaller m, n or r"
        )
