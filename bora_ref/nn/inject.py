"""Put BoRA adapters into an existing torch model, and get/set only the adapter weights.

``apply_bora`` matches module names like PEFT's ``target_modules``: a list of names matches a
module whose qualified name equals an entry or ends with ``"." + entry``; a single string is a
regular expression that must match the whole qualified name (``re.fullmatch``).
"""

from __future__ import annotations

import contextlib
import re
from collections.abc import Iterable, Iterator, Mapping
from typing import Any

import torch
from torch import nn

from .._validation import BoRAValueError
from ._modules import replace_submodule
from .config import LAYER_KWARGS, BoRAConfig
from .layer import BoRALinear

__all__ = [
    "ADAPTER_PARAM_NAMES",
    "apply_bora",
    "bora_layers",
    "adapter_state_dict",
    "load_adapter_state_dict",
    "merge_bora",
    "unmerge_bora",
    "merge_and_unload",
]

ADAPTER_PARAM_NAMES = ("lora_A", "lora_B", "sigma")
"""Names of a [`BoRALinear`][bora_ref.BoRALinear]'s trainable parameters."""


def _matcher(target_modules: Any) -> Any:
    if isinstance(target_modules, str):
        try:
            pattern = re.compile(target_modules)
        except re.error as exc:
            raise BoRAValueError(f"target_modules={target_modules!r} is not a valid regular expression: {exc}") from None
        return lambda name: pattern.fullmatch(name) is not None
    if isinstance(target_modules, Iterable):
        targets = list(target_modules)
        if not targets or not all(isinstance(t, str) and t for t in targets):
            raise BoRAValueError(
                f"target_modules must be a regex string or a non-empty list of non-empty module names, got {target_modules!r}"
            )
        return lambda name: any(name == t or name.endswith("." + t) for t in targets)
    raise BoRAValueError(f"target_modules must be a regex string or a list of module names, got {type(target_modules).__name__}")


def _check_module(model: Any, what: str = "model") -> None:
    if not isinstance(model, nn.Module):
        raise BoRAValueError(f"{what} must be a torch.nn.Module, got {type(model).__name__}")


def _aliases(model: nn.Module) -> dict[int, list[str]]:
    """Every name under which each submodule is reachable (a shared module has several)."""
    names: dict[int, list[str]] = {}
    for name, module in model.named_modules(remove_duplicate=False):
        names.setdefault(id(module), []).append(name)
    return names


def _find_targets(model: nn.Module, target_modules: Any) -> list[str]:
    """The first name of every distinct matched ``nn.Linear`` (a shared one is listed once).

    Refuses a match that is already a ``BoRALinear``, is not a plain ``nn.Linear``, or is (under
    any of its names) the frozen ``base`` inside a ``BoRALinear``: adapters do not nest.
    """
    matches = _matcher(target_modules)
    aliases = _aliases(model)
    found: list[str] = []
    seen: set[int] = set()
    for name, module in model.named_modules(remove_duplicate=False):
        if not name or not matches(name) or id(module) in seen:
            continue
        if isinstance(module, BoRALinear):
            raise BoRAValueError(f"target_modules={target_modules!r} matches {name!r}, which already is a BoRALinear")
        if type(module) is not nn.Linear:
            raise BoRAValueError(
                f"target_modules={target_modules!r} matches {name!r}, a {type(module).__name__}; only torch.nn.Linear can be adapted"
            )
        for alias in aliases[id(module)]:
            parent_name = alias.rpartition(".")[0]
            if isinstance(model.get_submodule(parent_name), BoRALinear):
                raise BoRAValueError(
                    f"target_modules={target_modules!r} matches {name!r}, the frozen base layer of the BoRALinear "
                    f"{parent_name!r}; adapters cannot be nested (leave '.base' modules out of target_modules)"
                )
        seen.add(id(module))
        found.append(aliases[id(module)][0])
    if not found:
        raise BoRAValueError(f"target_modules={target_modules!r} matches no module of the model")
    # A Linear inside another matched Linear is impossible (Linear has no children); keep order.
    return found


