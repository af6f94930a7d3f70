"""Sweeps over real layer shapes: measured rank against the bound, Σ collapses, a partial-Σ ablation.

Every measurement draws random factors ([`sample_factors`][bora_ref.report.sweep.sample_factors]) and takes the rank of ΔW with
the structured SVD ([`bora_ref.factor_rank`][bora_ref.factor_rank], default tolerance), so no ``(m, n)`` matrix is
ever formed and the largest shapes (18944 x 3584) take milliseconds. The layer shapes of real
models ship with the package (``bora_ref/data/model_shapes.json``, sources cited there).
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from importlib import resources
from typing import Any, NamedTuple

import numpy as np
from tqdm import tqdm

from .._arrays import single_blas_thread
from .._validation import BoRAValueError, check_b, check_choice, check_int
from ..analysis.params import equal_budget_lora_rank, param_count
from ..analysis.rank import factor_rank, rank_bound

__all__ = [
    "SIGMA_KINDS",
    "AblationRow",
    "CollapseRow",
    "LayerShape",
    "SweepRow",
    "collapse_sweep",
    "distinct_shapes",
    "load_model_shapes",
    "partial_sigma_ablation",
    "rank_sweep",
    "sample_factors",
    "shipped_models",
]

SIGMA_KINDS = ("random", "separable", "identical")
"""How [`sample_factors`][bora_ref.report.sweep.sample_factors] draws ``sigma``: generic, ``u_i * v_j`` (rank <= r), one shared diagonal (LoRA)."""


class LayerShape(NamedTuple):
    """One linear layer shape: ``(m, n)`` = ``(out_features, in_features)``, ``count`` copies in ``model``."""

    model: str
    module: str
    m: int
    n: int
    count: int = 1


def _shape_data() -> dict[str, Any]:
    text = resources.files("bora_ref").joinpath("data/model_shapes.json").read_text(encoding="utf-8")
    return json.loads(text)["models"]


def shipped_models() -> tuple[str, ...]:
    """Names of the models whose layer shapes ship with the package, e.g. ``"LLaMA-2-7B"``."""
    return tuple(_shape_data())


def load_model_shapes(models: Iterable[str] | None = None) -> list[LayerShape]:
    """Every adaptable linear layer of the shipped models (attention and MLP projections).

    Args:
        models: names from [`shipped_models`][bora_ref.report.sweep.shipped_models] (default: all of them).

    Returns:
        One [`LayerShape`][bora_ref.report.sweep.LayerShape] per module name and model, in the file's order.

    Raises:
        ValueError: an unknown model name.
    """
    data = _shape_data()
    names = list(data) if models is None else list(models)
    for name in names:
        check_choice("models", name, tuple(data))
    return [LayerShape(name, layer["module"], layer["m"], layer["n"], layer["count"]) for name in names for layer in data[name]["layers"]]


def distinct_shapes(shapes: Iterable[LayerShape]) -> list[LayerShape]:
    """Merge layers of one model with equal ``(m, n)`` (rank and counts depend only on the shape).

    The merged ``module`` joins the names, shortened to their last part where that is unique
    within the model (``"q_proj/k_proj/v_proj/o_proj"``); ``count`` adds up. Order: first
    appearance.
    """
    shapes = list(shapes)
    last = Counter((s.model, s.module.rsplit(".", 1)[-1]) for s in shapes)
    merged: dict[tuple[str, int, int], LayerShape] = {}
    for s in shapes:
        tail = s.module.rsplit(".", 1)[-1]
        short = tail if last[(s.model, tail)] == 1 else s.module
        key = (s.model, s.m, s.n)
        if key in merged:
            old = merged[key]
            merged[key] = old._replace(module=f"{old.module}/{short}", count=old.count + s.count)
        else:
            merged[key] = s._replace(module=short)
    return list(merged.values())


def sample_factors(
    m: int, n: int, r: int, b: int, *, sigma: str = "random", seed: int = 0
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Gaussian factors ``B (m, r)``, ``A (r, n)`` and a ``sigma (b, b, r)`` of the chosen kind.

    - ``"random"``: i.i.d. standard normal ``sigma``; ΔW attains [`bora_ref.rank_bound`][bora_ref.rank_bound]
      with probability 1 (fact 4 on the theory page).
    - ``"separable"``: $\\sigma_{ij} = u_i \\odot v_j$ with Gaussian ``u, v (b, r)``; then
      $\\Delta W_{[i,j]} = (B_i \\mathrm{diag}(u_i))(\\mathrm{diag}(v_j) A_j)$ is one ``(m, r)``
      times one ``(r, n)`` matrix: rank ``<= r`` (fact 3).
    - ``"identical"``: one Gaussian diagonal ``d (r,)`` in every block, ΔW = B diag(d) A: LoRA.

    Raises:
        ValueError: invalid shape arguments or ``sigma`` kind.
    """
    m = check_int("m", m, minimum=1)
    n = check_int("n", n, minimum=1)
    r = check_int("r", r, minimum=1)
    b = check_b(b, m, n)
    kind = check_choice("sigma", sigma, SIGMA_KINDS)
    rng = np.random.default_rng(check_int("seed", seed, minimum=0))
    B, A = rng.standard_normal((m, r)), rng.standard_normal((r, n))
    if kind == "random":
        s = rng.standard_normal((b, b, r))
    elif kind == "separable":
        u, v = rng.standard_normal((b, r)), rng.standard_normal((b, r))
        s = u[:, None, :] * v[None, :, :]  # (b, b, r): sigma[i, j] = u[i] * v[j]
    else:
        s = np.broadcast_to(rng.standard_normal(r), (b, b, r)).copy()
    return B, A, s


