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
# **Start here** (then [2. Rank analysis](../02_rank_analysis/) and
# [3. Fine-tuning](../03_finetune/)). You build BoRA yourself, check it against the library,
# and train it. Every claim is checked by an `assert`, so running the notebook is a test (the
# test suite and the docs build both run it, in well under a minute on a CPU).
#
# 1. **The picture**: $B$ cut into row blocks, $A$ into column blocks, a $b \times b$ grid of
#    diagonals $\Sigma_{ij}$.
# 2. **The forward pass by hand** (about 20 lines: project with $A_j$, mix with $\Sigma_{ij}$,
#    lift with $B_i$), checked against `numpy_ref.bora_matmul` and graded by
#    `bora_ref.testing.check_implementation`.
# 3. **`BoRALinear`** computes the same thing, once you feed it the *effective* Σ: `layer.sigma`
#    is the raw parameter $\sigma$, and $\Sigma = \exp(\sigma / \mathrm{mean}|\sigma|)$.
# 4. **$\Delta W$ and the reductions**: LoRA, block-diagonal and separable Σ; what the
#    off-diagonal blocks buy.
# 5. **Training LoRA and BoRA side by side** on two synthetic targets, with the loop in view:
#    one where BoRA wins and one where it does not — rank is not expressiveness.
# 6. **The rank bound** and **parameter counts**, with the proof's explicit construction.
#
# Exercises (with collapsible solutions, each checked by an `assert`) are spread through the
# notebook. Notation, as everywhere in `bora_ref`: `B (m, r)`, `A (r, n)`, `sigma (b, b, r)`,
# `ΔW (m, n)`; σ and Σ always mean BoRA's diagonals, and singular values are written $s_k$.
# The proofs are on the [Theory and proofs](../../theory/) page.
# [Download this notebook](01_bora_from_scratch.ipynb).

# %%
# %matplotlib inline
import time

import numpy as np
import torch
from IPython.display import display

import bora_ref
from bora_ref import BoRALinear, apply_bora, block_sizes, numerical_rank, numpy_ref, param_count, rank_bound
from bora_ref.partition import block_slices
from bora_ref.report import plots
from bora_ref.testing import OracleFailure, check_implementation

rng = np.random.default_rng(0)
torch.manual_seed(0)
torch.set_num_threads(1)  # tiny problems: one thread is fastest and keeps timings stable
print("bora_ref", bora_ref.__version__)

# %% [markdown]
# ## The picture
#
# LoRA learns $\Delta W = BA$ with $B$ of shape $(m, r)$ and $A$ of shape $(r, n)$: rank at most
# $r$. BoRA cuts the rows of $B$ into $b$ blocks $B_i$ and the columns of $A$ into $b$ blocks
# $A_j$ (sizes as `numpy.array_split`: larger blocks first), and gives every pair $(i, j)$ its
# own diagonal $\Sigma_{ij}$ of $r$ entries:
#
# $$\Delta W_{[i,j]} = B_i \, \mathrm{diag}(\Sigma_{ij}) \, A_j, \qquad i, j = 1, \dots, b.$$
#
# The $b^2$ diagonals are the only new parameters ($b^2 r$ of them, against LoRA's $r(m + n)$).
# With all $\Sigma_{ij} = 1$ this is LoRA again; with different diagonals every block of
# $\Delta W$ mixes the same $r$ directions differently, and the rank can grow to $br$.

# %%
display(plots.plot_bora_schematic(m=12, n=15, r=2, b=3))

# %% [markdown]
# ## The forward pass, by hand
#
# A layer never forms $\Delta W$: it computes $y = x \, \Delta W^T$ directly, in three steps.
# For an input $x$ of shape `(..., n)` cut into column blocks $x_j$:
#
# 1. **project**: $z_j = x_j A_j^T$, shape `(..., r)`: each input block meets only its own $A_j$;
# 2. **mix**: $u_i = \sum_j \Sigma_{ij} \odot z_j$, shape `(..., r)`: elementwise, channel by channel;
# 3. **lift**: $y_i = u_i B_i^T$, shape `(..., m_i)`, and $y$ is the $y_i$ side by side.
#
# Write it in PyTorch (the grader below needs torch tensors and autograd). `block_slices(dim, b)`
# gives the `slice` of every block.


