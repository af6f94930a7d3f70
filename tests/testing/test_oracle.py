"""check_implementation: the library's fast path and an independent kernel pass; planted bugs fail."""

from __future__ import annotations

import re

import numpy as np
import pytest
import torch

from bora_ref import numpy_ref, torch_ref
from bora_ref.testing import (
    CALLS_PER_CASE,
    DEFAULT_CASES,
    DEFAULT_FLOOR,
    DEFAULT_K,
    FLOAT64_RTOL,
    OracleCase,
    OracleFailure,
    check_implementation,
    get_case,
)

from . import kernels

THREE = (torch.float64, torch.float32, torch.bfloat16)


def test_torch_ref_passes_in_three_dtypes_with_grads():
    report = check_implementation(torch_ref.bora_matmul, grad=True)
    assert report.cases_run == 3 * len(DEFAULT_CASES)
    # output and four gradients for every case and dtype, on each of the two calls
    assert len(report.comparisons) == 5 * 3 * len(DEFAULT_CASES) * CALLS_PER_CASE == 5 * 3 * 29 * 2
    assert set(report.worst_ratio) == set(THREE)
    assert all(0 <= v <= 1 for v in report.worst_ratio.values())
    assert all(c.passed for c in report.comparisons)


def test_independent_kernel_passes_in_four_dtypes():
    # (with gradients it is checked in test_guide.py: the guide's worked example is the same kernel)
    dtypes = (*THREE, torch.float16)
    report = check_implementation(kernels.onehot_bora_matmul, dtypes=dtypes)
    assert report.cases_run == 4 * len(DEFAULT_CASES) and all(report.worst_ratio[d] <= 1 for d in dtypes)


# (kernel, first failing case, its dtype, what the message must say)
PLANTED = [
    (kernels.sigma_transposed, "even-square", torch.float64,
     r"the output y of the first call differs from the float64 NumPy reference"),
    (kernels.sigma_ignored, "even-square", torch.float64, r"the output y of the first call differs"),
    (kernels.remainder_last, "uneven-square", torch.float64, r"the output y of the first call differs"),
    (kernels.proportional_blocks, "uneven-rows-only", torch.float64, r"the output y of the first call differs"),
    (kernels.float32_roundtrip, "even-square", torch.float64, r"relative error 1\.\d+e-07, tolerance"),
    (kernels.flattens_leading_dims, "x-vector", torch.float64,
     r"the output y of the first call has shape \(1, 10\), expected \(10,\)"),
    (kernels.writes_into_input, "even-square", torch.float64,
     r"\(first call\) wrote into its input B \(64 of 64 entries changed\)"),
    (kernels.ignores_strides, "x-transposed", torch.float64, r"the output y of the first call differs"),
    (kernels.bfloat16_via_float16, "large-factors", torch.bfloat16, r"max abs error nan .*got nan"),
    (kernels.rejects_uneven, "uneven-square", torch.float64,
     r"\(first call\) raised NotImplementedError: uneven blocks are not supported"),
    (kernels.always_float32, "even-square", torch.float64, r"has dtype float32 for float64 inputs"),
]


@pytest.mark.parametrize(("fn", "case", "dtype", "problem"), PLANTED, ids=[p[0].__name__ for p in PLANTED])
def test_planted_bug_is_rejected_at_its_first_failing_case(fn, case, dtype, problem):
    with pytest.raises(AssertionError) as info:
        check_implementation(fn)
    exc = info.value
    assert isinstance(exc, OracleFailure)
    assert (exc.case.name, exc.dtype) == (case, dtype)
    assert re.search(problem, str(exc)), str(exc)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("fn", [kernels.sigma_transposed, kernels.sigma_ignored, kernels.remainder_last])
def test_logic_bugs_are_caught_by_low_precision_checks_alone(fn, dtype):
    # The floor must not be so loose that a float32- or bfloat16-only code path could hide a logic bug.
    with pytest.raises(OracleFailure, match=r"the output y of the first call differs from the float64 NumPy reference"):
        check_implementation(fn, dtypes=[dtype])


def test_float32_detour_is_legitimate_below_float64():
    report = check_implementation(kernels.float32_roundtrip, dtypes=[torch.float32, torch.bfloat16])
    assert report.cases_run == 2 * len(DEFAULT_CASES)
    # A loose float64 rtol accepts its rounding (~2e-7) but not its range: float64's large factors overflow.
    with pytest.raises(OracleFailure, match=r"max abs error nan .*got nan") as info:
        check_implementation(kernels.float32_roundtrip, dtypes=[torch.float64], rtol_float64=1e-5)
    assert info.value.case.name == "large-factors"


def test_large_factors_case_is_what_catches_a_float16_detour():
    others = [c for c in DEFAULT_CASES if c.factors != "large"]
    check_implementation(kernels.bfloat16_via_float16, dtypes=[torch.bfloat16], cases=others)


