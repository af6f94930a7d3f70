# ---
# jupyter:
#   jupytext:
#     formats: ipynb,py:percent
#     text_representation:
#       extension: .py
#       format_name: percent
#       format_version: '1.3'
#       jupytext_version: 1.19.6
#   kernelspec:
#     display_name: Python 3 (ipykernel)
#     language: python
#     name: python3
# ---

# %% [markdown]
# # 1. BoRA from scratch
#
# **What this notebook shows.** Every claim below is checked by an `assert`, so running the
# notebook is a test (the test suite and the docs build both run it).
#
# 1. $\Delta W$ built by hand in NumPy from the blocks $B_i$, $\Sigma_{ij}$, $A_j$ equals
#    `bora_ref.numpy_ref.delta_weight`, and equals the factored form $P S Q$.
# 2. What the block structure looks like (heatmaps).
# 3. The reductions: $\Sigma \equiv 1$ is LoRA; a zero off-diagonal gives a block-diagonal
#    update; a separable $\Sigma$ collapses to rank $r$.
# 4. The rank bound: random factors reach `rank_bound(m, n, r, b)` — with uneven blocks and with
#    $r$ larger than a block too — and so does the explicit 0/1 construction from the proof,
#    for arbitrary partitions as well.
# 5. Parameter counts: the formula against `numel()` of a real `BoRALinear` and of a model
#    adapted with `apply_bora`, and the $b$ that needs the fewest parameters for a given rank.
#
# The proofs are on the [Theory and proofs](../../theory/) page (`docs/theory.md`). Shapes, as
# everywhere in `bora_ref`: `B (m, r)`, `A (r, n)`, `sigma (b, b, r)`, `ΔW (m, n)`.
# [Download this notebook](01_bora_from_scratch.ipynb).

# %%
import matplotlib.pyplot as plt
import numpy as np
import torch

import bora_ref
from bora_ref import BoRALinear, apply_bora, block_sizes, numerical_rank, numpy_ref, param_count, rank_bound

rng = np.random.default_rng(0)
torch.manual_seed(0)
print("bora_ref", bora_ref.__version__)

# %% [markdown]
# ## A small example with uneven blocks
#
# $m = 10$ rows and $n = 13$ columns cut into $b = 3$ blocks each. Block sizes follow
# `numpy.array_split`: the larger blocks come first.

# %%
m, n, r, b = 10, 13, 2, 3
B = rng.standard_normal((m, r))  # (m, r)
A = rng.standard_normal((r, n))  # (r, n)
sigma = rng.standard_normal((b, b, r))  # (b, b, r): sigma[i, j] is the diagonal of Σ_ij

row_sizes, col_sizes = block_sizes(m, b), block_sizes(n, b)
print("row blocks m_i:", row_sizes, " column blocks n_j:", col_sizes)
assert row_sizes == tuple(len(chunk) for chunk in np.array_split(np.arange(m), b)) == (4, 3, 3)
assert col_sizes == tuple(len(chunk) for chunk in np.array_split(np.arange(n), b)) == (5, 4, 4)

# %% [markdown]
# ## Build ΔW by hand
#
# The definition, literally: $\Delta W_{[i,j]} = B_i \, \mathrm{diag}(\sigma_{ij}) \, A_j$. This
# version takes the block sizes as arguments, so that we can also try partitions that
# `bora_ref` never makes (below, in the rank-bound section).


# %%
def edges(sizes):
    """Block boundaries: sizes (3, 2) -> [0, 3, 5]."""
    return np.concatenate([[0], np.cumsum(sizes)])


def delta_weight_by_hand(B, A, sigma, row_sizes, col_sizes):
    """ΔW with ΔW[block i, block j] = B_i @ diag(sigma[i, j]) @ A_j, for any block sizes."""
    rows, cols = edges(row_sizes), edges(col_sizes)
    dW = np.zeros((B.shape[0], A.shape[1]))  # (m, n)
    for i in range(len(row_sizes)):
        B_i = B[rows[i] : rows[i + 1]]  # (m_i, r)
        for j in range(len(col_sizes)):
            A_j = A[:, cols[j] : cols[j + 1]]  # (r, n_j)
            dW[rows[i] : rows[i + 1], cols[j] : cols[j + 1]] = B_i @ np.diag(sigma[i, j]) @ A_j  # (m_i, n_j)
    return dW


