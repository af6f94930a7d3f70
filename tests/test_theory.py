"""Executable checks of the statements proved on the theory page (docs/theory.md).

Each test would fail if the statement it is named after were false. Ground truth is the NumPy
reference (`numpy_ref.delta_weight`) and NumPy's own SVD/rank; autograd (torch, float64) is
used only to differentiate.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from bora_ref import BoRALinear, numpy_ref
from bora_ref.torch_ref import delta_weight as torch_delta_weight
from bora_ref.partition import block_slices

EPS64 = np.finfo(np.float64).eps


def _rank(M: np.ndarray) -> int:
    return int(np.linalg.matrix_rank(M))  # NumPy's rule, independent of bora_ref's tolerance policy


def _exp_norm(sigma: torch.Tensor) -> torch.Tensor:
    """The paper's Σ = exp(σ / mean|σ|), written out here (not taken from the code under test)."""
    return torch.exp(sigma / sigma.abs().mean())


# --- Fact 3 and its (false) converse --------------------------------------------------------------


def test_fact3_converse_is_false_identity_channel_counterexample(rng):
    """r = b = 2, M_0 = I, M_1 = 0: Σ is not separable, yet ΔW is a rank-r LoRA update."""
    m, n, r, b = 8, 8, 2, 2
    B, A = rng.standard_normal((m, r)), rng.standard_normal((r, n))
    sigma = np.zeros((b, b, r))
    sigma[:, :, 0] = np.eye(b)  # channel matrix M_0 = I (rank 2); M_1 = 0
    # Separable means σ_ij = u_i ⊙ v_j, i.e. every channel matrix has rank <= 1; M_0 has rank 2.
    assert _rank(sigma[:, :, 0]) == 2
    dW = numpy_ref.delta_weight(B, A, sigma)
    assert _rank(dW) == r
    # Explicit rank-r LoRA factors: ΔW = blockdiag(B_1[:, 0] A_1[0], B_2[:, 0] A_2[0]) = B' A'.
    rows, cols = block_slices(m, b), block_slices(n, b)
    B2, A2 = np.zeros((m, r)), np.zeros((r, n))
    for i in range(b):
        B2[rows[i], i] = B[rows[i], 0]
        A2[i, cols[i]] = A[0, cols[i]]
    np.testing.assert_array_equal(B2 @ A2, dW)  # exact: each entry is one product or zero


@pytest.mark.parametrize("channel_ranks", [(2, 0), (1, 1), (2, 1, 0), (3, 0, 0), (2, 2, 0)])
def test_rank_is_the_sum_of_channel_ranks_for_generic_factors(channel_ranks, rng):
    """rank ΔW = Σ_k rank M_k for generic B, A when b r <= min(m, n); <= r iff that sum is <= r."""
    r, b = len(channel_ranks), 3
    m, n = 11, 10
    sigma = np.zeros((b, b, r))
    for k, rk in enumerate(channel_ranks):
        sigma[:, :, k] = rng.standard_normal((b, rk)) @ rng.standard_normal((rk, b))  # rank rk
    B, A = rng.standard_normal((m, r)), rng.standard_normal((r, n))
    assert _rank(numpy_ref.delta_weight(B, A, sigma)) == sum(channel_ranks)


# --- Weyl: when a rank decision is reliable -------------------------------------------------------


def test_weyl_condition_for_a_reliable_rank_decision(rng):
    """With computed M + E, counting σ > tol gives rank M whenever ‖E‖ <= tol < s_min - ‖E‖ ..."""
    Q1, _ = np.linalg.qr(rng.standard_normal((9, 9)))
    Q2, _ = np.linalg.qr(rng.standard_normal((7, 7)))
    s = np.array([3.0, 1.0, 0.5, 0, 0, 0, 0])
    M = Q1[:, :7] @ np.diag(s) @ Q2.T  # rank 3, s_min = 0.5
    for _ in range(50):
        E = rng.standard_normal((9, 7))
        E *= 0.2 / np.linalg.norm(E, 2)  # ‖E‖₂ = 0.2
        S = np.linalg.svd(M + E, compute_uv=False)
        for tol in np.linspace(0.2, 0.3 - 1e-9, 7):  # [‖E‖, s_min - ‖E‖)
            assert int((S > tol).sum()) == 3
    # ... and tol below s_min but above s_min - ‖E‖ can fail: E lowers s_min to 0.3.
    E = -0.2 * np.outer(Q1[:, 2], Q2[:, 2])
    S = np.linalg.svd(M + E, compute_uv=False)
    assert int((S > 0.4).sum()) == 2  # 0.2 <= 0.4 < s_min = 0.5, yet the rank is wrong


