"""``bora-ref check MODULE:FUNCTION`` and ``bora-ref golden``."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from bora_ref.cli import main
from bora_ref.testing import DEFAULT_CASES

ROOT = Path(__file__).resolve().parents[2]


def test_check_passing_function_prints_a_table_and_exits_0(capsys):
    assert main(["check", "tests.testing.kernels:onehot_bora_matmul", "--grad", "--dtype", "float32"]) == 0
    out = capsys.readouterr().out
    lines = out.splitlines()
    assert lines[0].split()[:2] == ["case", "dtype"]
    rows = [line for line in lines[1:] if line.endswith("  ok")]
    assert len(rows) == len(DEFAULT_CASES) and all(row.split()[1] == "float32" for row in rows)
    assert {row.split()[0] for row in rows} == {c.name for c in DEFAULT_CASES}
    assert lines[-1].startswith(f"PASSED tests.testing.kernels:onehot_bora_matmul: {len(DEFAULT_CASES)} case/dtype runs")
    assert "(outputs and gradients, seed 0), all passed" in lines[-1]


def test_check_failing_function_prints_the_failure_and_exits_1(capsys):
    assert main(["check", "tests.testing.kernels:remainder_last", "--dtype", "bfloat16", "--seed", "2"]) == 1
    out = capsys.readouterr().out
    assert "FAILED tests.testing.kernels:remainder_last" in out
    assert "bora_ref oracle: case 'uneven-square' failed in bfloat16 on cpu (seed 2" in out
    table = out.split("\n\n")[0].splitlines()
    assert [row.split()[0] for row in table[1:]] == ["even-square", "even-tall", "even-wide", "uneven-square"]
    assert table[-1].endswith("FAIL") and all(row.endswith("ok") for row in table[1:-1])
    assert "replay: import torch; from bora_ref.testing import check_implementation; from tests.testing.kernels import " \
           "remainder_last as fn; check_implementation(fn, cases=['uneven-square'], dtypes=[torch.bfloat16], " \
           "device='cpu', grad=False, seed=2)" in out


def test_check_runs_only_the_requested_cases_and_dtypes(capsys):
    args = ["check", "bora_ref.torch_ref:bora_matmul", "--case", "b=1", "--case", "x-vector", "--dtype", "float32",
            "--dtype", "float16", "--k", "2", "--floor", "3"]
    assert main(args) == 0
    rows = capsys.readouterr().out.splitlines()[1:5]
    assert [row.split()[:2] for row in rows] == [["b=1", "float32"], ["x-vector", "float32"], ["b=1", "float16"], ["x-vector", "float16"]]


@pytest.mark.parametrize(
    ("target", "match"),
    [
        ("tests.testing.kernels", "target must look like MODULE:FUNCTION"),
        ("no_such_module_xyz:f", "cannot import module 'no_such_module_xyz'"),
        ("tests.testing.kernels:nothing", "has no attribute 'nothing'"),
        ("tests.testing.kernels:torch", "must name a callable, got a module"),
    ],
)
def test_check_bad_target_exits_2(target, match, capsys):
    assert main(["check", target]) == 2
    err = capsys.readouterr().err
    assert err.startswith("bora-ref check: error: ") and match in err


def test_check_unknown_case_exits_2(capsys):
    assert main(["check", "bora_ref.torch_ref:bora_matmul", "--case", "huge"]) == 2
    assert "case must be the name of a built-in case" in capsys.readouterr().err


def test_check_as_a_subprocess_from_the_project_directory():
    cmd = [sys.executable, "-m", "bora_ref.cli", "check", "tests.testing.kernels:sigma_ignored", "--dtype", "float64"]
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
    assert proc.returncode == 1, proc.stderr
    assert "FAILED tests.testing.kernels:sigma_ignored" in proc.stdout and "case 'even-square' failed" in proc.stdout


def test_golden_verify_and_regenerate(tmp_path, capsys):
    assert main(["golden"]) == 0
    assert capsys.readouterr().out.strip().endswith(": OK")
    assert main(["golden", "--regenerate", "--dir", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert out.count("wrote ") == 8 and (tmp_path / "manifest.json").is_file()
    (tmp_path / "x-3d-float64.npz").write_bytes(b"not a zip")
    assert main(["golden", "--dir", str(tmp_path)]) == 1
    out = capsys.readouterr().out
    assert "x-3d-float64.npz: cannot be read as .npz" in out and out.strip().endswith("2 problem(s)")