dW = delta_weight_by_hand(B, A, sigma, row_sizes, col_sizes)
dW_ref = numpy_ref.delta_weight(B, A, sigma)
print(f"max |by hand - numpy_ref.delta_weight| = {np.abs(dW - dW_ref).max():.1e}")
# Same float64 products in the same order per block: equal up to a few rounding errors.
np.testing.assert_allclose(dW, dW_ref, rtol=0, atol=1e-12)

# %% [markdown]
# The **factored form** $\Delta W = P S Q$: $P = \mathrm{blockdiag}(B_1, \dots, B_b)$ is
# $(m, br)$, $Q = \mathrm{blockdiag}(A_1, \dots, A_b)$ is $(br, n)$, and $S$ is the $(br, br)$
# matrix whose $(i, j)$ block is $\mathrm{diag}(\sigma_{ij})$.


# %%
def blockdiag(blocks):
    """Block-diagonal matrix of a list of 2-D blocks."""
    out = np.zeros((sum(x.shape[0] for x in blocks), sum(x.shape[1] for x in blocks)))
    i = j = 0
    for x in blocks:
        out[i : i + x.shape[0], j : j + x.shape[1]] = x
        i, j = i + x.shape[0], j + x.shape[1]
    return out


P = blockdiag(np.split(B, edges(row_sizes)[1:-1], axis=0))  # (m, b r)
Q = blockdiag(np.split(A, edges(col_sizes)[1:-1], axis=1))  # (b r, n)
S = np.block([[np.diag(sigma[i, j]) for j in range(b)] for i in range(b)])  # (b r, b r)
print("P", P.shape, " S", S.shape, " Q", Q.shape)
assert P.shape == (m, b * r) and S.shape == (b * r, b * r) and Q.shape == (b * r, n)
np.testing.assert_allclose(P @ S @ Q, dW_ref, rtol=0, atol=1e-12)

# %% [markdown]
# ## The block structure
#
# Left: $\Delta W$ with its $3 \times 3$ blocks; every block has rank at most $r = 2$, but the
# blocks differ because each has its own diagonal. Right: the same $\sigma$ seen per rank
# channel $k$ — the $b \times b$ matrices $M_k = (\sigma_{ij}[k])_{ij}$ that mix the blocks.

# %%
fig, axes = plt.subplots(1, 1 + r, figsize=(10, 3.2), gridspec_kw={"width_ratios": [n] + [b] * r})  # equal cell sizes
lim = np.abs(dW).max()
axes[0].imshow(dW, cmap="RdBu_r", vmin=-lim, vmax=lim)
for e in edges(row_sizes)[1:-1]:
    axes[0].axhline(e - 0.5, color="k", lw=1.5)
for e in edges(col_sizes)[1:-1]:
    axes[0].axvline(e - 0.5, color="k", lw=1.5)
axes[0].set_title(f"ΔW ({m}×{n}), b={b}, r={r}: rank {numerical_rank(dW)}")
for k in range(r):
    slim = np.abs(sigma).max()
    axes[1 + k].imshow(sigma[:, :, k], cmap="RdBu_r", vmin=-slim, vmax=slim)
    axes[1 + k].set_title(f"M_{k} = sigma[:, :, {k}]")
    axes[1 + k].set_xlabel("block j")
    axes[1 + k].set_ylabel("block i")
fig.tight_layout()
plt.show()

# %% [markdown]
# ## The reductions
#
# 1. $\Sigma \equiv 1$: $\Delta W = BA$, plain LoRA.
# 2. $\sigma_{ij} = 0$ for $i \ne j$: the off-diagonal blocks vanish and block $i$ is the
#    mini-LoRA $B_i \Sigma_{ii} A_i$.
# 3. $\sigma_{ij} = u_i \odot v_j$ (separable): $\Delta W = \tilde B \tilde A$ with
#    $\tilde B_i = B_i \,\mathrm{diag}(u_i)$ and $\tilde A_j = \mathrm{diag}(v_j)\, A_j$, so rank $\le r$.

# %%
# 1. Σ ≡ 1 is LoRA.
dW_lora = numpy_ref.delta_weight(B, A, np.ones((b, b, r)))
np.testing.assert_allclose(dW_lora, B @ A, rtol=0, atol=1e-12)

