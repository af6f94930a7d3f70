"""BoRAConfig: one place for the layer settings, their defaults and their validation."""

import math

import pytest
import torch

from bora_ref import BoRALinear, BoRAValueError
from bora_ref.nn.config import ADAPTER_DTYPES, BoRAConfig
from bora_ref.nn.sigma import SIGMA_PARAMS


@pytest.mark.parametrize("rslora", [False, True])
@pytest.mark.parametrize("alpha", [None, 3.0, 16])
def test_scaling_rule(alpha, rslora):
    cfg = BoRAConfig(r=9, b=2, alpha=alpha, rslora=rslora)
    a = 9.0 if alpha is None else float(alpha)
    assert cfg.alpha == a
    assert cfg.scaling == (a / math.sqrt(9) if rslora else a / 9)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"r": 0}, "r must be >= 1, got 0"),
        ({"r": True}, "r must be an integer, got True"),
        ({"b": 2.0}, "b must be an integer, got 2.0"),
        ({"alpha": 0.0}, r"alpha must be a finite number > 0, got 0.0"),
        ({"rslora": 1}, "rslora must be a bool, got 1"),
        ({"sigma_param": "exp"}, r"sigma_param must be one of \('exp_norm', 'raw'\), got 'exp'"),
        ({"dropout": -0.1}, r"dropout must be a float in \[0, 1\), got -0.1"),
        ({"adapter_dtype": torch.float8_e5m2}, r"adapter_dtype must be one of .* got torch.float8_e5m2"),
        ({"adapter_dtype": torch.int8}, r"adapter_dtype must be one of .* got torch.int8"),
    ],
)
def test_invalid_settings_are_refused(kwargs, match):
    with pytest.raises(BoRAValueError, match=match):
        BoRAConfig(**({"r": 2, "b": 2} | kwargs))


def test_check_shape_needs_non_empty_blocks():
    cfg = BoRAConfig(r=2, b=5)
    assert cfg.check_shape(5, 7) is cfg
    with pytest.raises(BoRAValueError, match=r"b must satisfy 1 <= b <= min\(m, n\) = 4 .* got b=5"):
        cfg.check_shape(4, 7)


@pytest.mark.parametrize("sigma_param", SIGMA_PARAMS)
@pytest.mark.parametrize("dtype", ADAPTER_DTYPES + (None,))
def test_dict_round_trip(sigma_param, dtype):
    cfg = BoRAConfig(r=3, b=2, alpha=5.0, rslora=True, sigma_param=sigma_param, dropout=0.25, adapter_dtype=dtype)
    assert BoRAConfig.from_dict(cfg.to_dict()) == cfg


@pytest.mark.parametrize(
    ("data", "match"),
    [
        ([1, 2], "a BoRA config must be a JSON object, got list"),
        ({"r": 2, "b": 2, "extra": 1}, r"unknown BoRA config keys \['extra'\]"),
        ({"r": 2}, "a BoRA config needs 'b'"),
        ({"r": 2, "b": 2, "adapter_dtype": "float8_e4m3fn"}, r"adapter_dtype must be one of .* got 'float8_e4m3fn'"),
        ({"r": 2, "b": 2, "sigma_param": 1}, "sigma_param must be a string, got 1"),
        ({"r": 2, "b": 2, "rslora": 0}, "rslora must be a bool, got 0"),
    ],
)
def test_from_dict_refuses_malformed_data(data, match):
    with pytest.raises(BoRAValueError, match=match):
        BoRAConfig.from_dict(data)


def test_layer_config_round_trips_through_from_config():
    layer = BoRALinear(10, 6, r=2, b=3, alpha=4.0, rslora=True, sigma_param="raw", dropout=0.1, dtype=torch.float64)
    cfg = layer.config
    assert cfg == BoRAConfig(r=2, b=3, alpha=4.0, rslora=True, sigma_param="raw", dropout=0.1, adapter_dtype=torch.float64)
    twin = BoRALinear.from_config(torch.nn.Linear(10, 6, dtype=torch.float64), cfg)
    assert twin.config == cfg and twin.scaling == layer.scaling


def test_from_config_refuses_a_mismatched_shape_and_leaves_the_linear_alone():
    linear = torch.nn.Linear(3, 8)
    with pytest.raises(BoRAValueError, match="got b=4"):
        BoRALinear.from_config(linear, BoRAConfig(r=2, b=4))
    assert all(p.requires_grad for p in linear.parameters())
    with pytest.raises(BoRAValueError, match="config must be a bora_ref.nn.config.BoRAConfig, got dict"):
        BoRALinear.from_config(linear, {"r": 2, "b": 1})


def test_every_float_dtype_list_comes_from_one_source():
    """Adapters, the oracle and the command line accept the same dtypes: those the tolerance policy has constants for."""
    from bora_ref import _arrays
    from bora_ref.testing import _cli, cases, oracle

    assert tuple(str(d).removeprefix("torch.") for d in ADAPTER_DTYPES) == _arrays.FLOAT_DTYPE_NAMES
    assert set(_arrays.FLOAT_DTYPE_NAMES) == set(_arrays._DTYPES)  # each has its eps and smallest normal
    assert cases._FLOAT_DTYPES == oracle._FLOAT_DTYPES == ADAPTER_DTYPES
    assert set(_cli._DTYPES.values()) == set(ADAPTER_DTYPES)
    for dtype in ADAPTER_DTYPES:
        name = str(dtype).removeprefix("torch.")
        assert _arrays.dtype_eps(name) == torch.finfo(dtype).eps