# --- exp_norm: the reachable Σ and what it costs ---------------------------------------------------


def test_exp_norm_reaches_exactly_the_positive_sigma_with_mean_abs_log_one(rng):
    shape = (3, 3, 4)
    for scale in (1e-3, 1.0, 1e3):  # (1) every σ != 0 gives mean|ln Σ| = 1, whatever its scale
        sigma = torch.from_numpy(scale * rng.standard_normal(shape))
        assert float(torch.log(_exp_norm(sigma)).abs().mean()) == pytest.approx(1.0, rel=1e-14)
    # (2) every positive Σ with mean|ln Σ| = 1 is reached, by σ = ln Σ (then mean|σ| = 1).
    tau = rng.standard_normal(shape)
    target = np.exp(tau / np.abs(tau).mean())
    layer = BoRALinear(9, 9, r=4, b=3, sigma_param="exp_norm", dtype=torch.float64)
    with torch.no_grad():
        layer.sigma.copy_(torch.from_numpy(np.log(target)))
    np.testing.assert_allclose(layer.effective_sigma().detach().numpy(), target, rtol=1e-14)


def test_exp_norm_reaches_lora_updates_and_can_scale_down(rng):
    """σ = c·1 gives Σ = e·1, so ΔW = e·BA: every LoRA update is reachable; σ = -c·1 gives e⁻¹·1."""
    B, A = rng.standard_normal((10, 3)), rng.standard_normal((3, 8))
    layer = BoRALinear(8, 10, r=3, b=2, sigma_param="exp_norm", dtype=torch.float64)
    for c, factor in ((0.37, math.e), (-5.0, 1 / math.e)):
        with torch.no_grad():
            layer.sigma.fill_(c)
        Sigma = layer.effective_sigma().detach().numpy()
        np.testing.assert_allclose(Sigma, factor, rtol=1e-15)
        np.testing.assert_allclose(numpy_ref.delta_weight(B, A, Sigma), factor * (B @ A), rtol=1e-13, atol=1e-13)


def test_exp_norm_init_scales_up_on_average_and_the_limit_is_sinh4_over_4(rng):
    """At init τ = σ/mean|σ| is close to U(-2, 2): E Σ² = sinh(4)/4 ≈ 6.82 > 1 (an init-time effect)."""
    layer = BoRALinear(512, 512, r=4, b=32, sigma_param="exp_norm")  # 4096 entries of σ
    tau = torch.log(layer.effective_sigma().detach().double())
    assert float(tau.abs().mean()) == pytest.approx(1.0, rel=1e-6)
    assert float(tau.abs().max()) < 2.1  # max|σ| / mean|σ| with mean|σ| close to half the bound
    assert float((torch.exp(tau) ** 2).mean()) == pytest.approx(math.sinh(4) / 4, rel=0.05)


def _fit_relative_error(T: torch.Tensor, r: int, b: int, param: str, seed: int) -> float:
    """min over (B, A, σ) of ‖ΔW - T‖_F / ‖T‖_F by L-BFGS from one random start (float64)."""
    m, n = T.shape
    g = torch.Generator().manual_seed(seed)
    B = torch.randn(m, r, generator=g, dtype=torch.float64).requires_grad_()
    A = torch.randn(r, n, generator=g, dtype=torch.float64).requires_grad_()
    s = torch.randn(b, b, r, generator=g, dtype=torch.float64).requires_grad_()
    opt = torch.optim.LBFGS([B, A, s], lr=1, max_iter=300, tolerance_grad=1e-14, tolerance_change=1e-16,
                            history_size=50, line_search_fn="strong_wolfe")

    def sigma_eff() -> torch.Tensor:
        return _exp_norm(s) if param == "exp_norm" else s

    def closure() -> torch.Tensor:
        opt.zero_grad()
        loss = ((torch_delta_weight(B, A, sigma_eff()) - T) ** 2).sum()
        loss.backward()
        return loss

    for _ in range(5):
        opt.step(closure)
    with torch.no_grad():
        return float(torch.linalg.norm(torch_delta_weight(B, A, sigma_eff()) - T) / torch.linalg.norm(T))


