"""The benchmark harness's compiled candidate computes the same product as the NumPy reference."""

import numpy as np
import pytest
import torch

from bora_ref import numpy_ref

from ._helpers import random_factors

adapter = pytest.importorskip("benchmarks.adapter")


@pytest.mark.parametrize("shape", [(12, 8, 3, 4), (6, 6, 5, 2), (8, 4, 2, 4)])
def test_plain_bmm_equals_the_numpy_reference(shape, rng):
    m, n, r, b = shape
    B, A, sigma = random_factors(rng, m, n, r, b)
    x = rng.standard_normal((5, n))
    y = adapter.plain_bmm(*(torch.from_numpy(np.ascontiguousarray(t)) for t in (x, B, A, sigma)))
    np.testing.assert_allclose(y.numpy(), numpy_ref.bora_matmul(x, B, A, sigma), rtol=1e-12, atol=1e-12)
