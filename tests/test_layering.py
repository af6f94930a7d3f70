"""The package's layers import only downwards, and the NumPy side never loads torch.

    partition, numpy_ref, torch_ref, _validation, _arrays, _io, _version   the contract core (flat)
    analysis/      core only (plain factors in, float64 NumPy out; no torch at all)
    nn/            core + analysis            report/   core + analysis (never nn)
    testing/       core (+ analysis)          experiments/   anything but testing; models   core only
    cli            imports its sub-commands by name at run time (report.cli, testing._cli)

Every import is checked, including the late ones inside functions, so no cycle can hide.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

import bora_ref

PACKAGE = Path(bora_ref.__file__).parent
CORE = {"partition", "numpy_ref", "torch_ref", "_validation", "_arrays", "_version", "_io", "__init__"}

# layer of a module -> layers it may import from
ALLOWED = {
    "core": {"core"},
    "analysis": {"core", "analysis"},
    "nn": {"core", "analysis", "nn"},
    "report": {"core", "analysis", "report"},
    "testing": {"core", "analysis", "testing"},
    "models": {"core"},
    "experiments": {"core", "analysis", "nn", "report", "models", "experiments"},
    "cli": {"core"},
}
# modules of the core that must not need torch (torch_ref obviously does)
TORCH_FREE = {"partition", "numpy_ref", "_validation", "_arrays", "_version", "_io", "__init__"}


def _layer(module: str) -> str:
    head = module.split(".")[0]
    if head in CORE:
        return "core"
    return head


def _modules() -> list[str]:
    return sorted(".".join(p.relative_to(PACKAGE).with_suffix("").parts) for p in PACKAGE.rglob("*.py"))


def _imports(module: str) -> list[str]:
    """Every bora_ref module (relative to the package) and top-level package that ``module`` imports."""
    path = PACKAGE.joinpath(*module.split(".")).with_suffix(".py")
    tree = ast.parse(path.read_text(encoding="utf-8"))
    package = module.split(".")[:-1]
    # Imports under ``if TYPE_CHECKING:`` never run: drop those blocks before walking.
    for node in ast.walk(tree):
        for field in ("body", "orelse"):
            block = getattr(node, field, None)
            if isinstance(block, list):
                block[:] = [n for n in block if not (isinstance(n, ast.If) and isinstance(n.test, ast.Name)
                                                     and n.test.id == "TYPE_CHECKING")]
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level == 0:
                found.append(node.module or "")
                continue
            base = package[: len(package) - (node.level - 1)] if node.level > 1 else package
            target = [*base, *(node.module.split(".") if node.module else [])]
            if node.module is None:  # from . import numpy_ref
                found += ["bora_ref." + ".".join([*target, alias.name]) for alias in node.names]
            else:
                found.append("bora_ref." + ".".join(target))
    return found


@pytest.mark.parametrize("module", _modules())
def test_imports_point_down_the_layers(module):
    layer = _layer(module)
    bad = []
    for name in _imports(module):
        if not name.startswith("bora_ref."):
            continue
        target = name.removeprefix("bora_ref.")
        if target in ("", "__init__") and module != "__init__":
            bad.append(name)  # the top level imports everything lazily: importing it from inside is a cycle
            continue
        if _layer(target) not in ALLOWED[layer]:
            bad.append(name)
    assert not bad, f"bora_ref.{module} (layer {layer!r}) imports {bad}; allowed layers: {sorted(ALLOWED[layer])}"


@pytest.mark.parametrize("module", sorted(TORCH_FREE) + ["analysis.__init__"] + ["analysis." + m for m in ("rank", "svd", "tolerance", "measures", "params")])
def test_numpy_side_never_imports_torch_statically(module):
    names = [n.split(".")[0] for n in _imports(module)]
    assert "torch" not in names, f"bora_ref.{module} imports torch"


@pytest.mark.parametrize("statement", ["import bora_ref", "import bora_ref.numpy_ref", "import bora_ref.analysis",
                                        "from bora_ref import block_sizes, rank_bound, param_count, singular_values"])
def test_numpy_side_runs_without_loading_torch(statement):
    code = f"import sys; {statement}; print('torch' in sys.modules, 'torch.nn' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split()
    assert out == ["False", "False"], f"{statement!r} loaded torch"


def test_public_names_resolve_lazily_and_identically():
    code = (
        "import bora_ref, sys\n"
        "assert 'torch' not in sys.modules\n"
        "from bora_ref.nn.layer import BoRALinear\n"
        "assert bora_ref.BoRALinear is BoRALinear\n"
        "assert bora_ref.numpy_ref.__name__ == 'bora_ref.numpy_ref'\n"
        "missing = [n for n in bora_ref.__all__ if not hasattr(bora_ref, n)]\n"
        "assert not missing, missing\n"
        "assert set(bora_ref.__all__) <= set(dir(bora_ref))\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


def test_unknown_attribute_is_an_attribute_error():
    with pytest.raises(AttributeError, match="has no attribute 'nope'"):
        bora_ref.nope  # noqa: B018
