"""The linear probe (trkit_vlm.adapters.linear_probe): zero-shot at the start, the closed form of its
image features, text untouched, and a training run that caches every frozen block."""

from __future__ import annotations

import warnings

import numpy as np
import torch
import torch.nn.functional as F
from _helpers import tiny_model

import trkit_vlm as tv
from trkit_vlm.adapters import LinearProbeConfig, count_trainable, get_adapters, linear_probe_param_count
from trkit_vlm.models import tower_info


def _batch():
    g = torch.Generator().manual_seed(2)
    return torch.randn(3, 3, 32, 32, generator=g), torch.randint(1, 1000, (4, 16), generator=g)


def test_zero_shot_at_the_start_and_text_untouched():
    frozen = tiny_model().requires_grad_(False).eval()
    model = tv.add_adapters(tiny_model(), LinearProbeConfig()).eval()
    images, text = _batch()
    with torch.no_grad():
        a_img, a_txt = frozen(images, text)[:2]
        b_img, b_txt = model(images, text)[:2]
        torch.testing.assert_close(b_img, a_img)
        get_adapters(model).map.weight.normal_()
        c_img, c_txt = model(images, text)[:2]
    torch.testing.assert_close(c_txt, a_txt)  # the text side never changes
    assert not torch.allclose(c_img, a_img)


def test_features_follow_the_closed_form():
    """image features = normalize((z + W z + b) P), z = ln_post of the frozen class token, P the projection."""
    frozen = tiny_model().requires_grad_(False).eval()
    model = tv.add_adapters(tiny_model(), LinearProbeConfig()).eval()
    probe = get_adapters(model).map
    g = torch.Generator().manual_seed(5)
    with torch.no_grad():
        probe.weight.copy_(0.3 * torch.randn(probe.weight.shape, generator=g))
        probe.bias.copy_(0.3 * torch.randn(probe.bias.shape, generator=g))
    images, _ = _batch()
    seen = {}
    handle = frozen.visual.ln_post.register_forward_hook(lambda m, a, out: seen.setdefault("z", out))
    with torch.no_grad():
        frozen.encode_image(images)
        handle.remove()
        z = seen["z"][:, 0]  # the class token (open_clip's default 'tok' pooling, ln_post before pooling)
        want = F.normalize((z + z @ probe.weight.T + probe.bias) @ frozen.visual.proj, dim=-1)
        got = model.encode_image(images, normalize=True)
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)
    assert count_trainable(model) == linear_probe_param_count(tower_info(model)) == 64 * 64 + 64


def test_training_caches_every_frozen_block(tmp_path):
    from _helpers import TINY_SMALL_CLIP_CONFIG

    from trkit_vlm.data.fashion_mnist import fashion_mnist_data
    from trkit_vlm.data.tasks import apply_task
    from trkit_vlm.models import register_model_config
    from trkit_vlm.training.config import RunConfig
    from trkit_vlm.training.train import train

    rng = np.random.default_rng(0)
    arrays = (
        rng.integers(0, 256, (100, 28, 28), dtype=np.uint8),
        np.tile(np.arange(10), 10),
        rng.integers(0, 256, (40, 28, 28), dtype=np.uint8),
        np.tile(np.arange(10), 4),
    )
    name = "trkit-test-tiny-28-probe"
    register_model_config(name, TINY_SMALL_CLIP_CONFIG)
    cfg = RunConfig(model=name, method="linear_probe", output_dir=str(tmp_path), seed=1)
    cfg.data.dataset, cfg.data.shots, cfg.data.augment = "fashion_mnist", 2, False
    cfg.data.task = {"shift": "noise", "params": {"sigma": 0.2}}
    cfg.optim.epochs, cfg.optim.batch_size, cfg.optim.lr = 2, 4, 0.1
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # random weights
        m = train(cfg, data=apply_task(fashion_mnist_data(arrays), cfg.data.task), progress=False)
    depth = TINY_SMALL_CLIP_CONFIG["vision_cfg"]["layers"]
    assert m["prefix_cache"]["image"] and m["prefix_cache"]["image_prefix_layers"] == depth
    assert m["n_trainable"] == 32 * 32 + 32 and 0 <= m["hm"] <= 100