def apply_bora(
    model: nn.Module,
    *,
    target_modules: str | Iterable[str],
    r: int,
    b: int,
    alpha: float | None = None,
    **layer_kwargs: Any,
) -> nn.Module:
    """Replace matching ``nn.Linear`` modules of ``model`` in place by [`BoRALinear`][bora_ref.BoRALinear].

    Every parameter that is not an adapter parameter (``lora_A``, ``lora_B``, ``sigma``) is
    frozen. The check runs on every target before anything changes, and the new layers are
    built before any is installed: on error (even a failed allocation) the model, including
    every ``requires_grad`` flag, is exactly as before.

    Shared layers: an ``nn.Linear`` reachable under several names (one module object, e.g. a
    layer reused in two places) is wrapped once, and that one ``BoRALinear`` is installed under
    every one of its names (also those ``target_modules`` does not list), so all uses of the
    layer see the same adapter and a merge changes them together. A module that is the
    ``base`` inside a ``BoRALinear`` is refused (adapters do not nest).

    Args:
        model: any ``nn.Module``.
        target_modules: list of names (exact or suffix after a ``.``), or a regex string that must
            match the whole qualified module name (PEFT's convention).
        r: rank of each block product, passed to every [`BoRALinear.from_linear`][bora_ref.BoRALinear.from_linear].
        b: number of blocks per side, passed likewise.
        alpha: scaling numerator, passed likewise.
        **layer_kwargs: ``rslora``, ``sigma_param``, ``dropout``, ``adapter_dtype``, passed through.

    Returns:
        ``model`` itself, modified.

    Raises:
        ValueError: ``model`` is not an ``nn.Module``; ``target_modules`` matches nothing, or a
            module that is not a plain ``nn.Linear``; or a layer argument is invalid for some target
            (``b`` larger than its ``min(m, n)``, ...).

    Examples:
        >>> from torch import nn
        >>> from bora_ref import apply_bora
        >>> model = nn.Sequential(nn.Linear(16, 16), nn.ReLU(), nn.Linear(16, 4))
        >>> model = apply_bora(model, target_modules=["0"], r=2, b=4)
        >>> type(model[0]).__name__, [name for name, p in model.named_parameters() if p.requires_grad]
        ('BoRALinear', ['0.lora_A', '0.lora_B', '0.sigma'])
    """
    _check_module(model)
    names = _find_targets(model, target_modules)
    allowed = LAYER_KWARGS - {"alpha"}  # alpha is apply_bora's own keyword
    unknown = set(layer_kwargs) - allowed
    if unknown:
        raise BoRAValueError(f"apply_bora got unknown keyword arguments {sorted(unknown)}; allowed: {sorted(allowed)}")

    config = BoRAConfig(r=r, b=b, alpha=alpha, **layer_kwargs)  # one validation of the settings
    # Validate every target first (pure checks), so a failure leaves the model untouched.
    for name in names:
        linear = model.get_submodule(name)
        try:
            config.check_shape(linear.out_features, linear.in_features)
        except BoRAValueError as exc:
            raise BoRAValueError(f"cannot adapt {name!r} ({linear.out_features}x{linear.in_features}): {exc}") from None

    aliases = _aliases(model)
    with _all_or_nothing(model):  # a failed allocation (out of memory, ...) undoes everything
        new_layers = {name: BoRALinear.from_config(model.get_submodule(name), config) for name in names}
        for name, layer in new_layers.items():
            # A shared nn.Linear (one module under several names) gets one BoRALinear, installed under every name.
            for alias in aliases[id(model.get_submodule(name))]:
                replace_submodule(model, alias, layer)

        adapter_ids = {id(p) for layer in bora_layers(model) for _, p in _adapter_params(layer)}
        for p in model.parameters():
            p.requires_grad_(id(p) in adapter_ids)
    return model


@contextlib.contextmanager
def _all_or_nothing(model: nn.Module) -> Iterator[None]:
    """Undo every module replacement and ``requires_grad`` change made inside the block if it raises.

    Records each submodule's children and each parameter's ``requires_grad`` first; on any
    exception (including ``KeyboardInterrupt`` and a failed allocation) puts them back and
    re-raises, so a refused call leaves the model tree and its flags as they were.
    """
    children = [(module, dict(module._modules)) for module in model.modules()]
    flags = [(p, p.requires_grad) for p in model.parameters()]
    try:
        yield
    except BaseException:
        for module, saved in children:
            module._modules.clear()
            module._modules.update(saved)
        for p, flag in flags:
            p.requires_grad_(flag)
        raise


def bora_layers(model: nn.Module) -> Iterator[BoRALinear]:
    """All [`BoRALinear`][bora_ref.BoRALinear] modules of ``model``, in ``named_modules`` order.

    Examples:
        >>> from torch import nn
        >>> from bora_ref import apply_bora, bora_layers
        >>> model = apply_bora(nn.Sequential(nn.Linear(16, 16), nn.ReLU(), nn.Linear(16, 4)), target_modules=["0", "2"], r=2, b=2)
        >>> [(layer.out_features, layer.in_features) for layer in bora_layers(model)]
        [(16, 16), (4, 16)]
    """
    _check_module(model)
    return (module for module in model.modules() if isinstance(module, BoRALinear))


