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
# # 2. Rank analysis
#
# **What this notebook shows.** Read it after [1. BoRA from scratch](../01_bora_from_scratch/).
# Every claim is checked by an `assert`; the test suite and the docs build run the notebook.
# Notation: σ and Σ are BoRA's diagonals; the singular values of $\Delta W$ are
# $s_1 \ge s_2 \ge \dots$, and spectra are drawn as $s_k / s_1$.
#
# 1. Singular-value spectra of LoRA and BoRA on a real layer shape: LoRA has $r$ non-zero
#    singular values, BoRA `rank_bound(m, n, r, b)`; everything after that is rounding noise.
# 2. Rank against $b$: random factors reach the bound for every $b$, even or uneven, until it
#    saturates at $\min(m, n)$.
# 3. The separable-$\Sigma$ collapse: separable and identical diagonals give rank $r$ whatever
#    $b$, and giving blocks their own diagonal one at a time raises the rank step by step.
# 4. What float16/bfloat16 storage does to the measured rank: NumPy's rule returns 0, float64's
#    rule returns full rank, and the tolerance policy of `numerical_rank` returns the true rank.
# 5. Effective, stable and energy rank: scale-free summaries of a spectrum that the exact rank
#    cannot give.
# 6. The sweep on the layer shapes of real models (LLaMA-2-7B, Qwen2.5, MiniLM), with plots.
# 7. The structured SVD (no $(m, n)$ matrix) against the dense SVD on one shape.
#
# Three exercises with collapsible solutions: when the rank saturates, the rank of a
# float32-stored update, and the best $b$ for a $4096 \times 11008$ projection.
#
# Proofs: [Theory and proofs](../../theory/#rank-bound) (`docs/theory.md`); the tolerance
# policy in full: [Rank analysis](../../rank/) (`docs/rank.md`).
# [Download this notebook](02_rank_analysis.ipynb).

# %%
# %matplotlib inline
import time

import matplotlib.pyplot as plt
import numpy as np
import torch
from IPython.display import display

from bora_ref import (
    factor_rank,
    factor_rank_info,
    matrix_rank_info,
    numerical_rank,
    numpy_ref,
    param_count,
    rank_bound,
    singular_values,
    structured_svd,
)
from bora_ref.analysis import measures
from bora_ref.analysis.params import best_b
from bora_ref.report import plots, sweep

EPS64 = np.finfo(np.float64).eps

# %% [markdown]
# ## LoRA and BoRA spectra
#
# The MiniLM feed-forward projection, $m = 1536$, $n = 384$, with $r = 8$. `sample_factors`
# draws Gaussian factors; `sigma="identical"` puts one diagonal in every block, which is LoRA
# ($\Delta W = B \,\mathrm{diag}(d)\, A$). `singular_values` computes the spectrum from the
# factors (exact zeros after the core); the dense SVD of the formed $\Delta W$ shows what
# rounding leaves in place of those zeros.

# %%
m, n, r, b = 1536, 384, 8, 4
B, A, sigma = sweep.sample_factors(m, n, r, b, seed=0)  # (m, r), (r, n), (b, b, r)
_, _, sigma_lora = sweep.sample_factors(m, n, r, b, sigma="identical", seed=0)

dW = numpy_ref.delta_weight(B, A, sigma)  # (m, n), float64
dW_lora = numpy_ref.delta_weight(B, A, sigma_lora)
spectra = {
    f"BoRA b={b} (structured)": singular_values(B, A, sigma),
    f"BoRA b={b} (dense SVD)": np.linalg.svd(dW, compute_uv=False),
    "LoRA (dense SVD)": np.linalg.svd(dW_lora, compute_uv=False),
}
bound = rank_bound(m, n, r, b)
print(f"rank_bound = {bound}, BoRA rank = {numerical_rank(dW)}, LoRA rank = {numerical_rank(dW_lora)}")
assert numerical_rank(dW) == bound == b * r and numerical_rank(dW_lora) == r
S = spectra[f"BoRA b={b} (structured)"]
assert np.count_nonzero(S) == bound  # exact zeros after the core's b r values
dense = spectra[f"BoRA b={b} (dense SVD)"]
print(f"dense SVD beyond the bound: at most {dense[bound:].max() / dense[0]:.1e} s_1 (rounding noise)")
assert dense[bound:].max() < 100 * EPS64 * dense[0]
display(plots.plot_spectra(spectra, title=f"ΔW of a {m}×{n} layer, r={r}"))

