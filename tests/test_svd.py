"""The structured SVD against the dense SVD of the reference ΔW."""

import tracemalloc

import numpy as np
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from bora_ref import numpy_ref, singular_values, structured_svd
from bora_ref.partition import block_sizes, block_slices
from bora_ref.testing import strategies as bst

from ._helpers import random_factors

EPS64 = np.finfo(np.float64).eps


def _dense(B, A, sigma):
    delta = numpy_ref.delta_weight(B, A, sigma)
    return delta, np.linalg.svd(delta, compute_uv=False)


def _weyl_atol(m, n, sigma_1):
    # Both routes are backward stable: each computed σ_k is within O(max(m, n) eps σ_1) of the exact one.
    return 10 * max(m, n) * EPS64 * sigma_1


@given(bst.shapes(max_dim=30, max_r=12), st.integers(0, 2**31))
def test_singular_values_equal_dense_svd(shape, seed):
    m, n, r, b = shape
    B, A, sigma = random_factors(np.random.default_rng(seed), m, n, r, b)
    _, dense = _dense(B, A, sigma)
    S = singular_values(B, A, sigma)
    assert S.shape == (min(m, n),) and S.dtype == np.float64
    assert np.all(np.diff(S) <= 0) and np.all(S >= 0)
    np.testing.assert_allclose(S, dense, rtol=0, atol=_weyl_atol(m, n, dense[0]))


@pytest.mark.parametrize(
    "shape",
    [(10, 7, 5, 4), (3, 3, 8, 3), (12, 40, 5, 4), (100, 80, 8, 1), (9, 7, 5, 7), (33, 64, 6, 5)],
    ids=["m_i<r", "1-row-blocks", "row-blocks<r", "b=1", "b=min(m,n)", "uneven"],
)
def test_singular_values_named_shapes(shape, rng):
    m, n, r, b = shape
    B, A, sigma = random_factors(rng, m, n, r, b)
    _, dense = _dense(B, A, sigma)
    np.testing.assert_allclose(singular_values(B, A, sigma), dense, rtol=0, atol=_weyl_atol(m, n, dense[0]))


@pytest.mark.parametrize("case", ["zero B block", "rank-deficient A block", "zero sigma blocks", "all zero"])
def test_singular_values_degenerate_blocks(case, rng):
    m, n, r, b = 40, 36, 6, 4
    B, A, sigma = random_factors(rng, m, n, r, b)
    rows, cols = block_slices(m, b), block_slices(n, b)
    if case == "zero B block":
        B[rows[1]] = 0.0
    elif case == "rank-deficient A block":
        A[:, cols[2]] = rng.standard_normal((r, 2)) @ rng.standard_normal((2, cols[2].stop - cols[2].start))
    elif case == "zero sigma blocks":
        sigma[0, :] = 0.0
        sigma[:, 3] = 0.0
    else:
        B[:] = 0.0
    _, dense = _dense(B, A, sigma)
    S = singular_values(B, A, sigma)
    np.testing.assert_allclose(S, dense, rtol=0, atol=_weyl_atol(m, n, max(dense[0], 1.0)))
    if case == "all zero":
        np.testing.assert_array_equal(S, np.zeros(min(m, n)))


@given(bst.shapes(max_dim=30, max_r=12), st.integers(0, 2**31))
def test_structured_svd_is_a_thin_svd_of_delta_weight(shape, seed):
    m, n, r, b = shape
    B, A, sigma = random_factors(np.random.default_rng(seed), m, n, r, b)
    delta, dense = _dense(B, A, sigma)
    U, S, Vh = structured_svd(B, A, sigma)
    k = len(S)
    assert U.shape == (m, k) and Vh.shape == (k, n) and k <= min(m, n, b * r)
    tol = _weyl_atol(m, n, dense[0])
    np.testing.assert_allclose(U @ np.diag(S) @ Vh, delta, rtol=0, atol=tol)
    np.testing.assert_allclose(U.T @ U, np.eye(k), rtol=0, atol=100 * max(m, n) * EPS64)
    np.testing.assert_allclose(Vh @ Vh.T, np.eye(k), rtol=0, atol=100 * max(m, n) * EPS64)
    np.testing.assert_allclose(S, dense[:k], rtol=0, atol=tol)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32, torch.float64])
