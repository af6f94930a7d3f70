"""The oracle guide's code runs and does what the guide says (docs/guides/oracle.md)."""

from __future__ import annotations

import contextlib
import io
import re
from pathlib import Path

import pytest

from bora_ref.testing import DEFAULT_CASES, OracleFailure, check_implementation

GUIDE = (Path(__file__).resolve().parents[2] / "docs" / "guides" / "oracle.md").read_text()
BLOCKS = re.findall(r"```python\n(.*?)```", GUIDE, re.S)


def test_worked_example_passes_and_buggy_variant_fails_as_shown():
    kernel, buggy = (b for b in BLOCKS if "def bora_matmul" in b)
    ns: dict = {}
    exec(kernel, ns)
    exec(buggy, ns)  # uses torch, imported by the first block
    report = check_implementation(ns["bora_matmul"], grad=True)
    assert report.cases_run == 3 * len(DEFAULT_CASES) == 87
    with pytest.raises(OracleFailure) as info:
        check_implementation(ns["bora_matmul_buggy"], grad=True)
    msg = str(info.value).splitlines()
    assert info.value.case.name == "uneven-rows-only"
    # the guide pastes the real message: same header and case line
    assert msg[0] in GUIDE and msg[2] in GUIDE and "6 case/dtype runs passed before it" in msg[0]


def test_golden_example_prints_what_the_guide_shows():
    (block,) = (b for b in BLOCKS if "golden / entry" in b)
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        exec(block, {})
    lines = out.getvalue().splitlines()
    assert len(lines) == 10
    for line in lines:
        shown, err = line.rsplit("worst rel. error ", 1)
        # y and all four gradients compared, far inside the documented bar
        assert shown in GUIDE and float(err) < (1e-6 if "float32" in shown else 1e-14)
    assert "rtol = 1e-10` for float64 files and `1e-5`" in GUIDE


def test_guide_states_the_call_order_and_the_effective_sigma():
    assert "`fn` is called `CALLS_PER_CASE = 2` times per run: 2 × 29 × 3 = 174 calls" in GUIDE
    assert len(DEFAULT_CASES) == 29
    assert "`sigma` is the effective $\\Sigma$: already mapped, used exactly as given" in GUIDE