def _adapter_params(layer: BoRALinear) -> list[tuple[str, nn.Parameter]]:
    return [(name, getattr(layer, name)) for name in ADAPTER_PARAM_NAMES]


def adapter_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """Only the adapter tensors, keyed ``"<module>.lora_A"``, ``"<module>.lora_B"``, ``"<module>.sigma"``.

    Tensors are detached (they share storage with the parameters; clone to keep a snapshot).

    Examples:
        >>> from torch import nn
        >>> from bora_ref import adapter_state_dict, apply_bora
        >>> model = apply_bora(nn.Sequential(nn.Linear(16, 8)), target_modules=["0"], r=2, b=4)
        >>> {key: tuple(t.shape) for key, t in adapter_state_dict(model).items()}
        {'0.lora_A': (2, 16), '0.lora_B': (8, 2), '0.sigma': (4, 4, 2)}
    """
    _check_module(model)
    state = {}
    for name, module in model.named_modules():
        if isinstance(module, BoRALinear):
            for pname, p in _adapter_params(module):
                state[f"{name}.{pname}" if name else pname] = p.detach()
    return state


def load_adapter_state_dict(model: nn.Module, state_dict: Mapping[str, torch.Tensor]) -> None:
    """Copy adapter tensors into ``model``'s BoRA layers; all-or-nothing.

    Keys, shapes and dtypes must match [`adapter_state_dict`][bora_ref.adapter_state_dict] exactly (no missing, no
    extra keys); every check runs before the first copy, so on error the model is unchanged.

    Raises:
        ValueError: the model has no BoRA layer; missing or unexpected keys; a value that is not
            a tensor or has the wrong shape or dtype; non-finite values.

    Examples:
        >>> import torch
        >>> from torch import nn
        >>> from bora_ref import adapter_state_dict, apply_bora, load_adapter_state_dict
        >>> source = apply_bora(nn.Sequential(nn.Linear(16, 8)), target_modules=["0"], r=2, b=2)
        >>> target = apply_bora(nn.Sequential(nn.Linear(16, 8)), target_modules=["0"], r=2, b=2)
        >>> load_adapter_state_dict(target, adapter_state_dict(source))
        >>> all(torch.equal(t, adapter_state_dict(source)[k]) for k, t in adapter_state_dict(target).items())
        True
    """
    current = adapter_state_dict(model)
    if not isinstance(state_dict, Mapping):
        raise BoRAValueError(f"state_dict must be a mapping of adapter names to tensors, got {type(state_dict).__name__}")
    if not current:
        raise BoRAValueError("model has no BoRALinear layers; call apply_bora first")
    missing = sorted(set(current) - set(state_dict))
    extra = sorted(set(state_dict) - set(current))
    if missing or extra:
        raise BoRAValueError(f"state_dict keys do not match the model's adapters: missing {missing}, unexpected {extra}")
    for key, target in current.items():
        value = state_dict[key]
        if not isinstance(value, torch.Tensor):
            raise BoRAValueError(f"state_dict[{key!r}] must be a torch.Tensor, got {type(value).__name__}")
        if value.layout != torch.strided:
            raise BoRAValueError(f"state_dict[{key!r}] must be a dense tensor, got layout {value.layout}")
        if value.shape != target.shape:
            raise BoRAValueError(f"state_dict[{key!r}] has shape {tuple(value.shape)}, the model needs {tuple(target.shape)}")
        if value.dtype != target.dtype:
            raise BoRAValueError(f"state_dict[{key!r}] has dtype {value.dtype}, the model needs {target.dtype}")
        if not bool(torch.isfinite(value).all()):
            raise BoRAValueError(f"state_dict[{key!r}] contains NaN or infinity")
    merged = [n for n, m in model.named_modules() if isinstance(m, BoRALinear) and m.merged]
    if merged:
        raise BoRAValueError(f"cannot load adapters into merged layers {merged}; unmerge first")
    with torch.no_grad():
        for key, target in current.items():
            target.copy_(state_dict[key])


