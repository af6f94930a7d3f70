"""The documentation site: a strict build, the quickstart on the home page, and its links.

``mkdocs build --strict`` fails on any warning: a broken link, a nav entry without a page, a
docstring griffe cannot parse (or with an argument entry that names no parameter, such as a
packed ``m, n:``), a dangling autoref, or an ``assert`` failing in a notebook executed at build
time. The build goes to a temporary directory and fetches nothing; the built pages fetch
nothing either (MathJax is served by the site). The docstring examples run in test_doctests.py.
"""

from __future__ import annotations

import importlib
import os
import re
import subprocess
import sys
import time
from html.parser import HTMLParser
from pathlib import Path

import pytest
import yaml

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


# Module -> the API page that documents its public names (``__all__``). A name exported at the
# top level may be documented there instead (``bora_ref.X`` on api/), and is not repeated.
API_PAGES = {
    "bora_ref": "api", "bora_ref.partition": "api",
    "bora_ref.numpy_ref": "api/numpy_ref", "bora_ref.torch_ref": "api/torch_ref", "bora_ref.testing": "api/testing",
    "bora_ref.analysis.rank": "api/analysis", "bora_ref.analysis.svd": "api/analysis",
    "bora_ref.analysis.params": "api/analysis", "bora_ref.analysis.measures": "api/analysis",
    "bora_ref.analysis.tolerance": "api/analysis", "bora_ref.analysis.budget": "api/analysis",
    "bora_ref.nn.layer": "api/nn", "bora_ref.nn.sigma": "api/nn", "bora_ref.nn.config": "api/nn",
    "bora_ref.nn.inject": "api/nn", "bora_ref.nn.adapter_io": "api/nn", "bora_ref.nn.peft_interop": "api/nn",
    "bora_ref.nn.inspect": "api/nn",
    "bora_ref.report.writer": "api/report", "bora_ref.report.sweep": "api/report", "bora_ref.report.plots": "api/report",
    "bora_ref.report.style": "api/report", "bora_ref.report.markdown": "api/report",
}


@pytest.mark.parametrize(("module", "page"), API_PAGES.items(), ids=list(API_PAGES))
def test_api_reference_documents_every_public_name(site, module, page):
    import bora_ref

    html, top = _page(site, page), _page(site, "api")
    names = importlib.import_module(module).__all__
    missing = [
        name for name in names
        if not name.startswith("__") and f'id="{module}.{name}"' not in html
        and not (name in bora_ref.__all__ and f'id="bora_ref.{name}"' in top)
    ]
    assert not missing, f"{page} documents no entry for {module}.{missing} (add them to docs/{page}.md)"


def test_every_module_of_the_sub_packages_has_an_api_page():
    not_api = {"bora_ref.report.cli"}  # registers `bora-ref report`; `bora-ref report --help` documents it
    modules = [
        f"bora_ref.{package}.{path.stem}"
        for package in ("analysis", "nn", "report")
        for path in sorted((ROOT / "bora_ref" / package).glob("*.py"))
        if not path.stem.startswith("_")
    ]
    missing = [m for m in modules if m not in API_PAGES and m not in not_api]
    assert not missing, f"no API page for {missing}: add a ::: block to docs/api/ and an API_PAGES entry"


def _html_pages(site: Path) -> list[Path]:
    return sorted(p for p in site.rglob("*.html") if "javascripts" not in p.parts)


def test_pages_load_nothing_from_the_network(site):
    # No CDN script (MathJax is served by the site), no web fonts or external stylesheets.
    for page in _html_pages(site):
        html = page.read_text()
        external = re.findall(r'<script[^>]*\ssrc="(?:https?:)?//[^"]*"', html)
        external += re.findall(r'<link[^>]*\shref="(?:https?:)?//[^"]*"', html)
        assert not external, f"{page.relative_to(site)} loads {external}"


def test_mathjax_is_served_by_the_site(site):
    mathjax = site / "javascripts" / "mathjax"
    assert (mathjax / "tex-svg.js").stat().st_size > 1_000_000  # the real component (SVG output: no web fonts)
    assert (mathjax / "input" / "tex" / "extensions" / "ams.js").exists()  # extensions load on demand
    for url in ("", "theory", "api", "notebooks/01_bora_from_scratch"):
        html = _page(site, url)
        config = html.index("javascripts/mathjax.js")  # window.MathJax = {...} must come first
        assert re.search(r'<script src="(\.\./)*javascripts/mathjax/tex-svg\.js"', html[config:]), url


class _TexOutsideMath(HTMLParser):
    """Collect TeX delimiters in text that MathJax will not typeset (outside its containers)."""

    # docs/javascripts/mathjax.js typesets these classes only (md-ellipsis: the table of contents,
    # where headings with math appear as \(...\) text); code, scripts and styles are never math.
    MATH_CLASSES = {"arithmatex", "jp-RenderedMarkdown", "jp-MarkdownOutput", "md-ellipsis"}
    NOT_MATH_TAGS = {"code", "pre", "script", "style", "textarea"}
    VOID = {"area", "base", "br", "col", "embed", "hr", "img", "input", "link", "meta", "source", "track", "wbr"}
    TEX = re.compile(r"\\\(|\\\)|\\\[|\\\]|\$\$|\$\\[a-zA-Z]|\\begin\{")

    def __init__(self) -> None:
        super().__init__()
        self.stack: list[bool] = []  # per open element: inside a container
        self.raw: list[str] = []
        self.typeset = 0

    def handle_starttag(self, tag, attrs):
        if tag in self.VOID:
            return
        classes = set((dict(attrs).get("class") or "").split())
        inside = bool(self.stack and self.stack[-1]) or bool(classes & self.MATH_CLASSES) or tag in self.NOT_MATH_TAGS
        self.typeset += "arithmatex" in classes
        self.stack.append(inside)

    def handle_endtag(self, tag):
        if tag not in self.VOID and self.stack:
            self.stack.pop()

    def handle_data(self, data):
        if not (self.stack and self.stack[-1]):
            self.raw += [m.group(0) + " in " + repr(data.strip()[:80]) for m in self.TEX.finditer(data)]