# 2. A zero off-diagonal is block-diagonal: off-diagonal blocks exactly zero, diagonal blocks the mini-LoRAs.
sigma_bd = sigma * np.eye(b)[:, :, None]  # (b, b, r), sigma[i, j] = 0 for i != j
dW_bd = numpy_ref.delta_weight(B, A, sigma_bd)
rows, cols = edges(row_sizes), edges(col_sizes)
for i in range(b):
    for j in range(b):
        block = dW_bd[rows[i] : rows[i + 1], cols[j] : cols[j + 1]]
        if i != j:
            assert np.all(block == 0), (i, j)
        else:
            mini_lora = B[rows[i] : rows[i + 1]] @ np.diag(sigma[i, i]) @ A[:, cols[i] : cols[i + 1]]
            np.testing.assert_allclose(block, mini_lora, rtol=0, atol=1e-12)

# 3. A separable Σ collapses to rank r.
u, v = rng.standard_normal((b, r)), rng.standard_normal((b, r))
sigma_sep = u[:, None, :] * v[None, :, :]  # (b, b, r): sigma[i, j] = u_i * v_j
dW_sep = numpy_ref.delta_weight(B, A, sigma_sep)
B_tilde = np.concatenate([B[rows[i] : rows[i + 1]] * u[i] for i in range(b)])  # (m, r)
A_tilde = np.concatenate([v[j][:, None] * A[:, cols[j] : cols[j + 1]] for j in range(b)], axis=1)  # (r, n)
np.testing.assert_allclose(dW_sep, B_tilde @ A_tilde, rtol=0, atol=1e-12)

ranks = {
    "BoRA (random σ)": numerical_rank(dW_ref),
    "Σ ≡ 1 (LoRA)": numerical_rank(dW_lora),
    "block-diagonal": numerical_rank(dW_bd),
    "separable σ": numerical_rank(dW_sep),
}
for name, rank in ranks.items():
    print(f"{name:>18}: rank {rank}")
bd_bound = sum(min(r, mi, nj) for mi, nj in zip(row_sizes, col_sizes))
assert ranks == {"BoRA (random σ)": 6, "Σ ≡ 1 (LoRA)": r, "block-diagonal": bd_bound, "separable σ": r}, ranks

fig, axes = plt.subplots(1, 4, figsize=(12, 2.8))
for ax, (name, M) in zip(axes, [("BoRA (random σ)", dW_ref), ("Σ ≡ 1 (LoRA)", dW_lora), ("block-diagonal", dW_bd), ("separable σ", dW_sep)]):
    lim = np.abs(M).max()
    ax.imshow(M, cmap="RdBu_r", vmin=-lim, vmax=lim)
    ax.set_title(f"{name}\nrank {ranks[name]}")
    ax.set_xticks([])
    ax.set_yticks([])
fig.tight_layout()
plt.show()

# %% [markdown]
# ## The rank bound
#
# $$\mathrm{rank}\,\Delta W \le \rho = \min\Big(\sum_i \min(r, m_i), \sum_j \min(r, n_j)\Big),$$
#
# which for `array_split` sizes equals $\min(br, m, n)$ (Lemma 2 on the theory page), and
# Gaussian factors attain it with probability 1. First, random factors on even and uneven
# shapes, including $r$ larger than a block and $b = 1$ (LoRA):

# %%
shapes = [  # (m, n, r, b)
    (10, 13, 2, 3),  # the example above
    (64, 48, 4, 4),  # even split
    (37, 29, 3, 5),  # uneven in both dimensions
    (12, 40, 5, 4),  # row blocks of 3 < r = 5: capped by m
    (9, 7, 5, 7),  # b = min(m, n), blocks of size 1 and 2
    (50, 50, 16, 8),  # r = 16 larger than every block (6 or 7): full rank 50
    (100, 80, 8, 1),  # b = 1: LoRA-sized, rank r
]
print(f"{'m':>4} {'n':>4} {'r':>3} {'b':>3}  {'bound':>5} {'min(br,m,n)':>11} {'measured':>8} {'LoRA':>5}")
for m_, n_, r_, b_ in shapes:
    dW_ = numpy_ref.delta_weight(rng.standard_normal((m_, r_)), rng.standard_normal((r_, n_)), rng.standard_normal((b_, b_, r_)))
    bound, measured = rank_bound(m_, n_, r_, b_), numerical_rank(dW_)
    print(f"{m_:>4} {n_:>4} {r_:>3} {b_:>3}  {bound:>5} {min(b_ * r_, m_, n_):>11} {measured:>8} {min(r_, m_, n_):>5}")
    assert measured == bound == min(b_ * r_, m_, n_), f"expected rank {bound}, got {measured}"