def test_gradient_bugs_need_grad_true():
    check_implementation(kernels.wrong_sigma_grad, dtypes=[torch.float64])  # forward is right
    with pytest.raises(OracleFailure, match=r"the gradient w.r.t. sigma of the first call differs from the float64") as info:
        check_implementation(kernels.wrong_sigma_grad, grad=True)
    assert info.value.case.name == "even-square"
    with pytest.raises(OracleFailure, match=r"the output of the first call does not require grad"):
        check_implementation(kernels.detached, grad=True)
    with pytest.raises(OracleFailure, match=r"the gradient w.r.t. sigma is None"):
        check_implementation(kernels.sigma_ignored, grad=True)
    with pytest.raises(OracleFailure, match=r"raised RuntimeError: a leaf Variable that requires grad"):
        check_implementation(kernels.writes_into_input, grad=True)


def test_failure_message_names_everything_needed():
    with pytest.raises(OracleFailure) as info:
        check_implementation(kernels.remainder_last, seed=5)
    msg = str(info.value)
    for part in [
        "case 'uneven-square' failed in float64 on cpu (seed 5, grad=False; 3 case/dtype runs passed before it)",
        "x (6, 11), B (11, 3), A (3, 11), sigma (3, 3, 3) -> y (6, 11)",
        "m=11, n=11, r=3, b=3, row blocks (4, 4, 3), column blocks (4, 4, 3)",
        "layout contiguous, factors gaussian",
        "max abs error", "relative error", "tolerance", "float64: 1e-10 x max |truth|",
        "row block", "of ΔW)",
        "replay (with the run before it, in case fn keeps state between calls): import torch; from bora_ref.testing "
        "import check_implementation; from tests.testing.kernels import remainder_last as fn; check_implementation(fn, "
        "before=[('even-wide', torch.float64)], cases=['uneven-square'], dtypes=[torch.float64], device='cpu', "
        "grad=False, seed=5)",
        "this case alone: import torch; from bora_ref.testing import check_implementation; "
        "from tests.testing.kernels import remainder_last as fn; check_implementation(fn, cases=['uneven-square'], "
        "dtypes=[torch.float64], device='cpu', grad=False, seed=5)",
    ]:
        assert part in msg, (part, msg)
    # the partial report holds what ran before the failure
    ran = list(dict.fromkeys(c.case.name for c in info.value.report.comparisons))
    assert ran == ["even-square", "even-tall", "even-wide", "uneven-square"]  # and the failing run itself


def _replay(message: str, namespace: dict) -> OracleFailure:
    snippet = re.search(r"^  replay(?: \([^)]*\))?: (?:\(with fn = your implementation\) )?(.*)$", message, re.M).group(1)
    with pytest.raises(OracleFailure) as info:
        exec(snippet, namespace)
    return info.value


def _problem(message: str) -> str:
    return re.search(r"^  problem: .*$", message, re.M).group(0)


@pytest.mark.parametrize(
    ("fn", "kwargs"),
    [
        (kernels.sigma_transposed, {}),
        (kernels.remainder_last, {"seed": 3, "k": 2.5, "floor": 1.0, "dtypes": [torch.bfloat16]}),
        (kernels.wrong_sigma_grad, {"grad": True, "dtypes": [torch.float32]}),
        (kernels.flattens_leading_dims, {}),
    ],
    ids=["sigma_transposed", "non-default-args", "grad", "shape"],
)
def test_replaying_the_message_reproduces_the_failure(fn, kwargs):
    with pytest.raises(OracleFailure) as first:
        check_implementation(fn, **kwargs)
    again = _replay(str(first.value), {})
    assert (again.case, again.dtype) == (first.value.case, first.value.dtype)
    assert _problem(str(again)) == _problem(str(first.value))  # same inputs, same numbers


def test_replay_of_a_local_function_and_a_custom_case():
    def local_kernel(x, B, A, sigma):  # not importable by name
        return kernels.sigma_transposed(x, B, A, sigma)

    case = OracleCase("mine", 9, 6, 2, 3, lead=(2, 2), layout="x-strided")
    with pytest.raises(OracleFailure) as first:
        check_implementation(local_kernel, cases=[case], dtypes=[torch.float32])
    msg = str(first.value)
    assert "  replay: (with fn = your implementation) import torch; from bora_ref.testing import check_implementation, OracleCase;" in msg
    assert repr(case) in msg
    again = _replay(msg, {"fn": local_kernel})
    assert again.case == case and _problem(str(again)) == _problem(msg)


