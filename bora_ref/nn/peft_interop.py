"""Convert between Hugging Face PEFT LoRA adapters and BoRA layers.

LoRA is BoRA with $\\Sigma \\equiv 1$ ($\\Delta W_{[i,j]} = B_i I A_j$ is block $(i, j)$ of $BA$),
so a trained LoRA adapter becomes a BoRA adapter with unchanged outputs: copy ``A (r, n)`` and
``B (m, r)``, keep ``r``, ``alpha`` and ``rslora``, and set the raw ``sigma (b, b, r)`` so that
[`effective_sigma`][bora_ref.BoRALinear.effective_sigma] is exactly one (``σ = 0`` under ``"exp_norm"``,
``σ = 1`` under ``"raw"``). Training then goes on as BoRA.

The way back is exact exactly when $\\mathrm{rank}(\\Delta W) \\le r$: a rank-``r`` LoRA update
$B'A'$ is any matrix of rank at most ``r``. Two routes, tried in this order:

1. **Separable Σ**, $\\Sigma_{ij} = u_i \\odot v_j$ for vectors $u_i, v_j \\in \\mathbb{R}^r$
   (always true for ``b = 1``): fold the diagonals into the factors,

   $$\\Delta W_{[i,j]} = B_i\\,\\mathrm{diag}(u_i)\\,\\mathrm{diag}(v_j)\\,A_j
     = B'_i A'_j, \\qquad B'_i = B_i\\,\\mathrm{diag}(u_i), \\quad A'_j = \\mathrm{diag}(v_j)\\,A_j .$$

   This keeps the factors' structure (Σ ≡ 1 gives back ``B`` and ``A`` bit for bit).
2. **Any other Σ**: separability is sufficient, not necessary (``r = b = 2`` with channel
   matrices $M_0 = I$, $M_1 = 0$ is not separable, yet $\\mathrm{rank}\\,\\Delta W \\le 2$). The
   structured SVD $\\Delta W = U \\mathrm{diag}(S) V_h$ (never forming $\\Delta W$) gives the
   numerical rank ``k`` (default factor tolerance of [`bora_ref.factor_rank_info`][bora_ref.factor_rank_info]); if
   ``k <= r``, $B' = U_k \\mathrm{diag}(\\sqrt{S_k})$ and $A' = \\mathrm{diag}(\\sqrt{S_k}) V_{h,k}$,
   padded to ``r`` with zero columns of $B'$ and unit right singular directions as rows of $A'$.
   If ``k > r`` no rank-``r`` LoRA represents $\\Delta W$ and the conversion refuses, naming
   ``k`` and the tolerance.

The layer's ``scaling`` stays outside the factors (the LoRA adapter gets the same ``r``,
``alpha`` and ``rslora``). Non-finite ``lora_B``, ``lora_A`` or Σ are refused.

PEFT is optional (``pip install 'bora-ref[peft]'``) and imported only inside these functions.
Besides PEFT's public ``LoraConfig``, ``get_peft_model`` and ``PeftModel``, this module reads
attributes of PEFT's LoRA layers (``r``, ``lora_alpha``, ``scaling``, ``use_rslora``,
``lora_dropout``, ``lora_variant``, ``lora_bias``) and the wrapper classes ``BaseTuner``,
``BaseTunerLayer`` and ``AuxiliaryTrainingWrapper``: PEFT internals, checked against PEFT 0.21.
"""

from __future__ import annotations

import math
import re
from typing import Any

import numpy as np
import torch
from torch import nn

from .._validation import BoRAValueError, check_choice, check_positive_float
from ._modules import replace_submodule
from .inject import apply_bora
from .inspect import named_bora_layers
from .config import BoRAConfig
from .layer import BoRALinear
from .sigma import DEFAULT_SIGMA_PARAM, get_sigma_param
from ..partition import block_slices
from ..analysis.rank import factor_rank_info, rank_bound
from ..analysis.svd import structured_svd

__all__ = ["bora_from_peft", "bora_to_peft", "lora_factors"]


def _exact_names_regex(names: list[str]) -> str:
    """A ``target_modules`` regex (``re.fullmatch``, as apply_bora and PEFT use it) matching exactly ``names``."""
    return "|".join(re.escape(name) for name in names)