# %% [markdown]
# Next, the **explicit attaining choice** from part (b) of the proof. It works for any
# partition into non-empty blocks: row pair $(i, p)$, $p < \min(r, m_i)$, enumerated in order,
# gets channel $t \bmod r$; the same for columns; $\sigma$ makes each channel's block a
# partial identity. All entries are 0 or 1, and the resulting $\Delta W$ has at most one 1 in
# every row and column, so its rank is the number of ones — an exact count, no tolerance.


# %%
def attaining_factors(row_sizes, col_sizes, r):
    """0/1 factors (B, A, sigma) whose ΔW has rank exactly min(Σ min(r, m_i), Σ min(r, n_j))."""
    nb = len(row_sizes)
    B = np.zeros((sum(row_sizes), r))  # (m, r)
    A = np.zeros((r, sum(col_sizes)))  # (r, n)
    sigma = np.zeros((nb, nb, r))  # (b, b, r)
    row_users = [[] for _ in range(r)]  # row_users[c]: blocks i whose rows use channel c, in order
    col_users = [[] for _ in range(r)]
    t = 0
    for i, (start, size) in enumerate(zip(edges(row_sizes), row_sizes)):
        for p in range(min(r, size)):
            B[start + p, t % r] = 1.0
            row_users[t % r].append(i)
            t += 1
    t = 0
    for j, (start, size) in enumerate(zip(edges(col_sizes), col_sizes)):
        for q in range(min(r, size)):
            A[t % r, start + q] = 1.0
            col_users[t % r].append(j)
            t += 1
    for c in range(r):  # channel c: the t-th row block meets the t-th column block
        for i, j in zip(row_users[c], col_users[c]):
            sigma[i, j, c] = 1.0
    return B, A, sigma


def rho(row_sizes, col_sizes, r):
    return min(sum(min(r, s) for s in row_sizes), sum(min(r, s) for s in col_sizes))


partitions = [  # (row sizes, column sizes, r): array_split sizes first, then arbitrary ones
    (block_sizes(10, 3), block_sizes(13, 3), 2),
    (block_sizes(12, 4), block_sizes(40, 4), 5),
    (block_sizes(50, 8), block_sizes(50, 8), 16),
    ((3, 1), (1, 3), 2),  # unbalanced: rho = 3 < min(m, n, b r) = 4
    ((5, 1, 1), (2, 2, 3), 3),
    ((1, 6, 2, 2), (4, 4, 1, 1), 3),
]
for rs, cs, r_ in partitions:
    Bc, Ac, sc = attaining_factors(rs, cs, r_)
    dWc = delta_weight_by_hand(Bc, Ac, sc, rs, cs)
    assert set(np.unique(dWc)) <= {0.0, 1.0}
    assert (dWc.sum(axis=0) <= 1).all() and (dWc.sum(axis=1) <= 1).all()  # a partial permutation matrix
    exact_rank = int(dWc.sum())
    # ...and random factors on the same partition attain the same value (part (c) of the proof).
    dWr = delta_weight_by_hand(rng.standard_normal(Bc.shape), rng.standard_normal(Ac.shape), rng.standard_normal(sc.shape), rs, cs)
    print(f"rows {rs}, cols {cs}, r={r_}: rho={rho(rs, cs, r_)}, construction {exact_rank}, random {numerical_rank(dWr)}")
    assert exact_rank == numerical_rank(dWr) == rho(rs, cs, r_)
    if rs == block_sizes(sum(rs), len(rs)) and cs == block_sizes(sum(cs), len(cs)):  # bora_ref's own sizes
        assert rho(rs, cs, r_) == rank_bound(sum(rs), sum(cs), r_, len(rs))
        np.testing.assert_array_equal(numpy_ref.delta_weight(Bc, Ac, sc), dWc)

