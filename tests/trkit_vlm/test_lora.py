"""LoRA (trkit_vlm.adapters.lora): the update equals a dense W + (alpha/r) B A computed by torch's own
attention, it starts at the frozen model, only A and B learn, and its parameter count has a closed form."""

from __future__ import annotations

import pytest
import torch
from _helpers import tiny_model
from torch import nn

import trkit_vlm as tv
from trkit_vlm.adapters import LoRAConfig, adapter_parameters, count_trainable, get_adapters
from trkit_vlm.adapters.lora import lora_param_count
from trkit_vlm.adapters.lora.layer import LowRankUpdate, attention_forward
from trkit_vlm.models import tower_info


def _dense_reference(attn: nn.MultiheadAttention, updates: dict[str, LowRankUpdate]) -> nn.MultiheadAttention:
    """A copy of ``attn`` whose weights are W + scaling B A: the update written as dense matrices."""
    ref = nn.MultiheadAttention(attn.embed_dim, attn.num_heads, batch_first=attn.batch_first)
    ref.load_state_dict(attn.state_dict())
    d = attn.embed_dim
    with torch.no_grad():
        for i, t in enumerate("qkv"):
            if t in updates:
                ref.in_proj_weight[i * d : (i + 1) * d] += updates[t].delta_weight()
        if "o" in updates:
            ref.out_proj.weight += updates["o"].delta_weight()
    return ref.eval()


@pytest.mark.parametrize("batch_first", [True, False])
@pytest.mark.parametrize("mask", [None, "float", "bool"])
@pytest.mark.parametrize("targets", ["qkvo", "qv", "o"])
def test_update_equals_dense_weights(batch_first, mask, targets):
    torch.manual_seed(0)
    d, heads, n, length = 24, 3, 2, 5
    attn = nn.MultiheadAttention(d, heads, batch_first=batch_first).eval()
    updates = {t: LowRankUpdate(d, d, rank=2, scaling=0.5, dropout=0.0) for t in targets}
    for u in updates.values():
        nn.init.normal_(u.B)  # B starts at zero: make the update visible
    x = torch.randn(n, length, d) if batch_first else torch.randn(length, n, d)
    m = None
    if mask == "float":
        m = torch.full((length, length), float("-inf")).triu(1)
    elif mask == "bool":
        m = torch.ones(length, length, dtype=torch.bool).triu(1)
    want = _dense_reference(attn, updates)(x, x, x, need_weights=False, attn_mask=m)[0]
    got = attention_forward(attn, x, m, updates)
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)
    # Without updates it is the module's own attention.
    torch.testing.assert_close(attention_forward(attn, x, m), attn(x, x, x, need_weights=False, attn_mask=m)[0])


def test_starts_at_the_frozen_model_and_only_a_b_learn():
    frozen = tiny_model().requires_grad_(False).eval()
    model = tv.add_adapters(tiny_model(), LoRAConfig(rank=2, targets=["q", "k", "v", "o"])).eval()
    g = torch.Generator().manual_seed(1)
    images, text = torch.randn(3, 3, 32, 32, generator=g), torch.randint(1, 1000, (4, 16), generator=g)
    with torch.no_grad():
        for a, b in zip(frozen(images, text)[:2], model(images, text)[:2]):
            torch.testing.assert_close(a, b, atol=1e-6, rtol=1e-5)
    model.train()
    img, txt = model(images, text)[:2]
    (img @ txt.T).pow(2).sum().backward()
    aset = get_adapters(model)
    for upd in aset.updates.values():
        for u in upd.values():
            assert u.B.grad.abs().sum() > 0  # B is where learning starts ...
            assert u.A.grad.abs().sum() == 0  # ... A gets no gradient while B is zero
    frozen_params = [p for n, p in model.named_parameters() if not n.startswith("trkit_adapters.")]
    assert all(p.grad is None and not p.requires_grad for p in frozen_params)


def test_param_count_placement_and_errors():
    model = tiny_model()
    info = tower_info(model)
    cfg = LoRAConfig(rank=3, targets=["q", "v"], towers=["image"], image_layers="2-4", text_layers="2-4")
    tv.add_adapters(model, cfg)
    assert count_trainable(model) == lora_param_count(cfg, info) == 3 * 2 * info["image"]["width"] * 2 * 3
    assert sum(p.numel() for p in adapter_parameters(model)) == count_trainable(model)
    assert get_adapters(model).adapted_layers("image") == [2, 3, 4] and get_adapters(model).adapted_layers("text") == []
    # The frozen weights are used in place: the patched modules still hold the very same parameters.
    attn = model.visual.transformer.resblocks[1].attn
    assert "forward" in attn.__dict__ and attn.in_proj_weight.data_ptr() == attn.in_proj_weight.data_ptr()
    tv.remove_adapters(model)
    assert "forward" not in attn.__dict__
    for bad, match in (
        ({"rank": 0}, "rank"),
        ({"dropout": 1.0}, "dropout"),
        ({"targets": ["q", "x"]}, "targets"),
        ({"targets": []}, "targets"),
        ({"towers": ["audio"]}, "towers"),
    ):
        with pytest.raises(ValueError, match=match):
            LoRAConfig(**bad)


def test_dropout_acts_on_the_update_only_in_training():
    torch.manual_seed(0)
    u = LowRankUpdate(8, 8, rank=2, scaling=1.0, dropout=0.5)
    nn.init.normal_(u.B)
    x = torch.randn(4, 8)
    u.eval()
    torch.testing.assert_close(u(x), x @ u.delta_weight().T)
    u.train()
    assert not torch.allclose(u(x), x @ u.delta_weight().T)