def _has_module(model: nn.Module, name: str) -> bool:
    try:
        model.get_submodule(name)
    except AttributeError:
        return False
    return True


def _peft() -> Any:
    try:
        import peft
    except ImportError:  # pragma: no cover - CI installs the extra
        raise ImportError("bora_ref.nn.peft_interop needs PEFT: pip install 'bora-ref[peft]'") from None
    return peft


def _lora_spec(name: str, layer: Any, adapter_name: str | None, b: Any, sigma_param: str) -> dict[str, Any]:
    """Read one PEFT LoRA layer's adapter and check that BoRA can represent it exactly (pure)."""
    adapters = sorted(layer.lora_A.keys())
    if adapter_name is None:
        if len(adapters) != 1:
            raise BoRAValueError(f"PEFT layer {name!r} has adapters {adapters}; pass adapter_name= to choose one")
        key = adapters[0]
    elif adapter_name not in adapters:
        raise BoRAValueError(f"adapter_name={adapter_name!r} is not an adapter of PEFT layer {name!r} (it has {adapters})")
    else:
        key = adapter_name
    if layer.merged:
        raise BoRAValueError(f"PEFT layer {name!r} is merged; call unmerge_adapter() before converting")
    if layer.disable_adapters:
        raise BoRAValueError(f"PEFT layer {name!r} has its adapters disabled; enable them before converting")
    if getattr(layer, "lora_variant", {}).get(key) is not None or getattr(layer, "use_dora", {}).get(key, False):
        raise BoRAValueError(f"PEFT layer {name!r} uses a LoRA variant (e.g. DoRA) for {key!r}; only plain LoRA converts")
    if getattr(layer, "lora_bias", {}).get(key, False):
        raise BoRAValueError(f"PEFT layer {name!r} has lora_bias=True for {key!r}; BoRA has no bias on lora_B")
    base = layer.base_layer
    if type(base) is not nn.Linear:
        raise BoRAValueError(f"PEFT layer {name!r} wraps a {type(base).__name__}; only LoRA on torch.nn.Linear converts")

    r = int(layer.r[key])
    rslora = bool(layer.use_rslora.get(key, False))
    denom = math.sqrt(r) if rslora else r
    alpha = float(layer.lora_alpha[key])
    scaling = float(layer.scaling[key])
    if alpha / denom != scaling:  # PEFT's set_scale()/scale_layer() changed it: keep the output, not the name
        alpha = scaling * denom
    drop = layer.lora_dropout[key]
    dropout = drop.p if isinstance(drop, nn.Dropout) else 0.0
    try:
        BoRAConfig(r=r, b=b, alpha=alpha, rslora=rslora, sigma_param=sigma_param, dropout=dropout).check_shape(
            base.out_features, base.in_features)
    except BoRAValueError as exc:
        raise BoRAValueError(f"cannot convert PEFT layer {name!r} ({base.out_features}x{base.in_features}): {exc}") from None
    return {
        "base": base, "A": layer.lora_A[key].weight, "B": layer.lora_B[key].weight,
        "group": (r, alpha, rslora, dropout, layer.lora_A[key].weight.dtype),
    }