# %% [markdown]
# ## Parameter counts
#
# LoRA trains $r(m + n)$ parameters ($A$ and $B$); BoRA adds the $b^2 r$ entries of $\sigma$.
# `param_count` states the formula; a real `BoRALinear` counts its trainable tensors.

# %%
for m_, n_, r_, b_ in [(4096, 4096, 8, 8), (768, 768, 8, 16), (1536, 384, 8, 4), (37, 29, 3, 5)]:
    layer = BoRALinear(in_features=n_, out_features=m_, r=r_, b=b_)
    got = sum(p.numel() for p in layer.parameters() if p.requires_grad)
    expected = r_ * (m_ + n_) + b_ * b_ * r_
    print(f"({m_}, {n_}) r={r_} b={b_}: expected {expected}, got {got}  (param_count: {param_count(m_, n_, r_, b_)})")
    assert got == expected == param_count(m_, n_, r_, b_).total
    assert layer.lora_A.shape == (r_, n_) and layer.lora_B.shape == (m_, r_) and layer.sigma.shape == (b_, b_, r_)
    del layer

# %% [markdown]
# The same on a model: `apply_bora` replaces the matching `nn.Linear` layers in place and
# freezes everything else, so the trainable parameters are exactly the adapters'.

# %%
mlp = torch.nn.Sequential(torch.nn.Linear(384, 1536), torch.nn.GELU(), torch.nn.Linear(1536, 384))
apply_bora(mlp, target_modules=["0", "2"], r=8, b=4)
got = sum(p.numel() for p in mlp.parameters() if p.requires_grad)
expected = param_count(1536, 384, 8, 4).total + param_count(384, 1536, 8, 4).total
print(mlp)
print(f"expected {expected}, got {got}")
assert got == expected == 2 * (8 * (1536 + 384) + 4 * 4 * 8)

# %% [markdown]
# **Parameters per rank.** To reach rank $R = br \le \min(m, n)$, BoRA with $r = R/b$ needs
# $R\,((m + n)/b + b)$ parameters against LoRA's $R(m + n)$; the minimum over $b$ is at
# $b = \sqrt{m + n}$. For a $4096 \times 4096$ projection and $R = 128$, over the $b$ that
# divide $R$:

# %%
m_, n_, R = 4096, 4096, 128
lora = param_count(m_, n_, R, 1).lora
print(f"LoRA, rank {R}: {lora:,} parameters")
print(f"{'b':>4} {'r':>4} {'params':>10} {'of LoRA':>8}")
costs = {}
for b_ in [d for d in range(1, R + 1) if R % d == 0]:
    r_ = R // b_
    assert rank_bound(m_, n_, r_, b_) == R  # every one of them reaches rank R
    costs[b_] = param_count(m_, n_, r_, b_).total
    assert costs[b_] == R * ((m_ + n_) // b_ + b_)  # exact: b divides m + n here
    print(f"{b_:>4} {r_:>4} {costs[b_]:>10,} {costs[b_] / lora:>8.2%}")
best = min(costs.values())
print(f"best: b in {[b_ for b_, c in costs.items() if c == best]}, {best:,} parameters; "
      f"continuous optimum b = sqrt(m + n) = {np.sqrt(m_ + n_):.1f}: {2 * R * np.sqrt(m_ + n_):,.0f}")
assert lora == 1_048_576 and costs[16] == 67_584
assert best == 24_576 and [b_ for b_, c in costs.items() if c == best] == [64, 128]
assert best >= 2 * R * np.sqrt(m_ + n_)  # AM-GM: no b beats the continuous optimum

bb = np.linspace(1, 256, 400)
fig, ax = plt.subplots(figsize=(6, 3.2))
ax.plot(bb, R * ((m_ + n_) / bb + bb), label="R((m+n)/b + b)")
ax.plot(list(costs), list(costs.values()), "o", label="b dividing R")
ax.axvline(np.sqrt(m_ + n_), color="gray", ls="--", label="b = sqrt(m+n)")
ax.set_xscale("log")
ax.set_yscale("log")
ax.set_xlabel("b")
ax.set_ylabel(f"parameters for rank {R}")
ax.legend()
fig.tight_layout()
plt.show()
