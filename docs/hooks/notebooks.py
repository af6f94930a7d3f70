"""mkdocs hook: publish every ``notebooks/*.ipynb`` on the site, at the same path as in the repo.

The notebooks stay where readers open them (``jupyter lab notebooks/``) and where the tests
execute them; the site gets them without copies or symlinks: ``notebooks/<name>.ipynb`` is
added to the site's files with the repository root as its source directory, so the ``nav``
entry and Markdown links use the path ``notebooks/<name>.ipynb`` and the page is served at
``notebooks/<name>/``. The hook runs before mkdocs-jupyter's ``on_files`` (higher priority),
which then renders the notebooks like any other.
"""

from __future__ import annotations

from pathlib import Path

from mkdocs.config.defaults import MkDocsConfig
from mkdocs.plugins import event_priority
from mkdocs.structure.files import File, Files

NOTEBOOK_DIR = "notebooks"  # relative to mkdocs.yml


@event_priority(100)
def on_files(files: Files, config: MkDocsConfig) -> Files:
    root = Path(config.docs_dir).parent  # the repository root (docs_dir is <root>/docs)
    for path in sorted((root / NOTEBOOK_DIR).glob("*.ipynb")):
        src_uri = path.relative_to(root).as_posix()  # "notebooks/01_....ipynb"
        files.append(File(src_uri, src_dir=str(root), dest_dir=config.site_dir, use_directory_urls=config.use_directory_urls))
    return files
