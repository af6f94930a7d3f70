"""How BoRA splits a dimension into blocks (the ``numpy.array_split`` rule).

A dimension ``d`` split into ``b`` blocks has ``d % b`` blocks of size ``d // b + 1`` first,
then blocks of size ``d // b``. Every module that needs block boundaries asks this one.
"""

from __future__ import annotations

import functools
import itertools
from collections.abc import Mapping
from typing import Any, NamedTuple

from ._validation import BoRAValueError, check_int

__all__ = ["block_sizes", "block_slices"]

SPLIT_RULE = "array_split"
"""The name of the block split rule, recorded in saved adapters and golden manifests.

``"array_split"``: a dimension ``d`` cut into ``b`` blocks gives the first ``d % b`` blocks
``d // b + 1`` rows (or columns) and the remaining ``b - d % b`` blocks ``d // b``, in that order,
as ``numpy.array_split`` does (``d = 10, b = 4`` gives ``3, 3, 2, 2``). Files that record another
rule, or none where their format requires one, are refused on load: reading them with this rule
would silently put the rows of ``B`` and columns of ``A`` into different blocks.
"""


def check_split_rule(where: str, record: Mapping[str, Any], version: int) -> None:
    """Refuse a saved file whose blocks were not cut by [`SPLIT_RULE`][bora_ref.partition.SPLIT_RULE].

    ``record`` is the file's JSON object (adapter config, golden manifest); its ``"split_rule"``
    must be ``"array_split"``. Version 1 files predate the field and were all cut by that rule, so
    for ``version == 1`` a missing field means ``"array_split"``.

    Raises:
        ValueError: another rule, a non-string, or (version 2 and later) no rule; the message
            names ``where``, the value, the format version and the rule.
    """
    rule = record.get("split_rule", SPLIT_RULE if version == 1 else "<missing>")
    if type(rule) is not str or rule != SPLIT_RULE:
        raise BoRAValueError(
            f"{where} has split_rule={rule!r:.80} (format_version={version}); this bora_ref cuts blocks by the "
            f"{SPLIT_RULE!r} rule only (the first m % b rows and n % b columns go one each to the first blocks), "
            "and reading the file with another rule would put its rows and columns into the wrong blocks"
        )


MAX_LISTED_BLOCKS = 2**24
"""The most blocks [`block_sizes`][bora_ref.block_sizes] lists (a tuple of ``b`` ints costs about ``36 b`` bytes)."""


def block_sizes(dim: int, b: int) -> tuple[int, ...]:
    """Sizes of the ``b`` blocks of a dimension of length ``dim``, as ``numpy.array_split`` cuts them.

    $$d_k = \\lfloor d / b \\rfloor + [k < d \\bmod b], \\qquad k = 0, \\dots, b - 1$$

    Args:
        dim: length of the dimension (``m`` for rows of ``B``, ``n`` for columns of ``A``), ``>= 1``.
        b: number of blocks, ``1 <= b <= dim`` (every block non-empty).

    Returns:
        A tuple of ``b`` positive ints summing to ``dim``, larger blocks first.

    Raises:
        ValueError: if ``dim`` or ``b`` is not an integer, ``dim < 1``, ``b < 1``, ``b > dim`` or
            ``b >`` ``MAX_LISTED_BLOCKS`` (2**24: the tuple alone would take gigabytes).

    Examples:
        >>> block_sizes(10, 4)
        (3, 3, 2, 2)
    """
    dim = check_int("dim", dim, minimum=1)
    b = check_int("b", b)
    if b < 1 or b > dim:
        raise BoRAValueError(f"b must satisfy 1 <= b <= dim={dim} so that every block is non-empty, got b={b}")
    if b > MAX_LISTED_BLOCKS:  # the tuple alone would take gigabytes; closed forms (rank_bound, ...) need no list
        raise BoRAValueError(f"b={b} is too many blocks to list (at most {MAX_LISTED_BLOCKS}); rank_bound and param_count "
                             "answer any b in closed form")
    q, rem = divmod(dim, b)
    return tuple(q + 1 if k < rem else q for k in range(b))


def block_slices(dim: int, b: int) -> tuple[slice, ...]:
    """The ``b`` slices ``[start, stop)`` matching [`block_sizes`][bora_ref.block_sizes] (same arguments, same errors)."""
    slices = []
    start = 0
    for size in block_sizes(dim, b):
        slices.append(slice(start, start + size))
        start += size
    return tuple(slices)


class BlockRun(NamedTuple):
    """``count`` consecutive equal blocks of ``size`` rows/columns: blocks ``first..first+count-1``, from ``offset``."""

    first: int
    count: int
    size: int
    offset: int


@functools.lru_cache(maxsize=1024)  # the fast paths ask on every call; the answer is a small immutable tuple
def block_runs(dim: int, b: int) -> tuple[BlockRun, ...]:
    """The array_split blocks of ``dim`` as at most two runs of equal blocks (one when ``b`` divides ``dim``).

    Fast paths use it to batch all equal-sized blocks into one call.

    Examples:
        >>> block_runs(10, 4)
        (BlockRun(first=0, count=2, size=3, offset=0), BlockRun(first=2, count=2, size=2, offset=6))
    """
    runs, first, offset = [], 0, 0
    for size, group in itertools.groupby(block_sizes(dim, b)):
        count = len(list(group))
        runs.append(BlockRun(first, count, size, offset))
        first, offset = first + count, offset + count * size
    return tuple(runs)
