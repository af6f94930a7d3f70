"""rank_bound, the tolerance policy of numerical/factor rank, and the rank of layers and models."""

import math

import numpy as np
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st
from torch import nn

from bora_ref.nn.sigma import SIGMA_PARAMS
from bora_ref import (
    BoRALinear,
    apply_bora,
    block_sizes,
    factor_rank,
    factor_rank_info,
    layer_rank_info,
    matrix_rank_info,
    model_rank_info,
    numerical_rank,
    numpy_ref,
    rank_bound,
    singular_values,
)
from bora_ref.analysis.tolerance import DENSE_FLOOR_SAFETY, dense_noise_floor, factor_noise_floor
from bora_ref.report.sweep import distinct_shapes, load_model_shapes, sample_factors
from bora_ref.testing import strategies as bst

from ._helpers import random_factors

EPS16 = float(torch.finfo(torch.float16).eps)
EPSBF16 = float(torch.finfo(torch.bfloat16).eps)


def _low_rank(rng, m, n, k):
    """A rank-k ``(m, n)`` float64 matrix with well-conditioned, O(1) singular values."""
    U, _ = np.linalg.qr(rng.standard_normal((m, k)))
    V, _ = np.linalg.qr(rng.standard_normal((n, k)))
    return (U * rng.uniform(1.0, 3.0, k)) @ V.T


def _rounded(arrays, dtype):
    return tuple(torch.from_numpy(a).to(dtype) for a in arrays)


# --- the bound ---------------------------------------------------------------------------------


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


@pytest.mark.parametrize(("r", "b"), [(2, 3), (3, 4), (1, 16)])
def test_random_factors_attain_the_bound_on_every_shipped_shape(r, b):
    # Structured path only: the shapes go up to 18944 x 3584. b = 3 gives uneven splits (4096 % 3 = 1).
    for s in distinct_shapes(load_model_shapes()):
        assert factor_rank(*sample_factors(s.m, s.n, r, b, seed=b)) == rank_bound(s.m, s.n, r, b), s


@given(bst.shapes(max_dim=24, max_r=6), st.integers(0, 2**31))
def test_separable_sigma_caps_the_rank_at_r_and_identical_sigma_gives_loras_rank(shape, seed):
    m, n, r, b = shape
    separable = sample_factors(m, n, r, b, sigma="separable", seed=seed)
    identical = sample_factors(m, n, r, b, sigma="identical", seed=seed)
    assert factor_rank(*separable) == numerical_rank(numpy_ref.delta_weight(*separable)) == min(r, m, n)
    B, A, sigma = identical
    lora = (B * sigma[0, 0]) @ A  # B diag(d) A: LoRA
    assert factor_rank(*identical) == numerical_rank(lora) == min(r, m, n)


# --- dense matrices: the default rules -----------------------------------------------------------


@given(st.integers(1, 40), st.integers(1, 40), st.integers(0, 2**31), st.sampled_from([np.float32, np.float64]))
def test_numerical_rank_matches_numpy_matrix_rank_for_float32_and_float64(m, n, seed, dtype):
    rng = np.random.default_rng(seed)
    M = _low_rank(rng, m, n, int(rng.integers(0, min(m, n) + 1))).astype(dtype)
    assert numerical_rank(M) == np.linalg.matrix_rank(M)


def test_default_eps_is_the_input_dtype_for_float32_and_float64(rng):
    Q1, _ = np.linalg.qr(rng.standard_normal((30, 30)))
    Q2, _ = np.linalg.qr(rng.standard_normal((20, 20)))
    M = Q1[:, :20] @ np.diag(np.r_[np.ones(17), 1e-3, 1e-6, 1e-12]) @ Q2.T  # (30, 20)
    assert numerical_rank(M) == 20  # 1e-12 > 30 * eps64
    assert numerical_rank(torch.from_numpy(M)) == 20
    assert numerical_rank(M.astype(np.float32)) == 18  # 1e-6 < 30 * eps32 = 3.6e-6
    info = matrix_rank_info(M.astype(np.float32))
    assert info.tol == pytest.approx(info.singular_values[0] * 30 * np.finfo(np.float32).eps, rel=1e-12)
    assert info.floor == 0.0


@pytest.mark.parametrize(
    ("rtol", "atol"), [(1e-6, None), (None, 0.5), (None, 0.0), (1e-2, 0.5), (0.0, 1e-3), (1e-10, None)]
)
def test_rtol_atol_follow_torch_linalg_matrix_rank(rtol, atol, rng):
    M = _low_rank(rng, 40, 30, 12) + _low_rank(rng, 40, 30, 6) * 1e-4 + _low_rank(rng, 40, 30, 4) * 1e-9
    expected = int(torch.linalg.matrix_rank(torch.from_numpy(M), rtol=rtol, atol=atol))
    assert numerical_rank(M, rtol=rtol, atol=atol) == expected