# %% [markdown]
# ## Rank against b, up to the bound
#
# For a $768 \times 768$ layer (BERT-base) and $r = 8$, seventeen values of $b$ from 1 to 192:
# most divide 768, and 5, 7, 50 and 100 do not (uneven blocks). The measured rank of random
# factors equals `rank_bound`, which grows like $br$ until it saturates at $\min(m, n) = 768$
# (at $b = 96$). Σ adds $b^2 r$ parameters to LoRA's $r(m + n) = 12{,}288$: about 1% at
# $b = 4$, about as many as LoRA itself at $b \approx 39$, and at $b = 192$ the adapter has
# $25\times$ LoRA's parameters. Past saturation, more blocks only add parameters.

# %%
m2, n2, r2 = 768, 768, 8
bs = [1, 2, 3, 4, 5, 7, 8, 12, 16, 24, 32, 50, 64, 96, 100, 128, 192]
rows = sweep.rank_sweep([(m2, n2)], rs=[r2], bs=bs, seed=1)
print(f"{'b':>4} {'bound':>6} {'measured':>8} {'params':>8} {'of LoRA':>8}")
for row in rows:
    print(f"{row.b:>4} {row.bound:>6} {row.measured:>8} {row.total_params:>8} {row.total_params / row.lora_params:>8.2f}")
    assert row.measured == row.bound == min(row.b * r2, m2, n2), row
assert [row.bound for row in rows if row.b >= 96] == [768] * 4  # saturated
assert rows[-1].b == 192 and round(rows[-1].total_params / rows[-1].lora_params) == 25
display(plots.plot_rank_vs_b(rows))

# %% [markdown]
# ### Exercise 1: where does the rank saturate?
#
# For MiniLM's feed-forward projection ($m = 1536$, $n = 384$) and $r = 8$: what is the smallest
# $b$ whose bound reaches full rank, and how many parameters does Σ add there, relative to LoRA?
#
# <details><summary>Solution</summary>
#
# The bound is $\min(br, m, n) = \min(8b, 384)$, full at $b = 384 / 8 = 48$. Σ then has
# $48^2 \cdot 8 = 18{,}432$ parameters, against LoRA's $8 \cdot 1920 = 15{,}360$: $1.2\times$.
# The next cell checks it with `rank_sweep` (random factors, measured rank).
#
# </details>

# %%
rows48 = sweep.rank_sweep([(1536, 384)], rs=[8], bs=[46, 47, 48, 49], seed=5)
first_full = min(row.b for row in rows48 if row.measured == 384)
print(f"first b with full rank: {first_full}; Σ/LoRA parameters there: "
      f"{param_count(1536, 384, 8, first_full).sigma / param_count(1536, 384, 8, first_full).lora:.2f}")
assert first_full == 48 and [row.measured for row in rows48] == [368, 376, 384, 384]
assert param_count(1536, 384, 8, 48).sigma == 18_432 and param_count(1536, 384, 8, 48).lora == 15_360

# %% [markdown]
# ## The separable-Σ collapse
#
# If $\sigma_{ij} = u_i \odot v_j$ the update factors as $\tilde B \tilde A$ and has rank
# $\le r$ for every $b$ (Fact 3); one shared diagonal is the special case LoRA. What buys rank
# is diagonals that differ between blocks: in the partial-$\Sigma$ ablation, $k$ of the $b^2$
# blocks get their own diagonal, and the rank climbs from $r$ ($k = 0$) to the bound
# ($k = b^2$).

# %%
collapse = sweep.collapse_sweep([(m2, n2), (1536, 384)], rs=[4, 8], bs=[2, 8, 32], seed=2)
print(f"{'shape':>10} {'r':>2} {'b':>3} {'bound':>6} {'random':>6} {'separable':>9} {'identical':>9}")
for row in collapse:
    print(f"{row.m:>5}×{row.n:<4} {row.r:>2} {row.b:>3} {row.bound:>6} {row.random:>6} {row.separable:>9} {row.identical:>9}")
    assert row.random == row.bound and row.separable == row.identical == row.r, row

ablation = sweep.partial_sigma_ablation(m2, n2, r2, 8, seed=3)
ranks = [row.rank for row in ablation]
print("rank after k own diagonals, k = 0..64:", ranks)
assert ranks[0] == r2 and ranks[-1] == rank_bound(m2, n2, r2, 8) == 64
assert all(x <= y for x, y in zip(ranks, ranks[1:]))  # nested patterns: never decreases
display(plots.plot_ablation(ablation, r=r2))