def test_mathjax_configuration_matches_what_the_tex_check_assumes():
    # The check below counts TeX inside MATH_CLASSES (and their descendants) as typeset. MathJax
    # does typeset those descendants unless ignoreHtmlClass matches them: a pattern matching an
    # empty class (such as ".*|") would leave every <p> of a notebook Markdown cell raw.
    config = (ROOT / "docs" / "javascripts" / "mathjax.js").read_text()
    process = re.search(r'processHtmlClass: "([^"]*)"', config).group(1)
    ignore = re.search(r'ignoreHtmlClass: "([^"]*)"', config).group(1)
    assert set(process.split("|")) == _TexOutsideMath.MATH_CLASSES
    assert not re.fullmatch(f"(?:{ignore})", ""), f"ignoreHtmlClass {ignore!r} matches elements without a class"
    assert not re.fullmatch(f"(?:{ignore})", "jp-RenderedHTMLCommon"), "it must not match inside notebook cells"


def test_no_raw_tex_outside_the_math_that_mathjax_typesets(site):
    typeset = 0
    for page in _html_pages(site):
        parser = _TexOutsideMath()
        parser.feed(page.read_text())
        assert not parser.raw, f"{page.relative_to(site)}: TeX that nothing renders: {parser.raw[:5]}"
        typeset += parser.typeset
    assert typeset > 500  # the theory page alone has hundreds of formulas: the check saw them


def test_no_rest_roles_left(site):
    for page in _html_pages(site):
        roles = re.findall(r":(?:func|class|mod|meth|attr|data|exc|obj):`?", page.read_text())
        assert not roles, f"{page.relative_to(site)} shows reST roles {roles[:5]} (use [`name`][bora_ref.path] autorefs)"


def test_docstring_examples_render_as_code(site):
    examples = 0
    for url in ("api", "api/numpy_ref", "api/torch_ref", "api/testing", "api/analysis", "api/nn", "api/report"):
        html = _page(site, url)
        # Rendered docstrings only: drop the "Source code" listings, which show the raw docstrings.
        html = re.sub(r'<details class="mkdocstrings-source">.*?</details>', "", html, flags=re.DOTALL)
        assert not re.search(r"<blockquote>\s*(<blockquote>|<p>&gt;&gt;&gt;)", html), f"{url}: an example became a blockquote"
        prompts = html.count("&gt;&gt;&gt;")
        highlighted = len(re.findall(r'<span class="gp">&gt;&gt;&gt;', html))
        assert prompts == highlighted, f"{url}: {prompts - highlighted} '>>>' lines outside highlighted code"
        examples += len(re.findall(r'<details class="example"|doc-section-title">Examples:', html))
    assert examples >= 40


def test_one_parameter_row_per_argument(site):
    html = _page(site, "api/numpy_ref")
    start = html.index('id="bora_ref.numpy_ref.bora_matmul"')
    rows = re.findall(r'<tr class="doc-section-item">\s*<td>\s*<code>(\w+)</code>', html[start:start + 20000])
    assert rows[:4] == ["x", "B", "A", "sigma"], rows


def _nav_titles(nav, out=None):
    out = [] if out is None else out
    for entry in nav:
        if isinstance(entry, dict):
            for title, value in entry.items():
                out.append(title)
                if isinstance(value, list):
                    _nav_titles(value, out)
    return out


def test_nav_names_are_unique_and_tutorials_come_before_theory():
    class Loader(yaml.SafeLoader):
        pass

    Loader.add_multi_constructor("", lambda loader, suffix, node: None)
    nav = yaml.load((ROOT / "mkdocs.yml").read_text(), Loader=Loader)["nav"]
    titles = _nav_titles(nav)
    duplicates = sorted({t for t in titles if titles.count(t) > 1})
    assert not duplicates, f"nav names used twice: {duplicates}"
    top = [next(iter(e)) if isinstance(e, dict) else e for e in nav]
    assert top.index("Tutorials") < top.index("Theory"), top


def test_docs_and_docstrings_cite_no_file_readers_do_not_have():
    # DESIGN.md is not in the repository: every rule is stated where it is used.
    sources = [*(ROOT / "docs").rglob("*.md"), *(ROOT / "bora_ref").rglob("*.py"), ROOT / "README.md", ROOT / "mkdocs.yml"]
    cited = [f"{p.relative_to(ROOT)}:{i}" for p in sources for i, line in enumerate(p.read_text().splitlines(), 1) if "DESIGN" in line]
    assert not cited, f"DESIGN.md cited at {cited}"
