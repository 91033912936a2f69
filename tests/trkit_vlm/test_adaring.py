"""AdaRing: budget, equality with an explicit dense per-layer reconstruction, init, diversity, config."""

import pytest
import torch
from _helpers import register_tiny, tiny_model
from hypothesis import given, settings
from hypothesis import strategies as st

import trkit_vlm as tv
from trkit_vlm.adapters import (
    AdaRingConfig,
    MMAConfig,
    adapter_config_from_dict,
    adapter_parameters,
    adapter_regularization,
    adapters_disabled,
    adaring_param_count,
    count_trainable,
    get_adapters,
)
from trkit_vlm.adapters.adaring.config import PROJECTIONS
from trkit_vlm.models import tower_info, tower_info_from_config

TINY = register_tiny()
MMA_VIT_B16 = 674_560


_model = tiny_model


def _dense(tr):
    """Explicit W_l[i, j] = trace(G1[:, i, :] @ G2[:, j, :] @ G3[:, l, :]), loop over layers."""
    g1, g2, g3 = tr.g_in.detach(), tr.g_out.detach(), tr.g_layer.detach()
    out = []
    for layer in range(g3.shape[1]):
        w = torch.zeros(g1.shape[1], g2.shape[1])
        for i in range(g1.shape[1]):
            # rows of W_l: trace(A_i B_j C) = sum_{a,b,c} A_i[a,b] B_j[b,c] C[c,a]
            w[i] = torch.einsum("ab,jbc,ca->j", g1[:, i, :], g2.permute(1, 0, 2), g3[:, layer, :])
        out.append(w)
    return out


@pytest.fixture(scope="module")
def vit_b16():
    return _model("ViT-B-16")


def test_default_budget_on_vit_b16(vit_b16):
    cfg = AdaRingConfig()
    tv.add_adapters(vit_b16, cfg)
    try:
        n = count_trainable(vit_b16)
    finally:
        tv.remove_adapters(vit_b16)
    assert n == adaring_param_count(cfg, tower_info(vit_b16)) == 57_378
    assert n <= MMA_VIT_B16 // 10  # <= 67,456, biases included


@pytest.mark.parametrize(
    "cfg",
    [
        AdaRingConfig(ranks=[4]),
        AdaRingConfig(ranks=[(2, 3, 4), 1], bias="all"),
        AdaRingConfig(ranks=[{p: (1, 2, 3) for p in PROJECTIONS}], bias="none"),
        AdaRingConfig(ranks=[1, 2], learn_branch_scale=False),
    ],
)
def test_closed_form_count(cfg):
    info = tower_info_from_config("ViT-B-16")
    aset = cfg.build(info)
    assert sum(p.numel() for p in aset.parameters()) == adaring_param_count(cfg, info)


def test_branch_equals_dense_reconstruction():
    torch.manual_seed(0)
    info = {"text": {"width": 12, "depth": 3}, "image": {"width": 20, "depth": 3}}
    cfg = AdaRingConfig(hidden=6, ranks=[2, (1, 3, 2)], bias="all", init="kaiming")
    aset = cfg.build(info)
    with torch.no_grad():
        aset.branch_scale.copy_(torch.tensor([0.7, -1.3]))
        for md in aset.branches:
            for tr in md.values():
                tr.bias.normal_()
    for tower, d in (("text", 12), ("image", 20)):
        s = tower if tower == "text" else "image"
        h = torch.randn(4, 5, d)
        for k in range(aset.n_pairs):
            ref = 0
            for b, md in enumerate(aset.branches):
                w = {p: _dense(md[p])[k] for p in PROJECTIONS}
                bias = {p: md[p].bias[k].detach() for p in PROJECTIONS}
                z = torch.relu(h @ w["down_" + s] + bias["down_" + s])
                z = torch.relu(z @ w["shared"] + bias["shared"])
                ref = ref + aset.branch_scale[b].detach() * (z @ w["up_" + s] + bias["up_" + s])
            torch.testing.assert_close(aset.branch(tower, k, h), ref, rtol=1e-5, atol=1e-5)


def test_model_equals_mma_with_dense_weights():
    """One branch: AdaRing in the model == MMA whose nn.Linear weights are the dense reconstruction."""
    img = torch.randn(2, 3, 32, 32)
    tok = torch.randint(1, 1000, (3, 16))
    ring = tv.add_adapters(_model(), AdaRingConfig(ranks=[3], bias="all", init="kaiming", scale=0.5))
    mma = tv.add_adapters(_model(), MMAConfig(scale=0.5))
    ra, ma = get_adapters(ring), get_adapters(mma)
    md = ra.branches[0]
    with torch.no_grad():
        md["up_text"].bias.normal_()
        for k, layer in enumerate(ra.text_layers):
            for proj, lin in (
                ("down_text", ma.text_adapter[str(layer)].down[0]),
                ("down_image", ma.visual_adapter[str(layer)].down[0]),
                ("shared", ma.shared_adapter[str(layer)][0]),
                ("up_text", ma.text_adapter[str(layer)].up),
                ("up_image", ma.visual_adapter[str(layer)].up),
            ):
                lin.weight.copy_(_dense(md[proj])[k].T)
                lin.bias.copy_(md[proj].bias[k])
        out_r, out_m = ring(img, tok), mma(img, tok)
        with adapters_disabled(ring):
            frozen = ring(img, tok)
    for a, b, f in zip(out_r[:2], out_m[:2], frozen[:2]):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)
        assert (a - f).abs().max() > 1e-4