# %% [markdown]
# ## 16-bit storage and the tolerance policy
#
# Store the rank-32 update above in float16 or bfloat16. Rounding adds a dense error matrix
# $E$, and all $\min(m, n) = 384$ singular values of $\Delta W + E$ are non-zero. Three
# tolerances:
#
# - NumPy's rule with the dtype's $\varepsilon$, $s_1 \max(m, n)\,\varepsilon$: since
#   $\max(m, n) = 1536 > 1/\varepsilon$ for both dtypes it exceeds $s_1$ — rank 0;
# - the same rule with float64's $\varepsilon$ (what you get after `.double()`): counts the
#   rounding noise — rank 384;
# - the policy of `numerical_rank` for 16-bit input: a floor at the estimated size of the
#   rounding error — the true rank 32, with a clear gap $s_{32} / s_{33}$ at the cut.
#
# Rounding the *factors* instead does not raise the rank at all: $\Delta W$ of rounded factors is
# still a BoRA update, and the structured SVD measures it exactly.

# %%
print(f"{'dtype':>9} {'NumPy rule':>10} {'float64 rule':>12} {'policy':>6} {'tol/s_1':>9} {'gap':>8} {'factors':>7}")
stored_spectra = {"float64": dense}
policy_tol = {}
for dtype in (torch.float16, torch.bfloat16):
    stored = torch.from_numpy(dW).to(dtype)  # (m, n) in 16 bits
    S16 = np.linalg.svd(stored.double().numpy(), compute_uv=False)
    eps = torch.finfo(dtype).eps
    numpy_rule = int((S16 > S16[0] * max(m, n) * eps).sum())
    float64_rule = int((S16 > S16[0] * max(m, n) * EPS64).sum())
    info = matrix_rank_info(stored)
    factors16 = [torch.from_numpy(x).to(dtype) for x in (B, A, sigma)]
    from_factors = factor_rank(*factors16)
    name = str(dtype).removeprefix("torch.")
    print(f"{name:>9} {numpy_rule:>10} {float64_rule:>12} {info.rank:>6} {info.tol / S16[0]:>9.1e} {info.gap:>8.0f} {from_factors:>7}")
    assert numpy_rule == 0 and float64_rule == min(m, n)
    assert info.rank == numerical_rank(stored) == bound and info.gap > 10
    assert from_factors == factor_rank_info(*factors16, storage_dtype="auto").rank == bound
    stored_spectra[name] = S16
    policy_tol[name] = info.tol / S16[0]

display(plots.plot_spectra(stored_spectra, title="ΔW (rank 32) stored in 64 and 16 bits", tolerances=policy_tol))

# %% [markdown]
# ### Exercise 2: the same update in float32
#
# Store `dW` (rank 32) in float32 instead. Does NumPy's rule with float32's $\varepsilon$ still
# fail, and what do `numerical_rank` and the float64 rule say?
#
# <details><summary>Solution</summary>
#
# For float32, $\max(m, n)\,\varepsilon = 1536 \cdot 1.2 \times 10^{-7} \approx 2 \times 10^{-4} < 1$,
# so NumPy's rule sits between the true singular values and the rounding noise: rank 32, as
# `numerical_rank` says. The float64 rule still counts the float32 rounding noise: 384.
#
# </details>

# %%
stored32 = torch.from_numpy(dW).float()  # (m, n) in float32
S32 = np.linalg.svd(stored32.double().numpy(), compute_uv=False)
numpy_rule32 = int((S32 > S32[0] * max(m, n) * np.finfo(np.float32).eps).sum())
float64_rule32 = int((S32 > S32[0] * max(m, n) * EPS64).sum())
print(f"float32: NumPy rule {numpy_rule32}, float64 rule {float64_rule32}, numerical_rank {numerical_rank(stored32)}")
assert numpy_rule32 == numerical_rank(stored32) == bound and float64_rule32 == min(m, n)

# %% [markdown]
# ## Effective, stable and energy rank
#
# The exact rank says how many directions an update *can* use, not how evenly it uses them.
# Three scale-free summaries of the spectrum (module `bora_ref.analysis.measures`): the effective rank
# $\exp H(s / \|s\|_1)$ of the singular values $s = (s_1, s_2, \dots)$, the stable rank
# $\|\Delta W\|_F^2 / \|\Delta W\|_2^2$ and the energy rank (how many singular values hold
# 90 % of $\sum_k s_k^2$). All three lie between 1
# and the rank, do not change when $\Delta W$ is scaled, and drop when a few directions
# dominate — here by giving the rank channels of $\sigma$ decaying scales. The BoRA paper's
# measure, the count of singular values above 0.005, depends on the scale.