def test_exp_norm_has_an_error_floor_on_a_block_diagonal_target(rng):
    """b = 2, r = 1, m = n = 4, T = blockdiag(b₁a₁ᵀ, b₂a₂ᵀ) with unit vectors: floor 1/sqrt(1 + e⁴)."""
    unit = [v / np.linalg.norm(v) for v in rng.standard_normal((4, 2))]
    T = np.zeros((4, 4))
    T[:2, :2], T[2:, 2:] = np.outer(unit[0], unit[1]), np.outer(unit[2], unit[3])
    T = torch.from_numpy(T)
    floor = 1 / math.sqrt(1 + math.e**4)  # 0.134112...
    errors = [_fit_relative_error(T, 1, 2, "exp_norm", seed) for seed in range(4)]
    assert min(errors) >= floor - 1e-9  # the proved lower bound holds from every start
    assert min(errors) == pytest.approx(floor, abs=1e-7)  # and the optimiser attains it
    assert min(_fit_relative_error(T, 1, 2, "raw", seed) for seed in range(2)) < 1e-6  # raw: Σ_12 = Σ_21 = 0


# --- dimension of the reachable set ------------------------------------------------------------------


def _jacobian_rank(m: int, n: int, r: int, b: int, seed: int = 0) -> int:
    g = torch.Generator().manual_seed(seed)
    args = (torch.randn(m, r, generator=g, dtype=torch.float64), torch.randn(r, n, generator=g, dtype=torch.float64),
            torch.randn(b, b, r, generator=g, dtype=torch.float64))
    J = torch.autograd.functional.jacobian(lambda *x: torch_delta_weight(*x).reshape(-1), args)
    return _rank(torch.cat([j.reshape(m * n, -1) for j in J], dim=1).numpy())


def _predicted_dimension(m: int, n: int, r: int, b: int) -> int:
    rho = min(b * r, m, n)
    return min(r * (m + n + b * b - 2 * b), rho * (m + n - rho))


@pytest.mark.parametrize(("m", "n", "r", "b"), [
    (6, 6, 1, 2), (6, 6, 2, 2), (8, 6, 2, 2), (9, 7, 2, 3), (8, 8, 1, 4), (10, 9, 3, 2), (12, 10, 2, 3),
    (7, 7, 2, 3), (5, 5, 1, 5), (8, 8, 2, 4), (9, 7, 4, 1), (6, 6, 4, 2), (4, 20, 2, 2),
])
def test_reachable_set_dimension_with_blocks_at_least_r(m, n, r, b):
    """Blocks of at least r rows and columns: dim = min(r(m+n+b²-2b), ρ(m+n-ρ)), ρ = min(br, m, n)."""
    assert _jacobian_rank(m, n, r, b) == _predicted_dimension(m, n, r, b)


@pytest.mark.parametrize(("m", "n", "r", "b", "measured"), [(4, 20, 3, 2, 66), (3, 20, 2, 3, 46), (5, 20, 3, 2, 72)])
def test_reachable_set_dimension_is_only_an_upper_bound_for_thin_blocks(m, n, r, b, measured):
    """A block thinner than r adds redundancy beyond the diagonal gauge: strictly below the formula."""
    assert _jacobian_rank(m, n, r, b) == measured < _predicted_dimension(m, n, r, b)


# --- gradient-flow invariants of the diagonal gauge (raw Σ) --------------------------------------------


def _invariants(B: torch.Tensor, A: torch.Tensor, s: torch.Tensor) -> torch.Tensor:
    """Q_row[i, k] = ‖B_i[:, k]‖² - Σ_j σ_ij[k]², Q_col[j, k] = ‖A_j[k, :]‖² - Σ_i σ_ij[k]²; (2, b, r)."""
    b = s.shape[0]
    rows, cols = block_slices(B.shape[0], b), block_slices(A.shape[1], b)
    q_row = torch.stack([(B[rows[i]] ** 2).sum(0) - (s[i] ** 2).sum(0) for i in range(b)])
    q_col = torch.stack([(A[:, cols[j]] ** 2).sum(1) - (s[:, j] ** 2).sum(0) for j in range(b)])
    return torch.stack([q_row, q_col])