def test_zero_up_init_starts_frozen_and_trains():
    img = torch.randn(2, 3, 32, 32)
    tok = torch.randint(1, 1000, (3, 16))
    m = tv.add_adapters(_model(), AdaRingConfig())
    aset = get_adapters(m)
    with torch.no_grad():
        with adapters_disabled(m):
            frozen = m(img, tok)[0]
        assert torch.equal(m(img, tok)[0], frozen)
    opt = torch.optim.SGD(adapter_parameters(m), lr=0.5)
    for step in range(2):
        opt.zero_grad()
        f_img, f_txt = m(img, tok)[:2]
        (f_img @ f_txt.T).pow(2).sum().backward()
        if step == 0:  # only the zeroed layer cores of the up projections get gradient at first
            assert aset.branches[0]["up_image"].g_layer.grad.abs().sum() > 0
        opt.step()
    for n, p in aset.named_parameters():
        if "branch_scale" not in n and not n.endswith("bias"):
            assert p.grad is not None and p.grad.abs().sum() > 0, n
    with torch.no_grad():
        assert (m(img, tok)[0] - frozen).abs().max() > 0
    frozen_ids = {id(p) for p in adapter_parameters(m)}
    assert all(p.grad is None for p in m.parameters() if id(p) not in frozen_ids)


def test_diversity_regulariser_matches_hand_computation():
    m = tv.add_adapters(_model(), AdaRingConfig(ranks=[1, 2], init="kaiming", diversity_weight=0.5))
    aset = get_adapters(m)
    m.train()
    h = torch.randn(3, 4, 64)
    outs = []
    for md in aset.branches:
        z = torch.relu(md["down_image"](h, 0))
        z = torch.relu(md["shared"](z, 0))
        outs.append(md["up_image"](z, 0))
    cos = (outs[0] * outs[1]).sum(-1) / (outs[0].norm(dim=-1) * outs[1].norm(dim=-1))
    aset.branch("image", 0, h)
    reg = adapter_regularization(m)
    torch.testing.assert_close(reg, 0.5 * cos.pow(2).mean())
    reg_again = adapter_regularization(m)
    assert reg_again.item() == 0.0  # consumed
    m(torch.randn(2, 3, 32, 32), torch.randint(1, 1000, (2, 16)))
    r = adapter_regularization(m)
    assert r > 0 and r.requires_grad
    m.eval()
    m(torch.randn(2, 3, 32, 32), torch.randint(1, 1000, (2, 16)))
    assert adapter_regularization(m).item() == 0.0


def test_config_errors():
    with pytest.raises(ValueError, match="ranks must be >= 1"):
        AdaRingConfig(ranks=[0])
    with pytest.raises(ValueError, match="three ints"):
        AdaRingConfig(ranks=[(2, 3)])
    with pytest.raises(ValueError, match="missing"):
        AdaRingConfig(ranks=[{"down_text": 2}])
    with pytest.raises(ValueError, match="bias must be one of"):
        AdaRingConfig(bias="some")
    with pytest.raises(ValueError, match="init must be one of"):
        AdaRingConfig(init="ones")
    with pytest.raises(ValueError, match="unknown AdaRingConfig fields"):
        adapter_config_from_dict({"method": "adaring", "rank": 3})
    with pytest.raises(ValueError, match="'method'"):
        adapter_config_from_dict({"hidden": 3})


@settings(max_examples=25, deadline=None)
@given(
    ranks=st.lists(
        st.one_of(st.integers(1, 5), st.tuples(st.integers(1, 4), st.integers(1, 4), st.integers(1, 4))),
        min_size=1,
        max_size=3,
    ),
    bias=st.sampled_from(["hidden", "all", "none"]),
    hidden=st.integers(1, 64),
    scale=st.floats(0, 1),
    layers=st.one_of(st.none(), st.just([2, 4])),
)
def test_config_dict_round_trip(ranks, bias, hidden, scale, layers):
    import json

    cfg = AdaRingConfig(ranks=ranks, bias=bias, hidden=hidden, scale=scale, text_layers=layers, image_layers=layers)
    back = adapter_config_from_dict(json.loads(json.dumps(cfg.to_dict())))
    assert isinstance(back, AdaRingConfig)
    assert all(back.branch_ranks(b) == cfg.branch_ranks(b) for b in range(cfg.n_branches))
    assert (back.bias, back.hidden, back.scale, back.text_layers) == (bias, hidden, scale, layers)


def test_per_pass_dense_weights_match_ring_path():
    """The model path builds dense weights once per tower pass; values and gradients equal the
    layer-by-layer ring contraction (hooks removed by calling the adapter bodies directly)."""
    m = tv.add_adapters(_model(), AdaRingConfig(ranks=[2, (1, 3, 2)], bias="all", init="kaiming", scale=0.5))
    aset = get_adapters(m)
    img = torch.randn(2, 3, 32, 32)
    out = m.encode_image(img)
    out.sum().backward()
    g_fast = [None if p.grad is None else p.grad.clone() for p in aset.parameters()]
    assert sum(g is not None for g in g_fast) >= 7  # image projections of both branches + scales
    assert aset._dense == {}  # dropped after the pass
    aset.zero_grad()
    aset.tower_pre_forward = lambda tower: None  # force the ring contraction path
    out2 = m.encode_image(img)
    out2.sum().backward()
    torch.testing.assert_close(out, out2, rtol=1e-5, atol=1e-6)
    for a, b in zip(g_fast, [p.grad for p in aset.parameters()]):
        assert (a is None) == (b is None)
        if a is not None:
            torch.testing.assert_close(a, b, rtol=1e-3, atol=1e-5)
