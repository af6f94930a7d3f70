"""The NumPy reference against the formula, its reductions (DESIGN.md facts 1-4) and its errors."""

import numpy as np
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from bora_ref import block_sizes, numerical_rank, rank_bound
from bora_ref import numpy_ref as ref
from bora_ref.testing import strategies as bst

from ._helpers import abs_bound, random_factors



def test_delta_weight_matches_explicit_block_matrices(rng):
    # Build ΔW a second way: P @ S @ Q with P = blockdiag(B_i), Q = blockdiag(A_j) (DESIGN.md §1).
    m, n, r, b = 11, 9, 3, 4  # uneven on both sides: rows (3, 3, 3, 2), columns (3, 2, 2, 2)
    B, A, sigma = random_factors(rng, m, n, r, b)
    rows, cols = np.cumsum((0,) + block_sizes(m, b)), np.cumsum((0,) + block_sizes(n, b))
    P = np.zeros((m, b * r))
    Q = np.zeros((b * r, n))
    S = np.zeros((b * r, b * r))
    for i in range(b):
        P[rows[i]:rows[i + 1], i * r:(i + 1) * r] = B[rows[i]:rows[i + 1]]
        Q[i * r:(i + 1) * r, cols[i]:cols[i + 1]] = A[:, cols[i]:cols[i + 1]]
        for j in range(b):
            S[i * r:(i + 1) * r, j * r:(j + 1) * r] = np.diag(sigma[i, j])
    np.testing.assert_allclose(ref.delta_weight(B, A, sigma), P @ S @ Q, rtol=0, atol=1e-13)


@given(bst.bora_inputs())
def test_bora_matmul_equals_x_times_delta_weight_transposed(inputs):
    x, B, A, sigma = inputs
    expected = x @ ref.delta_weight(B, A, sigma).T
    tol = 1e-12 * (1.0 + abs_bound(x, B, A, sigma))
    assert np.all(np.abs(ref.bora_matmul(x, B, A, sigma) - expected) <= tol)


@given(bst.shapes(), st.integers(0, 2**31))
def test_sigma_ones_is_lora(shape, seed):
    m, n, r, b = shape
    B, A, _ = random_factors(np.random.default_rng(seed), m, n, r, b)
    delta = ref.delta_weight(B, A, np.ones((b, b, r)))
    np.testing.assert_allclose(delta, B @ A, rtol=0, atol=1e-13 * (1 + np.abs(B) @ np.abs(A)).max())


@given(bst.shapes(), st.integers(0, 2**31))
def test_zero_off_diagonal_sigma_is_block_diagonal(shape, seed):
    m, n, r, b = shape
    B, A, sigma = random_factors(np.random.default_rng(seed), m, n, r, b)
    sigma = sigma * np.eye(b)[:, :, None]  # keep only sigma[i, i]
    delta = ref.delta_weight(B, A, sigma)
    rows, cols = np.cumsum((0,) + block_sizes(m, b)), np.cumsum((0,) + block_sizes(n, b))
    for i in range(b):
        for j in range(b):
            block = delta[rows[i]:rows[i + 1], cols[j]:cols[j + 1]]
            if i != j:
                assert np.all(block == 0.0)  # exactly zero, not merely small
            else:
                mini_lora = B[rows[i]:rows[i + 1]] @ np.diag(sigma[i, i]) @ A[:, cols[i]:cols[i + 1]]
                np.testing.assert_allclose(block, mini_lora, rtol=1e-12, atol=1e-13)


@given(bst.shapes(max_dim=30), st.integers(0, 2**31))
def test_separable_sigma_collapses_to_rank_r(shape, seed):
    m, n, r, b = shape
    g = np.random.default_rng(seed)
    B, A, _ = random_factors(g, m, n, r, b)
    u, v = g.uniform(0.5, 2.0, (b, r)), g.uniform(0.5, 2.0, (b, r))
    sigma = u[:, None, :] * v[None, :, :]  # sigma[i, j] = u_i * v_j
    rank = numerical_rank(ref.delta_weight(B, A, sigma))
    assert rank <= r
    assert rank == min(r, m, n)  # generic B, A: exactly LoRA's rank