# %%
def my_bora_matmul(x, B, A, sigma):
    """y = x ΔW^T for x (..., n), B (m, r), A (r, n), sigma (b, b, r) — the three steps."""
    m, n, b = B.shape[0], A.shape[1], sigma.shape[0]
    rows, cols = block_slices(m, b), block_slices(n, b)
    # 1. project: z[j] = x_j A_j^T, (..., r)
    z = [x[..., cols[j]] @ A[:, cols[j]].T for j in range(b)]
    y = []
    for i in range(b):
        # 2. mix: u_i = sum_j Σ_ij ⊙ z_j, (..., r)
        u = sum(sigma[i, j] * z[j] for j in range(b))
        # 3. lift: y_i = u_i B_i^T, (..., m_i)
        y.append(u @ B[rows[i]].T)
    return torch.cat(y, dim=-1)  # (..., m)


m, n, r, b = 10, 13, 2, 3
x = torch.randn(5, n, dtype=torch.float64)  # (batch, n)
B = torch.randn(m, r, dtype=torch.float64)  # (m, r)
A = torch.randn(r, n, dtype=torch.float64)  # (r, n)
Sigma = torch.randn(b, b, r, dtype=torch.float64)  # (b, b, r): Sigma[i, j] is the diagonal Σ_ij
print("row blocks m_i:", block_sizes(m, b), " column blocks n_j:", block_sizes(n, b))

y = my_bora_matmul(x, B, A, Sigma)
y_ref = numpy_ref.bora_matmul(x.numpy(), B.numpy(), A.numpy(), Sigma.numpy())
dW_ref = numpy_ref.delta_weight(B.numpy(), A.numpy(), Sigma.numpy())  # (m, n), formed only to check
print(f"max |mine - numpy_ref.bora_matmul| = {np.abs(y.numpy() - y_ref).max():.1e}")
# float64, a few dozen products per entry: agreement to a few units of rounding.
np.testing.assert_allclose(y.numpy(), y_ref, rtol=0, atol=1e-12)
np.testing.assert_allclose(y.numpy(), x.numpy() @ dW_ref.T, rtol=0, atol=1e-12)

# %% [markdown]
# ### Grade it
#
# `check_implementation` runs a kernel on a list of hard cases — uneven blocks, $r$ larger than
# a block, $b = 1$, $b = \min(m, n)$, 1-D, 3-D, empty and non-contiguous inputs — in float64,
# float32 and bfloat16, with gradients, against the NumPy reference in float64. It raises an
# `OracleFailure` naming the first case that fails; otherwise it returns a report.

# %%
start = time.perf_counter()
report = check_implementation(my_bora_matmul, grad=True)
print(f"{report.cases_run} (case, dtype) runs passed in {time.perf_counter() - start:.1f} s; "
      "worst error / tolerance per dtype: " + ", ".join(f"{str(d)[6:]} {v:.2f}" for d, v in report.worst_ratio.items()))
assert report.cases_run >= 3 * 20 and all(v <= 1 for v in report.worst_ratio.values())

# %% [markdown]
# A plausible bug — mixing with $\Sigma_{ji}$ instead of $\Sigma_{ij}$ — passes on square toy
# inputs with a symmetric Σ, and the grader catches it at once:


# %%
def transposed_mix(x, B, A, sigma):
    return my_bora_matmul(x, B, A, sigma.transpose(0, 1))


try:
    check_implementation(transposed_mix, dtypes=(torch.float64,))
    raise AssertionError("the grader missed a bug")
except OracleFailure as failure:
    print(str(failure).splitlines()[0])

