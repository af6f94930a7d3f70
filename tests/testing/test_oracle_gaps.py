"""The gaps an outside kernel author found in the oracle, each closed and held by a planted bug.

Every planted bug below is caught by the default ``check_implementation(fn)`` call (forward bugs) or by
``grad=True`` (gradient bugs), while independent correct kernels (loop, einsum, block-diagonal
expansion, hand-written backward, one-hot, the library's fast path) pass in all four dtypes.
"""

from __future__ import annotations

import re
import time

import pytest
import torch

from bora_ref import torch_ref
from bora_ref.testing import (
    DEFAULT_CASES,
    OracleCase,
    OracleFailure,
    check_implementation,
    get_case,
    make_inputs,
)

from . import kernels

FOUR = [torch.float64, torch.float32, torch.float16, torch.bfloat16]
NEW_CASES = {"x-4d", "x-5d", "decode-1xn", "decode-1x1xn", "long-n", "long-n-positive"}
OLD_CASES = [c for c in DEFAULT_CASES if c.name not in NEW_CASES]


@pytest.mark.parametrize(
    "fn",
    [kernels.loop_bora_matmul, kernels.einsum_bora_matmul, kernels.blockdiag_bora_matmul,
     kernels.custom_backward_bora_matmul],
    ids=lambda f: f.__name__,
)
def test_independent_correct_kernels_pass_every_case_in_four_dtypes_with_gradients(fn):
    report = check_implementation(fn, dtypes=FOUR, grad=True)
    assert report.cases_run == 4 * len(DEFAULT_CASES)
    assert set(report.worst_ratio) == set(FOUR) and all(v <= 1 for v in report.worst_ratio.values())


def _caught(fn, **kwargs) -> OracleFailure:
    with pytest.raises(OracleFailure) as info:
        check_implementation(fn, **kwargs)
    return info.value


# (kernel, gap, first failing case, dtype, what the message says). Each passes the case list without
# the cases (or the second call) that close its gap.
FORWARD_GAPS = [
    (kernels.keeps_first_leading_dim, "x-4d", torch.float64,
     r"the output y of the first call has shape \(2, 12, 10\), expected \(2, 3, 4, 10\)"),
    (kernels.squeezes_unit_dims, "x-5d", torch.float64,
     r"has shape \(3, 2, 9\), expected \(3, 1, 2, 1, 9\)"),
    (kernels.decode_sigma_transposed, "decode-1xn", torch.float64, r"the output y of the first call differs"),
    (kernels.decode_drops_batch_dims, "decode-1xn", torch.float64, r"has shape \(21,\), expected \(1, 21\)"),
]


@pytest.mark.parametrize(("fn", "case", "dtype", "problem"), FORWARD_GAPS, ids=[g[0].__name__ for g in FORWARD_GAPS])
def test_leading_dim_and_decode_bugs_are_caught_by_the_default_call(fn, case, dtype, problem):
    exc = _caught(fn)
    assert (exc.case.name, exc.dtype) == (case, dtype)
    assert re.search(problem, str(exc)), str(exc)
    check_implementation(fn, cases=OLD_CASES)  # the old case list let it through


def test_accumulating_a_long_sum_in_bfloat16_or_float16_is_caught():
    fn = kernels.low_precision_accumulation
    exc = _caught(fn)
    assert exc.case.name in ("long-n", "long-n-positive") and exc.dtype == torch.bfloat16
    assert "sqrt(" in str(exc) and "float32 eps" in str(exc)  # the rule is spelled out
    # on positive factors (no cancellation) it misses by far, in both low-precision dtypes
    for dtype, at_least in ((torch.bfloat16, 4.0), (torch.float16, 2.0)):
        with pytest.raises(OracleFailure) as info:
            check_implementation(fn, cases=["long-n-positive"], dtypes=[dtype])
        worst = max(c.ratio for c in info.value.report.comparisons)
        assert worst > at_least, worst
    # it is right in float32 and float64 (it accumulates in the working dtype, which is then fine),
    # and the short cases never noticed it
    check_implementation(fn, dtypes=[torch.float64, torch.float32])
    check_implementation(fn, cases=OLD_CASES, dtypes=FOUR)


