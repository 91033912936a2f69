"""The MMA baseline: placement, exact parameter counts, the block formula, the gradient-scaling rule.

What every method must do (freezing, removal, disabling, copies, files): test_adapter_contract.py."""

import pytest
import torch
from _helpers import register_tiny, tiny_model
from torch import nn

import trkit_vlm as tv
from trkit_vlm.adapters import (
    MMAConfig,
    adapters_disabled,
    count_trainable,
    get_adapters,
    grad_scale,
    mma_param_count,
)
from trkit_vlm.adapters.config import default_layers
from trkit_vlm.models import tower_info_from_config

TINY = register_tiny()


_model = tiny_model


@pytest.fixture(scope="module")
def vit_b16():
    return _model("ViT-B-16")  # random weights; counting only, no forward passes


@pytest.fixture
def batch():
    torch.manual_seed(1)
    img = torch.randn(2, 3, 32, 32)
    tok = torch.randint(1, 1000, (3, 16))
    return img, tok


def test_vit_b16_count_is_mma_papers(vit_b16):
    tv.add_adapters(vit_b16, MMAConfig())
    try:
        a = get_adapters(vit_b16)
        assert a.text_layers == a.image_layers == list(range(5, 13))
        assert count_trainable(vit_b16) == 674_560
        assert mma_param_count(512, 768, 32, 8) == 674_560
        assert sorted(a.state_dict())[:3] == [
            "shared_adapter.10.0.bias",
            "shared_adapter.10.0.weight",
            "shared_adapter.11.0.bias",
        ]
        assert "text_adapter.5.down.0.weight" in a.state_dict()
        assert a.state_dict()["visual_adapter.12.up.weight"].shape == (768, 32)
    finally:
        tv.remove_adapters(vit_b16)
    assert count_trainable(vit_b16) == sum(p.numel() for p in vit_b16.parameters())


@pytest.mark.parametrize("name", ["ViT-B-32", "ViT-L-14", TINY])
def test_count_closed_form_other_sizes(name):
    info = tower_info_from_config(name)
    aset = MMAConfig().build(info)  # adapters alone: no backbone needed to count
    n = len(default_layers(info["text"]["depth"], info["image"]["depth"])[0])
    assert sum(p.numel() for p in aset.parameters()) == mma_param_count(
        info["text"]["width"], info["image"]["width"], 32, n
    )


def test_default_placement_scales_with_depth():
    assert default_layers(12, 12) == (list(range(5, 13)), list(range(5, 13)))
    assert default_layers(12, 24) == (list(range(5, 13)), list(range(17, 25)))
    assert default_layers(4, 4) == ([2, 3, 4], [2, 3, 4])


def test_scale_zero_gives_frozen_logits(batch):
    img, tok = batch
    m = _model()
    tv.add_adapters(m, MMAConfig(scale=0.0))
    with torch.no_grad():
        a = m(img, tok)
        with adapters_disabled(m):
            f = m(img, tok)
    for x, y in zip(a[:2], f[:2]):
        assert torch.equal(x, y)


def test_hook_equals_explicit_block_formula():
    """x = x + attn(ln_1(x)); x = x + mlp(ln_2(x)) + up(shared(down(ln_1(x_in)))) * scale, by hand."""
    m = _model()
    tv.add_adapters(m, MMAConfig(scale=0.3))
    a = get_adapters(m)
    blk = m.visual.transformer.resblocks[2]  # layer 3 (1-based) is adapted
    x = torch.randn(2, 5, 64)
    h = blk.ln_1(x)
    attn = blk.attn(h, h, h, need_weights=False)[0]
    x1 = x + attn
    ad = a.visual_adapter["3"]
    y = ad.up(a.shared_adapter["3"](ad.down(h))) * 0.3
    ref = x1 + blk.mlp(blk.ln_2(x1)) + y
    torch.testing.assert_close(blk(x), ref)