# %% [markdown]
# ## `BoRALinear` and the effective Σ
#
# `BoRALinear(n, m, r, b)` is a frozen `nn.Linear` plus this update:
# $y = \mathrm{base}(x) + \frac{\alpha}{r} \, x \, \Delta W^T$, with `layer.scaling` $= \alpha / r$ (1 by default).
# Its parameter `layer.sigma` is **not** Σ. It is the raw $\sigma$, and the layer uses the
# paper's parameterisation
#
# $$\Sigma = \exp\big(\sigma / \mathrm{mean}|\sigma|\big)$$
#
# (the mean over all $b^2 r$ entries), which `layer.effective_sigma()` returns. Feeding the raw
# `layer.sigma` to your forward — or to `numpy_ref.delta_weight` — is the first pitfall.

# %%
layer = BoRALinear(n, m, r=r, b=b, dtype=torch.float64)  # in_features=n, out_features=m
with torch.no_grad():
    layer.lora_B.normal_()  # B starts at 0 (the layer starts as its base); give it a value
with torch.no_grad():
    update = layer(x) - layer.base(x)  # the adapter's contribution, (batch, m)
    right = layer.scaling * my_bora_matmul(x, layer.lora_B, layer.lora_A, layer.effective_sigma())
    wrong = layer.scaling * my_bora_matmul(x, layer.lora_B, layer.lora_A, layer.sigma)
rel = lambda a, ref: float((a - ref).norm() / ref.norm())  # noqa: E731
print(f"with effective_sigma(): relative error {rel(right, update):.1e}")
print(f"with the raw layer.sigma: relative error {rel(wrong, update):.2f}, and the output is "
      f"{float(update.norm() / wrong.norm()):.0f}× too small")
torch.testing.assert_close(right, update, rtol=1e-12, atol=1e-12)
assert rel(wrong, update) > 0.5

sig = layer.sigma.detach()
print(f"raw σ: mean |σ| = {sig.abs().mean():.3f}, entries in [{sig.min():.2f}, {sig.max():.2f}]; "
      f"Σ = exp(σ / mean|σ|) in [{layer.effective_sigma().min():.2f}, {layer.effective_sigma().max():.2f}]")

# %% [markdown]
# The raw σ starts small (uniform like `lora_A`, about $\pm 1/\sqrt{n}$), while Σ lies around 1,
# spread over about $e^{\pm 1}$: the raw values are off by the factor printed above. (With
# `sigma_param="raw"`, Σ = σ itself, initialised to ones.)
#
# ### Exercise 1: what `exp_norm` cannot represent
#
# Every Σ of this parameterisation is positive, and $\mathrm{mean}|\ln \Sigma| =
# \mathrm{mean}|\sigma| / \mathrm{mean}|\sigma| = 1$ for every $\sigma \ne 0$. So two updates are
# out of reach: the point Σ ≡ 1 itself (it would need mean $|\ln \Sigma| = 0$; LoRA *updates*
# stay reachable, since $\sigma = c \cdot 1$ gives $\Sigma = e \cdot 1$ and $\Delta W = e\,BA$), and a
# block-diagonal Σ (zero off-diagonal blocks). Try to get the second anyway: with $b = 3$, put
# $\sigma = 0$ on the diagonal blocks and $\sigma = -t$ off them. How small do the off-diagonal
# Σ get as $t \to \infty$?
#
# <details><summary>Solution</summary>
#
# Six of the nine blocks hold $-t$, so $\mathrm{mean}|\sigma| = 6t/9$ and the off-diagonal
# $\Sigma = \exp(-t / (6t/9)) = e^{-3/2} \approx 0.22$ whatever $t$: the normalisation undoes
# the scale. (In general $\Sigma \ge e^{-b^2 r}$, reached only when a single entry holds all of
# $\mathrm{mean}|\sigma|$.) The next cell checks this.
#
# </details>

