"""``BoRALinear``: a frozen ``nn.Linear`` plus a trainable BoRA update.

$$y = x W^T + \\text{bias} + s \\cdot x \\, \\Delta W^T, \\qquad
\\Delta W_{[i,j]} = B_i \\, \\mathrm{diag}(\\Sigma_{ij}) \\, A_j$$

with $s = \\alpha / r$ (or $\\alpha / \\sqrt{r}$ with ``rslora=True``). Paper: *BoRA:
Block-Diversified Low-Rank Adaptation* (Σ = exp(σ / mean|σ|)).
"""

from __future__ import annotations

import math
import warnings
from typing import Any

import torch
from torch import nn

from .. import torch_ref
from .._validation import BoRAValueError, check_int
from ..analysis.budget import adapter_bytes, check_budget
from .config import ADAPTER_DTYPES, LAYER_KWARGS, BoRAConfig
from .sigma import DEFAULT_SIGMA_PARAM, SIGMA_PARAMS, get_sigma_param

__all__ = ["BoRALinear", "SIGMA_PARAMS"]

_MERGED_KEY = "bora_merged"  # state_dict key present only for a merged layer (see _load_from_state_dict)


def _init_lora_A_(A: torch.Tensor) -> None:
    """PEFT's default LoRA init: Kaiming-uniform with ``a = sqrt(5)`` (bound ``1 / sqrt(n)``)."""
    nn.init.kaiming_uniform_(A, a=math.sqrt(5))



