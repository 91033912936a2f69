"""The Fashion-MNIST reader, the small-CLIP cache and a tiny pre-training run."""

from __future__ import annotations

import dataclasses
import struct

import numpy as np
import pytest
import torch
from _helpers import TINY_SMALL_CLIP_CONFIG as TINY_CONFIG
from _helpers import fake_fashion_mnist

from trkit_vlm.data.fashion_mnist import FASHION_MNIST_CLASSES, load_fashion_mnist, read_idx
from trkit_vlm.data.tasks import split_train_val
from trkit_vlm.demo import small_clip as sc


def test_reader_matches_hand_written_idx(tmp_path):
    xtr, ytr, xte, yte = fake_fashion_mnist(tmp_path)
    a, b, c, d = load_fashion_mnist(tmp_path)
    np.testing.assert_array_equal(a, xtr)
    np.testing.assert_array_equal(b, ytr.astype(np.int64))
    np.testing.assert_array_equal(c, xte)
    np.testing.assert_array_equal(d, yte.astype(np.int64))
    assert a.dtype == np.uint8 and b.dtype == np.int64 and a.shape == (40, 28, 28)
    assert len(FASHION_MNIST_CLASSES) == 10


def test_reader_env_variable(tmp_path, monkeypatch):
    fake_fashion_mnist(tmp_path)
    monkeypatch.setenv("TRKIT_FASHION_MNIST", str(tmp_path))
    assert load_fashion_mnist()[0].shape == (40, 28, 28)


def test_reader_rejects_bad_files(tmp_path):
    bad = tmp_path / "x-ubyte"
    bad.write_bytes(b"\x01\x02\x08\x01" + struct.pack(">I", 3) + b"abc")
    with pytest.raises(ValueError, match="magic"):
        read_idx(bad)
    short = tmp_path / "y-ubyte"
    short.write_bytes(bytes([0, 0, 8, 1]) + struct.pack(">I", 5) + b"abc")
    with pytest.raises(ValueError, match="declares shape"):
        read_idx(short)


def test_missing_data_says_how_to_install(tmp_path):
    with pytest.raises(FileNotFoundError, match="apt-get install dataset-fashion-mnist"):
        load_fashion_mnist(tmp_path / "nowhere")


def test_images_to_tensor_matches_open_clip_preprocess():
    from PIL import Image

    bundle_model = sc.create_small_clip(TINY_CONFIG)
    import open_clip

    _, _, pre_val = open_clip.create_model_and_transforms(sc._model_name_for(TINY_CONFIG))
    imgs = np.random.default_rng(1).integers(0, 256, (3, 28, 28), dtype=np.uint8)
    ref = torch.stack([pre_val(Image.fromarray(im)) for im in imgs])
    torch.testing.assert_close(sc.images_to_tensor(imgs), ref, atol=1e-5, rtol=0)
    assert bundle_model is not None
    with pytest.raises(ValueError, match="uint8"):
        sc.images_to_tensor(imgs.astype(np.float32))


def test_multi_positive_loss_matches_explicit_formula():
    torch.manual_seed(0)
    img = torch.nn.functional.normalize(torch.randn(6, 4), dim=-1)
    txt = torch.nn.functional.normalize(torch.randn(5, 4), dim=-1)
    yi, yt = torch.tensor([0, 1, 1, 2, 0, 2]), torch.tensor([0, 1, 2, 0, 1])
    got = sc.multi_positive_clip_loss(img, txt, yi, yt, torch.tensor(3.0))
    logits = 3.0 * img @ txt.t()
    i2t = [-np.mean([torch.log_softmax(logits[i], 0)[u].item() for u in range(5) if yt[u] == yi[i]]) for i in range(6)]
    t2i = [
        -np.mean([torch.log_softmax(logits[:, u], 0)[i].item() for i in range(6) if yi[i] == yt[u]]) for u in range(5)
    ]
    assert got.item() == pytest.approx(0.5 * (np.mean(i2t) + np.mean(t2i)), rel=1e-5)


def test_split_train_val_is_disjoint_and_stratified():
    labels = np.repeat(np.arange(10), 30)
    tr, va = split_train_val(labels, 7, seed=3)
    assert len(set(tr) & set(va)) == 0 and len(tr) + len(va) == 300
    assert np.all(np.bincount(labels[va]) == 7)
    with pytest.raises(ValueError, match="exceeds"):
        split_train_val(labels, 31)


def test_lr_schedule_warmup_then_cosine():
    r = sc.PretrainRecipe(steps=100, lr=1.0, warmup_steps=10, min_lr_ratio=0.1)
    assert sc._lr_at(0, r) == pytest.approx(0.1)
    assert sc._lr_at(9, r) == pytest.approx(1.0)
    assert sc._lr_at(10, r) == pytest.approx(1.0)
    assert sc._lr_at(99, r) == pytest.approx(0.1, abs=1e-3)
    assert all(sc._lr_at(s, r) >= sc._lr_at(s + 1, r) for s in range(10, 99))


def _tiny_recipe(**kw):
    base = dict(model_config=TINY_CONFIG, steps=3, batch_size=16, warmup_steps=1, val_per_class=2)
    base.update(kw)
    return sc.PretrainRecipe(**base)


def test_cache_key_reuse_and_change(tmp_path):
    rng = np.random.default_rng(0)
    data = (rng.integers(0, 256, (60, 28, 28), dtype=np.uint8), np.arange(60) % 10)
    r1 = _tiny_recipe()
    assert r1.key() == _tiny_recipe().key()
    p1 = sc.pretrain_small(r1, cache_dir=tmp_path, progress=False, data=data)
    assert p1.is_file() and p1.parent == tmp_path / "small_clip" and r1.key() in p1.name
    mtime = p1.stat().st_mtime_ns
    # Same recipe: the file is reused, not retrained (training would need data; None would load the real set).
    p1b = sc.pretrain_small(
        _tiny_recipe(),
        cache_dir=tmp_path,
        progress=False,
        data=(np.zeros((0, 28, 28), np.uint8), np.zeros(0, np.int64)),
    )
    assert p1b == p1 and p1.stat().st_mtime_ns == mtime
    r2 = dataclasses.replace(r1, steps=4)
    assert r2.key() != r1.key()
    p2 = sc.pretrain_small(r2, cache_dir=tmp_path, progress=False, data=data)
    assert p2 != p1 and p2.is_file()
    info = sc.pretrain_info(r2, cache_dir=tmp_path)
    assert info["recipe"]["steps"] == 4 and "zero_shot_val_acc" in info["metrics"]
    assert not list((tmp_path / "small_clip").glob("*.tmp*"))  # atomic write left no temp file
    # The saved weights load back with safetensors into the same architecture.
    from safetensors.torch import load_file

    m = sc.create_small_clip(TINY_CONFIG)
    m.load_state_dict(load_file(str(p2)))


def test_cache_dir_from_environment(tmp_path, monkeypatch):
    monkeypatch.setenv("TRKIT_CACHE", str(tmp_path / "c"))
    assert sc.weights_path(_tiny_recipe()).parent == tmp_path / "c" / "small_clip"
