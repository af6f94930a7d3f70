"""The bora-ref command line."""

import subprocess
import sys

import pytest

from bora_ref.cli import main


def test_report_prints_table_and_all_bounds_attained(capsys):
    assert main(["report"]) == 0
    out = capsys.readouterr().out
    assert "bound attained by random factors in 50/50 configurations" in out
    assert "LLaMA-2-7B up/gate" in out


def test_help_and_version_via_console_entry_point():
    proc = subprocess.run([sys.executable, "-m", "bora_ref.cli", "--help"], capture_output=True, text=True, check=True)
    assert "report" in proc.stdout
    with pytest.raises(SystemExit) as exc:
        main(["--version"])
    assert exc.value.code == 0