def _gd(lr: float, steps: int, seed: int = 0):
    """Gradient descent on ½‖ΔW - T‖² (raw Σ, m = 7, n = 6, r = 2, b = 2); returns invariants and ‖B‖² per column."""
    g = torch.Generator().manual_seed(seed)
    B, A, s = (torch.randn(shape, generator=g, dtype=torch.float64) * 0.7 for shape in ((7, 2), (2, 6), (2, 2, 2)))
    T = torch.randn(7, 6, generator=g, dtype=torch.float64)
    params = [p.requires_grad_() for p in (B, A, s)]
    q0, col0 = _invariants(*params).detach(), (B.detach() ** 2).sum(0)
    for _ in range(steps):
        grads = torch.autograd.grad(0.5 * ((torch_delta_weight(*params) - T) ** 2).sum(), params)
        with torch.no_grad():
            q_before = _invariants(*params)
            for p, gr in zip(params, grads):
                p -= lr * gr
            # Exact discrete identity: each step changes Q by lr² (‖g_B col‖² - Σ_j g_σ²), no O(lr) term.
            expected = lr**2 * _invariants(*grads)
            torch.testing.assert_close(_invariants(*params) - q_before, expected, rtol=1e-6, atol=1e-13)
    return (_invariants(*params).detach() - q0).abs().max().item(), ((B.detach() ** 2).sum(0) - col0).abs().max().item()


def test_gradient_flow_conserves_the_diagonal_gauge_invariants():
    drift_1, moved = _gd(4e-3, 100)  # time 0.4
    drift_2, _ = _gd(2e-3, 200)  # same time, half the step
    assert moved > 0.05  # the factors themselves move ...
    assert drift_1 < 1e-2 * moved  # ... while Q stays put
    assert drift_1 / drift_2 == pytest.approx(2.0, rel=0.1)  # O(lr²) per step: total drift O(lr) at fixed time


def test_noether_identity_at_random_points(rng):
    """⟨B_i[:, k], ∂L/∂B_i[:, k]⟩ = Σ_j σ_ij[k] ∂L/∂σ_ij[k] for any loss of ΔW (here a random linear one + square)."""
    B, A, s = (torch.from_numpy(rng.standard_normal(shape)).requires_grad_() for shape in ((9, 3), (3, 8), (3, 3, 3)))
    G = torch.from_numpy(rng.standard_normal((9, 8)))
    loss = (G * torch_delta_weight(B, A, s)).sum() + (torch_delta_weight(B, A, s) ** 2).sum()
    gB, gA, gs = torch.autograd.grad(loss, (B, A, s))
    rows, cols = block_slices(9, 3), block_slices(8, 3)
    lhs_row = torch.stack([(B[rows[i]] * gB[rows[i]]).sum(0) for i in range(3)])
    rhs_row = (s * gs).sum(1)
    lhs_col = torch.stack([(A[:, cols[j]] * gA[:, cols[j]]).sum(1) for j in range(3)])
    rhs_col = (s * gs).sum(0)
    torch.testing.assert_close(lhs_row, rhs_row, rtol=1e-12, atol=1e-10)
    torch.testing.assert_close(lhs_col, rhs_col, rtol=1e-12, atol=1e-10)


def test_exp_norm_gradient_is_orthogonal_to_sigma_so_a_step_grows_its_norm_by_lr2_g2(rng):
    s = torch.from_numpy(rng.standard_normal((2, 2, 3))).requires_grad_()
    B, A = torch.from_numpy(rng.standard_normal((6, 3))), torch.from_numpy(rng.standard_normal((3, 5)))
    T = torch.from_numpy(rng.standard_normal((6, 5)))
    (g,) = torch.autograd.grad(((torch_delta_weight(B, A, _exp_norm(s)) - T) ** 2).sum(), (s,))
    assert abs(float((g * s.detach()).sum())) < 1e-12 * float(g.norm() * s.detach().norm())
    lr = 0.1
    new = s.detach() - lr * g
    assert float((new**2).sum() - (s.detach() ** 2).sum()) == pytest.approx(lr**2 * float((g**2).sum()), rel=1e-9)


# --- the spectrum at init and after one step -----------------------------------------------------------


