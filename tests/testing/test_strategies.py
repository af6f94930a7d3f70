"""Hypothesis strategies for other projects' property tests."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from bora_ref import numpy_ref, torch_ref
from bora_ref.testing import OracleCase, check_implementation
from bora_ref.testing import strategies as bst


@given(bst.shapes(max_dim=20, max_r=6, max_b=5))
def test_shapes_are_valid(shape):
    m, n, r, b = shape
    assert 1 <= m <= 20 and 1 <= n <= 20 and 1 <= r <= 6 and 1 <= b <= min(m, n, 5)


@given(st.data())
def test_even_and_uneven_flags(data):
    even = data.draw(bst.shapes(even=True))
    assert even.m % even.b == 0 and even.n % even.b == 0
    uneven = data.draw(bst.shapes(even=False))
    assert uneven.m % uneven.b or uneven.n % uneven.b


@given(bst.factors(bst.BoRAShape(7, 5, 3, 2), backend="torch", dtype=torch.bfloat16))
def test_gaussian_factors_in_torch_dtype(f):
    B, A, sigma = f
    assert [tuple(t.shape) for t in f] == [(7, 3), (3, 5), (2, 2, 3)]
    assert all(t.dtype == torch.bfloat16 for t in f)
    assert torch.linalg.matrix_rank(B.double()) == 3  # generic: full rank


@given(bst.factors(backend="numpy", dtype=np.float32, elements=bst.float_elements(2.0)))
def test_element_drawn_factors_respect_bounds(f):
    assert all(a.dtype == np.float32 and np.all(np.abs(a) <= 2.0) for a in f)
    B, A, sigma = f
    assert B.shape[1] == A.shape[0] == sigma.shape[2] and sigma.shape[0] == sigma.shape[1]


@given(bst.bora_inputs(backend="torch", dtype=torch.float64, max_batch_dims=3, elements=bst.float_elements()))
def test_element_drawn_inputs_agree_between_references(inputs):
    x, B, A, sigma = inputs
    assert 1 <= x.ndim <= 4 and x.shape[-1] == A.shape[1]
    want = numpy_ref.bora_matmul(*(t.numpy() for t in inputs))
    np.testing.assert_allclose(torch_ref.bora_matmul(x, B, A, sigma).numpy(), want, rtol=1e-10, atol=1e-10)


@settings(max_examples=8)
@given(bst.oracle_cases(max_dim=16, max_r=5))
def test_oracle_cases_drive_check_implementation(case):
    assert isinstance(case, OracleCase)
    report = check_implementation(torch_ref.bora_matmul, cases=[case], grad=True)
    assert report.cases_run == 3


@settings(max_examples=1)
@given(st.data())
def test_bad_backend_and_device_are_rejected(data):
    with pytest.raises(ValueError, match=r"backend must be 'numpy' or 'torch', got 'jax'"):
        data.draw(bst.factors(bst.BoRAShape(4, 4, 2, 2), backend="jax"))
    with pytest.raises(ValueError, match=r"device is only for backend='torch', got device='cpu'"):
        data.draw(bst.factors(bst.BoRAShape(4, 4, 2, 2), device="cpu"))
