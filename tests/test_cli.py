"""The bora-ref command line: `report` (the main job), `rank`, help and version."""

import subprocess
import sys

import pytest

from bora_ref.cli import main
from bora_ref.report.writer import DEFAULT_BS, DEFAULT_RS
from bora_ref.report.sweep import distinct_shapes, load_model_shapes


def test_report_with_defaults_attains_the_bound_everywhere(capsys, tmp_path):
    out = tmp_path / "report"
    assert main(["report", "--out", str(out)]) == 0
    stdout = capsys.readouterr().out
    n = len(distinct_shapes(load_model_shapes())) * len(DEFAULT_RS) * len(DEFAULT_BS)
    assert f"bound attained by random factors in {n}/{n} configurations" in stdout
    assert "max Σ overhead over LoRA: 33.33 % (MiniLM-L6" in stdout  # b = 16 on 384 x 384: 256 / 768
    assert len(stdout.splitlines()) <= 6  # a short summary; the details are in the folder
    assert (out / "report.md").exists() and f"{n}/{n}" in (out / "report.md").read_text()


def test_rank_subcommand(capsys):
    assert main(["rank", "--m", "4096", "--n", "4096", "--r", "8", "--b", "16"]) == 0
    out = capsys.readouterr().out
    assert "rank bound               128" in out and "measured rank            128" in out
    assert "LoRA 65,536 + sigma 2,048 = 67,584 (+3.12 %)" in out and "best b for this shape    91" in out
    assert main(["rank", "--m", "512", "--n", "300", "--r", "4", "--b", "8", "--sigma", "separable", "--seed", "3"]) == 0
    assert "measured rank            4 " in capsys.readouterr().out


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["rank", "--m", "4", "--n", "4", "--r", "2", "--b", "16"], "bora-ref rank: error: b must satisfy 1 <= b <= min(m, n) = 4"),
        (["rank", "--m", "4", "--n", "4", "--r", "0", "--b", "1"], "bora-ref rank: error: r must be >= 1, got 0"),
        (["report", "--b", "256"], "bora-ref report: error: b must satisfy 1 <= b <= min(m, n) = 128"),
    ],
)
def test_invalid_arguments_exit_2_with_the_rule(argv, message, capsys, tmp_path):
    assert main([*argv, *(["--out", str(tmp_path / "never")] if argv[0] == "report" else [])]) == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "never").exists()  # nothing written


@pytest.mark.parametrize(("command", "phrases"), [
    ("report", ["--out DIR", "output folder:", "report.md", "exit status", "--models NAME"]),
    ("rank", ["--m M", "--sigma {random,separable,identical}", "rank bound", "example:"]),
])
def test_subcommand_help_reads_like_docs(command, phrases, capsys):
    with pytest.raises(SystemExit) as exc:
        main([command, "--help"])
    assert exc.value.code == 0
    text = capsys.readouterr().out
    for phrase in phrases:
        assert phrase in text, phrase


def test_help_and_version_via_console_entry_point():
    proc = subprocess.run([sys.executable, "-m", "bora_ref.cli", "--help"], capture_output=True, text=True, check=True)
    assert "report" in proc.stdout and "rank" in proc.stdout
    with pytest.raises(SystemExit) as exc:
        main(["--version"])
    assert exc.value.code == 0
