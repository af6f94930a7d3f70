import pytest
from hypothesis import given

from bora_ref import BoRALinear, param_count
from bora_ref.testing import strategies as bst


@given(bst.shapes(max_dim=40, max_r=10))
def test_param_count_matches_a_real_layer(shape):
    m, n, r, b = shape
    layer = BoRALinear(n, m, r, b)
    trainable = sum(p.numel() for p in layer.parameters() if p.requires_grad)
    pc = param_count(m, n, r, b)
    assert trainable == pc.total
    assert pc.lora == layer.lora_A.numel() + layer.lora_B.numel()
    assert pc.sigma == layer.sigma.numel() == b * b * r
    assert pc.total == pc.lora + pc.sigma


def test_param_count_named_case_from_the_issue():
    # 768 x 768, r = 8, b = 16: extra 16² * 8 = 2048 over 8 * 1536 = 12288 -> +16.7 %.
    pc = param_count(768, 768, 8, 16)
    assert (pc.lora, pc.sigma, pc.total) == (12288, 2048, 14336)
    assert pc.overhead == pytest.approx(2048 / 12288)


@pytest.mark.parametrize(
    ("args", "match"),
    [((0, 4, 2, 1), "m must be >= 1, got 0"), ((4, 4, 0, 1), "r must be >= 1, got 0"),
     ((4, 4, 2, 5), r"b must satisfy 1 <= b <= min\(m, n\) = 4"), ((4, 4, 2.5, 1), "r must be an integer")],
)
def test_param_count_rejects_bad_input(args, match):
    with pytest.raises(ValueError, match=match):
        param_count(*args)