def test_gradient_scaling_rule_hand_computed():
    """One layer, hidden 1, identity ln_1: y = s * w_u * relu(w_s * relu(w_d . x)).
    Rule: dL/dw = (1/s) * true gradient for adapter weights; dL/dx = true gradient."""
    info = {"text": {"width": 2, "depth": 1}, "image": {"width": 2, "depth": 1}}
    s = 0.01
    aset = MMAConfig(hidden=1, scale=s).build(info)
    ad, sh = aset.visual_adapter["1"], aset.shared_adapter["1"]
    with torch.no_grad():
        ad.down[0].weight.copy_(torch.tensor([[0.5, -0.25]]))
        sh[0].weight.fill_(2.0)
        ad.up.weight.copy_(torch.tensor([[1.0], [-3.0]]))
    x = torch.tensor([[2.0, 1.0]], requires_grad=True)
    g = torch.tensor([[0.7, 0.2]])
    y = aset.adapter_output("image", 0, x, nn.Identity())
    d = 0.5 * 2.0 - 0.25 * 1.0  # 0.75
    u = 2.0 * d  # 1.5 (shared output)
    torch.testing.assert_close(y, torch.tensor([[s * 1.0 * u, s * -3.0 * u]]))
    (y * g).sum().backward()
    gu = 0.7 * 1.0 + 0.2 * -3.0  # g . w_u = 0.1
    torch.testing.assert_close(ad.up.weight.grad, torch.tensor([[0.7 * u], [0.2 * u]]))  # not * s
    torch.testing.assert_close(sh[0].weight.grad, torch.tensor([[gu * d]]))
    torch.testing.assert_close(ad.down[0].weight.grad, torch.tensor([[gu * 2.0 * 2.0, gu * 2.0 * 1.0]]))
    torch.testing.assert_close(x.grad, s * gu * 2.0 * torch.tensor([[0.5, -0.25]]))  # true gradient


def test_input_dropout_masks_the_adapter_input_only_in_training():
    """dropout p: y = branch(mask * h / (1 - p)) * s in training, with torch's mask for that seed; no mask in eval."""
    info = {"text": {"width": 4, "depth": 1}, "image": {"width": 4, "depth": 1}}
    aset = MMAConfig(hidden=3, scale=0.5, dropout=0.5).build(info)
    plain = MMAConfig(hidden=3, scale=0.5).build(info)
    plain.load_state_dict(aset.state_dict())  # dropout adds no parameters: the same weights load
    h = torch.randn(6, 4)
    aset.eval()
    torch.testing.assert_close(aset.adapter_output("image", 0, h, nn.Identity()), plain.branch("image", 0, h) * 0.5)
    aset.train()
    torch.manual_seed(3)
    y = aset.adapter_output("image", 0, h, nn.Identity())
    torch.manual_seed(3)
    mask = torch.nn.functional.dropout(torch.ones_like(h), 0.5)  # the same draw: entries 0 or 1/(1-p)
    assert 0 < int((mask == 0).sum()) < h.numel()
    torch.testing.assert_close(y, plain.branch("image", 0, h * mask) * 0.5)
    with pytest.raises(ValueError, match="dropout must be in"):
        MMAConfig(dropout=1.0)


def test_grad_scale_function():
    x = torch.tensor([1.0, -2.0], requires_grad=True)
    y = grad_scale(x, 0.25)
    assert torch.equal(y, x.detach())
    (3 * y).sum().backward()
    torch.testing.assert_close(x.grad, torch.tensor([0.75, 0.75]))


def test_bad_placement_and_misuse():
    m = _model()
    with pytest.raises(ValueError, match="image_layers 3..9 is outside the image tower's 4 layers"):
        tv.add_adapters(m, MMAConfig(image_layers=(3, 9), text_layers=(1, 4)))
    with pytest.raises(ValueError, match="same length"):
        tv.add_adapters(m, MMAConfig(text_layers=(1, 4), image_layers=(2, 4)))
    with pytest.raises(ValueError, match="START-END"):
        MMAConfig(text_layers="five")
    assert get_adapters(m) is None and count_trainable(m) > 0  # failed calls left the model untouched
    with pytest.raises(ValueError, match="or 'all'"):
        MMAConfig(text_layers="every")
    tv.add_adapters(m, MMAConfig(text_layers="1-2", image_layers="3..4"))
    assert get_adapters(m).image_layers == [3, 4]
    every = tv.add_adapters(_model(), MMAConfig(text_layers="all", image_layers=" All "))
    depth = len(every.visual.transformer.resblocks)
    assert get_adapters(every).text_layers == get_adapters(every).image_layers == list(range(1, depth + 1))
    assert get_adapters(every).config.image_layers == "all"  # kept as spelled: any depth
    with pytest.raises(ValueError, match="already has adapters"):
        tv.add_adapters(m, MMAConfig())
    with pytest.raises(TypeError, match="must be an adapter config .*MMAConfig .mma.*got dict"):
        tv.add_adapters(_model(), {"method": "mma"})
    with pytest.raises(TypeError, match="open_clip"):
        tv.add_adapters(nn.Linear(3, 3), MMAConfig())
