"""The oracle's built-in cases and their inputs."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from bora_ref import block_sizes
from bora_ref.testing import DEFAULT_CASES, OracleCase, get_case, make_inputs
from bora_ref.testing.cases import case_values


def _uneven(case):
    return case.m % case.b or case.n % case.b


def test_default_cases_cover_what_the_oracle_promises():
    cases = DEFAULT_CASES
    assert len({c.name for c in cases}) == len(cases) == 29
    even = [c for c in cases if not _uneven(c) and c.b > 1]
    uneven = [c for c in cases if _uneven(c)]
    for group in (even, uneven):  # tall, wide and square in both
        assert any(c.m > c.n for c in group) and any(c.m < c.n for c in group) and any(c.m == c.n for c in group)
    assert any(c.m % c.b and not c.n % c.b for c in cases) and any(c.n % c.b and not c.m % c.b for c in cases)
    assert any(c.r > min(block_sizes(c.m, c.b) + block_sizes(c.n, c.b)) for c in cases)  # r larger than a block
    assert any(c.b == 1 for c in cases) and any(c.b == min(c.m, c.n) > 1 for c in cases)
    assert {len(c.lead) for c in cases} == {0, 1, 2, 3, 4} and any(0 in c.lead for c in cases)
    assert any(c.lead == (1,) for c in cases) and any(c.lead == (1, 1) for c in cases)  # decode steps
    assert any(c.n // c.b >= 1024 and c.factors == "positive" for c in cases)  # a long positive reduction
    assert {c.layout for c in cases} == {"contiguous", "x-transposed", "x-strided", "factors-permuted"}
    assert {c.factors for c in cases} == {"gaussian", "zero-B", "zero-sigma", "large", "positive"}
    assert any(min(c.m, c.n) > 64 and c.r > 16 for c in cases)  # beyond one GPU tile


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32, torch.bfloat16, torch.float16])
def test_values_are_rounded_to_the_dtype_and_seeded_by_name(dtype):
    case = get_case("uneven-tall")
    values = case_values(case, dtype, seed=11)
    for key, v in values.items():
        assert v.dtype == np.float64
        np.testing.assert_array_equal(torch.from_numpy(v).to(dtype).double().numpy(), v, err_msg=key)
    again = case_values(OracleCase("uneven-tall", 23, 10, 4, 3), dtype, seed=11)  # same name, same inputs
    assert all(np.array_equal(values[k], again[k]) for k in values)
    other = case_values(OracleCase("other-name", 23, 10, 4, 3), dtype, seed=11)
    assert not np.array_equal(values["x"], other["x"])
    assert not np.array_equal(values["B"], case_values(case, dtype, seed=12)["B"])


@pytest.mark.parametrize("name", [c.name for c in DEFAULT_CASES])
def test_make_inputs_shapes_layouts_and_values(name):
    case = get_case(name)
    x, B, A, sigma, g = make_inputs(case, torch.float32, "cpu", seed=0)
    values = case_values(case, torch.float32, 0)
    for key, t, shape in [("x", x, case.x_shape), ("B", B, (case.m, case.r)), ("A", A, (case.r, case.n)),
                          ("sigma", sigma, (case.b, case.b, case.r)), ("g", g, case.y_shape)]:
        assert t.dtype == torch.float32 and tuple(t.shape) == shape, key
        np.testing.assert_array_equal(t.double().numpy(), values[key], err_msg=key)
    if case.layout == "x-transposed":
        assert not x.is_contiguous() and x.stride()[-1] == int(np.prod(case.lead))
    if case.layout == "x-strided":
        assert x.stride()[-1] == 2
        assert torch.isnan(x.as_strided((x.numel() * 2,), (1,))[1::2]).all()  # the gaps are poison
    if case.layout == "factors-permuted":
        assert not any(t.is_contiguous() for t in (B, A, sigma))
        assert sigma.stride() == (1, case.b, case.b * case.b)  # buffer (r, b, b), index i fastest


def test_second_call_draws_other_values_of_the_same_shapes():
    case = get_case("x-4d")
    first, second = case_values(case, torch.float32, 3), case_values(case, torch.float32, 3, call=1)
    for key in first:
        assert first[key].shape == second[key].shape and not np.array_equal(first[key], second[key]), key
    x1 = make_inputs(case, torch.float32, "cpu", seed=3, call=1)[0]
    np.testing.assert_array_equal(x1.double().numpy(), second["x"])
    with pytest.raises(ValueError, match=r"call must be 0 \(the first call\) or 1 \(the second\), got 2"):
        case_values(case, torch.float32, 3, call=2)


def test_factor_kinds():
    dtype = torch.float64
    assert not case_values(get_case("zero-B"), dtype, 0)["B"].any()
    assert case_values(get_case("zero-B"), dtype, 0)["sigma"].all()
    assert not case_values(get_case("zero-sigma"), dtype, 0)["sigma"].any()
    large = case_values(get_case("large-factors"), dtype, 0)
    # float64's large factors do not fit in float32: a hidden float32 detour overflows
    assert np.abs(large["B"]).max() > torch.finfo(torch.float32).max
    large_bf16 = case_values(get_case("large-factors"), torch.bfloat16, 0)
    assert np.isfinite(large_bf16["B"]).all() and np.abs(large_bf16["B"]).max() > 1e4
    positive = case_values(get_case("long-n-positive"), dtype, 0)
    assert all((v >= 0).all() and v.any() for v in positive.values())


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"b": 7}, r"b must satisfy 1 <= b <= min\(m, n\) = 6 \(m=6, n=8\)"),
        ({"r": 0}, r"r must be >= 1, got 0"),
        ({"lead": (2, -1)}, r"lead must be >= 0, got -1"),
        ({"layout": "diagonal"}, r"layout must be one of \('contiguous', .*\), got 'diagonal'"),
        ({"factors": "ones"}, r"factors must be one of \('gaussian', .*\), got 'ones'"),
        ({"name": ""}, r"name must be a non-empty string, got ''"),
    ],
)
def test_oracle_case_rejects_bad_fields(kwargs, match):
    fields = {"name": "c", "m": 6, "n": 8, "r": 2, "b": 2, **kwargs}
    with pytest.raises(ValueError, match=match):
        OracleCase(**fields)


def test_get_case_and_case_values_reject_bad_input():
    with pytest.raises(ValueError, match=r"case must be the name of a built-in case .* got 'tall'"):
        get_case("tall")
    with pytest.raises(ValueError, match=r"dtype must be one of .* got torch.int64"):
        case_values(get_case("b=1"), torch.int64, 0)
    with pytest.raises(ValueError, match=r"seed must be >= 0, got -2"):
        case_values(get_case("b=1"), torch.float64, -2)