def bora_from_peft(
    model: nn.Module, *, b: int, sigma_param: str = DEFAULT_SIGMA_PARAM, adapter_name: str | None = None
) -> nn.Module:
    """Turn every PEFT LoRA layer of ``model`` into a [`BoRALinear`][bora_ref.BoRALinear] with Σ = 1.

    Each layer keeps its base ``nn.Linear`` (shared, frozen), ``A (r, n)``, ``B (m, r)``, ``r``,
    ``rslora``, dropout and scaling, and gets ``sigma (b, b, r)`` with effective value one, so
    $y = \\text{base}(x) + s\\, x\\,(BA)^T$ is unchanged (to rounding) and training continues as
    BoRA. A ``modules_to_save`` copy (e.g. a classification head) replaces its original and
    stays trainable; every other parameter is frozen, as [`apply_bora`][bora_ref.apply_bora] does.

    Args:
        model: a ``PeftModel``, a ``LoraModel`` or a plain module containing PEFT LoRA layers.
        b: blocks per side for every layer, ``1 <= b <= min(m, n)`` of each layer.
        sigma_param: ``"exp_norm"`` (raw σ set to 0) or ``"raw"`` (σ set to 1).
        adapter_name: which PEFT adapter to convert; ``None`` requires exactly one. Other
            adapters of the layers are dropped.

    Returns:
        The underlying model (``PeftModel.get_base_model()``), modified in place; the PEFT
        wrapper must not be used afterwards.

    Raises:
        ValueError: no PEFT LoRA layer; a layer that is merged, disabled, uses DoRA or another
            variant or ``lora_bias``, wraps something other than ``nn.Linear``, or lacks
            ``adapter_name``; a PEFT wrapper other than LoRA or ``modules_to_save``; or ``b`` /
            ``sigma_param`` invalid for some layer. All checks run first: on error nothing changes.

    Examples:
        >>> from torch import nn
        >>> from peft import LoraConfig, get_peft_model
        >>> from bora_ref import bora_from_peft, bora_layers
        >>> peft_model = get_peft_model(nn.Sequential(nn.Linear(16, 16), nn.ReLU(), nn.Linear(16, 4)), LoraConfig(r=2, target_modules=["0"]))
        >>> model = bora_from_peft(peft_model, b=4)
        >>> [(layer.r, layer.b) for layer in bora_layers(model)]
        [(2, 4)]
    """
    if not isinstance(model, nn.Module):
        raise BoRAValueError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    sigma_param = get_sigma_param(sigma_param).name
    _peft()
    from peft import PeftModel
    from peft.tuners.lora import Linear as LoraLinear
    from peft.tuners.tuners_utils import BaseTuner, BaseTunerLayer
    from peft.utils.other import AuxiliaryTrainingWrapper, ModulesToSaveWrapper

    inner = model.base_model if isinstance(model, PeftModel) else model
    inner = inner.model if isinstance(inner, BaseTuner) else inner

    specs: dict[str, dict[str, Any]] = {}
    saved: dict[str, nn.Module] = {}  # name -> the trained modules_to_save copy that replaces the wrapper
    for name, module in inner.named_modules():
        if isinstance(module, ModulesToSaveWrapper):
            key = adapter_name if adapter_name is not None else module.active_adapters[0]
            if key not in module.modules_to_save:
                raise BoRAValueError(f"modules_to_save wrapper {name!r} has no adapter {key!r}")
            saved[name] = module.modules_to_save[key]
        elif isinstance(module, AuxiliaryTrainingWrapper) or (
            isinstance(module, BaseTunerLayer) and not isinstance(module, LoraLinear)
        ):
            raise BoRAValueError(f"{name!r} is a PEFT {type(module).__name__}; only LoRA on nn.Linear and modules_to_save convert")
        elif isinstance(module, LoraLinear):
            specs[name] = _lora_spec(name, module, adapter_name, b, sigma_param)
    if not specs:
        raise BoRAValueError(f"model ({type(model).__name__}) has no PEFT LoRA layers to convert")

    # All checks passed: unwrap (the PEFT layers' base Linears and saved copies go back in place) ...
    for name, module in [(n, s["base"]) for n, s in specs.items()] + list(saved.items()):
        replace_submodule(inner, name, module)
    # ... then let apply_bora build the layers and freeze everything else, one call per layer config.
    groups: dict[tuple[Any, ...], list[str]] = {}
    for name, spec in specs.items():
        groups.setdefault(spec["group"], []).append(name)
    for (r, alpha, rslora, dropout, dtype), names in groups.items():
        apply_bora(inner, target_modules=_exact_names_regex(names), r=r, b=b, alpha=alpha, rslora=rslora,
                   sigma_param=sigma_param, dropout=dropout, adapter_dtype=dtype)
    with torch.no_grad():
        for name, spec in specs.items():
            layer = inner.get_submodule(name)
            layer.lora_A.copy_(spec["A"])
            layer.lora_B.copy_(spec["B"])
            layer.sigma.fill_(get_sigma_param(sigma_param).identity_value)  # effective Σ = 1 exactly
    for module in saved.values():
        module.requires_grad_(True)
    if hasattr(inner, "peft_config"):  # PEFT's unload() drops it too: no LoRA layer is left
        delattr(inner, "peft_config")
    return inner


