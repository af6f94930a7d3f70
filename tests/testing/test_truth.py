"""The oracle's float64 truth (forward and gradients), its error scale and its naive baseline."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch

from bora_ref import numpy_ref, torch_ref
from bora_ref.partition import block_slices
from bora_ref.testing._truth import naive_bora_matmul, rss_scale, truth


def _values(rng, m, n, r, b, lead):
    return {"x": rng.standard_normal(lead + (n,)), "B": rng.standard_normal((m, r)), "A": rng.standard_normal((r, n)),
            "sigma": rng.standard_normal((b, b, r)), "g": rng.standard_normal(lead + (m,))}


@pytest.mark.parametrize("shape", [(8, 6, 2, 2), (11, 7, 3, 3), (5, 9, 6, 5), (4, 4, 2, 1)])
@pytest.mark.parametrize("lead", [(), (3,), (2, 3)])
def test_gradients_equal_torch_autograd_in_float64(shape, lead, rng):
    values = _values(rng, *shape, lead)
    want = truth(values, grad=True)
    ts = [torch.from_numpy(values[k]).requires_grad_() for k in ("x", "B", "A", "sigma")]
    y = ts[0] @ torch_ref.delta_weight(*ts[1:]).T  # dense form, autograd: independent of the NumPy VJP
    grads = torch.autograd.grad(y, ts, torch.from_numpy(values["g"]))
    np.testing.assert_allclose(want["y"], y.detach().numpy(), rtol=1e-12, atol=1e-12)
    for name, gr in zip(("grad x", "grad B", "grad A", "grad sigma"), grads):
        np.testing.assert_allclose(want[name], gr.numpy(), rtol=1e-12, atol=1e-12, err_msg=name)


def test_rss_scale_is_the_root_sum_square_of_the_terms_of_each_entry(rng):
    m, n, r, b = 5, 4, 2, 2
    v = _values(rng, m, n, r, b, (3,))
    rows, cols = block_slices(m, b), block_slices(n, b)
    blk_r = [i for i in range(b) for _ in range(rows[i].stop - rows[i].start)]  # block of each row
    blk_c = [j for j in range(b) for _ in range(cols[j].stop - cols[j].start)]
    # y[t, p] = sum over (k, q) of x[t, q] A[k, q] sigma[i(p), j(q), k] B[p, k]
    rss_y = max(
        np.sqrt(sum((v["x"][t, q] * v["A"][k, q] * v["sigma"][blk_r[p], blk_c[q], k] * v["B"][p, k]) ** 2
                    for k, q in itertools.product(range(r), range(n))))
        for t, p in itertools.product(range(3), range(m))
    )
    # grad sigma[i, j, k] = sum over (t, p in block i, q in block j) of g[t, p] x[t, q] B[p, k] A[k, q]
    rss_s = max(
        np.sqrt(sum((v["g"][t, p] * v["x"][t, q] * v["B"][p, k] * v["A"][k, q]) ** 2
                    for t in range(3) for p in range(m) for q in range(n) if blk_r[p] == i and blk_c[q] == j))
        for i, j, k in itertools.product(range(b), range(b), range(r))
    )
    scale = rss_scale(v, grad=True)
    assert scale["y"] == pytest.approx(rss_y, rel=1e-12)
    assert scale["grad sigma"] == pytest.approx(rss_s, rel=1e-12)
    assert set(scale) == {"y", "grad x", "grad B", "grad A", "grad sigma"}


def test_naive_baseline_is_correct_in_float64(rng):
    v = _values(rng, 13, 10, 3, 4, (2, 5))
    args = [torch.from_numpy(v[k]) for k in ("x", "B", "A", "sigma")]
    np.testing.assert_allclose(naive_bora_matmul(*args).numpy(), numpy_ref.bora_matmul(v["x"], v["B"], v["A"], v["sigma"]),
                               rtol=1e-12, atol=1e-12)


def test_term_counts_count_the_products_in_each_entry(rng):
    from bora_ref.testing._truth import term_counts

    m, n, r, b, lead = 11, 7, 3, 3, (2, 5)  # blocks of 4, 4, 3 rows and 3, 2, 2 columns; N = 10 rows of x
    counts = term_counts(_values(rng, m, n, r, b, lead), grad=True)
    # y: n r products; grad x: m r; grad B: N n; grad A: N m; grad sigma: N m_i n_j for the largest block
    assert counts == {"y": n * r, "grad x": m * r, "grad B": 10 * n, "grad A": 10 * m, "grad sigma": 10 * 4 * 3}
