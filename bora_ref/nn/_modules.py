"""Model surgery shared by injection, PEFT interop and the experiments: swap one submodule by name."""

from __future__ import annotations

from torch import nn

from .._validation import BoRAValueError


def replace_submodule(model: nn.Module, name: str, new: nn.Module) -> None:
    """Install ``new`` in ``model`` under the qualified ``name`` (e.g. ``"encoder.layer.0.query"``).

    The parent is looked up with ``get_submodule`` and ``new`` set as its attribute, so it
    replaces the module registered there (a module shared under several names keeps its other
    names: replace each one).

    Raises:
        ValueError: ``name`` is empty (the root module cannot be replaced inside itself).
        AttributeError: the parent module does not exist.
    """
    if not name:
        raise BoRAValueError("name must name a submodule, got '' (the root module cannot be replaced inside itself)")
    parent_name, _, child = name.rpartition(".")
    setattr(model.get_submodule(parent_name) if parent_name else model, child, new)