@pytest.mark.parametrize(("dtype", "shape"), [(torch.float16, (1100, 48)), (torch.bfloat16, (200, 160))])
def test_half_precision_dense_default_is_the_noise_floor(dtype, shape, rng):
    m, n = shape
    k = 5
    M = torch.from_numpy(_low_rank(rng, m, n, k)).to(dtype)
    eps = float(torch.finfo(dtype).eps)
    assert max(m, n) * eps > 1  # so NumPy's rule with this dtype's eps returns 0 ...
    assert numerical_rank(M, rtol=max(m, n) * eps) == 0
    assert numerical_rank(M.to(torch.float64)) == min(m, n)  # ... and float64's counts the rounding noise
    info = matrix_rank_info(M)
    assert info.rank == numerical_rank(M) == k
    assert info.tol == info.floor == dense_noise_floor(M) and "float16" in info.policy
    assert info.gap > 30  # a clean cut: σ_k is O(1), the noise is O(u)
    # The same floor on request, for a float32 copy of the 16-bit data.
    assert matrix_rank_info(M.to(torch.float32), storage_dtype=dtype).rank == k


def test_dense_noise_floor_reduces_to_the_iid_formula_for_entries_of_equal_size(rng):
    m, n, a = 300, 120, 0.75  # entries ±a: every row and column norm is the same
    M = a * rng.choice([-1.0, 1.0], size=(m, n))
    u = EPS16 / 2
    iid = u * np.linalg.norm(M) * (math.sqrt(m) + math.sqrt(n)) / math.sqrt(3 * m * n)
    assert dense_noise_floor(M, "float16") == pytest.approx(DENSE_FLOOR_SAFETY * iid, rel=1e-3)