def _check_not_tied(model: nn.Module, layers: list[BoRALinear]) -> None:
    """Refuse to merge a layer whose base weight is also a parameter of another module (tied weights).

    Merging adds ΔW to that one tensor, so the other module's output would change too (it has
    no adapter to subtract it again). The unmerged forward is exact and stays available.
    """
    owners: dict[int, list[tuple[str, nn.Module]]] = {}
    for name, module in model.named_modules():
        for p in module._parameters.values():
            if p is not None:
                owners.setdefault(id(p), []).append((name, module))
    names = {id(m): n for n, m in model.named_modules()}
    for layer in layers:
        others = [name for name, module in owners.get(id(layer.base.weight), []) if module is not layer.base]
        if others:
            raise BoRAValueError(
                f"cannot merge the BoRALinear {names.get(id(layer), '?')!r}: its base weight is tied to (shared with) "
                f"{others}, whose outputs the merge would change too; keep the layer unmerged (its forward is exact)"
            )


def merge_bora(model: nn.Module, safe: bool = False) -> nn.Module:
    """Merge every BoRA layer of ``model`` (see [`BoRALinear.merge`][bora_ref.BoRALinear.merge]); returns ``model``.

    With ``safe=True`` all merged weights are computed and checked first; a non-finite one
    raises before any layer is merged. A layer whose base weight is tied to another module's
    parameter is refused before anything is merged (the merge would change that module too).

    Examples:
        >>> import torch
        >>> from torch import nn
        >>> from bora_ref import apply_bora, merge_bora
        >>> model = apply_bora(nn.Sequential(nn.Linear(16, 8)), target_modules=["0"], r=2, b=2)
        >>> _ = nn.init.normal_(model[0].lora_B)  # a non-zero update
        >>> x = torch.randn(3, 16)
        >>> y = model(x)
        >>> _ = merge_bora(model)  # W + scaling * ΔW, computed once
        >>> model[0].merged, torch.allclose(model(x), y, atol=1e-5)
        (True, True)
    """
    if not isinstance(safe, bool):
        raise BoRAValueError(f"safe must be a bool, got {safe!r}")
    layers = [layer for layer in bora_layers(model) if not layer.merged]
    _check_not_tied(model, layers)
    if safe:
        with torch.no_grad():
            for layer in layers:
                w = layer.base.weight
                if not bool(torch.isfinite(w + layer.delta_weight().to(w.dtype)).all()):
                    raise BoRAValueError(f"merge_bora(safe=True): merging {layer!r} gives NaN or infinity; nothing merged")
    for layer in layers:
        layer.merge()
    return model


def unmerge_bora(model: nn.Module) -> nn.Module:
    """Unmerge every merged BoRA layer of ``model``; returns ``model``.

    Examples:
        >>> import torch
        >>> from torch import nn
        >>> from bora_ref import apply_bora, merge_bora, unmerge_bora
        >>> model = apply_bora(nn.Sequential(nn.Linear(16, 8)), target_modules=["0"], r=2, b=2)
        >>> _ = nn.init.normal_(model[0].lora_B)
        >>> W = model[0].base.weight.detach().clone()
        >>> _ = unmerge_bora(merge_bora(model))
        >>> model[0].merged, torch.allclose(model[0].base.weight, W, atol=1e-6)
        (False, True)
    """
    for layer in list(bora_layers(model)):
        if layer.merged:
            layer.unmerge()
    return model


def merge_and_unload(model: nn.Module, safe: bool = False) -> nn.Module:
    """Merge every BoRA layer and replace it by its (now updated) base ``nn.Linear``; returns ``model``.

    A shared layer is replaced under every one of its names.

    Args:
        model: the model, modified in place.
        safe: as in [`merge_bora`][bora_ref.merge_bora]: check every merged weight for NaN and
            infinity first and refuse (``ValueError``, nothing merged or replaced) if one is not finite.

    Examples:
        >>> import torch
        >>> from torch import nn
        >>> from bora_ref import apply_bora, merge_and_unload
        >>> model = apply_bora(nn.Sequential(nn.Linear(16, 8)), target_modules=["0"], r=2, b=2)
        >>> _ = nn.init.normal_(model[0].lora_B)
        >>> x = torch.randn(3, 16)
        >>> y = model(x)
        >>> plain = merge_and_unload(model)
        >>> type(plain[0]).__name__, torch.allclose(plain(x), y, atol=1e-5)
        ('Linear', True)
    """
    _check_module(model)
    if not isinstance(safe, bool):
        raise BoRAValueError(f"safe must be a bool, got {safe!r}")
    merge_bora(model, safe=safe)
    names = [name for name, m in model.named_modules(remove_duplicate=False) if isinstance(m, BoRALinear) and name]
    for name in names:
        replace_submodule(model, name, model.get_submodule(name).base)
    return model