class BoRALinear(nn.Module):
    """A frozen linear layer with a BoRA adapter (Block-Diversified Low-Rank Adaptation).

    $$y = \\text{base}(x) + s \\cdot x \\, \\Delta W^T, \\qquad
    \\Delta W_{[i,j]} = B_i \\, \\mathrm{diag}(\\Sigma_{ij}) \\, A_j, \\quad i, j = 1..b$$

    ``lora_B (m, r)`` is split into ``b`` row blocks and ``lora_A (r, n)`` into ``b`` column
    blocks (``numpy.array_split`` sizes); every block product gets its own diagonal
    ``Σ_ij = effective_sigma()[i, j]``. ``sigma_param`` chooses how the raw parameter
    ``sigma (b, b, r)`` becomes Σ:

    - ``"exp_norm"`` (default, the paper's): ``Σ = exp(σ / mean|σ|)``, σ initialised like
      ``lora_A``; ``σ = 0`` gives ``Σ = 1`` exactly.
    - ``"raw"``: ``Σ = σ``, initialised to ones (step 0 is exactly LoRA).

    ``lora_B`` starts at zero, so the layer equals its base layer at initialisation.

    Precision: adapter parameters live in ``adapter_dtype`` (default: the base dtype, except
    float32 for float16/bfloat16 bases, as PEFT's ``autocast_adapter_dtype``); the adapter input
    is cast to it and the adapter output back to the base output's dtype.

    Args:
        in_features: ``n``.
        out_features: ``m``.
        r: rank of each block product, ``>= 1``.
        b: number of blocks per side, ``1 <= b <= min(m, n)``.
        alpha: scaling numerator (default ``r``: ``scaling = 1``, or ``sqrt(r)`` with ``rslora``).
        rslora: use ``alpha / sqrt(r)`` instead of ``alpha / r``.
        sigma_param: ``"exp_norm"`` or ``"raw"``.
        bias: whether the base layer has a bias.
        dropout: dropout probability on the adapter input, in ``[0, 1)``.
        device: device of the base layer (and of the adapter).
        dtype: dtype of the base layer.
        adapter_dtype: dtype of ``lora_A``, ``lora_B``, ``sigma`` (see Precision).

    Raises:
        ValueError: for any invalid argument (the message names it), including a ``device`` that
            does not exist here and a base layer or adapter whose memory would exceed
            [`MEMORY_BUDGET_BYTES`][bora_ref.analysis.budget.MEMORY_BUDGET_BYTES].

    Safety: ``forward`` refuses (``ValueError``) a non-tensor, non-floating or wrongly shaped
    ``x``, and one on another device or (outside autocast) of another dtype than the base
    weight. A merged layer's ``state_dict`` carries a ``bora_merged`` entry, so loading it into
    an unmerged layer makes that layer merged too (ΔW is never counted twice);
    ``reset_adapter_parameters()`` refuses while merged.

    Examples:
        >>> layer = BoRALinear(64, 32, r=4, b=4)
        >>> layer(torch.randn(2, 10, 64)).shape
        torch.Size([2, 10, 32])
    """

    def __init__(
        self,
        in_features: int,
        out_features: int,
        r: int,
        b: int,
        *,
        alpha: float | None = None,
        rslora: bool = False,
        sigma_param: str = DEFAULT_SIGMA_PARAM,
        bias: bool = True,
        dropout: float = 0.0,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
        adapter_dtype: torch.dtype | None = None,
    ) -> None:
        in_features = check_int("in_features", in_features, minimum=1)
        out_features = check_int("out_features", out_features, minimum=1)
        config = BoRAConfig(r=r, b=b, alpha=alpha, rslora=rslora, sigma_param=sigma_param, dropout=dropout,
                            adapter_dtype=adapter_dtype).check_shape(out_features, in_features)
        if not isinstance(bias, bool):
            raise BoRAValueError(f"bias must be a bool, got {bias!r}")
        if dtype is not None and dtype not in ADAPTER_DTYPES:
            raise BoRAValueError(f"dtype must be None or one of {ADAPTER_DTYPES} (the base layer's dtype), got {dtype!r}")
        try:
            device = None if device is None else torch.device(device)
        except (RuntimeError, TypeError, ValueError):
            raise BoRAValueError(f"device must be None, a torch.device or a device string such as 'cpu', got {device!r}") from None
        itemsize = (dtype or torch.get_default_dtype()).itemsize
        check_budget("BoRALinear's base layer", (out_features * in_features + out_features) * itemsize,
                     f"in_features={in_features}, out_features={out_features}, dtype={dtype or torch.get_default_dtype()}")
        super().__init__()
        try:
            base = nn.Linear(in_features, out_features, bias=bias, device=device, dtype=dtype)
        except (RuntimeError, AssertionError) as exc:  # e.g. device='cuda' without CUDA (torch raises AssertionError)
            raise BoRAValueError(f"cannot create the base layer on device={device!r}: {str(exc).splitlines()[0]}") from None
        self._setup(base, config)

    @classmethod
    def from_linear(cls, linear: nn.Linear, r: int, b: int, **kwargs: Any) -> BoRALinear:
        """Wrap an existing ``nn.Linear``: its weight and bias are shared (not copied) and frozen.

        Args:
            linear: the layer to adapt; becomes ``self.base``.
            r: rank of each block product, as in the constructor.
            b: number of blocks per side, as in the constructor.
            **kwargs: ``alpha``, ``rslora``, ``sigma_param``, ``dropout``, ``adapter_dtype``.

        Raises:
            ValueError: if ``linear`` is not an ``nn.Linear`` or any argument is invalid
                (``linear`` is left untouched then).
        """
        if not isinstance(linear, nn.Linear):
            raise BoRAValueError(f"linear must be a torch.nn.Linear, got {type(linear).__name__}")
        allowed = LAYER_KWARGS
        unknown = set(kwargs) - allowed
        if unknown:
            raise BoRAValueError(f"from_linear got unknown keyword arguments {sorted(unknown)}; allowed: {sorted(allowed)}")
        config = BoRAConfig(r=r, b=b, **kwargs).check_shape(linear.out_features, linear.in_features)
        return cls.from_config(linear, config)

    @classmethod
    def from_config(cls, linear: nn.Linear, config: BoRAConfig) -> BoRALinear:
        """Wrap an existing ``nn.Linear`` with the settings of a [`BoRAConfig`][bora_ref.nn.config.BoRAConfig].

        Raises:
            ValueError: ``linear`` is not an ``nn.Linear``, ``config`` is not a ``BoRAConfig``, or
                ``config.b > min(m, n)`` (``linear`` is left untouched then).
        """
        if not isinstance(linear, nn.Linear):
            raise BoRAValueError(f"linear must be a torch.nn.Linear, got {type(linear).__name__}")
        if not isinstance(config, BoRAConfig):
            raise BoRAValueError(f"config must be a bora_ref.nn.config.BoRAConfig, got {type(config).__name__}")
        config.check_shape(linear.out_features, linear.in_features)
        self = cls.__new__(cls)
        nn.Module.__init__(self)
        self._setup(linear, config)
        return self

    def _setup(self, base: nn.Linear, config: BoRAConfig) -> None:
        adapter_dtype = config.adapter_dtype_for(base.weight.dtype)
        m, n = base.out_features, base.in_features
        self.in_features, self.out_features = n, m
        self.r, self.b = config.r, config.b
        self.alpha = float(config.alpha)  # type: ignore[arg-type]  # resolved by BoRAConfig
        self.rslora = config.rslora
        self.sigma_param = config.sigma_param
        self.scaling = config.scaling
        self.merged = False
        r, b = config.r, config.b

        # Refuse an adapter above the memory budget before allocating it (r = 10**9 would try ~40 GB per layer).
        check_budget("BoRALinear's adapter (lora_A, lora_B, sigma)", adapter_bytes(m, n, r, b, adapter_dtype.itemsize),
                     f"m={m}, n={n}, r={r}, b={b}, adapter_dtype={adapter_dtype}")
        self.base = base
        factory = {"device": base.weight.device, "dtype": adapter_dtype}
        self.lora_A = nn.Parameter(torch.empty(r, n, **factory))  # (r, n)
        self.lora_B = nn.Parameter(torch.zeros(m, r, **factory))  # (m, r)
        self.sigma = nn.Parameter(torch.empty(b, b, r, **factory))  # (b, b, r), raw
        self.dropout = nn.Dropout(config.dropout) if config.dropout > 0 else nn.Identity()
        self.reset_adapter_parameters()
        for p in base.parameters():  # last: a failure above leaves the caller's layer untouched
            p.requires_grad_(False)

    @property
    def config(self) -> BoRAConfig:
        """This layer's settings as a [`BoRAConfig`][bora_ref.nn.config.BoRAConfig] (``adapter_dtype`` is the actual one)."""
        return BoRAConfig(r=self.r, b=self.b, alpha=self.alpha, rslora=self.rslora, sigma_param=self.sigma_param,
                          dropout=self.dropout.p if isinstance(self.dropout, nn.Dropout) else 0.0,
                          adapter_dtype=self.lora_A.dtype)

    def reset_adapter_parameters(self) -> None:
        """Re-initialise the adapter: ``lora_A`` Kaiming-uniform, ``lora_B = 0``, ``sigma`` per ``sigma_param``.

        Raises:
            ValueError: the layer is merged (its base weight holds the current ΔW, which a later
                ``unmerge()`` could no longer subtract); call ``unmerge()`` first.
        """
        if self.merged:
            raise BoRAValueError("reset_adapter_parameters(): the layer is merged; call unmerge() first (nothing was changed)")
        _init_lora_A_(self.lora_A)
        nn.init.zeros_(self.lora_B)
        get_sigma_param(self.sigma_param).init_(self.sigma, self.in_features)

    def effective_sigma(self) -> torch.Tensor:
        """The ``(b, b, r)`` diagonals that enter ΔW.

        ``"exp_norm"``: $\\exp(\\sigma / \\mathrm{mean}|\\sigma|)$ over the whole tensor, with
        ``mean|σ| = 0`` treated as 1 (so ``σ = 0`` gives exactly ones). ``"raw"``: ``σ`` itself.
        """
        return get_sigma_param(self.sigma_param).effective(self.sigma)

    def delta_weight(self) -> torch.Tensor:
        """``scaling * ΔW``, ``(m, n)`` in the adapter dtype (formed explicitly; used by merge)."""
        return self.scaling * torch_ref._delta_weight(self.lora_B, self.lora_A, self.effective_sigma())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Base output plus the scaled BoRA update, via the fast path (ΔW is never formed).

        When the adapter dtype equals the base output's (and the layer is not merged, and
        autocast is off), the base layer runs on the tokens flattened to ``(N, n)`` and the
        update is accumulated in place into its fresh output, with the scaling folded into the
        ``(b, b, r)`` mixing: no extra pass over the ``(..., m)`` output. Otherwise the update is
        computed in the adapter dtype and added out of place.

        Args:
            x: ``(..., n)``.

        Returns:
            ``(..., m)`` in the base layer's output dtype.
        """
        if not isinstance(x, torch.Tensor):
            raise BoRAValueError(f"x must be a torch.Tensor of shape (..., {self.in_features}), got {type(x).__name__}")
        if x.layout != torch.strided or not x.is_floating_point() or x.ndim == 0 or x.shape[-1] != self.in_features:
            raise BoRAValueError(
                f"x must be a dense floating tensor of shape (..., {self.in_features}), got shape {tuple(x.shape)}, "
                f"dtype {x.dtype}, layout {x.layout}"
            )
        weight = self.base.weight
        if x.device != weight.device:
            raise BoRAValueError(f"x is on {x.device} but the layer is on {weight.device}")
        if x.dtype != weight.dtype and not torch.is_autocast_enabled(x.device.type):
            raise BoRAValueError(f"x has dtype {x.dtype} but the base layer's weight is {weight.dtype} (and autocast is off)")
        if self.merged:
            return self.base(x)
        B, A = self.lora_B, self.lora_A
        if A.dtype == weight.dtype and not torch.is_autocast_enabled(x.device.type):
            # The scaled update is added straight into the base output: the lift accumulates into
            # it (nn.Linear saves its input, never its output, for backward; the output's gradient
            # passes through), so the residual add and the scaling cost no pass over (..., m).
            # Tokens flattened first: nn.Linear's output for a 3-D input is a view, and adding into
            # a view would make autograd copy the whole gradient once more.
            x2 = x.reshape(-1, self.in_features)
            result = self.base(x2)
            if result.dtype == A.dtype and result.is_contiguous() and result._base is None:
                y = torch_ref._bora_matmul(self.dropout(x2), B, A, self.effective_sigma(), scale=self.scaling, out=result)
                return y.view(*x.shape[:-1], self.out_features)
            result = result.view(*x.shape[:-1], self.out_features)
        else:
            result = self.base(x)
        # Different dtypes (a float16/bfloat16 base with a float32 adapter, or autocast): out of place.
        x_a = self.dropout(x).to(A.dtype)
        update = torch_ref._bora_matmul(x_a, B, A, self.effective_sigma(), scale=self.scaling)  # (..., m), scaled
        return result + update.to(result.dtype)

    @torch.no_grad()
    def merge(self, safe: bool = False) -> None:
        """Fold ``scaling * ΔW`` into ``base.weight`` (then ``forward`` is one plain linear).

        Args:
            safe: compute the merged weight out of place first and refuse (``ValueError``, weight
                untouched) if it contains NaN or infinity.
        """
        if not isinstance(safe, bool):
            raise BoRAValueError(f"safe must be a bool, got {safe!r:.80}")
        if self.merged:
            warnings.warn("BoRALinear.merge(): already merged, nothing to do", stacklevel=2)
            return
        weight = self.base.weight
        delta = self.delta_weight().to(weight.dtype)
        if safe:
            merged = weight + delta
            if not bool(torch.isfinite(merged).all()):
                raise BoRAValueError("merge(safe=True): the merged weight contains NaN or infinity; weight left unchanged")
            weight.copy_(merged)
        else:
            weight.add_(delta)
        self.merged = True

    @torch.no_grad()
    def unmerge(self) -> None:
        """Subtract ``scaling * ΔW`` from ``base.weight`` again (exact up to rounding in the base dtype)."""
        if not self.merged:
            warnings.warn("BoRALinear.unmerge(): not merged, nothing to do", stacklevel=2)
            return
        weight = self.base.weight
        weight.sub_(self.delta_weight().to(weight.dtype))
        self.merged = False

    def _save_to_state_dict(self, destination: dict[str, Any], prefix: str, keep_vars: bool) -> None:
        super()._save_to_state_dict(destination, prefix, keep_vars)
        if self.merged:  # only then, so an unmerged layer's keys are exactly its parameters'
            destination[prefix + _MERGED_KEY] = torch.ones((), dtype=torch.bool)

    def _load_from_state_dict(
        self, state_dict: Any, prefix: str, local_metadata: Any, strict: bool, missing_keys: list[str],
        unexpected_keys: list[str], error_msgs: list[str],
    ) -> None:
        """Carry the merged state with the base weight, so ΔW is never added twice or lost.

        A merged layer's ``state_dict`` holds ``<prefix>bora_merged``. Loading a state dict
        with ``base.weight`` makes the layer merged exactly when that key is present; loading
        adapter tensors without ``base.weight`` into a merged layer is refused (the ΔW folded
        into the weight would no longer match the adapter, and ``unmerge()`` would be wrong).
        """
        incoming_merged = (prefix + _MERGED_KEY) in state_dict
        has_base = (prefix + "base.weight") in state_dict
        has_adapter = any((prefix + name) in state_dict for name in ("lora_A", "lora_B", "sigma"))
        if not has_base and has_adapter and self.merged:
            raise BoRAValueError(
                f"cannot load adapter tensors ({prefix or 'root'}) into a merged BoRALinear without its base.weight; "
                "call unmerge() first"
            )
        super()._load_from_state_dict(state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys, error_msgs)
        if prefix + _MERGED_KEY in unexpected_keys:
            unexpected_keys.remove(prefix + _MERGED_KEY)
        if has_base:
            self.merged = incoming_merged

    def extra_repr(self) -> str:
        return (
            f"in_features={self.in_features}, out_features={self.out_features}, r={self.r}, b={self.b}, "
            f"alpha={self.alpha:g}, scaling={self.scaling:g}, rslora={self.rslora}, sigma_param={self.sigma_param!r}, "
            f"adapter_dtype={self.lora_A.dtype}, merged={self.merged}"
        )
