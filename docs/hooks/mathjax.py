"""mkdocs hook: serve MathJax from the site itself, so that math renders offline.

MathJax 3 comes from the ``django-static-mathjax`` package (the ``docs`` extra; plain static
files, Django is not needed). Its ``es5`` build is added to the site's files under
``javascripts/mathjax/``: the ``tex-svg.js`` component that ``mkdocs.yml`` loads, the TeX
extensions it loads on demand and the menu's accessibility code (English speech rules only).
The SVG output draws every glyph as a path, so no web font is loaded either (the CHTML output's
fonts are left out with it). The other combined components and the speech rules of other
languages are left out too (about 17 MB of the package's 24 MB). Nothing is fetched from the
network, at build time or by the reader's browser.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

from mkdocs.config.defaults import MkDocsConfig
from mkdocs.exceptions import PluginError
from mkdocs.structure.files import File, Files

SITE_DIR = "javascripts/mathjax"  # where the es5 tree lands in the site (mkdocs.yml names it)
ENTRY = "tex-svg.js"              # the one combined component the pages load


def _es5_root() -> Path:
    spec = importlib.util.find_spec("mathjax")
    root = None
    if spec is not None and spec.submodule_search_locations:
        root = Path(next(iter(spec.submodule_search_locations))) / "static" / "mathjax" / "es5"
    if root is None or not (root / ENTRY).is_file():
        raise PluginError(
            "MathJax not found: install the docs extra (pip install -e '.[docs]'), which provides "
            "django-static-mathjax with mathjax/static/mathjax/es5/" + ENTRY
        )
    return root


def _wanted(rel: Path) -> bool:
    parts = rel.parts
    if len(parts) == 1:                      # combined components: only the one we load
        return rel.name == ENTRY
    if parts[:2] == ("output", "chtml") or rel.as_posix() == "output/chtml.js":
        return False                         # the pages use the SVG output
    if parts[:2] == ("sre", "mathmaps"):
        return rel.name in {"en.json", "base.json"}
    return True


def on_files(files: Files, config: MkDocsConfig) -> Files:
    root = _es5_root()
    for path in sorted(root.rglob("*")):
        rel = path.relative_to(root)
        if path.is_file() and _wanted(rel):
            files.append(
                File.generated(config, f"{SITE_DIR}/{rel.as_posix()}", abs_src_path=str(path))
            )
    return files
