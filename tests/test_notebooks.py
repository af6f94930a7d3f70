"""Execute every ``notebooks/*.ipynb`` headless: the notebooks check their claims with ``assert``.

Each notebook runs in a fresh kernel on the interpreter running the tests, with cwd
``notebooks/``, ``BORA_SMOKE=1`` (notebooks that train use their short setting),
``HF_HUB_OFFLINE=1`` (nothing may be downloaded) and one BLAS thread (see ``KERNEL_ENV``). A failing cell fails the test with the
cell's traceback. New notebooks are picked up by the glob.
"""

from __future__ import annotations

import json
import re
import sys
from fnmatch import fnmatch
from pathlib import Path

import jupytext
import nbformat
import pytest
import yaml
from nbclient import NotebookClient

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOK_DIR = ROOT / "notebooks"
NOTEBOOKS = sorted(NOTEBOOK_DIR.glob("*.ipynb"))
CELL_TIMEOUT_S = 900  # generous: a shared 2-core CI machine; no cell of ours is near it
# What the notebooks run with in CI. One BLAS/OpenMP thread per kernel: `pytest -n 2` already
# keeps both cores busy, and oversubscribed BLAS threads spin-wait (a 1536x384 SVD measured
# 0.1 s with one thread and 3 s with two on the loaded machine).
KERNEL_ENV = {"BORA_SMOKE": "1", "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1"}


