"""Winograd F(4x4, 3x3) convolutions: the same outputs as the direct convolution within the
rounding the transforms add, the direct path wherever Winograd must not run, and a whole U-Net."""

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from glide.models import build_preset, winograd
from glide.models.winograd import WinogradConv2d, transform_weight, use_winograd, winograd_conv3x3


def _conv(c_in=5, c_out=7, seed=0):
    torch.manual_seed(seed)
    return nn.Conv2d(c_in, c_out, 3, padding=1)


@pytest.mark.parametrize("shape", [(2, 5, 8, 8), (1, 5, 9, 13), (3, 5, 16, 11)])
@pytest.mark.parametrize("bias", [True, False])
def test_matches_the_direct_convolution_on_any_size(shape, bias):
    conv = _conv()
    x = torch.randn(*shape, generator=torch.Generator().manual_seed(1))
    b = conv.bias if bias else None
    reference = F.conv2d(x.double(), conv.weight.double(), None if b is None else b.double(), padding=1)
    out = winograd_conv3x3(x, transform_weight(conv.weight), b)
    assert out.shape == reference.shape
    direct_error = (F.conv2d(x, conv.weight, b, padding=1).double() - reference).abs().max()
    error = (out.double() - reference).abs().max()
    assert error < 1e-4 * reference.abs().max()
    assert error > direct_error / 100  # it is a different algorithm, not the direct one in disguise


def test_bands_of_tile_rows_give_the_same_result(monkeypatch):
    conv = _conv(8, 8)
    x = torch.randn(2, 8, 24, 20)
    whole = winograd_conv3x3(x, transform_weight(conv.weight), conv.bias)
    monkeypatch.setattr(winograd, "_BAND_ELEMENTS", 1)  # one row of tiles at a time
    banded = winograd_conv3x3(x, transform_weight(conv.weight), conv.bias)
    assert torch.equal(whole, banded)


def test_layer_uses_winograd_only_for_fp32_cpu_inference_on_8px_and_up():
    conv = _conv()
    direct = nn.Conv2d(5, 7, 3, padding=1)
    direct.load_state_dict(conv.state_dict())
    assert use_winograd(conv) == 1 and isinstance(conv, WinogradConv2d)
    x = torch.randn(2, 5, 16, 16)
    with torch.no_grad():
        fast, exact = conv(x), direct(x)
        assert not torch.equal(fast, exact) and torch.allclose(fast, exact, atol=1e-5)
        small = torch.randn(2, 5, 15, 15)  # under MIN_SIZE (16 px) the direct path runs
        assert torch.equal(conv(small), direct(small))
        half = x.bfloat16()
        conv.bfloat16(), direct.bfloat16()
        assert torch.equal(conv(half), direct(half))
        conv.float(), direct.float()
    out = conv(x)  # training: gradients flow through the direct convolution
    assert torch.equal(out, direct(x))
    out.sum().backward()
    assert conv.weight.grad is not None


def test_new_weights_are_transformed_again():
    conv = _conv()
    use_winograd(conv)
    x = torch.randn(1, 5, 16, 16)
    with torch.no_grad():
        before = conv(x)
        conv.weight.mul_(2)  # in place, as load_state_dict does
        after = conv(x)
    assert torch.allclose(after - conv.bias[:, None, None], 2 * (before - conv.bias[:, None, None]), atol=1e-5)


def test_a_unet_keeps_its_weights_and_its_outputs_within_1e4():
    torch.manual_seed(0)
    model = build_preset("tiny-base").eval()
    for module in model.modules():  # zero-initialised layers would hide half the convolutions
        if isinstance(module, nn.Conv2d) and not module.weight.any():
            module.reset_parameters()
    tokens, mask = model.tokenize(["a red circle", ""])
    size = model.config.image_size
    x, t = torch.randn(2, 3, size, size), torch.tensor([500, 20])
    keys = list(model.state_dict())
    with torch.no_grad():
        reference = model(x, t, tokens, mask)
        changed = use_winograd(model)
        out = model(x, t, tokens, mask)
    assert changed >= 5 and list(model.state_dict()) == keys
    assert (out - reference).abs().max() < 1e-4
    assert not torch.equal(out, reference)
