"""The frozen-prefix cache: a cached training run equals an uncached one; the disk store is keyed by
weights and images; prompts cut after the EOT are exact. (The split forward equals open_clip's own, in
values and gradients, for every adapter method: test_adapter_contract.py.)"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from _helpers import make_coop_dataset, register_tiny, tiny_config
from safetensors.torch import load_file

from trkit_vlm.adapters import AdaRingConfig, MMAConfig, adapter_parameters, add_adapters, get_adapters
from trkit_vlm.models import load_clip
from trkit_vlm.training import prefix_cache as pc
from trkit_vlm.training.train import train

pytestmark = pytest.mark.filterwarnings("ignore:.*RANDOM weights")


def _adapted(config, dtype=torch.float32):
    torch.manual_seed(0)
    bundle = load_clip(register_tiny())
    model = add_adapters(bundle.model, config).to(dtype)
    with torch.no_grad():  # non-zero everywhere so the adapters change the output
        for p in adapter_parameters(model):
            p.add_(0.05 * torch.randn_like(p))
    return bundle, model


def test_no_adapters_means_whole_tower_is_prefix():
    bundle = load_clip(register_tiny())
    depth = len(bundle.model.visual.transformer.resblocks)
    assert pc.first_adapted_layer(bundle.model, "image") == depth + 1
    x = torch.randn(2, 3, 32, 32)
    torch.testing.assert_close(
        pc.image_suffix(bundle.model, pc.image_prefix(bundle.model, x, depth), depth),
        bundle.model.encode_image(x, normalize=True),
        rtol=0,
        atol=1e-6,
    )


@pytest.mark.parametrize("method", ["mma", "adaring"])
def test_cached_training_equals_uncached(tmp_path, method):
    root = make_coop_dataset(tmp_path / "d")
    over = {"optim.epochs": 2, "loss.lambda_image": 1.0, "loss.lambda_text": 1.0}
    if method == "adaring":  # adapters from layer 2 on (a 1-layer prefix), kaiming init so they act at once
        over["adapter"] = {"image_layers": [2, 3], "text_layers": [2, 3], "init": "kaiming", "scale": 0.1}
    on = train(tiny_config(tmp_path / "on", root, method, prefix_cache="memory", **over), progress=False)
    off = train(tiny_config(tmp_path / "off", root, method, prefix_cache="off", **over), progress=False)
    assert on["prefix_cache"]["image"] and on["prefix_cache"]["text"] and not off["prefix_cache"]["image"]
    # "a photo of a red thing." is 8 tokens + SOT/EOT: both runs cut the text pass to 9 of the 16 positions
    # (exactness of the cut: test_trimmed_prompts_equal_full_context).
    assert on["prefix_cache"]["text_context"] == off["prefix_cache"]["text_context"] == 9
    a = load_file(Path(on["run_dir"]) / "adapters.safetensors")
    b = load_file(Path(off["run_dir"]) / "adapters.safetensors")
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=1e-4, atol=1e-6)
    assert on["all"] == off["all"] and on["final_train_loss"] == pytest.approx(off["final_train_loss"], rel=1e-5)


def test_prefix_cache_needs_fixed_views(tmp_path):
    root = make_coop_dataset(tmp_path / "d", n_train=2, n_val=1, n_test=1)
    with pytest.raises(ValueError, match="fixed image views"):
        train(tiny_config(tmp_path, root, prefix_cache="memory", **{"data.augment": True}), progress=False)
    m = train(
        tiny_config(tmp_path, root, prefix_cache="auto", **{"data.augment": True, "data.cached_views": 2}),
        progress=False,
    )
    assert m["prefix_cache"]["image"]


def test_disk_store_keyed_by_weights(tmp_path):
    root = make_coop_dataset(tmp_path / "d", n_train=2, n_val=1, n_test=1)
    from trkit_vlm.data import load_dataset
    from trkit_vlm.data.transforms import build_transforms, load_image

    recs = load_dataset("coop", root).train
    _, model = _adapted(MMAConfig(hidden=8))
    tf = build_transforms(model, augment=False)[1]
    view = lambda i, v: tf(load_image(recs[i][0]))  # noqa: E731
    a = pc.build_image_cache(model, recs, view, 1, 1, frozen_features=True, disk_dir=str(tmp_path / "c"))
    files = list((tmp_path / "c").glob("prefix_*.pt"))
    assert len(files) == 1 and a["tokens"].shape == (8, 1, 17, 64) and a["frozen"].shape == (8, 1, 32)
    b = pc.build_image_cache(
        model,
        recs,
        lambda i, v: 1 / 0,
        1,
        1,
        frozen_features=True,  # from disk
        disk_dir=str(tmp_path / "c"),
    )
    torch.testing.assert_close(a["tokens"], b["tokens"], rtol=0, atol=0)
    with torch.no_grad():
        model.visual.conv1.weight.mul_(1.01)
    pc.build_image_cache(model, recs, view, 1, 1, frozen_features=True, disk_dir=str(tmp_path / "c"))
    assert len(list((tmp_path / "c").glob("prefix_*.pt"))) == 2


def test_split_forward_builds_adaring_weights_once_per_pass(monkeypatch):
    # The split forward calls blocks one by one, past the tower hooks; it must still announce the pass,
    # or AdaRing contracts its cores again in every layer (the slow path).
    from trkit.nn import CrossLayerTR

    bundle, model = _adapted(AdaRingConfig(image_layers=(2, 3), text_layers=(2, 3), scale=0.5))
    calls = {"weights": 0, "per_layer": 0}
    real_weights, real_layer = CrossLayerTR.weights, CrossLayerTR._contract_layer

    def weights(self):
        calls["weights"] += 1
        return real_weights(self)

    def per_layer(self, *a, **k):
        calls["per_layer"] += 1
        return real_layer(self, *a, **k)

    monkeypatch.setattr(CrossLayerTR, "weights", weights)
    monkeypatch.setattr(CrossLayerTR, "_contract_layer", per_layer)
    x = torch.randn(3, 3, 32, 32)
    tokens = pc.image_prefix(model, x, 1)
    got = pc.image_suffix(model, tokens, 1)
    n_branches = len(get_adapters(model).branches)
    assert calls == {"weights": 3 * n_branches, "per_layer": 0}  # down, shared, up: once each per branch
    assert get_adapters(model)._dense == {}  # the pass state is dropped afterwards
    # Same operations in the same order as open_clip's own pass: equal to the last bit.
    torch.testing.assert_close(got, model.encode_image(x, normalize=True), rtol=0, atol=0)
    ids = bundle.tokenizer(["a photo of a red thing."])
    calls["weights"] = 0
    pc.text_suffix(model, pc.text_prefix(model, ids, 1), ids, 1)
    assert calls == {"weights": 3 * n_branches, "per_layer": 0}


@pytest.mark.parametrize(
    "config",
    [
        MMAConfig(hidden=8, image_layers=(2, 3), text_layers=(2, 3)),
        AdaRingConfig(image_layers=(1, 3), text_layers=(1, 3), scale=0.5),
    ],
)
def test_trimmed_prompts_equal_full_context(config):
    # Cutting the padding after the longest prompt's EOT token changes no value and no gradient
    # (causal mask); float64 so that only a real difference could show.
    bundle, model = _adapted(config, torch.float64)
    ids = bundle.tokenizer(["a photo of a red thing.", "a cat.", "a photo of a very small grey thing."])
    n = pc.pooled_length(model, ids)
    eot = ids.argmax(dim=-1)
    assert n == int(eot.max()) + 1 < ids.shape[1]
    assert (ids[:, n:] == 0).all() and not (ids[:, :n] == 0).all(dim=0).any()
    nt = pc.first_adapted_layer(model, "text") - 1
    params = adapter_parameters(model)
    ref = model.encode_text(ids, normalize=True)
    g_ref = torch.autograd.grad((ref * torch.arange(ref.shape[1])).sum(), params, allow_unused=True)
    with torch.no_grad():
        states = pc.text_prefix(model, ids[:, :n], nt)
    assert states.shape[:2] == (3, n)
    got = pc.text_suffix(model, states, ids[:, :n], nt)
    torch.testing.assert_close(got, ref, rtol=0, atol=1e-12)
    g_got = torch.autograd.grad((got * torch.arange(got.shape[1])).sum(), params, allow_unused=True)
    for a, b in zip(g_ref, g_got):
        assert (a is None) == (b is None)
        if a is not None:
            torch.testing.assert_close(b, a, rtol=1e-9, atol=1e-12)


def test_pooled_length_keeps_full_context_without_causal_mask():
    bundle = load_clip(register_tiny())
    ids = bundle.tokenizer(["a cat."])
    assert pc.pooled_length(bundle.model, ids) == int(ids.argmax()) + 1
    attn_mask = bundle.model.attn_mask
    bundle.model.attn_mask = None  # a bidirectional text tower: every token can matter
    try:
        assert pc.pooled_length(bundle.model, ids) == ids.shape[1]
    finally:
        bundle.model.attn_mask = attn_mask


def _trainer(tmp_path, root, cache: str):
    from trkit_vlm.training.distributed import init_distributed
    from trkit_vlm.training.loop import Trainer
    from trkit_vlm.training.seeding import seed_everything
    from trkit_vlm.training.train import build_model, prepare_data

    register_tiny()
    cfg = tiny_config(
        tmp_path / cache,
        root,
        prefix_cache=cache,
        **{
            "loss.lambda_image": 1.0,
            "loss.lambda_text": 1.0,
            "adapter": {"hidden": 8, "image_layers": [2, 3], "text_layers": [2, 3]},
        },
    ).validate()
    seed_everything(cfg.seed)
    info = init_distributed("cpu")
    fs, data = prepare_data(cfg, None, info)
    bundle, model, _ = build_model(cfg, None, info.device)
    cfg.run_dir().mkdir(parents=True, exist_ok=True)
    return Trainer(cfg, bundle, model, data, fs, info, cfg.run_dir(), progress=False)


@pytest.mark.parametrize("cache", ["memory", "off"])
def test_no_frozen_work_left_per_step(tmp_path, cache):
    # With the cache, a step runs only the adapted blocks, once per tower: no prefix block, no embedding,
    # no frozen pass for the consistency loss. Without it, all of that runs (which shows the count works).
    from trkit_vlm.models import clip_towers

    root = make_coop_dataset(tmp_path / "d")
    tr = _trainer(tmp_path, root, cache)
    calls: dict = {}

    def counter(name):
        def hook(*_):
            calls[name] = calls.get(name, 0) + 1

        return hook

    towers = clip_towers(tr.model)
    for tower, t in towers.items():
        for i, blk in enumerate(t.resblocks):
            blk.register_forward_hook(counter(f"{tower}{i + 1}"))
    tr.model.visual.conv1.register_forward_hook(counter("patch_embed"))
    tr.model.token_embedding.register_forward_hook(counter("token_embed"))
    tr.train_epoch(0)
    steps = tr.micro_per_epoch
    assert steps == 2  # base classes (2) x 2 shots, batch 2
    if cache == "memory":  # adapters on layers 2-3 of 4: layer 4 runs too, as part of the adapted suffix
        assert calls == {**{f"{t}{i}": steps for t in ("image", "text") for i in (2, 3, 4)}}
    else:  # frozen image pass + adapted pass per step; the whole text tower every step
        assert calls["patch_embed"] == 2 * steps and calls["image1"] == calls["image2"] == 2 * steps
        assert calls["text1"] == calls["text3"] == calls["token_embed"] == steps
