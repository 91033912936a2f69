"""Generalization-aware loss: hand-computed terms, switches, frozen features with adapters off, text cache."""

import json

import pytest
import torch
import torch.nn.functional as F
from _helpers import tiny_bundle

import trkit_vlm as tv
from trkit_vlm.adapters import MMAConfig, adapters_disabled
from trkit_vlm.losses import FrozenTextCache, GeneralizationAwareLoss, frozen_image_features, frozen_text_features
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


# ------------------------------------------------------------------------------------- PromptSRC's form


def test_promptsrc_terms_against_closed_forms():
    """Text L1, image L1 and the KL from the frozen logits (PromptSRC: sum over the batch / (B * C))."""
    import math

    logits = torch.tensor([[1.0, 0.0, -1.0], [0.5, 0.5, 0.0]])
    labels = torch.tensor([0, 2])
    t = torch.tensor([[1.0, 0.0], [0.0, 1.0], [0.6, 0.8]])
    t0 = torch.tensor([[0.8, 0.6], [0.0, 1.0], [1.0, 0.0]])
    f = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    f0 = torch.tensor([[0.6, 0.8], [0.0, 1.0]])
    scale = 2.0
    loss = GeneralizationAwareLoss(
        lambda_text=0.0, lambda_image=3.0, lambda_text_l1=25.0, lambda_logits=1.5, temperature=1.0
    )
    total, parts = loss(logits, labels, t, t0, f, f0, logit_scale=scale)

    def softmax(row):
        e = [math.exp(v) for v in row]
        return [v / sum(e) for v in e]

    z0 = [[scale * sum(a * b for a, b in zip(fr, tr)) for tr in t0.tolist()] for fr in f0.tolist()]
    kl = 0.0
    for zr, z0r in zip(logits.tolist(), z0):
        p, q = softmax(z0r), softmax(zr)
        kl += sum(pi * (math.log(pi) - math.log(qi)) for pi, qi in zip(p, q))
    kl /= 6  # B * C
    text_l1 = (0.2 + 0.6 + 0 + 0 + 0.4 + 0.8) / 6
    image_l1 = (0.4 + 0.8 + 0 + 0) / 4
    ce = F.cross_entropy(logits, labels).item()
    assert parts["logits"].item() == pytest.approx(kl, rel=1e-6)
    assert parts["text_l1"].item() == pytest.approx(text_l1, rel=1e-6)
    assert parts["image"].item() == pytest.approx(image_l1, rel=1e-6)
    assert parts["text"].item() == 0.0  # KgCoOp's term is off
    assert total.item() == pytest.approx(ce + 25 * text_l1 + 3 * image_l1 + 1.5 * kl, rel=1e-6)
    # T = 2: the logits are divided by T and the KL multiplied by T^2
    _, p2 = GeneralizationAwareLoss(0.0, 0.0, lambda_logits=1.0, temperature=2.0)(
        logits, labels, t, t0, f, f0, logit_scale=scale
    )
    kl2 = sum(
        sum(
            pi * (math.log(pi) - math.log(qi))
            for pi, qi in zip(softmax([v / 2 for v in z0r]), softmax([v / 2 for v in zr]))
        )
        for zr, z0r in zip(logits.tolist(), z0)
    )
    assert p2["logits"].item() == pytest.approx(kl2 * 4 / 6, rel=1e-6)