# %%
probe = BoRALinear(n, m, r=r, b=b, dtype=torch.float64)
off_diagonal = ~torch.eye(b, dtype=torch.bool)  # (b, b)
for t in (1.0, 10.0, 1e6):
    with torch.no_grad():
        probe.sigma.zero_()
        probe.sigma[off_diagonal] = -t
    S_eff = probe.effective_sigma().detach()
    print(f"t = {t:g}: off-diagonal Σ = {S_eff[off_diagonal].max():.4f}, mean |ln Σ| = {S_eff.log().abs().mean():.4f}")
    assert torch.allclose(S_eff[off_diagonal], torch.tensor(np.exp(-1.5), dtype=torch.float64))
    assert (S_eff > 0).all() and abs(S_eff.log().abs().mean().item() - 1) < 1e-12

# %% [markdown]
# ## ΔW and its blocks
#
# The same update as a matrix: $\Delta W_{[i,j]} = B_i \, \mathrm{diag}(\Sigma_{ij}) \, A_j$,
# literally. This version takes the block sizes as arguments, so that it also works for
# partitions `bora_ref` never makes (used in the rank-bound section).


# %%
def edges(sizes):
    """Block boundaries: sizes (3, 2) -> [0, 3, 5]."""
    return np.concatenate([[0], np.cumsum(sizes)])


def delta_weight_by_hand(B, A, sigma, row_sizes, col_sizes):
    """ΔW with ΔW[block i, block j] = B_i @ diag(sigma[i, j]) @ A_j, for any block sizes."""
    rows, cols = edges(row_sizes), edges(col_sizes)
    dW = np.zeros((B.shape[0], A.shape[1]))  # (m, n)
    for i in range(len(row_sizes)):
        for j in range(len(col_sizes)):
            B_i, A_j = B[rows[i] : rows[i + 1]], A[:, cols[j] : cols[j + 1]]  # (m_i, r), (r, n_j)
            dW[rows[i] : rows[i + 1], cols[j] : cols[j + 1]] = B_i @ np.diag(sigma[i, j]) @ A_j
    return dW


B, A, sigma = B.numpy(), A.numpy(), Sigma.numpy()  # from here on: NumPy, float64
row_sizes, col_sizes = block_sizes(m, b), block_sizes(n, b)
dW = delta_weight_by_hand(B, A, sigma, row_sizes, col_sizes)
np.testing.assert_allclose(dW, dW_ref, rtol=0, atol=1e-12)
display(plots.plot_block_heatmap(B, A, sigma))

# %% [markdown]
# Each block has rank at most $r = 2$, but the blocks differ, because each has its own
# diagonal. Seen per rank channel $k$, Σ is $r$ small $b \times b$ matrices
# $M_k = (\Sigma_{ij}[k])_{ij}$ that mix the blocks (one colour scale for both):

# %%
display(plots.plot_matrices({f"M_{k} = Σ[:, :, {k}]": sigma[:, :, k] for k in range(r)},
                            label="Σ_ij[k]", xlabel="input block j", ylabel="output block i"))

# %% [markdown]
# ## The reductions, and what the off-diagonal blocks buy
#
# 1. $\Sigma \equiv 1$: $\Delta W = BA$, plain LoRA, rank $\le r$.
# 2. $\Sigma_{ij} = 0$ for $i \ne j$ (**block-diagonal**): the off-diagonal blocks of $\Delta W$
#    vanish, and block $i$ is the mini-LoRA $B_i \Sigma_{ii} A_i$.
# 3. $\Sigma_{ij} = u_i \odot v_j$ (**separable**): $\Delta W = \tilde B \tilde A$ with
#    $\tilde B_i = B_i \,\mathrm{diag}(u_i)$, $\tilde A_j = \mathrm{diag}(v_j)\, A_j$: rank $\le r$.

# %%
dW_lora = numpy_ref.delta_weight(B, A, np.ones((b, b, r)))
np.testing.assert_allclose(dW_lora, B @ A, rtol=0, atol=1e-12)

