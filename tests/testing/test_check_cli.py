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
    assert "this case alone: import torch; from bora_ref.testing import check_implementation; from tests.testing.kernels " \
           "import remainder_last as fn; check_implementation(fn, cases=['uneven-square'], dtypes=[torch.bfloat16], " \
           "device='cpu', grad=False, seed=2)" in out
    assert "check_implementation(fn, before=[('even-wide', torch.bfloat16)], cases=['uneven-square']" in out


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
    assert out.count("wrote ") == 10 and (tmp_path / "manifest.json").is_file()
    (tmp_path / "x-3d-float64.npz").write_bytes(b"not a zip")
    assert main(["golden", "--dir", str(tmp_path)]) == 1
    out = capsys.readouterr().out
    assert "x-3d-float64.npz: cannot be read as .npz" in out and out.strip().endswith("2 problem(s)")


def test_check_golden_passes_and_fails_with_exit_codes(capsys, tmp_path):
    assert main(["check", "--golden", "tests.testing.kernels:loop_bora_matmul"]) == 0  # the flag before the target
    out = capsys.readouterr().out
    assert "PASSED tests.testing.kernels:loop_bora_matmul: 10 golden files in" in out and "outputs and gradients" in out
    assert main(["check", "tests.testing.kernels:wrong_sigma_grad", "--golden", "--forward-only"]) == 0
    capsys.readouterr()
    assert main(["check", "tests.testing.kernels:wrong_sigma_grad", "--golden"]) == 1
    out = capsys.readouterr().out
    assert "FAILED tests.testing.kernels:wrong_sigma_grad" in out and "the gradient w.r.t. sigma differs" in out
    copy = tmp_path / "g"
    assert main(["golden", "--regenerate", "--dir", str(copy)]) == 0
    capsys.readouterr()
    assert main(["check", "--golden", str(copy), "bora_ref.torch_ref:bora_matmul"]) == 0
    assert f"10 golden files in {copy}" in capsys.readouterr().out


@pytest.mark.parametrize(
    ("args", "match"),
    [
        (["check", "--golden", "/no/such/dir", "bora_ref.torch_ref:bora_matmul"],
         "directory must be an existing directory of golden files, got '/no/such/dir'"),
        (["golden", "--dir", "/no/such/dir"], "directory must be an existing directory of golden files"),
        (["check", "bora_ref.torch_ref:bora_matmul", "--device", "cuda"], "device must be available on this machine"),
        (["check", "bora_ref.torch_ref:bora_matmul", "--case", "4,4,2,9"], "case '4,4,2,9': b must satisfy"),
        (["check", "bora_ref.torch_ref:bora_matmul", "--case", "100000,100000,8,2"], "more than the 134217728"),
        (["check", "bora_ref.torch_ref:bora_matmul", "--case", "8,8,2,2,2y3"], "LEAD must be sizes joined by 'x'"),
        (["check", "bora_ref.torch_ref:bora_matmul", "--timeout", "-1"], "timeout must be a finite number > 0"),
        (["check"], "target MODULE:FUNCTION is required"),
    ],
)
def test_bad_commands_exit_2_with_one_line(args, match, capsys):
    if "cuda" in args and __import__("torch").cuda.is_available():
        pytest.skip("needs a machine without CUDA")
    assert main(args) == 2
    err = capsys.readouterr().err
    assert match in err and err.count("\n") == 1, err


def test_check_custom_cases_from_the_command_line(capsys):
    args = ["check", "bora_ref.torch_ref:bora_matmul", "--dtype", "float32", "--case", "5,7,2,2",
            "--case", "9,12,3,3,2x1x3,x-strided,positive", "--case", "6,6,1,3,", "--case", "b=1"]
    assert main(args) == 0
    rows = capsys.readouterr().out.splitlines()[1:5]
    assert [row.split()[0] for row in rows] == ["cli-5x7-r2-b2", "cli-9x12-r3-b3-x2x1x3", "cli-6x6-r1-b3-x", "b=1"]
    assert "(2, 1, 3, 12)" in rows[1] and "(6,)" in rows[2]
    assert main(["check", "tests.testing.kernels:keeps_first_leading_dim", "--case", "9,12,3,3,2x1x3"]) == 1
    out = capsys.readouterr().out
    assert "OracleCase(name='cli-9x12-r3-b3-x2x1x3', m=9, n=12, r=3, b=3, lead=(2, 1, 3)" in out


def _module(tmp_path, monkeypatch, name, source):
    (tmp_path / f"{name}.py").write_text(source)
    monkeypatch.chdir(tmp_path)
    monkeypatch.syspath_prepend(str(tmp_path))
    return name


def test_a_module_with_a_syntax_error_exits_2(tmp_path, monkeypatch, capsys):
    name = _module(tmp_path, monkeypatch, "oracle_cli_syntax_err", "def f(:\n")
    assert main(["check", f"{name}:f"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and f"cannot import module '{name}': SyntaxError: invalid syntax" in err


def test_exiting_at_import_or_in_the_kernel_is_a_failure_never_a_pass(tmp_path, monkeypatch, capsys):
    name = _module(tmp_path, monkeypatch, "oracle_cli_exits_at_import", "import sys\nsys.exit(0)\n")
    assert main(["check", f"{name}:f"]) == 1
    out = capsys.readouterr().out
    assert f"FAILED {name}:f" in out and f"importing module '{name}' raised SystemExit: 0" in out
    name = _module(tmp_path, monkeypatch, "oracle_cli_exits_in_call",
                   "import sys\ndef f(x, B, A, sigma):\n    sys.exit(0)\n")
    for extra in ([], ["--golden"]):
        assert main(["check", f"{name}:f", *extra]) == 1
        out = capsys.readouterr().out
        assert f"FAILED {name}:f" in out and "raised SystemExit: 0 (fn must return y, not exit the interpreter)" in out


def test_collect_and_timeout_options(capsys):
    assert main(["check", "tests.testing.kernels:decode_sigma_transposed", "--collect", "--dtype", "float64"]) == 1
    out = capsys.readouterr().out
    assert "bora_ref oracle: 2 of 29 case/dtype runs failed on cpu" in out
    assert main(["check", "tests.testing.kernels:spins_forever", "--timeout", "0.2", "--case", "b=1"]) == 1
    assert "did not finish within the timeout of 0.2 s" in capsys.readouterr().out