def test_promptsrc_terms_switch_off_and_check_their_inputs():
    logits, labels = torch.randn(2, 3), torch.tensor([0, 1])
    t, f = F.normalize(torch.randn(3, 4), dim=-1), F.normalize(torch.randn(2, 4), dim=-1)
    total, parts = GeneralizationAwareLoss(0.0, 0.0, lambda_text_l1=0.0, lambda_logits=0.0)(logits, labels)
    assert torch.equal(total, F.cross_entropy(logits, labels))
    assert all(parts[k].item() == 0 for k in ("text", "text_l1", "image", "logits"))
    with pytest.raises(ValueError, match="logit_scale"):
        GeneralizationAwareLoss(0.0, 0.0, lambda_logits=1.0)(logits, labels, t, t, f, f)
    with pytest.raises(ValueError, match="lambda_text_l1 > 0 needs"):
        GeneralizationAwareLoss(0.0, 0.0, lambda_text_l1=1.0)(logits, labels)
    with pytest.raises(ValueError, match="lambda_logits must be >= 0"):
        GeneralizationAwareLoss(0.0, 0.0, lambda_logits=-1.0)
    with pytest.raises(ValueError, match="temperature"):
        GeneralizationAwareLoss(0.0, 0.0, temperature=0.0)
    assert not GeneralizationAwareLoss(0.0, 1.0).needs_frozen_text
    assert GeneralizationAwareLoss(0.0, 0.0, lambda_logits=1.0).needs_frozen_image
    assert GeneralizationAwareLoss(0.0, 0.0, lambda_logits=1.0).needs_frozen_text


def test_frozen_text_features_average_templates_with_adapters_off():
    """PromptSRC's teacher: the raw text features of every template averaged, then normalised; adapters off."""
    b = tiny_bundle()
    m = b.model
    names, templates = ["cat", "red_dog"], ["a photo of a {}.", "a drawing of the {}.", "{}"]
    with torch.no_grad():
        raw = [m.encode_text(b.tokenizer([tp.format(n.replace("_", " ")) for n in names])) for tp in templates]
    ref = F.normalize(sum(raw) / 3, dim=-1)
    tv.add_adapters(m, MMAConfig(scale=1.0))
    got = frozen_text_features(m, b.tokenizer, names, templates)
    torch.testing.assert_close(got, ref, rtol=1e-5, atol=1e-6)
    single = frozen_text_features(m, b.tokenizer, names, templates[:1])
    with torch.no_grad(), adapters_disabled(m):
        torch.testing.assert_close(single, encode_text(m, b.tokenizer, names), rtol=1e-5, atol=1e-6)
    cache = FrozenTextCache(m, b.tokenizer, templates=templates)
    torch.testing.assert_close(cache(names), ref, rtol=1e-5, atol=1e-6)


def test_template_sets():
    from trkit_vlm.templates import TEMPLATE_SETS, resolve_templates

    imagenet = resolve_templates("openai_imagenet", "x {}")
    assert len(imagenet) == 80 and all("{}" in t for t in imagenet) and "a photo of a {}." in imagenet
    assert len(resolve_templates("simple_imagenet", "x {}")) == 7
    assert resolve_templates(None, "a {}.") == ["a {}."]
    assert resolve_templates(["a {}", "b {}"], "x {}") == ["a {}", "b {}"]
    assert set(TEMPLATE_SETS) == {"openai_imagenet", "simple_imagenet"}
    with pytest.raises(ValueError, match="unknown template set"):
        resolve_templates("nope", "x {}")
    with pytest.raises(ValueError, match="containing"):
        resolve_templates(["no placeholder"], "x {}")


@pytest.mark.filterwarnings("ignore:.*RANDOM weights")
def test_training_logs_every_promptsrc_term(tmp_path):
    from _helpers import make_coop_dataset, tiny_config

    from trkit_vlm.training.train import train

    root = make_coop_dataset(tmp_path / "data")
    over = {
        "loss.lambda_text": 1.0,
        "loss.lambda_text_l1": 1.0,
        "loss.lambda_image": 1.0,
        "loss.lambda_logits": 1.0,
        "loss.frozen_templates": ["a photo of a {}.", "a drawing of a {}."],
        "log_every": 1,
    }
    cfg = tiny_config(tmp_path, root, method="mma", **over)
    train(cfg, progress=False)
    steps = [json.loads(line) for line in (cfg.run_dir() / "log.jsonl").read_text().splitlines()]
    steps = [r for r in steps if r["type"] == "step"]
    assert steps and all(r[k] > 0 for r in steps for k in ("ce", "text_l1", "image", "logits"))