# %%
def numerical_rank_of(S_):
    """Rank from singular values with NumPy's relative rule s_1 max(m, n) eps_64 (the library's
    factor default uses the larger ‖|P||S||Q|‖_F max(m, n) eps_64, see the theory page)."""
    return int((S_ > S_[0] * max(m, n) * EPS64).sum())


decay = 0.5 ** np.arange(r)  # (r,): channel k scaled by 2^-k
cases = {
    "LoRA": singular_values(B, A, sigma_lora),
    "BoRA": singular_values(B, A, sigma),
    "BoRA, decaying channels": singular_values(B, A, sigma * decay),
}
print(f"{'':>24} {'rank':>4} {'effective':>9} {'stable':>6} {'energy 90%':>10} {'>0.005':>6} {'>0.005 at ×1e-6':>15}")
for name, S_ in cases.items():
    mm = measures.rank_measures(S_)
    rank = numerical_rank_of(S_)
    small = measures.threshold_rank(S_ * 1e-6)
    print(f"{name:>24} {rank:>4} {mm.effective:>9.2f} {mm.stable:>6.2f} {mm.energy_90:>10} {mm.threshold:>6} {small:>15}")
    assert 1 <= mm.effective <= rank and 1 <= mm.stable <= rank and mm.energy_90 <= mm.energy_99 <= rank
    # Scale invariance: the same numbers for 1000 ΔW ...
    big = measures.rank_measures(1000 * S_)
    assert np.isclose(big.effective, mm.effective) and np.isclose(big.stable, mm.stable) and big.energy_90 == mm.energy_90
    # ... but not for the absolute threshold count (here at 1e-6 ΔW).
    assert small < mm.threshold
full, skewed = measures.rank_measures(cases["BoRA"]), measures.rank_measures(cases["BoRA, decaying channels"])
assert numerical_rank_of(cases["BoRA, decaying channels"]) == bound == factor_rank(B, A, sigma * decay)  # same rank ...
assert skewed.effective < full.effective and skewed.stable < full.stable and skewed.energy_90 < full.energy_90  # ... less evenly used

# %% [markdown]
# ## The sweep on real model shapes
#
# The layer shapes of LLaMA-2-7B, Qwen2.5-0.5B, Qwen2.5-7B and MiniLM-L6 ship with the package
# (`bora_ref/data/model_shapes.json`); layers of one model with the same shape are merged.
# For each shape, $r = 8$ and $b$ from 1 to 64: the measured rank of random factors
# (structured SVD, so even $18944 \times 3584$ takes milliseconds), the bound, LoRA's rank and
# the rank LoRA would get from BoRA's parameter budget. `bora-ref report` prints the same
# table from the command line.

# %%
shapes = sweep.distinct_shapes(sweep.load_model_shapes())
start = time.perf_counter()
sweep_rows = sweep.rank_sweep(shapes, rs=[8], bs=[1, 2, 4, 8, 16, 32, 64], seed=0)
elapsed = time.perf_counter() - start
print(f"{len(sweep_rows)} configurations in {elapsed:.1f} s")
wm = max(len(row.model) for row in sweep_rows)  # column widths from the data: no name is cut
wl = max(len(row.module) for row in sweep_rows)
print(f"{'model':<{wm}} {'layers':<{wl}} {'m':>6} {'n':>6} {'r':>3} {'b':>3} {'bound':>6} {'meas.':>6} {'LoRA':>5} {'same budget':>11} {'overhead':>8}")
for row in sweep_rows:
    if row.b in (4, 16, 64):
        print(f"{row.model:<{wm}} {row.module:<{wl}} {row.m:>6} {row.n:>6} {row.r:>3} {row.b:>3} {row.bound:>6} "
              f"{row.measured:>6} {row.lora_rank:>5} {row.equal_budget_lora_rank:>11} {row.overhead_pct:>7.2f}%")
missed = [row for row in sweep_rows if not row.attained]
print(f"bound attained in {len(sweep_rows) - len(missed)}/{len(sweep_rows)} configurations")
assert not missed, missed
for row in sweep_rows:
    assert row.bound == min(row.b * row.r, row.m, row.n)  # Lemma 2: balanced blocks
    assert row.total_params == param_count(row.m, row.n, row.r, row.b).total

