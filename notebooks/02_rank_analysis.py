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
# **What this notebook shows.** Every claim is checked by an `assert`; the test suite and the
# docs build run the notebook.
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
    measures,
    numerical_rank,
    numpy_ref,
    param_count,
    plots,
    rank_bound,
    singular_values,
    structured_svd,
    sweep,
)

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
print(f"dense SVD beyond the bound: at most {dense[bound:].max() / dense[0]:.1e} σ_1 (rounding noise)")
assert dense[bound:].max() < 100 * EPS64 * dense[0]
display(plots.plot_spectra(spectra, title=f"ΔW of a {m}×{n} layer, r={r}"))

# %% [markdown]
# ## Rank against b, up to the bound
#
# For a $768 \times 768$ layer (BERT-base) and $r = 8$, every $b$ from 1 to 192 that is a
# power of two or uneven: the measured rank of random factors equals `rank_bound`, which grows
# like $br$ until it saturates at $\min(m, n) = 768$ (at $b = 96$). The parameter count grows
# only by $b^2 r$.

# %%
m2, n2, r2 = 768, 768, 8
bs = [1, 2, 3, 4, 5, 7, 8, 12, 16, 24, 32, 50, 64, 96, 100, 128, 192]
rows = sweep.rank_sweep([(m2, n2)], rs=[r2], bs=bs, seed=1)
print(f"{'b':>4} {'bound':>6} {'measured':>8} {'params':>8} {'of LoRA':>8}")
for row in rows:
    print(f"{row.b:>4} {row.bound:>6} {row.measured:>8} {row.total_params:>8} {row.total_params / row.lora_params:>8.2f}")
    assert row.measured == row.bound == min(row.b * r2, m2, n2), row
assert [row.bound for row in rows if row.b >= 96] == [768] * 4  # saturated
display(plots.plot_rank_vs_b(rows))

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
# - NumPy's rule with the dtype's $\varepsilon$, $\sigma_1 \max(m, n)\,\varepsilon$: since
#   $\max(m, n) = 1536 > 1/\varepsilon$ for both dtypes it exceeds $\sigma_1$ — rank 0;
# - the same rule with float64's $\varepsilon$ (what you get after `.double()`): counts the
#   rounding noise — rank 384;
# - the policy of `numerical_rank` for 16-bit input: a floor at the estimated size of the
#   rounding error — the true rank 32, with a clear gap $\sigma_{32} / \sigma_{33}$ at the cut.
#
# Rounding the *factors* instead does not raise the rank at all: $\Delta W$ of rounded factors is
# still a BoRA update, and the structured SVD measures it exactly.

# %%
print(f"{'dtype':>9} {'NumPy rule':>10} {'float64 rule':>12} {'policy':>6} {'tol/σ_1':>9} {'gap':>8} {'factors':>7}")
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

fig = plots.plot_spectra(stored_spectra, title="ΔW (rank 32) stored in 64 and 16 bits", normalize=True)
ax = fig.axes[0]
for line in ax.get_lines()[1:]:  # the float16 and bfloat16 series, in insertion order
    name = line.get_label().split()[0]
    ax.axhline(policy_tol[name], color=line.get_color(), linestyle="--", linewidth=0.8)
ax.set_title("ΔW (rank 32) in 64 and 16 bits; dashed: numerical_rank's tolerance", fontsize="small")
display(fig)

# %% [markdown]
# ## Effective, stable and energy rank
#
# The exact rank says how many directions an update *can* use, not how evenly it uses them.
# Three scale-free summaries of the spectrum (module `bora_ref.analysis.measures`): the effective rank
# $\exp H(\sigma / \|\sigma\|_1)$, the stable rank $\|\Delta W\|_F^2 / \|\Delta W\|_2^2$ and the
# energy rank (how many singular values hold 90 % of $\sum \sigma^2$). All three lie between 1
# and the rank, do not change when $\Delta W$ is scaled, and drop when a few directions
# dominate — here by giving the rank channels of $\sigma$ decaying scales. The BoRA paper's
# measure, the count of singular values above 0.005, depends on the scale.

# %%
def numerical_rank_of(S_):
    """Rank from singular values with the default rule for exact factors: σ_1 max(m, n) eps_64."""
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
print(f"{'model':>13} {'layer':>34} {'m':>6} {'n':>6} {'r':>3} {'b':>3} {'bound':>6} {'meas.':>6} {'LoRA':>5} {'same budget':>11} {'overhead':>8}")
for row in sweep_rows:
    if row.b in (4, 16, 64):
        print(f"{row.model:>13} {row.module[:34]:>34} {row.m:>6} {row.n:>6} {row.r:>3} {row.b:>3} {row.bound:>6} "
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
# ## Structured against dense SVD
#
# `singular_values` never forms $\Delta W$: a QR factorisation per block reduces the problem to
# a core of at most $(br) \times (br)$ with the same non-zero singular values (proof on the
# theory page). On a $2048 \times 512$ layer with $r = 8$, $b = 16$ (rank 128) it agrees with
# `numpy.linalg.svd` of the formed matrix to a few $\varepsilon \sigma_1$, and `structured_svd`
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
      f"max |difference| = {err:.1e} = {err / (EPS64 * S_dense[0]):.0f} eps·σ_1")
assert S_structured.shape == S_dense.shape == (min(m3, n3),)
assert err <= 1e3 * EPS64 * S_dense[0]  # Weyl: both backward stable
assert np.count_nonzero(S_structured) == rank_bound(m3, n3, r3, b3) == 128

U, S3, Vh = structured_svd(B3, A3, s3)  # (m, k), (k,), (k, n)
k = len(S3)
assert np.abs(U.T @ U - np.eye(k)).max() < 1e-12 and np.abs(Vh @ Vh.T - np.eye(k)).max() < 1e-12
assert np.abs((U * S3) @ Vh - dW3).max() <= 1e3 * EPS64 * S_dense[0]