sigma_bd = sigma * np.eye(b)[:, :, None]  # (b, b, r), Σ_ij = 0 for i != j
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

u, v = rng.standard_normal((b, r)), rng.standard_normal((b, r))
sigma_sep = u[:, None, :] * v[None, :, :]  # (b, b, r): Σ_ij = u_i ⊙ v_j
dW_sep = numpy_ref.delta_weight(B, A, sigma_sep)
B_tilde = np.concatenate([B[rows[i] : rows[i + 1]] * u[i] for i in range(b)])  # (m, r)
A_tilde = np.concatenate([v[j][:, None] * A[:, cols[j] : cols[j + 1]] for j in range(b)], axis=1)  # (r, n)
np.testing.assert_allclose(dW_sep, B_tilde @ A_tilde, rtol=0, atol=1e-12)

cases = {"BoRA (random Σ)": dW_ref, "Σ ≡ 1 (LoRA)": dW_lora, "block-diagonal Σ": dW_bd, "separable Σ": dW_sep}
ranks = {name: numerical_rank(M) for name, M in cases.items()}
for name, rank in ranks.items():
    print(f"{name:>18}: rank {rank}")
assert ranks == {"BoRA (random Σ)": 6, "Σ ≡ 1 (LoRA)": r, "block-diagonal Σ": 6, "separable Σ": r}, ranks
display(plots.plot_matrices({f"{name}: rank {ranks[name]}": M for name, M in cases.items()}, label="entry of ΔW",
                            xlabel="column (input feature)", ylabel="row (output feature)"))

# %% [markdown]
# **Same rank, not the same thing.** The block-diagonal Σ reaches rank $br = 6$, like full
# BoRA: rank comes from the blocks being different, not from the off-diagonal blocks. What the
# off-diagonal blocks buy is **mixing across blocks**: with a block-diagonal Σ, output block $i$
# sees only input block $i$, so the update is $b$ independent mini-LoRAs of rank $r$, each
# with its own share of $B$ and $A$ and $b r$ diagonal entries in all. Full BoRA couples every
# input block to every output block through the same factors, with $b^2 r$ diagonal entries:
# more degrees of freedom at the same rank, and a dense $\Delta W$.
#
# **Rank is not expressiveness.** The rank bound says how many directions an update *can* use,
# not which updates are reachable. A rank-$br$ BoRA update has only $r(m + n) + b^2 r$
# parameters; general rank-$br$ matrices need about $br(m + n)$. So BoRA reaches a thin,
# structured slice of the rank-$br$ matrices. Whether that slice contains a good update depends
# on the target — the next section trains both adapters on one target of each kind.
#
# ### Exercise 2: a Σ that gives rank exactly 5
#
# With $m = 10$, $n = 13$, $r = 2$, $b = 3$ random factors give rank $br = 6$. Build a σ for
# which the rank is exactly 5. Hint: per channel $k$, $\Delta W$ gets the contribution
# $P_k M_k Q_k$ with $P_k = \mathrm{blockdiag}(B_i[:, k])$ and $Q_k = \mathrm{blockdiag}(A_j[k, :])$,
# so for generic factors $\mathrm{rank}\,\Delta W = \sum_k \mathrm{rank}\, M_k$.
#
# <details><summary>Solution</summary>
#
# Keep $M_0$ random (rank 3) and make $M_1$ of rank 2, e.g. the sum of two outer products:
# $3 + 2 = 5$. The next cell checks it.
#
# </details>

# %%
sigma5 = rng.standard_normal((b, b, r))  # M_0 = sigma5[:, :, 0] random: rank 3
sigma5[:, :, 1] = rng.standard_normal((b, 2)) @ rng.standard_normal((2, b))  # M_1 of rank 2
print("rank of each M_k:", [int(np.linalg.matrix_rank(sigma5[:, :, k])) for k in range(r)],
      "-> rank of ΔW:", numerical_rank(numpy_ref.delta_weight(B, A, sigma5)))
