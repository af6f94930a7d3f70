"""Fuzz the oracle's entry points with hostile arguments: only BoRAValueError or OracleFailure escape.

``check_implementation``, ``check_golden`` and ``bora-ref check`` / ``bora-ref golden``: a call
succeeds, fails the kernel with an ``OracleFailure`` (an ``AssertionError``), or refuses its
arguments with a ``BoRAValueError`` (the command line: exit 2 with one line on stderr, or
argparse's own usage error, also exit 2). Nothing else, and never a traceback.
"""

from __future__ import annotations

import contextlib
import io
import math

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from bora_ref import BoRAValueError, torch_ref
from bora_ref.cli import main
from bora_ref.testing import OracleCase, OracleFailure, check_golden, check_implementation

from . import kernels

HOSTILE = st.one_of(
    st.none(), st.booleans(), st.integers(-3, 3), st.sampled_from([0.0, -1.0, math.nan, math.inf, 1e-3, 2.5]),
    st.text(max_size=6), st.sampled_from([torch.float32, torch.int32, torch.float8_e5m2 if hasattr(torch, "float8_e5m2")
                                          else torch.int8, "cuda", "cpu", "meta", [], (), {}, [None], object()]),
    st.lists(st.sampled_from([torch.float64, torch.bfloat16, "b=1", "x-4d", "nope", 3, None]), max_size=3),
)
KWARGS = ("dtypes", "device", "grad", "seed", "cases", "k", "floor", "rtol_float64", "collect", "timeout", "before")
KERNELS = st.sampled_from([torch_ref.bora_matmul, kernels.sigma_transposed, kernels.exits, kernels.returns_list,
                           None, 3, "fn"])
COUNTS: dict[str, int] = {"tried": 0, "held": 0}


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(fn=KERNELS, kwargs=st.dictionaries(st.sampled_from(KWARGS), HOSTILE, max_size=4))
def test_check_implementation_only_raises_documented_errors(fn, kwargs):
    kwargs.setdefault("cases", ["b=1"])  # keep runs small; a hostile value may replace it
    if kwargs["cases"] is None:
        kwargs["cases"] = ["b=1"]
    COUNTS["tried"] += 1
    try:
        check_implementation(fn, **kwargs)
    except (BoRAValueError, OracleFailure):
        pass
    COUNTS["held"] += 1


@settings(max_examples=60, deadline=None)
@given(fn=KERNELS, grad=HOSTILE, directory=HOSTILE, files=HOSTILE, device=HOSTILE, timeout=HOSTILE)
def test_check_golden_only_raises_documented_errors(fn, grad, directory, files, device, timeout):
    with contextlib.suppress(BoRAValueError, OracleFailure):
        check_golden(fn, grad=grad, directory=directory if isinstance(directory, str) else None,
                     files=files if files is not None else ["b-min-m-n-tall-float64.npz"], device=device,
                     timeout=timeout)


ARGS = st.lists(st.one_of(
    st.sampled_from(["--dtype", "float32", "--device", "cuda", "--grad", "--seed", "-1", "--case", "b=1", "4,4,2,2",
                     "4,4,2,9", "1,1,1,1,", "9,9,3,3,2x3,x-strided,positive", "--collect", "--timeout", "0",
                     "--golden", "--forward-only", "--k", "nan", "--floor", "-2", "/no/dir", "bora_ref.torch_ref:bora_matmul",
                     "tests.testing.kernels:exits", "tests.testing.kernels:sigma_transposed", "no.such:f", ":", ""]),
    st.text(max_size=5)), max_size=6)


@settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(args=ARGS)
def test_check_command_line_exits_0_1_or_2_without_a_traceback(args):
    if "--case" not in args and "--golden" not in args:
        args = [*args, "--case", "b=1"]  # keep runs small
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            code = main(["check", *args])
        except SystemExit as exc:  # argparse's usage errors
            code = exc.code
    assert code in (0, 1, 2), (args, code)
    assert "Traceback" not in err.getvalue() + out.getvalue()
    if code == 2 and "usage:" not in err.getvalue():
        assert err.getvalue().count("\n") == 1, err.getvalue()


@pytest.mark.parametrize("directory", ["/no/such/dir", __file__])
def test_golden_command_with_a_bad_directory_exits_2(directory, capsys):
    assert main(["golden", "--dir", directory]) == 2
    assert capsys.readouterr().err.count("\n") == 1


def test_fuzz_counts(capsys):
    # run with -s to see how many hostile calls were tried (all held, or the tests above failed)
    print(f"check_implementation: {COUNTS['tried']} hostile calls tried, {COUNTS['held']} held")
    assert COUNTS["tried"] == COUNTS["held"]


def test_oracle_case_rejects_hostile_fields():
    for fields in ({"m": "3"}, {"lead": (2, -1)}, {"lead": ("a",)}, {"b": 0}, {"factors": None}, {"name": 5}):
        with pytest.raises(BoRAValueError):
            OracleCase(**{"name": "c", "m": 4, "n": 4, "r": 2, "b": 2, **fields})