def test_torch_input_of_any_dtype_is_computed_exactly_in_float64(dtype, rng):
    B, A, sigma = (torch.from_numpy(a).to(dtype) for a in random_factors(rng, 24, 20, 3, 4))
    S = singular_values(B, A, sigma)
    as_f64 = [t.to(torch.float64).numpy() for t in (B, A, sigma)]
    np.testing.assert_array_equal(S, singular_values(*as_f64))  # the same float64 computation, bit for bit
    # NumPy and torch inputs may be mixed (e.g. a numpy sigma with a layer's tensors).
    np.testing.assert_array_equal(singular_values(B, as_f64[1], sigma), S)


def test_inputs_are_not_modified(rng):
    B, A, sigma = random_factors(rng, 16, 12, 3, 2)
    copies = [B.copy(), A.copy(), sigma.copy()]
    structured_svd(B, A, sigma)
    singular_values(B, A, sigma)
    for before, after in zip(copies, (B, A, sigma)):
        np.testing.assert_array_equal(before, after)


@pytest.mark.parametrize(
    ("args", "match"),
    [
        (lambda B, A, s: (B.tolist(), A, s), "B must be a numpy.ndarray or torch.Tensor, got list"),
        (lambda B, A, s: (B, A.astype(np.int64), s), "A must have a real floating dtype, got int64"),
        (lambda B, A, s: (B, A, np.where(s > 0, np.inf, s)), "sigma contains NaN or infinity"),
        (lambda B, A, s: (B[:0], A, s), r"B and A must be non-empty, got m=0"),
        (lambda B, A, s: (B, A, s[:, :, :2]), r"sigma has shape \(2, 2, 2\) but r=3 from A requires \(2, 2, 3\)"),
        (lambda B, A, s: (B, A[:2], s), r"the rank r must agree"),
    ],
)
@pytest.mark.parametrize("fn", [singular_values, structured_svd])
def test_bad_input_names_the_argument(fn, args, match, rng):
    B, A, sigma = random_factors(rng, 16, 12, 3, 2)
    with pytest.raises(ValueError, match=match):
        fn(*args(B, A, sigma))


@pytest.mark.parametrize(
    "shape",
    [(4, 4, 2000, 4), (4, 4, 2000, 2), (37, 29, 12, 5), (50, 41, 9, 5), (70, 23, 6, 4), (9, 300, 40, 3)],
    ids=["r>>1-row-blocks", "r>>2-row-blocks", "uneven-r>blocks", "uneven-mixed", "uneven-r=col-block", "wide-r>rows"],
)
def test_r_larger_than_blocks_and_uneven_blocks(shape, rng):
    # Blocks with at most r rows skip the QR (their own R); runs of equal blocks share one QR call.
    m, n, r, b = shape
    B, A, sigma = random_factors(rng, m, n, r, b)
    delta, dense = _dense(B, A, sigma)
    tol = _weyl_atol(m, n, dense[0])
    np.testing.assert_allclose(singular_values(B, A, sigma), dense, rtol=0, atol=tol)
    U, S, Vh = structured_svd(B, A, sigma)
    k = len(S)
    assert k == min(m, n, b * r) == min(sum(min(s, r) for s in block_sizes(m, b)), sum(min(s, r) for s in block_sizes(n, b)))
    np.testing.assert_allclose(U @ np.diag(S) @ Vh, delta, rtol=0, atol=tol)
    np.testing.assert_allclose(U.T @ U, np.eye(k), rtol=0, atol=100 * max(m, n) * EPS64)
    np.testing.assert_allclose(Vh @ Vh.T, np.eye(k), rtol=0, atol=100 * max(m, n) * EPS64)
    np.testing.assert_allclose(S, dense[:k], rtol=0, atol=tol)


@pytest.mark.parametrize("fn", [singular_values, structured_svd])
def test_never_allocates_an_m_by_n_array(fn, rng):
    # NumPy reports its allocations to tracemalloc: the peak stays far below one (m, n) float64 array.
    m, n, r, b = 1024, 768, 4, 4
    B, A, sigma = random_factors(rng, m, n, r, b)
    tracemalloc.start()
    try:
        fn(B, A, sigma)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < m * n * 8 // 8