def _separate(sigma: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Rank-one split of each ``sigma[:, :, k]`` (``(b, b)``) as ``outer(u[:, k], v[:, k])``.

    Pivots on the entry of largest magnitude (a rank-one skeleton): ``u`` is the pivot's column,
    ``v`` its row divided by the pivot. Σ ≡ 1 gives ``u = v = 1`` and ``b = 1`` gives
    ``u = Σ, v = 1``, both exactly. Returns ``u (b, r)``, ``v (b, r)`` and the relative residual ``(r,)``.
    """
    b, _, r = sigma.shape
    ks = torch.arange(r)
    flat_idx = sigma.abs().reshape(b * b, r).argmax(dim=0)  # (r,)
    i_star, j_star = flat_idx // b, flat_idx % b
    pivot = sigma[i_star, j_star, ks]  # (r,)
    dead = pivot == 0  # an all-zero Σ[:, :, k]: the component contributes nothing
    safe = torch.where(dead, torch.ones_like(pivot), pivot)
    u = torch.where(dead, torch.zeros_like(pivot), sigma[:, j_star, ks])  # (b, r)
    v = torch.where(dead, torch.ones_like(pivot), sigma[i_star, :, ks].T / safe)  # (r, b).T -> (b, r)
    residual = (sigma - u[:, None, :] * v[None, :, :]).abs().amax(dim=(0, 1)) / safe.abs()  # (r,)
    return u, v, residual


def lora_factors(layer: BoRALinear, *, rtol: float | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """LoRA factors ``(B', A')`` with ``scaling * B' @ A' = delta_weight()``, whenever $\\mathrm{rank}\\,\\Delta W \\le r$.

    Separable Σ ($\\Sigma_{ij} = u_i \\odot v_j$ within ``rtol``): $B'_i = B_i\\,\\mathrm{diag}(u_i)$,
    $A'_j = \\mathrm{diag}(v_j)\\,A_j$. Otherwise the truncated structured SVD of
    $\\Delta W = B \\Sigma A$ (module docstring), which is exact to rounding whenever the
    numerical rank ``k`` of $\\Delta W$ is at most ``r``. Computed in float64, returned in the
    adapter dtype.

    Args:
        layer: a [`BoRALinear`][bora_ref.BoRALinear] (``lora_B (m, r)``, ``lora_A (r, n)``, Σ ``(b, b, r)``).
        rtol: largest ``max|Σ_k - u_k v_k^T| / max|Σ_k|`` (each rank component ``k``) for which
            Σ counts as separable and is folded; default ``8 * eps`` of the adapter dtype.

    Returns:
        ``B' (m, r)`` and ``A' (r, n)``, detached, in ``lora_A``'s dtype and device.

    Raises:
        ValueError: ``layer`` is not a ``BoRALinear``; ``rtol`` is not positive; ``lora_B``,
            ``lora_A`` or the effective Σ hold NaN or inf; or Σ is not separable and $\\Delta W$
            has numerical rank ``k > r`` (the message gives ``k`` and the tolerance).

    Examples:
        >>> import torch
        >>> from bora_ref import BoRALinear, lora_factors
        >>> layer = BoRALinear(in_features=16, out_features=8, r=2, b=1)  # b = 1: rank <= r always
        >>> _ = torch.nn.init.normal_(layer.lora_B)
        >>> B2, A2 = lora_factors(layer)
        >>> tuple(B2.shape), tuple(A2.shape), torch.allclose(layer.scaling * B2 @ A2, layer.delta_weight(), atol=1e-5)
        ((8, 2), (2, 16), True)
    """
    if not isinstance(layer, BoRALinear):
        raise BoRAValueError(f"layer must be a BoRALinear, got {type(layer).__name__}")
    dtype = layer.lora_A.dtype
    rtol = 8 * torch.finfo(dtype).eps if rtol is None else check_positive_float("rtol", rtol)
    with torch.no_grad():
        sigma = layer.effective_sigma().double()  # (b, b, r)
        B, A = layer.lora_B.double(), layer.lora_A.double()  # (m, r), (r, n)
        for name, value in (("lora_B", B), ("lora_A", A), ("effective sigma", sigma)):
            if not bool(torch.isfinite(value).all()):
                bad = int((~torch.isfinite(value)).sum())
                raise BoRAValueError(
                    f"{name} has {bad} non-finite value(s) (NaN or inf); no finite LoRA factors represent this update"
                )
        u, v, residual = _separate(sigma)
        if bool((residual <= rtol).all()):  # written so that a NaN residual can never pass
            rows = block_slices(layer.out_features, layer.b)
            cols = block_slices(layer.in_features, layer.b)
            B_new = torch.cat([B[rows[i]] * u[i] for i in range(layer.b)], dim=0)  # B_i diag(u_i): (m, r)
            A_new = torch.cat([v[j][:, None] * A[:, cols[j]] for j in range(layer.b)], dim=1)  # diag(v_j) A_j: (r, n)
            return B_new.to(dtype), A_new.to(dtype)
        worst = int(residual.argmax())
        B_np, A_np, s_np = B.cpu().numpy(), A.cpu().numpy(), sigma.cpu().numpy()
        info = factor_rank_info(B_np, A_np, s_np)
        r = layer.r
        if info.rank > r:
            bound = rank_bound(layer.out_features, layer.in_features, r, layer.b)
            raise BoRAValueError(
                f"effective sigma is not separable (Σ_ij = u_i * v_j): rank component k={worst} has relative "
                f"residual {float(residual[worst]):.3g} > rtol={rtol:.3g}, and ΔW has numerical rank {info.rank} > r={r} "
                f"(structured SVD, tolerance {info.tol:.3g}); with b={layer.b} the update can reach rank {bound} > r={r}, "
                f"which no rank-{r} LoRA represents (merge it with merge_and_unload instead)"
            )
        U, S, Vh = structured_svd(B_np, A_np, s_np)  # (m, c), (c,), (c, n)
        k = info.rank
        root = np.sqrt(S[:k])
        B_out = np.zeros((layer.out_features, r))
        A_out = np.zeros((r, layer.in_features))
        B_out[:, :k] = U[:, :k] * root  # U_k diag(sqrt S_k)
        A_out[:k] = root[:, None] * Vh[:k]  # diag(sqrt S_k) Vh_k
        extra = min(r, Vh.shape[0])
        A_out[k:extra] = Vh[k:extra]  # unit directions paired with zero columns of B': trainable, ΔW unchanged
        device = layer.lora_A.device
    return torch.from_numpy(B_out).to(device=device, dtype=dtype), torch.from_numpy(A_out).to(device=device, dtype=dtype)


def bora_to_peft(
    model: nn.Module, *, adapter_name: str = "default", rtol: float | None = None,
    modules_to_save: list[str] | None = None,
) -> Any:
    """Turn a model with BoRA layers into a PEFT ``PeftModel`` with LoRA adapters of rank ``r``, where exact.

    Every BoRA layer needs $\\mathrm{rank}\\,\\Delta W \\le r$ (true for every separable Σ, always
    for ``b = 1``, and for some non-separable Σ too; see [`lora_factors`][bora_ref.lora_factors]); its LoRA factors
    go into a LoRA adapter with the same ``r``, ``alpha``, ``rslora`` and dropout, so the
    outputs agree to rounding. The base ``nn.Linear`` weights are shared.

    Args:
        model: a module containing [`BoRALinear`][bora_ref.BoRALinear] layers (none merged), all with
            the same ``r``, ``alpha``, ``rslora`` and dropout (one ``LoraConfig`` describes them).
        adapter_name: name of the PEFT adapter to create.
        rtol: separability tolerance of the folding route, see [`lora_factors`][bora_ref.lora_factors].
        modules_to_save: qualified names of modules that stay trainable (e.g. a classification
            head), forwarded to ``LoraConfig`` (PEFT matches them by suffix);
            ``get_peft_model`` freezes every other non-LoRA parameter.

    Returns:
        ``peft.PeftModel`` wrapping ``model`` (modified in place: BoRA layers replaced).

    Raises:
        ValueError: no BoRA layer, a merged layer, layers with different ``r``/``alpha``/
            ``rslora``/dropout, an update of numerical rank ``> r`` or with NaN/inf factors (the
            message names the layer), or a
            ``modules_to_save`` entry that names no module. All checks and factorisations run
            first: on error ``model`` is unchanged.

    Examples:
        >>> from torch import nn
        >>> from bora_ref import apply_bora, bora_to_peft
        >>> model = apply_bora(nn.Sequential(nn.Linear(16, 16), nn.ReLU(), nn.Linear(16, 4)), target_modules=["0"], r=2, b=1)
        >>> peft_model = bora_to_peft(model)  # b = 1: every update has rank <= r, so the conversion is exact
        >>> type(peft_model).__name__
        'PeftModel'
    """
    if not isinstance(model, nn.Module):
        raise BoRAValueError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    if not isinstance(adapter_name, str) or not adapter_name:
        raise BoRAValueError(f"adapter_name must be a non-empty str, got {adapter_name!r}")
    _peft()
    from peft import LoraConfig, get_peft_model

    layers = dict(named_bora_layers(model))
    if not layers or "" in layers:
        raise BoRAValueError("model has no BoRALinear layers to convert (or is one itself; wrap it in a container)")
    all_names = [name for name, m in model.named_modules(remove_duplicate=False) if isinstance(m, BoRALinear)]
    if len(all_names) != len(layers):  # one shared layer under several names: PEFT would adapt only one of them
        shared = sorted(set(all_names) - set(layers))
        raise BoRAValueError(f"BoRA layers {shared} are shared with other names of the model; PEFT cannot represent "
                             "one LoRA layer under several names, so the conversion would change the model's outputs")
    if isinstance(modules_to_save, str):
        raise BoRAValueError(f"modules_to_save must be a list of module names, got the string {modules_to_save!r}")
    if modules_to_save is not None and not isinstance(modules_to_save, (list, tuple)):
        raise BoRAValueError(f"modules_to_save must be a list of module names or None, got {type(modules_to_save).__name__}")
    names = list(modules_to_save) if modules_to_save is not None else []
    for name in names:
        if not isinstance(name, str) or not name or not _has_module(model, name):
            raise BoRAValueError(f"modules_to_save entries must name modules of the model, got {name!r}")
    configs = {}
    for name, layer in layers.items():
        if layer.merged:
            raise BoRAValueError(f"BoRA layer {name!r} is merged; unmerge it before converting")
        p = layer.dropout.p if isinstance(layer.dropout, nn.Dropout) else 0.0
        configs[name] = (layer.r, layer.alpha, layer.rslora, p)
    first = next(iter(configs))
    for name, config in configs.items():
        if config != configs[first]:
            raise BoRAValueError(
                f"BoRA layers differ in (r, alpha, rslora, dropout): {first!r} has {configs[first]}, {name!r} has "
                f"{config}; one LoraConfig cannot describe them"
            )
    factors = {}
    for name, layer in layers.items():
        try:
            factors[name] = lora_factors(layer, rtol=rtol)
        except BoRAValueError as exc:
            raise BoRAValueError(f"cannot convert BoRA layer {name!r} to LoRA: {exc}") from None

    r, alpha, rslora, dropout = next(iter(configs.values()))
    for name, layer in layers.items():
        replace_submodule(model, name, layer.base)
    config = LoraConfig(r=r, lora_alpha=alpha, use_rslora=rslora, lora_dropout=dropout,
                        target_modules=_exact_names_regex(list(layers)), bias="none",
                        modules_to_save=names or None)
    peft_model = get_peft_model(model, config, adapter_name=adapter_name)
    with torch.no_grad():
        for name, (B_new, A_new) in factors.items():
            lora = peft_model.base_model.model.get_submodule(name)
            lora.lora_A[adapter_name].to(A_new.dtype).weight.copy_(A_new)  # (r, n), adapter dtype kept
            lora.lora_B[adapter_name].to(B_new.dtype).weight.copy_(B_new)  # (m, r)
    return peft_model
