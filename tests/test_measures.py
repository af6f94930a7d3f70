"""Rank measures on singular values: closed forms, invariances, and the definitions by brute force."""

import math

import numpy as np
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from bora_ref.analysis.measures import (
    PAPER_THRESHOLD,
    effective_rank,
    energy_rank,
    rank_measures,
    spectral_energy,
    stable_rank,
    threshold_rank,
)

spectra = st.lists(st.floats(0.0, 1e3, allow_nan=False), min_size=1, max_size=40).filter(lambda s: max(s) > 1e-6)


@given(st.integers(1, 50), st.integers(0, 20), st.floats(1e-3, 1e3))
def test_k_equal_singular_values_give_k_for_every_scale_free_measure(k, zeros, value):
    S = np.r_[np.full(k, value), np.zeros(zeros)]
    assert effective_rank(S) == pytest.approx(k, rel=1e-12)
    assert stable_rank(S) == pytest.approx(k, rel=1e-12)
    assert energy_rank(S, 1.0) == k
    assert energy_rank(S, 0.9) == math.ceil(0.9 * k - 1e-9)
    assert threshold_rank(S, value / 2) == k
    assert spectral_energy(S) == pytest.approx(k * value**2, rel=1e-12)


def test_effective_rank_of_two_values_is_the_exponential_of_the_binary_entropy():
    p = 3.0 / (3.0 + 1.0)
    assert effective_rank(np.array([3.0, 1.0])) == pytest.approx(math.exp(-p * math.log(p) - (1 - p) * math.log(1 - p)))


@given(st.integers(1, 30), st.integers(1, 30), st.integers(0, 2**31))
def test_stable_rank_is_frobenius_over_spectral_norm_squared(m, n, seed):
    M = np.random.default_rng(seed).standard_normal((m, n))
    S = np.linalg.svd(M, compute_uv=False)
    expected = np.linalg.norm(M, "fro") ** 2 / np.linalg.norm(M, 2) ** 2
    assert stable_rank(S) == pytest.approx(expected, rel=1e-10)
    assert spectral_energy(S) == pytest.approx(np.linalg.norm(M, "fro") ** 2, rel=1e-10)


@given(spectra, st.floats(0.01, 1.0))
def test_energy_rank_is_the_smallest_k_reaching_the_fraction(S, tau):
    S = np.asarray(S)
    s = np.sort(S)[::-1]
    total = float((s**2).sum())
    k = energy_rank(S, tau)
    slack = len(s) * np.finfo(np.float64).eps * total  # rounding of the running sum
    assert (s[:k] ** 2).sum() >= tau * total - slack
    assert k == 1 or (s[: k - 1] ** 2).sum() < tau * total - slack


@given(spectra, st.floats(1e-3, 1e3), st.randoms(use_true_random=False))
def test_scale_free_measures_ignore_scale_and_order(S, c, rnd):
    S = np.asarray(S)
    shuffled = S.copy()
    rnd.shuffle(shuffled)
    for measure in (effective_rank, stable_rank):
        assert measure(S * c) == pytest.approx(measure(S), rel=1e-9)
        assert measure(shuffled) == pytest.approx(measure(S), rel=1e-12)
    assert energy_rank(shuffled, 0.9) == energy_rank(S, 0.9)
    nonzero = int((S > 0).sum())
    assert 1 - 1e-9 <= effective_rank(S) <= nonzero + 1e-9
    assert 1 - 1e-12 <= stable_rank(S) <= nonzero + 1e-9


def test_the_papers_threshold_measure_depends_on_scale():
    S = np.array([0.02, 0.004, 0.0004])
    assert threshold_rank(S) == 1 and PAPER_THRESHOLD == 0.005
    assert threshold_rank(10 * S) == 2  # same shape of spectrum, another "rank"
    assert threshold_rank(S, 0.0) == 3 and threshold_rank(np.array([0.005])) == 0  # strict >


def test_zero_spectrum_has_every_measure_zero():
    m = rank_measures(np.zeros(5))
    assert (m.effective, m.stable, m.energy_90, m.energy_99, m.threshold, m.energy) == (0.0, 0.0, 0, 0, 0, 0.0)


def test_rank_measures_bundles_the_individual_measures(rng):
    S = np.sort(rng.gamma(1.0, size=20))[::-1].copy()
    m = rank_measures(torch.from_numpy(S), threshold=0.5)
    assert (m.effective, m.stable, m.energy_90, m.energy_99, m.threshold, m.energy) == (
        effective_rank(S), stable_rank(S), energy_rank(S, 0.9), energy_rank(S, 0.99), threshold_rank(S, 0.5),
        spectral_energy(S),
    )


@pytest.mark.parametrize(
    ("call", "match"),
    [
        (lambda: effective_rank(np.array([1.0, -0.5])), "S must hold singular values \\(all >= 0\\), got a minimum of -0.5"),
        (lambda: stable_rank(np.array([1.0, np.nan])), "S contains NaN or infinity"),
        (lambda: energy_rank(np.ones((2, 2))), r"S must be a non-empty 1-D vector, got shape \(2, 2\)"),
        (lambda: spectral_energy(np.array([])), r"S must be a non-empty 1-D vector, got shape \(0,\)"),
        (lambda: energy_rank(np.ones(3), 0.0), r"tau must be a number in \(0, 1\], got 0.0"),
        (lambda: energy_rank(np.ones(3), 1.5), r"tau must be a number in \(0, 1\], got 1.5"),
        (lambda: threshold_rank(np.ones(3), -1.0), "threshold must be a finite number >= 0, got -1.0"),
        (lambda: rank_measures([1.0, 2.0]), "S must be a numpy.ndarray or torch.Tensor, got list"),
    ],
)
def test_bad_input_names_the_argument(call, match):
    with pytest.raises(ValueError, match=match):
        call()