@pytest.mark.parametrize("b", [1, 2, 3])
@pytest.mark.parametrize("delta", [1e-3, 1e-7, 1e-11])
def test_structured_svd_is_backward_stable_in_the_factors_not_exact(b, delta):
    """Cancelling channels: ΔW = -δ y zᵀ exactly. The error of each computed σ_k is bounded by
    max(m, n)·eps·‖|P||S||Q|‖_F (the documented guarantee), which here is far above eps·σ₁."""
    from bora_ref.analysis.tolerance import factor_abs_norm

    m, n = 45, 38
    rng = np.random.default_rng(11)
    x, y, z = rng.standard_normal(m), rng.standard_normal(m), rng.standard_normal(n)
    B, A = np.stack([x, x + delta * y], axis=1), np.stack([z, z])
    sigma = np.tile(np.array([1.0, -1.0]), (b, b, 1))
    exact = np.zeros(min(m, n))
    exact[0] = np.linalg.norm((B[:, 1] - B[:, 0])) * np.linalg.norm(z)  # x + δy - x, as stored: the true update
    S = singular_values(B, A, sigma)
    bound = max(m, n) * EPS64 * factor_abs_norm(B, A, sigma)
    assert np.abs(S - exact).max() <= bound
    assert bound > 1e3 * EPS64 * exact[0]  # so a guarantee relative to σ₁ would be false here


# --- adversarial factors, input layouts, the budget with vectors ---------------------------------------------------


def _hard_factors(rng, m, n, r, b, scale, zero, cancel, duplicate):
    """Gaussian factors made hard on purpose: blocks scaled by up to 2**±40, zero blocks, channels that
    cancel (a rank-1 update of norm ~1e-9 carried by two channels of norm ~1), duplicated columns."""
    B, A, sigma = random_factors(rng, m, n, r, b)
    rows, cols = block_slices(m, b), block_slices(n, b)
    if scale:
        for i, sl in enumerate(rows):
            B[sl] *= 2.0 ** int(rng.integers(-40, 41))
        for j, sl in enumerate(cols):
            A[:, sl] *= 2.0 ** int(rng.integers(-40, 41))
        sigma *= 2.0 ** rng.integers(-20, 21, size=(b, b, 1)).astype(float)
    if zero:
        B[rows[int(rng.integers(b))]] = 0.0
        sigma[int(rng.integers(b)), int(rng.integers(b))] = 0.0
    if cancel and r >= 2:
        B[:, 1] = B[:, 0] + 1e-9 * rng.standard_normal(m)
        A[1] = A[0]
        sigma[:, :, 1] = -sigma[:, :, 0]
    if duplicate and r >= 3:
        B[:, 2] = B[:, 0]  # rank-deficient blocks: Cholesky of B_i^T B_i would break down here
    return B, A, sigma


@given(
    bst.shapes(max_dim=40, max_r=12),
    st.integers(0, 2**31),
    st.booleans(), st.booleans(), st.booleans(), st.booleans(),
)
def test_backward_stable_on_hard_factors_whole_arrays(shape, seed, scale, zero, cancel, duplicate):
    """The documented guarantee: every σ_k within c·eps·‖|P||S||Q|‖_F of the exact one, and the
    structured SVD a thin SVD of ΔW within the same amount, for r above or below the block sizes,
    even or uneven splits, and factors that are badly scaled, zero, cancelling or rank-deficient."""
    from bora_ref.analysis.tolerance import factor_abs_norm

    m, n, r, b = shape
    B, A, sigma = _hard_factors(np.random.default_rng(seed), m, n, r, b, scale, zero, cancel, duplicate)
    delta, dense = _dense(B, A, sigma)  # the reference: NumPy's dense SVD of numpy_ref.delta_weight
    # Forming ΔW errs by <= r eps (|P||S||Q|) entrywise and each SVD is backward stable, hence the form.
    tol = 10 * max(m, n, r) * EPS64 * factor_abs_norm(B, A, sigma)
    np.testing.assert_allclose(singular_values(B, A, sigma), dense, rtol=0, atol=tol)
    U, S, Vh = structured_svd(B, A, sigma)
    k = len(S)
    np.testing.assert_allclose(S, dense[:k], rtol=0, atol=tol)
    np.testing.assert_allclose((U * S) @ Vh, delta, rtol=0, atol=tol)
    np.testing.assert_allclose(U.T @ U, np.eye(k), rtol=0, atol=100 * max(m, n) * EPS64)
    np.testing.assert_allclose(Vh @ Vh.T, np.eye(k), rtol=0, atol=100 * max(m, n) * EPS64)