assert numerical_rank(numpy_ref.delta_weight(B, A, sigma5)) == 5

# %% [markdown]
# ## Training LoRA and BoRA side by side
#
# A regression you can watch: learn a fixed $64 \times 64$ target update $\Delta W^*$ from
# random inputs, $\min \mathbb{E}_x \|x \Delta W^T - x \Delta W^{*T}\|^2$, with the base weight
# set to zero. Both adapters get the **same parameter budget**: BoRA with $r = 4$, $b = 8$ has
# $4 \cdot 128 + 64 \cdot 4 = 768$ parameters, exactly LoRA with $r = 6$. Adam, 400 steps of
# 128 random inputs — the whole loop is below.
#
# - **Target 1, block-structured**: $\Delta W^*$ is itself a BoRA update ($r = 4$, $b = 8$,
#   random factors: rank 32). LoRA's rank 6 cannot follow it.
# - **Target 2, generic**: $\Delta W^* = U \mathrm{diag}(s) V^T$ with random orthogonal $U, V$
#   and decaying singular values $s_k = 0.7^k$, full rank. The best rank-6 approximation
#   (Eckart–Young) leaves a relative error $\approx 0.7^6 = 0.12$, and LoRA finds it; BoRA's
#   extra rank comes with block structure this target does not have.


# %%
def adapter(r, b, lora, seed):
    """A BoRALinear on a zero, frozen 64×64 base: LoRA is b=1 with Σ frozen at 1."""
    torch.manual_seed(seed)
    layer = BoRALinear(64, 64, r=r, b=b, sigma_param="raw" if lora else "exp_norm", bias=False)
    with torch.no_grad():
        layer.base.weight.zero_()
    layer.sigma.requires_grad_(not lora)
    return layer


def train(layer, target, seed, steps=400, lr=1e-2):
    """Adam on the mean squared error of x ΔW^T against x ΔW*^T; returns the loss per step."""
    gen = torch.Generator().manual_seed(seed)
    params = [p for p in layer.parameters() if p.requires_grad]
    opt = torch.optim.Adam(params, lr=lr)
    losses = []
    for _ in range(steps):
        x = torch.randn(128, 64, generator=gen)  # (batch, n)
        y_star = x @ target.T  # (batch, m)
        loss = ((layer(x) - y_star) ** 2).sum(1).mean() / (target**2).sum()  # ≈ ‖ΔW - ΔW*‖² / ‖ΔW*‖²
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    return losses


def targets(seed):
    gen = torch.Generator().manual_seed(100 + seed)
    teacher = adapter(4, 8, lora=False, seed=100 + seed)
    with torch.no_grad():
        for p in (teacher.lora_A, teacher.lora_B, teacher.sigma):
            p.copy_(torch.randn(p.shape, generator=gen))
        block = teacher.delta_weight()
    U, _ = torch.linalg.qr(torch.randn(64, 64, generator=gen))
    V, _ = torch.linalg.qr(torch.randn(64, 64, generator=gen))
    generic = (U * 0.7 ** torch.arange(64.0)) @ V.T
    return {"block-structured": 8 * block / block.norm(), "generic": 8 * generic / generic.norm()}


start = time.perf_counter()
errors, curves = {}, {}
for seed in range(3):
    for kind, target in targets(seed).items():
        for name, (r_, b_, lora) in {"LoRA r=6": (6, 1, True), "BoRA r=4 b=8": (4, 8, False)}.items():
            layer = adapter(r_, b_, lora, seed)
            assert sum(p.numel() for p in layer.parameters() if p.requires_grad) == 768  # equal budget
            losses = train(layer, target, seed)
            with torch.no_grad():
                errors[kind, name, seed] = float((layer.delta_weight() - target).norm() / target.norm())
            if seed == 0:
                curves[f"{name}, {kind} target"] = losses