@dataclass(frozen=True)
class SweepRow:
    """One configuration of [`rank_sweep`][bora_ref.report.sweep.rank_sweep] (parameter fields as [`bora_ref.param_count`][bora_ref.param_count])."""

    model: str
    module: str
    m: int
    n: int
    r: int
    b: int
    bound: int
    measured: int
    lora_rank: int
    equal_budget_lora_rank: int
    lora_params: int
    sigma_params: int
    total_params: int
    overhead_pct: float

    @property
    def attained(self) -> bool:
        """Whether the measured rank equals the bound."""
        return self.measured == self.bound


def _as_shapes(shapes: Iterable[LayerShape | tuple[int, int]]) -> list[LayerShape]:
    out = []
    for s in shapes:
        if isinstance(s, LayerShape):
            out.append(s)
        elif isinstance(s, tuple) and len(s) == 2:
            out.append(LayerShape("", f"{s[0]}x{s[1]}", check_int("m", s[0], minimum=1), check_int("n", s[1], minimum=1)))
        else:
            raise BoRAValueError(f"shapes must hold LayerShape or (m, n) tuples, got {s!r}")
    if not out:
        raise BoRAValueError("shapes must not be empty")
    return out


def _grid(shapes: Iterable[LayerShape | tuple[int, int]], rs: Sequence[int], bs: Sequence[int]) -> list[tuple[LayerShape, int, int]]:
    """All ``(shape, r, b)`` configurations, validated before any work starts."""
    grid = []
    for s in _as_shapes(shapes):
        for r in rs:
            for b in bs:
                check_int("r", r, minimum=1)
                check_b(b, s.m, s.n)
                grid.append((s, int(r), int(b)))
    if not grid:
        raise BoRAValueError(f"rs and bs must not be empty, got rs={list(rs)}, bs={list(bs)}")
    return grid


@single_blas_thread
def rank_sweep(
    shapes: Iterable[LayerShape | tuple[int, int]],
    rs: Sequence[int],
    bs: Sequence[int],
    *,
    seed: int = 0,
    progress: bool | None = False,
) -> list[SweepRow]:
    """Measured rank of random BoRA factors against the bound, LoRA and equal-budget LoRA.

    For every shape × ``r`` × ``b``: the rank of ΔW for [`sample_factors`][bora_ref.report.sweep.sample_factors] (``"random"``),
    [`bora_ref.rank_bound`][bora_ref.rank_bound], LoRA's rank ``min(r, m, n)``, the rank of LoRA with BoRA's
    parameter budget ([`bora_ref.analysis.params.equal_budget_lora_rank`][bora_ref.analysis.params.equal_budget_lora_rank]) and the parameter counts.

    Args:
        shapes: [`LayerShape`][bora_ref.report.sweep.LayerShape] items (e.g. from [`load_model_shapes`][bora_ref.report.sweep.load_model_shapes]) or ``(m, n)`` tuples.
        rs: ranks per block.
        bs: block counts; every ``b`` must fit every shape.
        seed: seed of the factors (the same for every configuration).
        progress: show a tqdm bar (``None``: only on a terminal).

    Raises:
        ValueError: invalid shapes, ``r`` or ``b`` (checked before anything runs).
    """
    rows = []
    for s, r, b in tqdm(_grid(shapes, rs, bs), desc="rank sweep", disable=None if progress is None else not progress):
        pc = param_count(s.m, s.n, r, b)
        rows.append(SweepRow(
            s.model, s.module, s.m, s.n, r, b, bound=rank_bound(s.m, s.n, r, b),
            measured=factor_rank(*sample_factors(s.m, s.n, r, b, seed=seed)), lora_rank=min(r, s.m, s.n),
            equal_budget_lora_rank=min(equal_budget_lora_rank(s.m, s.n, r, b), s.m, s.n),
            lora_params=pc.lora, sigma_params=pc.sigma, total_params=pc.total, overhead_pct=pc.overhead_pct,
        ))
    return rows


