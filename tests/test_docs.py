"""The documentation site: a strict build, the quickstart on the home page, and its links.

``mkdocs build --strict`` fails on any warning: a broken link, a nav entry without a page, a
docstring griffe cannot parse, or an ``assert`` failing in a notebook executed at build time.
The build goes to a temporary directory and fetches nothing.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest

import bora_ref
from bora_ref import measures, numpy_ref, params, plots, sweep, testing, torch_ref

from .test_notebooks import KERNEL_ENV, current_interpreter_kernel

ROOT = Path(__file__).resolve().parents[1]
BUILD_TIMEOUT_S = 600


def _python_blocks(markdown: str) -> list[str]:
    return re.findall(r"^```python\n(.*?)^```", markdown, flags=re.DOTALL | re.MULTILINE)


def test_home_page_quickstart_runs():
    blocks = _python_blocks((ROOT / "docs" / "index.md").read_text())
    assert blocks, "docs/index.md has no ```python block"
    code = "\n".join(blocks)
    assert len(code.strip().splitlines()) <= 15, "the quickstart should stay about ten lines"
    exec(compile(code, str(ROOT / "docs" / "index.md"), "exec"), {"__name__": "quickstart"})


@pytest.fixture(scope="module")
def site(tmp_path_factory) -> Path:
    """Build the site once for this module; the strict build passing is the first check."""
    site_dir = tmp_path_factory.mktemp("site")
    env = {
        **os.environ,
        **KERNEL_ENV,  # the notebooks executed by the build run as in tests/test_notebooks.py
        **current_interpreter_kernel(tmp_path_factory.mktemp("jupyter")),
        "NO_MKDOCS_2_WARNING": "1",  # material's end-of-life banner, not a warning about this site
    }
    start = time.perf_counter()
    proc = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(site_dir)],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=BUILD_TIMEOUT_S,
    )
    elapsed = time.perf_counter() - start
    assert proc.returncode == 0, f"mkdocs build --strict failed after {elapsed:.0f} s:\n{proc.stdout[-5000:]}\n{proc.stderr[-15000:]}"
    print(f"mkdocs build --strict: {elapsed:.1f} s")
    return site_dir


def _page(site: Path, url: str) -> str:
    return (site / url / "index.html").read_text()


def test_strict_build_passes(site):
    assert (site / "index.html").exists()


def test_three_clicks_from_home_to_the_code_that_checks_the_rank_bound(site):
    # Click 1: home -> the proof.
    assert 'href="theory/#rank-bound"' in _page(site, "")
    theory = _page(site, "theory")
    assert 'id="rank-bound"' in theory
    # Click 2: the proof -> the notebook cells that check it (executed at build time).
    assert 'href="../notebooks/01_bora_from_scratch/#the-rank-bound"' in theory
    notebook = _page(site, "notebooks/01_bora_from_scratch")
    assert 'id="the-rank-bound"' in notebook
    assert "attaining_factors" in notebook and "numerical_rank" in notebook


def test_links_into_notebooks_land_on_a_heading(site):
    # mkdocs validates anchors on Markdown pages only; notebook pages are checked here.
    links = 0
    for page in site.rglob("*.html"):
        for target, anchor in re.findall(r'href="([^"#]*notebooks/[^"#/]+/)#([^"]+)"', page.read_text()):
            notebook = (page.parent / target / "index.html").resolve()
            assert notebook.exists(), f"{page.relative_to(site)} links to {target}, which was not built"
            assert f'id="{anchor}"' in notebook.read_text(), f"{page.relative_to(site)} links to {target}#{anchor}: no such heading"
            links += 1
    assert links >= 5  # the theory page's "Checked by" links at least


def test_notebooks_are_rendered_with_outputs_from_the_current_code(site):
    notebook = _page(site, "notebooks/01_bora_from_scratch")
    # Printed by a cell that asserts it: present only if the notebook ran during this build.
    assert "expected 66048, got 66048" in notebook
    assert notebook.count("data:image/png;base64,") >= 3  # the heatmaps and the parameter plot
    assert (site / "notebooks" / "02_rank_analysis" / "index.html").exists()


@pytest.mark.parametrize(
    ("module", "page"),
    [
        (bora_ref, "api"), (numpy_ref, "api/numpy_ref"), (torch_ref, "api/torch_ref"), (testing, "api/testing"),
        (params, "api/analysis"), (measures, "api/analysis"), (sweep, "api/analysis"), (plots, "api/analysis"),
    ],
    ids=lambda x: x.__name__ if hasattr(x, "__name__") else x,
)
def test_api_reference_documents_every_public_name(site, module, page):
    html = _page(site, page)
    missing = [name for name in module.__all__ if not name.startswith("__") and f'id="{module.__name__}.{name}"' not in html]
    assert not missing, f"{page} documents no entry for {missing}"