_LAYOUTS = {
    "fortran-order": lambda x: np.asfortranarray(x),
    "transposed-view": lambda x: np.ascontiguousarray(x.T).T,
    "negative-strides": lambda x: np.flip(np.flip(x, axis=0).copy(), axis=0),
    "strided-slice": lambda x: np.repeat(x, 2, axis=-1)[..., ::2],
    "read-only": lambda x: _read_only(x),
    "big-endian": lambda x: x.astype(">f8"),
    "float32": lambda x: x.astype(np.float32),
}


def _read_only(x):
    x = x.copy()
    x.setflags(write=False)
    return x


@pytest.mark.parametrize("layout", list(_LAYOUTS))
@pytest.mark.parametrize("shape", [(48, 40, 3, 4), (10, 7, 5, 4), (33, 64, 6, 5)], ids=["r<blocks", "r>blocks", "uneven"])
def test_any_memory_layout_gives_the_dense_result(layout, shape, rng):
    # Float64 NumPy inputs are read in place (no copy); whatever their strides, the result is the
    # dense SVD of the reference ΔW of the same values, and the inputs are left unchanged.
    m, n, r, b = shape
    factors = random_factors(rng, m, n, r, b)
    B, A, sigma = (_LAYOUTS[layout](x) for x in factors)
    values = [np.array(x, dtype=np.float64) for x in (B, A, sigma)]  # what the function is given, in float64
    delta, dense = _dense(*values)
    tol = _weyl_atol(m, n, dense[0])
    np.testing.assert_allclose(singular_values(B, A, sigma), dense, rtol=0, atol=tol)
    U, S, Vh = structured_svd(B, A, sigma)
    np.testing.assert_allclose((U * S) @ Vh, delta, rtol=0, atol=tol)
    for before, after in zip(values, (B, A, sigma)):
        np.testing.assert_array_equal(after, before)


@pytest.mark.parametrize("fn", [singular_values, structured_svd])
@pytest.mark.parametrize(
    ("where", "value", "match"),
    [("B", np.nan, "B contains NaN or infinity"), ("A", -np.inf, "A contains NaN or infinity"),
     ("sigma", np.nan, "sigma contains NaN or infinity")],
)
def test_non_finite_float64_input_is_refused_by_name(fn, where, value, match, rng):
    B, A, sigma = random_factors(rng, 16, 12, 3, 2)
    args = {"B": B, "A": A, "sigma": sigma}
    args[where].flat[5] = value
    with pytest.raises(ValueError, match=match):
        fn(B, A, sigma)


def test_the_budget_counts_the_singular_vectors(monkeypatch):
    # structured_svd also holds U (m, k), Vh (k, n) and the blocks' Q: a budget between the two
    # estimates refuses it and still allows singular_values.
    import bora_ref.analysis.budget as budget

    m, n, r, b = 60, 50, 6, 5
    without, with_vectors = budget.structured_svd_bytes(m, n, r, b), budget.structured_svd_bytes(m, n, r, b, vectors=True)
    K, L = budget.blocked_min(m, b, r), budget.blocked_min(n, b, r)
    assert with_vectors - without >= 8 * (m + n) * min(K, L)  # at least the vectors themselves
    B, A, sigma = random_factors(np.random.default_rng(0), m, n, r, b)
    monkeypatch.setattr(budget, "MEMORY_BUDGET_BYTES", without)
    singular_values(B, A, sigma)
    with pytest.raises(ValueError, match=r"the structured SVD with m=60, n=50, r=6, b=5 needs about .* above the memory budget"):
        structured_svd(B, A, sigma)