def current_interpreter_kernel(directory: Path) -> dict[str, str]:
    """Environment variables that make Jupyter's ``python3`` kernel this interpreter.

    Writes a kernelspec into ``directory`` and returns ``{"JUPYTER_PATH": directory}``;
    ``JUPYTER_PATH`` comes first in Jupyter's search path, so a ``python3`` kernelspec installed
    elsewhere (e.g. in the user's home) cannot send the notebooks to another environment.
    """
    spec_dir = directory / "kernels" / "python3"
    spec_dir.mkdir(parents=True, exist_ok=True)
    spec = {
        "argv": [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"],
        "display_name": "Python 3 (bora_ref tests)",
        "language": "python",
    }
    (spec_dir / "kernel.json").write_text(json.dumps(spec))
    return {"JUPYTER_PATH": str(directory)}


def _docs_execute_ignore() -> list[str]:
    """mkdocs-jupyter's ``execute_ignore`` patterns from mkdocs.yml (notebooks not run at build)."""

    class Loader(yaml.SafeLoader):
        pass

    # mkdocs.yml may contain tags like !ENV or !!python/name; their values do not matter here.
    Loader.add_multi_constructor("", lambda loader, suffix, node: None)
    config = yaml.load((ROOT / "mkdocs.yml").read_text(), Loader=Loader)
    for plugin in config["plugins"]:
        if isinstance(plugin, dict) and "mkdocs-jupyter" in plugin:
            return list(plugin["mkdocs-jupyter"].get("execute_ignore", []))
    raise AssertionError("mkdocs.yml has no mkdocs-jupyter plugin entry")


def test_the_tutorial_notebooks_are_found():
    names = [p.name for p in NOTEBOOKS]
    assert {"01_bora_from_scratch.ipynb", "02_rank_analysis.ipynb"} <= set(names), names


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_notebook_states_what_it_shows_and_asserts_it(path):
    nb = nbformat.read(path, as_version=4)
    first = nb.cells[0]
    assert first.cell_type == "markdown" and first.source.lstrip().startswith("# "), (
        f"{path.name}: the first cell must be Markdown with a '# ' title saying what the notebook shows"
    )
    code = "\n".join(cell.source for cell in nb.cells if cell.cell_type == "code")
    assert "assert" in code, f"{path.name} checks none of its claims with assert"


SOLUTION = "<details><summary>Solution</summary>"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_notebook_has_exercises_with_checked_solutions(path):
    """Every exercise hides its solution in a collapsible block, and the next code cell asserts it."""
    nb = nbformat.read(path, as_version=4)
    exercises = [i for i, c in enumerate(nb.cells) if c.cell_type == "markdown" and SOLUTION in c.source]
    assert len(exercises) >= 2, f"{path.name} has {len(exercises)} exercises with a '{SOLUTION}' block"
    for i in exercises:
        source = nb.cells[i].source
        assert "</details>" in source.split(SOLUTION, 1)[1], f"{path.name} cell {i}: the solution block is not closed"
        following = next((c for c in nb.cells[i + 1:] if c.cell_type == "code"), None)
        assert following is not None and re.search(r"^\s*assert\b", following.source, re.M), (
            f"{path.name} cell {i}: the code cell after the exercise must check the solution with assert"
        )


def output_problems(nb: nbformat.NotebookNode, name: str) -> list[str]:
    """What a reader should not see in the outputs: errors, warnings, local paths, progress-bar debris."""
    problems = []
    for i, cell in enumerate(nb.cells):
        for out in cell.get("outputs", []):
            text = out.get("text", "") if out.output_type == "stream" else json.dumps(out.get("data", {}).get("text/plain", ""))
            where = f"{name} cell {i}"
            if out.output_type == "error":
                problems.append(f"{where} has an error output")
            if re.search(r"\w*Warning\b", text):
                problems.append(f"{where} shows a warning: {text[:200]!r}")
            if re.search(r"(/home/|/work/|/tmp/|/Users/|[A-Z]:\\\\)", text):
                problems.append(f"{where} shows a local path: {text[:200]!r}")
            if text.count("\r") > 50:
                problems.append(f"{where} carries {text.count(chr(13))} progress-bar updates")
            if "Loading weights" in text:
                problems.append(f"{where} carries the transformers load report")
    return problems


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_committed_outputs_are_clean(path):
    assert output_problems(nbformat.read(path, as_version=4), path.name) == []


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_notebook_executes(path, tmp_path, monkeypatch):
    for name, value in {**KERNEL_ENV, **current_interpreter_kernel(tmp_path)}.items():
        monkeypatch.setenv(name, value)  # inherited by the kernel process
    nb = nbformat.read(path, as_version=4)
    client = NotebookClient(
        nb, timeout=CELL_TIMEOUT_S, kernel_name="python3", resources={"metadata": {"path": str(NOTEBOOK_DIR)}}
    )
    client.execute()  # raises CellExecutionError with the failing cell's source and traceback
    assert output_problems(nb, path.name) == []  # what the docs build would show


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_paired_script_is_in_sync(path):
    """A notebook paired with a jupytext ``py:percent`` script has the same cells as the script."""
    nb = nbformat.read(path, as_version=4)
    formats = nb.metadata.get("jupytext", {}).get("formats", "")
    if "py:percent" not in formats:
        pytest.skip(f"{path.name} is not paired with a script")
    script = path.with_suffix(".py")
    assert script.exists(), f"{path.name} declares a py:percent pair but {script.name} is missing"
    paired = jupytext.read(script)
    cells = [(c.cell_type, c.source) for c in nb.cells]
    script_cells = [(c.cell_type, c.source) for c in paired.cells]
    assert cells == script_cells, (
        f"{path.name} and {script.name} differ; run `.venv/bin/jupytext --sync notebooks/{path.name}`"
    )


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_notebooks_run_at_docs_build_carry_no_stale_outputs(path):
    """The docs execute these notebooks at build time, so committed outputs could only be stale."""
    if any(fnmatch(str(path), pattern) for pattern in _docs_execute_ignore()):
        pytest.skip(f"{path.name} is rendered with its committed outputs (mkdocs.yml execute_ignore)")
    nb = nbformat.read(path, as_version=4)
    with_outputs = [i for i, c in enumerate(nb.cells) if c.cell_type == "code" and (c.outputs or c.execution_count)]
    assert not with_outputs, (
        f"{path.name} has outputs in cells {with_outputs}; clear them "
        f"(`.venv/bin/jupyter nbconvert --clear-output --inplace notebooks/{path.name}`)"
    )
