"""write_report: the folder it writes, from the sweeps it runs, and its input checks."""

import csv

import pytest

from bora_ref import rank_bound
from bora_ref.report.writer import write_report

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
EXPECTED = ["ablation.csv", "ablation.png", "block_heatmap.png", "collapse.csv", "measures.csv", "overhead_vs_b.png",
            "params.csv", "rank_vs_b.png", "report.md", "spectra.png", "sweep.csv"]


@pytest.fixture(scope="module")
def report(tmp_path_factory):
    out = tmp_path_factory.mktemp("report")
    (out / "notes.txt").write_text("mine")  # a user's file in the folder must survive
    summary = write_report(out, models=["MiniLM-L6"], rs=[2, 4], bs=[1, 2, 4], seed=5, progress=False)
    return out, summary


def test_folder_holds_markdown_csv_and_png(report):
    out, summary = report
    assert sorted(p.name for p in out.iterdir()) == sorted([*EXPECTED, "notes.txt"])
    assert (out / "notes.txt").read_text() == "mine"
    assert summary["files"] == sorted(str(out / name) for name in EXPECTED)
    for name in EXPECTED:
        if name.endswith(".png"):
            assert (out / name).read_bytes().startswith(PNG_MAGIC), name
    assert not list(out.glob(".*.tmp"))  # atomic writes leave no temporaries


def test_sweep_csv_rows_are_the_configurations_with_their_bounds(report):
    out, summary = report
    rows = list(csv.DictReader((out / "sweep.csv").open()))
    assert len(rows) == summary["configs"] == 3 * 2 * 3  # MiniLM's 3 distinct shapes x r x b
    for row in rows:
        m, n, r, b = (int(row[k]) for k in ("m", "n", "r", "b"))
        assert int(row["bound"]) == rank_bound(m, n, r, b) == int(row["measured"])
    assert summary["attained"] == summary["configs"]


def test_params_csv_counts_every_layer_of_the_model(report):
    out, _ = report
    rows = list(csv.DictReader((out / "params.csv").open()))
    assert [int(r["b"]) for r in rows] == [1, 2, 4]
    b4 = rows[-1]
    r = int(b4["r"])
    # 6 blocks x (4 of 384x384, 1536x384, 384x1536): LoRA r (m + n), Σ b² r per layer.
    assert int(b4["lora"]) == 6 * r * (4 * 768 + 2 * 1920) and int(b4["sigma"]) == 6 * 6 * 16 * r


def test_markdown_states_the_headline_and_embeds_every_figure(report):
    out, summary = report
    text = (out / "report.md").read_text()
    assert f"**The rank bound is attained in {summary['attained']}/{summary['configs']} configurations**" in text
    for name in EXPECTED:
        if name.endswith(".png"):
            assert f"]({name})" in text, name
    collapse = list(csv.DictReader((out / "collapse.csv").open()))
    assert summary["collapse_ok"] == summary["collapse_total"] == len(collapse) > 0


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"models": ["nope"]}, r"models must be one of"),
        ({"bs": [512]}, r"b must satisfy 1 <= b <= min\(m, n\) = 384"),
        ({"rs": [0]}, "r must be >= 1, got 0"),
        ({"seed": -1}, "seed must be >= 0, got -1"),
    ],
)
def test_invalid_arguments_write_nothing(kwargs, match, tmp_path):
    out = tmp_path / "out"
    with pytest.raises(ValueError, match=match):
        write_report(out, **{"models": ["MiniLM-L6"], **kwargs})
    assert not out.exists()


def test_out_must_be_a_folder(tmp_path):
    target = tmp_path / "file.md"
    target.write_text("keep")
    with pytest.raises(ValueError, match="out must be a folder, but .*file.md' exists and is not one"):
        write_report(target, models=["MiniLM-L6"], rs=[2], bs=[1])
    assert target.read_text() == "keep"
