import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from bora_ref import block_sizes
from bora_ref.partition import block_slices


@given(st.integers(1, 500).flatmap(lambda d: st.tuples(st.just(d), st.integers(1, d))))
def test_block_sizes_match_numpy_array_split(dim_b):
    dim, b = dim_b
    expected = tuple(len(part) for part in np.array_split(np.arange(dim), b))
    assert block_sizes(dim, b) == expected
    slices = block_slices(dim, b)
    assert [np.arange(dim)[s].tolist() for s in slices] == [p.tolist() for p in np.array_split(np.arange(dim), b)]


@pytest.mark.parametrize(
    ("dim", "b", "sizes"),
    [(10, 4, (3, 3, 2, 2)), (8, 8, (1,) * 8), (7, 1, (7,)), (11008, 16, (688,) * 16), (5, 3, (2, 2, 1))],
)
def test_block_sizes_named_cases(dim, b, sizes):
    assert block_sizes(dim, b) == sizes


@pytest.mark.parametrize(
    ("dim", "b", "match"),
    [
        (10, 0, r"b must satisfy 1 <= b <= dim=10 .* got b=0"),
        (10, 11, r"b must satisfy 1 <= b <= dim=10 .* got b=11"),
        (10, -2, r"got b=-2"),
        (0, 1, r"dim must be >= 1, got 0"),
        (10, 2.0, r"b must be an integer, got 2.0 of type float"),
        (10.5, 2, r"dim must be an integer, got 10.5"),
        (10, True, r"b must be an integer, got True of type bool"),
    ],
)
def test_block_sizes_rejects_bad_input(dim, b, match):
    with pytest.raises(ValueError, match=match):
        block_sizes(dim, b)


def test_block_sizes_accepts_numpy_integers():
    assert block_sizes(np.int64(9), np.int32(2)) == (5, 4)
