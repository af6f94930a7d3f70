"""rank_bound, numerical_rank and singular_values against dense linear algebra."""

import numpy as np
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from bora_ref import block_sizes, numerical_rank, numpy_ref, rank_bound
from bora_ref.rank import singular_values
from bora_ref.testing import strategies as bst

from ._helpers import random_factors


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        ((4096, 4096, 8, 16), 128),  # b r
        ((384, 384, 16, 16), 256),
        ((10, 10, 4, 4), 10),  # blocks (3, 3, 2, 2): min(4, m_i) summed = 10 = min(m, n)
        ((12, 40, 5, 4), 12),  # row blocks of 3 < r cap the rank at m
        ((9, 7, 5, 7), 7),
        ((100, 80, 8, 1), 8),  # b = 1 is LoRA
    ],
)
def test_rank_bound_named_cases(args, expected):
    assert rank_bound(*args) == expected


@given(bst.shapes(max_dim=60, max_r=12))
def test_rank_bound_formula_and_even_split_closed_form(shape):
    m, n, r, b = shape
    bound = rank_bound(m, n, r, b)
    assert bound == min(sum(min(r, d) for d in block_sizes(m, b)), sum(min(r, d) for d in block_sizes(n, b)))
    assert bound <= min(m, n, b * r)
    if m % b == 0 and n % b == 0 and r <= m // b and r <= n // b:
        assert bound == min(b * r, m, n)


@given(bst.shapes(max_dim=30), st.integers(0, 2**31))
def test_singular_values_equal_dense_svd(shape, seed):
    m, n, r, b = shape
    B, A, sigma = random_factors(np.random.default_rng(seed), m, n, r, b)
    dense = np.linalg.svd(numpy_ref.delta_weight(B, A, sigma), compute_uv=False)
    S = singular_values(B, A, sigma)
    assert S.shape == (min(m, n),) and S.dtype == np.float64
    assert np.all(np.diff(S) <= 0)
    # Weyl: both are backward stable, so they agree to a small multiple of eps * sigma_1.
    np.testing.assert_allclose(S, dense, rtol=0, atol=1e-12 * max(1.0, dense[0]))


def test_numerical_rank_accepts_torch_and_numpy_and_rtol_atol():
    M = np.diag([3.0, 1.0, 1e-3, 1e-9])
    assert numerical_rank(M) == 4
    assert numerical_rank(torch.from_numpy(M)) == 4
    assert numerical_rank(M, rtol=1e-6) == 3
    assert numerical_rank(M, atol=0.5) == 2


@pytest.mark.parametrize(
    ("M", "match"),
    [
        (np.array([[1.0, np.nan]]), "M contains NaN or infinity"),
        (np.zeros((0, 3)), r"M must be a non-empty 2-D matrix, got shape \(0, 3\)"),
        (np.ones(3), r"M must be a non-empty 2-D matrix, got shape \(3,\)"),
        ([[1.0]], "M must be a numpy.ndarray or torch.Tensor, got list"),
        (np.ones((2, 2), dtype=np.int32), "M must have a real floating dtype, got int32"),
    ],
)
def test_numerical_rank_rejects_bad_input(M, match):
    with pytest.raises(ValueError, match=match):
        numerical_rank(M)