def test_long_cases_sum_over_1024_terms_per_block_and_have_positive_factors():
    long = [c for c in DEFAULT_CASES if c.name.startswith("long-n")]
    assert all(c.n // c.b >= 1024 for c in long)
    x, B, A, sigma, g = make_inputs(get_case("long-n-positive"), torch.float32)
    assert all(bool((t >= 0).all()) for t in (x, B, A, sigma, g))


def test_a_cache_keyed_by_shape_fails_on_the_second_call():
    exc = _caught(kernels._DeltaCache())
    assert exc.case.name == "even-square"
    assert "the output y of the second call differs from the float64 NumPy reference" in str(exc)


def test_an_output_buffer_reused_across_calls_is_caught():
    exc = _caught(kernels._OutputBuffer())
    assert exc.case.name == "even-square"
    assert "the output of the first call changed when fn was called again (96 of 96 entries)" in str(exc)


def test_state_shared_between_forward_and_backward_needs_grad():
    check_implementation(kernels.global_saved_tensors, dtypes=[torch.float64])  # forward is right
    exc = _caught(kernels.global_saved_tensors, grad=True)
    # both forwards run before the first backward, which then sees the second call's inputs
    assert re.search(r"the gradient w.r.t. \w+ of the first call differs", str(exc)), str(exc)


def _replay_line(message: str, label: str) -> str:
    line = next(line for line in message.splitlines() if line.startswith(f"  {label}"))
    return re.sub(r"^.*?: (?:\(with fn = your implementation\) )?(?=import torch)", "", line)


def test_a_failure_that_depends_on_the_previous_case_replays_as_a_pair():
    fn = kernels.stale_block_index_cache
    fn.reset()
    with pytest.raises(OracleFailure) as first:
        check_implementation(fn)
    msg = str(first.value)
    assert first.value.case.name == "even-tall"  # after even-square, same b = 4, other n
    pair = _replay_line(msg, "replay (with the run before it")
    alone = _replay_line(msg, "this case alone")
    assert "before=[('even-square', torch.float64)], cases=['even-tall']" in pair
    fn.reset()  # a fresh process
    exec(alone, {})  # the case alone passes: the failure needs the earlier case
    fn.reset()
    with pytest.raises(OracleFailure) as again:
        exec(pair, {})
    assert (again.value.case, again.value.dtype) == (first.value.case, first.value.dtype)
    problem = re.compile(r"^  problem: .*$", re.M)
    assert problem.search(str(again.value)).group(0) == problem.search(msg).group(0)


def test_collect_reports_every_failing_run():
    exc = _caught(kernels.decode_sigma_transposed, collect=True)
    names = [(f.case.name, f.dtype) for f in exc.failures]
    # every decode case in every default dtype, and nothing else
    assert names == [(c, d) for d in (torch.float64, torch.float32, torch.bfloat16) for c in ("decode-1xn", "decode-1x1xn")]
    assert exc.report.cases_run == 3 * len(DEFAULT_CASES)  # everything ran
    msg = str(exc)
    assert msg.startswith("bora_ref oracle: 6 of 87 case/dtype runs failed on cpu")
    assert msg.count("  problem: ") == 6 and msg.count("this case alone: ") == 6
    assert (exc.case, exc.dtype) == (exc.failures[0].case, exc.failures[0].dtype)


def test_exceptions_from_the_kernel_are_chained_with_its_frame():
    exc = _caught(kernels.rejects_uneven)
    cause = exc.__cause__
    assert isinstance(cause, NotImplementedError) and str(cause) == "uneven blocks are not supported"
    frames = []
    tb = cause.__traceback__
    while tb is not None:
        frames.append(tb.tb_frame.f_code.co_name)
        tb = tb.tb_next
    assert frames[-1] == "rejects_uneven"


def test_worst_entry_is_located_in_its_blocks():
    exc = _caught(kernels.wrong_sigma_grad, grad=True, dtypes=[torch.float64], cases=["uneven-square"])
    assert re.search(r"at index \(\d, \d, \d\) in block \(row block \d, column block \d\), rank channel \d", str(exc))
    exc = _caught(kernels.remainder_last, cases=["uneven-wide"], dtypes=[torch.float64])
    # 7 rows in 3 blocks are (3, 2, 2); the remainder-last split (2, 2, 3) first differs in row block 0
    assert re.search(r"in row block \d of 3 \(rows \d\.\.\d of ΔW\), every column block contributing", str(exc))


def test_a_kernel_that_exits_fails_and_chains_the_exit():
    exc = _caught(kernels.exits)
    assert "the implementation (first call) raised SystemExit: 0 (fn must return y, not exit the interpreter)" in str(exc)
    assert isinstance(exc.__cause__, SystemExit)


def test_keyboard_interrupt_is_not_swallowed():
    def interrupted(x, B, A, sigma):
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        check_implementation(interrupted)


def test_non_tensor_and_sparse_outputs_are_failures():
    assert "the output y of the first call is a list, not a torch.Tensor" in str(_caught(kernels.returns_list))
    assert "is a tensor of layout torch.sparse_coo (sparse or otherwise not dense)" in str(_caught(kernels.returns_sparse))


def test_timeout_stops_a_call_that_never_returns():
    start = time.perf_counter()
    exc = _caught(kernels.spins_forever, timeout=0.3, dtypes=[torch.float32])
    assert time.perf_counter() - start < 30
    assert "the implementation (first call) did not finish within the timeout of 0.3 s" in str(exc)
    assert "timeout=0.3" in str(exc)  # the replay keeps it
    # a kernel that swallows the interruption still fails
    def stubborn(x, B, A, sigma):
        deadline = time.perf_counter() + 1.0
        while time.perf_counter() < deadline:
            try:
                while time.perf_counter() < deadline:
                    pass
            except BaseException:
                pass
        return torch_ref.bora_matmul(x, B, A, sigma)

    assert "did not finish within the timeout" in str(_caught(stubborn, timeout=0.2, cases=["b=1"]))
    # and a fast kernel is unaffected
    check_implementation(torch_ref.bora_matmul, timeout=30.0, cases=["b=1", "x-4d"])


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"dtypes": torch.float32}, r"dtypes must be a list or tuple of torch dtypes, got the single dtype torch.float32"),
        ({"dtypes": "float32"}, r"dtypes must be a list or tuple of torch dtypes, got 'float32'"),
        ({"grad": "no"}, r"grad must be True or False, got 'no'"),
        ({"collect": 1}, r"collect must be True or False, got 1"),
        ({"cases": "even-square"}, r"cases must be a list or tuple of case names or OracleCase objects"),
        ({"timeout": 0}, r"timeout must be a finite number > 0, got 0"),
        ({"before": [("even-square",)]}, r"before must hold \(case, dtype\) pairs"),
    ],
)
def test_more_bad_arguments_are_value_errors(kwargs, match):
    with pytest.raises(ValueError, match=match):
        check_implementation(torch_ref.bora_matmul, **kwargs)


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_an_unavailable_device_is_a_value_error():
    with pytest.raises(ValueError, match=r"device must be available on this machine, got 'cuda'"):
        check_implementation(torch_ref.bora_matmul, device="cuda")


def test_custom_cases_with_four_leading_dims_replay_with_their_repr():
    case = OracleCase("mine-4d", 7, 9, 2, 3, lead=(1, 2, 1, 3), factors="positive")
    exc = _caught(kernels.keeps_first_leading_dim, cases=[case])
    assert repr(case) in str(exc)