@pytest.mark.parametrize("sigma_param", ["exp_norm", "raw"])
def test_one_step_from_init(sigma_param):
    """B = 0: ΔW = 0 and ∂L/∂A = ∂L/∂σ = 0. One SGD step on L = ⟨G, s·ΔW⟩ gives
    B_i ← -η s Σ_l G_il A_lᵀ Σ_il, hence rank ΔW₁ = min(br, m, n) for a generic Σ (exp_norm init)
    but rank r, LoRA's first step -η s² G AᵀA exactly, for Σ ≡ 1 (raw init)."""
    m, n, r, b, lr = 24, 20, 2, 4, 0.1
    layer = BoRALinear(n, m, r=r, b=b, alpha=3.0, sigma_param=sigma_param, dtype=torch.float64)
    G = torch.randn(m, n, dtype=torch.float64)
    assert torch.count_nonzero(layer.delta_weight()) == 0
    loss = (G * layer.delta_weight()).sum()
    loss.backward()
    assert torch.count_nonzero(layer.lora_A.grad) == 0 and torch.count_nonzero(layer.sigma.grad) == 0
    A = layer.lora_A.detach().numpy().copy()
    Sig = layer.effective_sigma().detach().numpy()
    with torch.no_grad():
        for p in (layer.lora_A, layer.lora_B, layer.sigma):
            p -= lr * p.grad
    s, Gn = layer.scaling, G.numpy()
    rows, cols = block_slices(m, b), block_slices(n, b)
    B1 = np.concatenate([-lr * s * sum(Gn[rows[i]][:, cols[l]] @ A[:, cols[l]].T * Sig[i, l] for l in range(b))
                         for i in range(b)])  # (m, r)
    np.testing.assert_allclose(layer.lora_B.detach().numpy(), B1, rtol=1e-12, atol=1e-14)
    dW1 = s * numpy_ref.delta_weight(B1, A, Sig)
    np.testing.assert_allclose(layer.delta_weight().detach().numpy(), dW1, rtol=1e-12, atol=1e-14)
    if sigma_param == "exp_norm":
        assert _rank(dW1) == min(b * r, m, n)
    else:
        assert _rank(dW1) == r
        np.testing.assert_allclose(dW1, -lr * s**2 * Gn @ A.T @ A, rtol=1e-12, atol=1e-14)


# --- the separable part of Σ ---------------------------------------------------------------------------


def _separable_part(sigma: np.ndarray) -> tuple[np.ndarray, float]:
    """Best rank-1 approximation of every channel matrix M_k (Eckart-Young) and max_k s_2(M_k)."""
    sep = np.empty_like(sigma)
    s2 = 0.0
    for k in range(sigma.shape[2]):
        U, S, Vh = np.linalg.svd(sigma[:, :, k])
        sep[:, :, k] = S[0] * np.outer(U[:, 0], Vh[0])
        s2 = max(s2, S[1] if len(S) > 1 else 0.0)
    return sep, s2


@pytest.mark.parametrize("noise", [1e-6, 1e-2, 1.0])
def test_distance_to_lora_is_bounded_by_the_non_separable_part(noise, rng):
    """σ_{r+1}(ΔW) <= max_i ‖B_i‖₂ · max_k s_2(M_k) · max_j ‖A_j‖₂, and ΔW from the separable part has rank <= r."""
    m, n, r, b = 30, 26, 3, 4
    u, v = rng.standard_normal((b, r)), rng.standard_normal((b, r))
    sigma = u[:, None, :] * v[None, :, :] + noise * rng.standard_normal((b, b, r))
    B, A = rng.standard_normal((m, r)), rng.standard_normal((r, n))
    sep, s2 = _separable_part(sigma)
    assert _rank(numpy_ref.delta_weight(B, A, sep)) <= r
    S = np.linalg.svd(numpy_ref.delta_weight(B, A, sigma), compute_uv=False)
    normB = max(np.linalg.norm(B[sl], 2) for sl in block_slices(m, b))
    normA = max(np.linalg.norm(A[:, sl], 2) for sl in block_slices(n, b))
    assert S[r] <= normB * s2 * normA * (1 + 1e-12)
    assert S[r] >= 1e-3 * noise  # not vacuous: the non-separable part does add rank


def test_separable_energy_share_at_exp_norm_init_tends_to_tanh2_over_2():
    """Share Σ_k s_1(M_k)² / Σ_k ‖M_k‖_F² of the separable part: for i.i.d. entries with mean μ and second
    moment ν it tends to μ²/ν as b grows; τ ~ U(-2, 2) gives (sinh 2 / 2)² / (sinh 4 / 4) = tanh(2)/2."""
    layer = BoRALinear(512, 512, r=2, b=64, sigma_param="exp_norm")
    sigma = layer.effective_sigma().detach().double().numpy()
    sep, _ = _separable_part(sigma)
    share = (sep**2).sum() / (sigma**2).sum()
    assert share == pytest.approx(math.tanh(2) / 2, abs=0.03)
    ones = np.ones((4, 4, 3))  # raw init Σ ≡ 1: entirely separable
    assert (_separable_part(ones)[0] ** 2).sum() / (ones**2).sum() == pytest.approx(1.0, rel=1e-14)