@pytest.mark.parametrize("seed", range(6))
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_dense_noise_floor_separates_rounding_noise_from_signal(seed, dtype):
    rng = np.random.default_rng(seed)
    m, n = rng.integers(20, 200, size=2)
    k = int(rng.integers(1, min(m, n) // 2 + 1))
    row_scale = np.exp(rng.standard_normal(m) * 1.5)[:, None]  # uneven rows: the iid formula would fail
    M = torch.from_numpy(row_scale * _low_rank(rng, m, n, k)).to(dtype)
    S = np.linalg.svd(M.to(torch.float64).numpy(), compute_uv=False)
    floor = dense_noise_floor(M)
    assert S[k:].max(initial=0.0) < floor < S[k - 1]


# --- factors: exact by default, a floor for low-precision storage ---------------------------------


@pytest.mark.parametrize(("dtype", "m"), [(torch.float16, 2048), (torch.bfloat16, 300), (torch.float32, 300)])
def test_precision_aware_factor_rank_recovers_the_true_rank_of_rounded_factors(dtype, m, rng):
    n, r, b = 260, 4, 8
    exact = sample_factors(m, n, r, b, sigma="separable", seed=int(rng.integers(2**31)))  # true rank r
    B, A, sigma = _rounded(exact, dtype)  # rounding breaks the separability: noise singular values
    assert factor_rank(B, A, sigma) > r  # exact on the factors as given: the rounding noise is counted
    eps = float(torch.finfo(dtype).eps)
    if max(m, n) * eps > 1:
        assert factor_rank(B, A, sigma, rtol=max(m, n) * eps) == 0  # NumPy's rule with the storage eps
    info = factor_rank_info(B, A, sigma, storage_dtype="auto")
    assert info.rank == r and info.gap > 20
    assert info.tol == info.floor == factor_noise_floor(B, A, sigma) and str(dtype).removeprefix("torch.") in info.policy
    # A float64 copy with the storage dtype named explicitly gives the same answer.
    as_f64 = [t.to(torch.float64) for t in (B, A, sigma)]
    assert factor_rank(*as_f64, storage_dtype=dtype) == r


@pytest.mark.parametrize("seed", range(5))
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_factor_noise_floor_is_above_the_noise_the_rounding_creates(seed, dtype):
    rng = np.random.default_rng(seed)
    m, n = (int(x) for x in rng.integers(30, 300, size=2))
    r, b = int(rng.integers(1, 9)), int(rng.integers(2, 9))
    B, A, sigma = sample_factors(m, n, r, b, sigma="separable", seed=seed)
    B = B * np.exp(rng.standard_normal(r)) * 1e-2  # realistic, uneven scales
    rounded = _rounded((B, A, sigma), dtype)
    S = singular_values(*rounded)
    true_rank = min(r, m, n)
    floor = factor_noise_floor(*rounded)
    assert S[true_rank:].max(initial=0.0) < floor


def test_factor_default_tolerance_is_float64_rule(rng):
    B, A, sigma = random_factors(rng, 50, 40, 3, 4)
    B32, A32, s32 = B.astype(np.float32), A.astype(np.float32), sigma.astype(np.float32)
    info = factor_rank_info(B32, A32, s32)
    assert info.floor == 0.0
    # Scale: ||P||S||Q||_F, here from the dense ground truth ΔW(|B|, |A|, |σ|) (formed, unlike the code).
    abs_norm = np.linalg.norm(numpy_ref.delta_weight(*(np.abs(x).astype(np.float64) for x in (B32, A32, s32))))
    assert abs_norm > info.singular_values[0]
    assert info.tol == pytest.approx(abs_norm * 50 * np.finfo(np.float64).eps, rel=1e-12, abs=0)


# --- the gap ------------------------------------------------------------------------------------


def test_gap_at_the_cut_and_its_conventions(rng):
    Q1, _ = np.linalg.qr(rng.standard_normal((12, 6)))
    Q2, _ = np.linalg.qr(rng.standard_normal((9, 6)))
    M = Q1 @ np.diag([3.0, 2.0, 1e-3, 5e-4, 0.0, 0.0]) @ Q2.T
    info = matrix_rank_info(M, atol=0.1)
    assert info.rank == 2 and info.gap == pytest.approx(2.0 / 1e-3, rel=1e-9)
    assert matrix_rank_info(M, atol=1e-2 * 0.07).gap == pytest.approx(1e-3 / 5e-4, rel=1e-9)  # a poor cut
    assert matrix_rank_info(np.zeros((4, 3))).rank == 0 and matrix_rank_info(np.zeros((4, 3))).gap == math.inf
    assert math.isnan(matrix_rank_info(M, atol=10.0).gap)  # everything dropped although σ₁ > 0
    assert matrix_rank_info(rng.standard_normal((5, 3))).gap == math.inf  # full rank: nothing dropped


# --- layers and models --------------------------------------------------------------------------


def _trained_like(layer, rng):
    with torch.no_grad():
        layer.lora_B.copy_(torch.from_numpy(rng.standard_normal(tuple(layer.lora_B.shape))))
        layer.sigma.copy_(torch.from_numpy(rng.standard_normal(tuple(layer.sigma.shape))))
    return layer


@pytest.mark.parametrize("sigma_param", SIGMA_PARAMS)
def test_layer_rank_uses_effective_sigma_and_scaling(sigma_param, rng):
    layer = _trained_like(BoRALinear(40, 48, r=3, b=4, alpha=6.0, sigma_param=sigma_param), rng)
    info = layer_rank_info(layer)
    dense = layer.delta_weight().detach().to(torch.float64).numpy()  # scaling * ΔW, float32, formed
    S_dense = np.linalg.svd(dense, compute_uv=False)
    np.testing.assert_allclose(info.singular_values, S_dense, rtol=0, atol=1e-5 * S_dense[0])  # float32 ΔW
    assert info.rank == rank_bound(48, 40, 3, 4) == numerical_rank(layer.delta_weight().detach())


def test_fresh_layer_has_rank_zero():
    info = layer_rank_info(BoRALinear(16, 12, r=2, b=2))
    assert info.rank == 0 and info.gap == math.inf


def test_layer_storage_auto_uses_the_adapter_dtype(rng):
    layer = BoRALinear(200, 300, r=4, b=8, sigma_param="raw", adapter_dtype=torch.bfloat16)
    _, _, separable = sample_factors(300, 200, 4, 8, sigma="separable", seed=3)
    with torch.no_grad():
        layer.lora_B.copy_(torch.from_numpy(rng.standard_normal((300, 4))))
        layer.sigma.copy_(torch.from_numpy(separable))
    assert layer_rank_info(layer).rank > 4  # bf16 rounding of sigma broke the separability
    assert layer_rank_info(layer, storage_dtype="auto").rank == 4


def test_model_rank_info_covers_every_bora_layer(rng):
    model = nn.Sequential(nn.Linear(20, 30), nn.ReLU(), nn.Linear(30, 10))
    apply_bora(model, target_modules=["0", "2"], r=2, b=2)
    for layer in (model[0], model[2]):
        _trained_like(layer, rng)
    infos = model_rank_info(model)
    assert list(infos) == ["0", "2"]
    assert [i.rank for i in infos.values()] == [rank_bound(30, 20, 2, 2), rank_bound(10, 30, 2, 2)]
    np.testing.assert_array_equal(infos["2"].singular_values, layer_rank_info(model[2]).singular_values)


# --- bad input ----------------------------------------------------------------------------------


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


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"rtol": -1e-3}, r"rtol must be a finite number >= 0 or None, got -0.001"),
        ({"atol": float("nan")}, r"atol must be a finite number >= 0 or None, got nan"),
        ({"atol": "0.1"}, r"atol must be a finite number >= 0 or None, got '0.1'"),
        ({"storage_dtype": "int8"}, r"storage_dtype must be one of \('float16', 'bfloat16', 'float32', 'float64'\)"),
    ],
)
def test_rank_info_rejects_bad_options(kwargs, match, rng):
    B, A, sigma = random_factors(rng, 8, 6, 2, 2)
    with pytest.raises(ValueError, match=match):
        factor_rank_info(B, A, sigma, **kwargs)
    with pytest.raises(ValueError, match=match):
        matrix_rank_info(numpy_ref.delta_weight(B, A, sigma), **kwargs)


