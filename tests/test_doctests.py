"""Every ``>>>`` example in bora_ref's docstrings runs, and every public name has one.

The examples are collected with griffe, the parser that renders them on the docs site, so the
checked text is exactly the published text: docstrings of modules, classes, functions, methods,
properties and module constants (attribute docstrings, which ``pytest --doctest-modules``
cannot see). Each example runs with its module's namespace, like ``doctest`` does; a module is
imported only when one of its docstrings has an example (nothing imports transformers here).
"""

from __future__ import annotations

import doctest
import importlib
from pathlib import Path

import griffe
import pytest

ROOT = Path(__file__).resolve().parents[1]
# The names a user imports: the top level and the three contract modules.
PUBLIC_SCOPES = ("bora_ref", "bora_ref.numpy_ref", "bora_ref.torch_ref", "bora_ref.testing")
FLAGS = doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE


def _load() -> griffe.Module:
    return griffe.load("bora_ref", search_paths=[str(ROOT)], resolve_aliases=True, resolve_external=False)


PACKAGE = _load()


def _objects(obj: griffe.Object):
    yield obj
    for member in obj.members.values():
        if not member.is_alias:
            yield from _objects(member)


def _examples() -> list[griffe.Object]:
    found = [o for o in _objects(PACKAGE) if o.docstring is not None and ">>>" in o.docstring.value]
    return sorted(found, key=lambda o: o.path)


EXAMPLES = _examples()


def test_examples_are_found():
    assert len(EXAMPLES) >= 40, [o.path for o in EXAMPLES]


@pytest.mark.parametrize("obj", EXAMPLES, ids=lambda o: o.path.removeprefix("bora_ref."))
def test_docstring_example_runs(obj):
    module = obj if obj.is_module else obj.module
    namespace = dict(vars(importlib.import_module(module.path)))
    test = doctest.DocTestParser().get_doctest(
        obj.docstring.value, namespace, obj.path, str(module.filepath), obj.docstring.lineno or 0
    )
    runner = doctest.DocTestRunner(optionflags=FLAGS)
    report: list[str] = []
    runner.run(test, out=report.append)
    assert runner.failures == 0, f"{obj.path}: {runner.failures} of {runner.tries} examples failed\n" + "".join(report)


@pytest.mark.parametrize("scope", PUBLIC_SCOPES)
def test_every_public_name_has_an_example(scope):
    module = PACKAGE[scope.removeprefix("bora_ref.")] if scope != "bora_ref" else PACKAGE
    missing = []
    for name in module.exports or []:
        target = module[name]
        docstring = target.docstring.value if target.docstring else ""
        if ">>>" not in docstring:
            missing.append(name)
    assert not missing, f"{scope}: no '>>>' example in the docstring of {missing}"