@dataclass(frozen=True)
class CollapseRow:
    """Rank of ΔW for the three kinds of Σ of [`sample_factors`][bora_ref.report.sweep.sample_factors], at one configuration."""

    model: str
    module: str
    m: int
    n: int
    r: int
    b: int
    bound: int
    random: int
    separable: int
    identical: int


@single_blas_thread
def collapse_sweep(
    shapes: Iterable[LayerShape | tuple[int, int]],
    rs: Sequence[int],
    bs: Sequence[int],
    *,
    seed: int = 0,
    progress: bool | None = False,
) -> list[CollapseRow]:
    """How the structure of Σ caps the rank: generic vs separable ($\\le r$) vs identical (LoRA's).

    Same arguments and errors as [`rank_sweep`][bora_ref.report.sweep.rank_sweep].
    """
    rows = []
    for s, r, b in tqdm(_grid(shapes, rs, bs), desc="collapse sweep", disable=None if progress is None else not progress):
        ranks = {kind: factor_rank(*sample_factors(s.m, s.n, r, b, sigma=kind, seed=seed)) for kind in SIGMA_KINDS}
        rows.append(CollapseRow(s.model, s.module, s.m, s.n, r, b, rank_bound(s.m, s.n, r, b), **ranks))
    return rows


class AblationRow(NamedTuple):
    """``k`` of the ``b²`` blocks have their own Σ_ij; ``rank`` of ΔW; the ``bound`` for reference."""

    k: int
    rank: int
    bound: int


@single_blas_thread
def partial_sigma_ablation(
    m: int, n: int, r: int, b: int, *, ks: Sequence[int] | None = None, seed: int = 0
) -> list[AblationRow]:
    """Rank of ΔW when only ``k`` of the ``b²`` diagonals Σ_ij differ from a shared one.

    Start from LoRA written as BoRA (every Σ_ij the same Gaussian diagonal, rank ``r``), visit
    the ``b²`` blocks in a seeded random order, and give the first ``k`` their own Gaussian
    diagonal. ``k = 0`` is LoRA, ``k = b²`` is generic BoRA (the bound); the patterns are
    nested, so the rank is non-decreasing in ``k``.

    Args:
        m: rows of the weight, as in [`bora_ref.rank_bound`][bora_ref.rank_bound].
        n: columns of the weight.
        r: rank per block product.
        b: blocks per side.
        ks: the ``k`` values, each in ``[0, b²]`` (default: all of ``0..b²``).
        seed: seed of the factors and of the block order.

    Raises:
        ValueError: invalid shape arguments or a ``k`` outside ``[0, b²]``.
    """
    B, A, shared = sample_factors(m, n, r, b, sigma="identical", seed=seed)
    bound = rank_bound(m, n, r, b)
    ks = list(range(b * b + 1)) if ks is None else [check_int("ks", k, minimum=0) for k in ks]
    if any(k > b * b for k in ks):
        raise BoRAValueError(f"ks must lie in [0, b²] = [0, {b * b}], got {ks}")
    rng = np.random.default_rng(seed + 1)
    order = rng.permutation(b * b)  # block visiting order, flat index i * b + j
    own = rng.standard_normal((b * b, r))  # the diagonal each block gets once it differs
    rows = []
    for k in ks:
        sigma = shared.reshape(b * b, r).copy()
        sigma[order[:k]] = own[order[:k]]
        rows.append(AblationRow(k, factor_rank(B, A, sigma.reshape(b, b, r)), bound))
    return rows
