"""Parameter accounting for LoRA and BoRA (DESIGN.md fact 5).

Per adapted ``(m, n)`` layer: LoRA trains ``r (m + n)`` parameters (``A (r, n)`` and
``B (m, r)``); BoRA adds the ``b² r`` entries of ``sigma (b, b, r)``.
"""

from __future__ import annotations

from dataclasses import dataclass

from ._validation import check_b, check_int

__all__ = ["ParamCount", "param_count"]


@dataclass(frozen=True)
class ParamCount:
    """Trainable parameters of one BoRA layer.

    Attributes:
        lora: ``r (m + n)``, the ``A`` and ``B`` factors (what LoRA of rank ``r`` trains).
        sigma: ``b² r``, the block diagonals.
        total: ``lora + sigma``.
    """

    lora: int
    sigma: int
    total: int

    @property
    def overhead(self) -> float:
        """Extra parameters relative to LoRA of the same ``r``: ``sigma / lora`` (a fraction)."""
        return self.sigma / self.lora


def param_count(m: int, n: int, r: int, b: int) -> ParamCount:
    """Trainable parameters of a BoRA adapter on an ``(m, n)`` weight.

    $$\\underbrace{r(m + n)}_{\\text{lora}} + \\underbrace{b^2 r}_{\\text{sigma}}$$

    Args:
        m: out_features (rows of ``B``). n: in_features (columns of ``A``).
        r: rank per block product, ``>= 1``. b: blocks per side, ``1 <= b <= min(m, n)``.

    Returns:
        A :class:`ParamCount` with int fields ``lora``, ``sigma``, ``total``.

    Raises:
        ValueError: non-integer or out-of-range arguments.

    Example:
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