def test_layer_and_model_rank_reject_other_objects():
    with pytest.raises(ValueError, match="layer must be a bora_ref.BoRALinear, got Linear"):
        layer_rank_info(nn.Linear(3, 3))
    with pytest.raises(ValueError, match=r"model \(Sequential\) has no BoRALinear layers; call bora_ref.apply_bora"):
        model_rank_info(nn.Sequential(nn.Linear(3, 3)))
    with pytest.raises(ValueError, match="model must be a torch.nn.Module, got dict"):
        model_rank_info({})


# --- cancelling rank channels: the factor tolerance scales with ||P||S||Q||_F -------------------


@pytest.mark.parametrize(("m", "n", "b"), [(64, 48, 1), (64, 48, 2), (64, 64, 4), (33, 29, 3)])
@pytest.mark.parametrize("delta", [1e-4, 1e-6, 1e-8, 1e-10])
def test_cancelling_channels_have_factor_rank_one(m, n, b, delta):
    """B = [x, x + δy], A = [z; z], σ_ij = (1, -1): ΔW = -δ y zᵀ exactly, rank 1 for every δ > 0.

    The computed singular values carry rounding noise of size ~eps·‖x‖‖z‖, far above
    eps·σ₁ = eps·δ‖y‖‖z‖; a tolerance relative to σ₁ alone counted it (ranks 2, 3, 5 measured here
    before the fix), one relative to ||P||S||Q||_F does not.
    """
    rng = np.random.default_rng(7)
    x, y, z = rng.standard_normal(m), rng.standard_normal(m), rng.standard_normal(n)
    B, A = np.stack([x, x + delta * y], axis=1), np.stack([z, z])  # (m, 2), (2, n)
    sigma = np.tile(np.array([1.0, -1.0]), (b, b, 1))  # (b, b, 2)
    info = factor_rank_info(B, A, sigma)
    assert info.rank == 1
    true_s1 = delta * np.linalg.norm(y) * np.linalg.norm(z)  # ΔW = -δ y zᵀ in exact arithmetic
    assert info.singular_values[0] == pytest.approx(true_s1, rel=1e-3)
    assert info.singular_values[1] > info.singular_values[0] * max(m, n) * np.finfo(np.float64).eps  # the old rule fails
    # The same tolerance is the right atol for the dense ΔW formed from these factors.
    assert numerical_rank(numpy_ref.delta_weight(B, A, sigma), atol=info.tol) == 1


@pytest.mark.parametrize(("m", "n", "r", "b"), [(13, 10, 3, 1), (13, 10, 3, 3), (9, 7, 4, 7), (40, 31, 2, 5)])
def test_factor_abs_norm_equals_the_dense_absolute_product(m, n, r, b, rng):
    from bora_ref.analysis.tolerance import factor_abs_norm

    B, A, sigma = random_factors(rng, m, n, r, b)
    dense = numpy_ref.delta_weight(np.abs(B), np.abs(A), np.abs(sigma))  # |P||S||Q|, formed
    assert factor_abs_norm(B, A, sigma) == pytest.approx(np.linalg.norm(dense), rel=1e-13, abs=0)
    assert factor_abs_norm(B, A, sigma) >= np.linalg.norm(numpy_ref.delta_weight(B, A, sigma))