# %%
display(plots.plot_rank_vs_b([row for row in sweep_rows if row.model == "LLaMA-2-7B"]))
display(plots.plot_overhead_vs_b([s for s in shapes if s.model in ("LLaMA-2-7B", "Qwen2.5-0.5B", "MiniLM-L6")], bs=[1, 2, 4, 8, 16, 32, 64, 128]))

# %% [markdown]
# ### Exercise 3: the best $b$ for a $4096 \times 11008$ projection
#
# LLaMA-2-7B's feed-forward projections are $4096 \times 11008$ (and the transpose). Per unit of
# rank, BoRA costs $(m + n)/b + b$ parameters (for $br \le \min(m, n)$). Which integer $b$ is
# cheapest, and how much does it save over LoRA at rank $R = 1024$?
#
# <details><summary>Solution</summary>
#
# The minimum over real $b$ is at $b = \sqrt{m + n} = \sqrt{15104} \approx 122.9$; among
# integers, $b = 123$: $245.797$ parameters per unit of rank, against $245.803$ at $b = 122$
# and $245.806$ at $b = 124$ (a flat minimum). `best_b` returns it. At $R = 1024$,
# BoRA with $b = 128$, $r = 8$ (a divisor of $R$ near the optimum) needs 251,904 parameters,
# LoRA 15,466,496: 1.6%. The next cell checks this by brute force.
#
# </details>

# %%
m4, n4 = 4096, 11008
per_rank = {b_: (m4 + n4) / b_ + b_ for b_ in range(1, 4097)}
best = min(per_rank, key=per_rank.get)
print(f"cheapest b per unit of rank: {best} (sqrt(m+n) = {np.sqrt(m4 + n4):.1f}); best_b says {best_b(m4, n4)}")
bora_1024, lora_1024 = param_count(m4, n4, 8, 128).total, param_count(m4, n4, 1024, 1).lora
print(f"rank 1024: BoRA b=128 r=8 {bora_1024:,} parameters, LoRA r=1024 {lora_1024:,} ({bora_1024 / lora_1024:.1%})")
assert best == best_b(m4, n4) == 123
assert rank_bound(m4, n4, 8, 128) == 1024 and bora_1024 == 251_904 and lora_1024 == 15_466_496

# %% [markdown]
# ## Structured against dense SVD
#
# `singular_values` never forms $\Delta W$: a QR factorisation per block reduces the problem to
# a core of at most $(br) \times (br)$ with the same non-zero singular values (proof on the
# theory page). On a $2048 \times 512$ layer with $r = 8$, $b = 16$ (rank 128) it agrees with
# `numpy.linalg.svd` of the formed matrix to a few $\varepsilon s_1$, and `structured_svd`
# also returns orthonormal singular vectors that reassemble $\Delta W$. (Timings are printed,
# not asserted: speed is measured by `benchmarks/`.)

# %%
m3, n3, r3, b3 = 2048, 512, 8, 16
B3, A3, s3 = sweep.sample_factors(m3, n3, r3, b3, seed=4)
start = time.perf_counter()
S_structured = singular_values(B3, A3, s3)
t_structured = time.perf_counter() - start
dW3 = numpy_ref.delta_weight(B3, A3, s3)  # (m, n), formed only for the comparison
start = time.perf_counter()
S_dense = np.linalg.svd(dW3, compute_uv=False)
t_dense = time.perf_counter() - start
err = np.abs(S_structured - S_dense).max()
print(f"structured {t_structured * 1e3:.1f} ms, dense {t_dense * 1e3:.0f} ms; "
      f"max |difference| = {err:.1e} = {err / (EPS64 * S_dense[0]):.0f} eps·s_1")
assert S_structured.shape == S_dense.shape == (min(m3, n3),)
assert err <= 1e3 * EPS64 * S_dense[0]  # Weyl: both backward stable
assert np.count_nonzero(S_structured) == rank_bound(m3, n3, r3, b3) == 128

U, S3, Vh = structured_svd(B3, A3, s3)  # (m, k), (k,), (k, n)
k = len(S3)
assert np.abs(U.T @ U - np.eye(k)).max() < 1e-12 and np.abs(Vh @ Vh.T - np.eye(k)).max() < 1e-12
assert np.abs((U * S3) @ Vh - dW3).max() <= 1e3 * EPS64 * S_dense[0]