print(f"12 trainings in {time.perf_counter() - start:.1f} s")
print(f"{'target':>17} {'adapter':>13}  relative error ‖ΔW - ΔW*‖/‖ΔW*‖ per seed")
for kind in ("block-structured", "generic"):
    for name in ("LoRA r=6", "BoRA r=4 b=8"):
        print(f"{kind:>17} {name:>13}  " + "  ".join(f"{errors[kind, name, s]:.3f}" for s in range(3)))
display(plots.plot_curves(curves, xlabel="training step", ylabel="relative squared error ‖ΔW − ΔW*‖² / ‖ΔW*‖²",
                          title="seed 0: LoRA r=6 and BoRA r=4 b=8, 768 parameters each", logy=True))

# %% [markdown]
# The outcome is qualitative, and holds with a wide margin on every seed: on the
# block-structured target BoRA's error is well below LoRA's; on the generic one LoRA reaches the
# Eckart–Young optimum and BoRA stays about twice as far. Neither adapter is better in general.

# %%
for s in range(3):
    assert errors["block-structured", "BoRA r=4 b=8", s] < 0.75 * errors["block-structured", "LoRA r=6", s], s
    assert errors["generic", "LoRA r=6", s] < 0.75 * errors["generic", "BoRA r=4 b=8", s], s
    assert abs(errors["generic", "LoRA r=6", s] - 0.7**6) < 0.02  # LoRA finds the best rank-6 approximation

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
# ### Exercise 3: predict the rank of an uneven shape
#
# $m = 10$, $n = 7$, $r = 3$, $b = 4$. Write down the block sizes $m_i$, $n_j$, the two sums of
# the bound and the rank of random factors — before running the cell.
#
# <details><summary>Solution</summary>
#
# $m_i = (3, 3, 2, 2)$ and $n_j = (2, 2, 2, 1)$; $\sum_i \min(3, m_i) = 10$ and
# $\sum_j \min(3, n_j) = 7$, so the bound is $\min(10, 7) = 7$: full column rank, although
# $br = 12$ and every column block is smaller than $r$. The next cell checks it.
#
# </details>

# %%
m_, n_, r_, b_ = 10, 7, 3, 4
predicted = min(sum(min(r_, s) for s in (3, 3, 2, 2)), sum(min(r_, s) for s in (2, 2, 2, 1)))
measured = numerical_rank(numpy_ref.delta_weight(rng.standard_normal((m_, r_)), rng.standard_normal((r_, n_)),
                                                 rng.standard_normal((b_, b_, r_))))
print(f"block sizes {block_sizes(m_, b_)} and {block_sizes(n_, b_)}: predicted {predicted}, "
      f"rank_bound {rank_bound(m_, n_, r_, b_)}, measured {measured}")
assert block_sizes(m_, b_) == (3, 3, 2, 2) and block_sizes(n_, b_) == (2, 2, 2, 1)
assert predicted == rank_bound(m_, n_, r_, b_) == measured == 7

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

bb = np.geomspace(1, 256, 200)
display(plots.plot_curves({"R((m+n)/b + b), any real b": (bb, R * ((m_ + n_) / bb + bb)),
                           "b dividing R": (list(costs), list(costs.values())),
                           "LoRA, R(m+n)": (bb, np.full_like(bb, lora))},
                          xlabel="blocks b", ylabel=f"parameters for rank {R} (count)", logy=True, logx=True,
                          title=f"{m_}×{n_}: optimum at b = sqrt(m+n) = {np.sqrt(m_ + n_):.0f}"))

# %% [markdown]
# **Read "2.34% of LoRA's parameters" with care.** It is the price of the *rank*: with
# $b = 64$, 24,576 parameters give updates of rank 128. It is not the price of *LoRA-128's
# updates*: those form the whole set of rank-128 matrices, while BoRA's 24,576 parameters span
# a thin, block-structured slice of it. The training section above shows both sides: on a
# block-structured target the extra rank pays; on a generic one, LoRA with the same budget
# does better. Whether a real fine-tuning task is closer to the first or the second is an
# empirical question — notebook 3 measures it on a real model.