@given(bst.shapes(max_dim=30, max_r=6), st.integers(0, 2**31))
def test_random_factors_attain_rank_bound(shape, seed):
    m, n, r, b = shape
    B, A, sigma = random_factors(np.random.default_rng(seed), m, n, r, b)
    assert numerical_rank(ref.delta_weight(B, A, sigma)) == rank_bound(m, n, r, b)


def test_result_dtype_follows_inputs(rng):
    B, A, sigma = (a.astype(np.float32) for a in random_factors(rng, 8, 6, 2, 2))
    assert ref.delta_weight(B, A, sigma).dtype == np.float32
    assert ref.bora_matmul(np.ones((3, 6)), B, A, sigma).dtype == np.float64  # x is float64


def _valid(rng):
    B, A, sigma = random_factors(rng, 8, 6, 2, 2)
    return rng.standard_normal((3, 6)), B, A, sigma


@pytest.mark.parametrize("fn", ["delta_weight", "bora_matmul"])
@pytest.mark.parametrize(
    ("change", "match"),
    [
        (lambda x, B, A, s: (x, B, A, s[:, :, :1]), r"sigma has shape \(2, 2, 1\) but r=2 from A requires \(2, 2, 2\)"),
        (lambda x, B, A, s: (x, B, A, s[0]), r"sigma must have shape \(b, b, r\), got shape \(2, 2\)"),
        (lambda x, B, A, s: (x, B, A, s[:1]), r"sigma must have shape \(b, b, r\), got shape \(1, 2, 2\)"),
        (lambda x, B, A, s: (x, B, A[:1], s), r"A has shape \(1, 6\) but B has shape \(8, 2\): the rank r must agree"),
        (lambda x, B, A, s: (x, B[None], A, s), r"B must be 2-D with shape \(m, r\), got shape \(1, 8, 2\)"),
        (lambda x, B, A, s: (x, B, A, np.ones((7, 7, 2))), r"b must satisfy 1 <= b <= min\(m, n\) = 6 .* got b=7"),
        (lambda x, B, A, s: (x, B, A, np.ones((0, 0, 2))), r"got b=0"),
        (lambda x, B, A, s: (x, torch.from_numpy(B), A, s), r"B must be a numpy.ndarray .* got torch"),
        (lambda x, B, A, s: (x, B.tolist(), A, s), r"B must be a numpy.ndarray .* got list"),
        (lambda x, B, A, s: (x, B.astype(np.int64), A, s), r"B must have a real floating dtype, got int64"),
        (lambda x, B, A, s: (x, B, np.where(A > 0, np.nan, A), s), r"A contains NaN or infinity"),
        (lambda x, B, A, s: (x, B, A, np.full_like(s, np.inf)), r"sigma contains NaN or infinity"),
    ],
)
def test_numpy_ref_rejects_bad_factors(fn, change, match, rng):
    x, B, A, sigma = change(*_valid(rng))
    args = (B, A, sigma) if fn == "delta_weight" else (x, B, A, sigma)
    with pytest.raises(ValueError, match=match):
        getattr(ref, fn)(*args)


@pytest.mark.parametrize(
    ("x", "match"),
    [
        (np.ones((3, 5)), r"x must have shape \(\.\.\., n\) with n=6 .* got shape \(3, 5\)"),
        (np.float64(1.0), r"x must be a numpy.ndarray"),
        (np.ones(()), r"x must have shape \(\.\.\., n\) with n=6 .* got shape \(\)"),
        (torch.ones(3, 6, dtype=torch.float64), r"x must be a numpy.ndarray .* got torch"),
        (np.ones((3, 6), dtype=np.complex128), r"x must have a real floating dtype, got complex128"),
    ],
)
def test_bora_matmul_rejects_bad_x(x, match, rng):
    _, B, A, sigma = _valid(rng)
    with pytest.raises(ValueError, match=match):
        ref.bora_matmul(x, B, A, sigma)


def test_inputs_are_not_modified(rng):
    x, B, A, sigma = _valid(rng)
    copies = [a.copy() for a in (x, B, A, sigma)]
    ref.bora_matmul(x, B, A, sigma)
    ref.delta_weight(B, A, sigma)
    for before, after in zip(copies, (x, B, A, sigma)):
        np.testing.assert_array_equal(before, after)
