"""Generalization-aware loss: hand-computed terms, switches, frozen features with adapters off, text cache."""

import pytest
import torch
import torch.nn.functional as F
from _helpers import tiny_bundle

import trkit_vlm as tv
from trkit_vlm.adapters import MMAConfig, adapters_disabled
from trkit_vlm.losses import FrozenTextCache, GeneralizationAwareLoss, frozen_image_features
from trkit_vlm.models import encode_text


def test_terms_hand_computed():
    logits = torch.tensor([[2.0, 0.0], [0.0, 1.0]])
    labels = torch.tensor([0, 0])
    t = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    t0 = torch.tensor([[1.0, 1.0], [0.0, 1.0]])  # cos = 1/sqrt(2), 1
    f = torch.tensor([[0.5, 0.5, 0.0]])
    f0 = torch.tensor([[0.0, 0.5, 1.0]])  # L1 mean = (0.5 + 0 + 1) / 3
    loss = GeneralizationAwareLoss(lambda_text=2.0, lambda_image=3.0)
    total, parts = loss(logits, labels, t, t0, f, f0)
    import math

    ce = (-math.log(math.exp(2) / (math.exp(2) + 1)) - math.log(1 / (1 + math.e))) / 2
    text = ((1 - 1 / math.sqrt(2)) + 0.0) / 2
    image = 0.5
    assert parts["ce"].item() == pytest.approx(ce, rel=1e-6)
    assert parts["text"].item() == pytest.approx(text, rel=1e-6)
    assert parts["image"].item() == pytest.approx(image, rel=1e-6)
    assert total.item() == pytest.approx(ce + 2 * text + 3 * image, rel=1e-6)


def test_switched_off_terms_accept_none():
    logits = torch.randn(4, 3)
    labels = torch.tensor([0, 1, 2, 1])
    total, parts = GeneralizationAwareLoss(0.0, 0.0)(logits, labels)
    assert torch.equal(total, F.cross_entropy(logits, labels))
    assert parts["text"].item() == 0 and parts["image"].item() == 0
    with pytest.raises(ValueError, match="lambda_text > 0 needs"):
        GeneralizationAwareLoss(1.0, 0.0)(logits, labels)
    with pytest.raises(ValueError, match="differ in shape"):
        GeneralizationAwareLoss(0.0, 1.0)(
            logits, labels, image_feat=torch.zeros(4, 2), image_feat_frozen=torch.zeros(4, 3)
        )
    with pytest.raises(ValueError, match="lambda_image must be >= 0"):
        GeneralizationAwareLoss(1.0, -1.0)


def test_frozen_features_do_not_get_gradient():
    f = torch.randn(2, 4, requires_grad=True)
    f0 = torch.randn(2, 4, requires_grad=True)
    total, _ = GeneralizationAwareLoss(0.0, 1.0)(
        torch.randn(2, 3), torch.tensor([0, 1]), image_feat=f, image_feat_frozen=f0
    )
    total.backward()
    assert f.grad is not None and f0.grad is None


def test_cache_and_frozen_image_features_use_adapters_off():
    b = tiny_bundle()
    m = b.model
    names = ["cat", "dog"]
    with torch.no_grad():
        ref_t = encode_text(m, b.tokenizer, names)
        img = torch.randn(2, 3, 32, 32)
        ref_f = m.encode_image(img, normalize=True)
    tv.add_adapters(m, MMAConfig(scale=1.0))
    calls = []

    def counting_tokenizer(texts):
        calls.append(list(texts))
        return b.tokenizer(texts)

    cache = FrozenTextCache(m, counting_tokenizer)
    t0 = cache(names)
    t1 = cache(names)
    assert t1 is t0 and len(calls) == 1
    torch.testing.assert_close(t0, ref_t, rtol=1e-5, atol=1e-6)
    assert not torch.allclose(encode_text(m, b.tokenizer, names), ref_t, atol=1e-4)  # adapters are active
    cache(["cat"])
    assert len(calls) == 2
    torch.testing.assert_close(frozen_image_features(m, img), ref_f, rtol=1e-5, atol=1e-6)
    with adapters_disabled(m):
        pass
    assert m.trkit_adapters.enabled