class _Perturbed:
    """Float64 truth rounded to the dtype, with one entry moved by ``shift``."""

    def __init__(self, shift: float):
        self.shift = shift

    def __call__(self, x, B, A, sigma):
        args = [t.detach().double().numpy() for t in (x, B, A, sigma)]
        y = torch.from_numpy(numpy_ref.bora_matmul(*args))
        y.view(-1)[0] += self.shift
        return y.to(x.dtype)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_tolerance_boundary_is_where_the_docstring_puts_it(dtype):
    case = [get_case("uneven-tall")]
    clean = check_implementation(_Perturbed(0.0), cases=case, dtypes=[dtype]).comparisons[0]
    if dtype == torch.float64:
        assert clean.tolerance == pytest.approx(FLOAT64_RTOL * clean.max_abs_truth, rel=1e-12)
        assert clean.max_abs_error <= 1e-14 * clean.max_abs_truth
    else:
        eps = torch.finfo(dtype).eps
        assert clean.tolerance > DEFAULT_K * clean.naive_error
        assert clean.naive_error > 0 and clean.max_abs_error <= eps * clean.max_abs_truth  # rounding y only
        assert f"{DEFAULT_K:g} x naive float32 baseline error" in clean.rule and f"+ {DEFAULT_FLOOR:g} x (eps" in clean.rule
    check_implementation(_Perturbed(0.5 * clean.tolerance), cases=case, dtypes=[dtype])
    with pytest.raises(OracleFailure, match=r"max abs error .* at index \(0, 0\)"):
        check_implementation(_Perturbed(2.0 * clean.tolerance), cases=case, dtypes=[dtype])


def test_report_summary_and_table():
    report = check_implementation(torch_ref.bora_matmul, dtypes=[torch.float64, torch.bfloat16], cases=["b=1", "x-3d"])
    assert report.cases_run == 4 and len(report.comparisons) == 4 * CALLS_PER_CASE
    assert str(report).startswith("4 case/dtype runs on cpu (outputs, seed 0), all passed; worst error/tolerance: float64 ")
    lines = report.table().splitlines()
    assert lines[0].split()[:3] == ["case", "dtype", "m"]
    assert [line.split()[:2] for line in lines[1:]] == [["b=1", "float64"], ["x-3d", "float64"], ["b=1", "bfloat16"], ["x-3d", "bfloat16"]]
    assert all(line.endswith("ok") for line in lines[1:])


def test_inputs_are_identical_whatever_the_case_order():
    seen = []

    def spy(x, B, A, sigma):
        seen.append([t.clone() for t in (x, B, A, sigma)])
        return torch_ref.bora_matmul(x, B, A, sigma)

    check_implementation(spy, cases=["b=1", "x-3d"], dtypes=[torch.float32], seed=7)
    check_implementation(spy, cases=["x-3d", "b=1"], dtypes=[torch.float32], seed=7)
    assert len(seen) == 8  # two calls per case
    for a, b in zip(seen[0] + seen[1] + seen[2] + seen[3], seen[6] + seen[7] + seen[4] + seen[5]):
        assert torch.equal(a, b)
    # the two calls of a case get different values of the same shapes
    assert all(a.shape == b.shape and not torch.equal(a, b) for a, b in zip(seen[0], seen[1]))


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"fn": 3}, r"fn must be callable as fn\(x, B, A, sigma\), got 3"),
        ({"dtypes": [torch.int32]}, r"dtypes must contain only .* got torch.int32"),
        ({"dtypes": []}, r"dtypes must name at least one dtype"),
        ({"device": "warp-drive"}, r"device must be a torch device, got 'warp-drive'"),
        ({"seed": -1}, r"seed must be >= 0, got -1"),
        ({"cases": ["nope"]}, r"case must be the name of a built-in case \(even-square, .*\), got 'nope'"),
        ({"cases": []}, r"cases must name at least one case"),
        ({"k": 0}, r"k must be a finite number > 0, got 0"),
        ({"floor": -1.0}, r"floor must be a finite number >= 0, got -1.0"),
        ({"rtol_float64": float("nan")}, r"rtol_float64 must be a finite number > 0, got nan"),
    ],
)
def test_bad_arguments_are_rejected(kwargs, match):
    kwargs = {"fn": torch_ref.bora_matmul, **kwargs}
    with pytest.raises(ValueError, match=match):
        check_implementation(kwargs.pop("fn"), **kwargs)


def test_non_tensor_output_and_wrong_device_are_reported():
    with pytest.raises(OracleFailure, match=r"the output y of the first call is a ndarray, not a torch.Tensor"):
        check_implementation(lambda x, B, A, s: np.zeros(x.shape[:-1] + (B.shape[0],)), dtypes=[torch.float64])
    with pytest.raises(OracleFailure, match=r"the output y of the first call is on device meta for inputs on cpu"):
        check_implementation(lambda x, B, A, s: torch_ref.bora_matmul(x, B, A, s).to("meta"), dtypes=[torch.float64])
