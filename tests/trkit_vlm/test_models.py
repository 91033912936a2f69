"""load_clip / register_model_config / feature helpers on tiny random-weight models (nothing downloads)."""

import copy
import logging
import warnings

import pytest
import torch
from _helpers import register_tiny
from safetensors.torch import save_file

from trkit_vlm.models import (
    TINY_CONFIG,
    clip_logits,
    clip_towers,
    encode_image,
    encode_text,
    load_clip,
    quiet_random_init,
    register_model_config,
    tower_info,
    tower_info_from_config,
)

TINY = register_tiny()


def _load(name=TINY, **kw):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return load_clip(name, **kw)


def test_random_weights_warn_loudly(caplog):
    with pytest.warns(UserWarning, match="RANDOM weights"):
        b = load_clip(TINY)
    assert b.pretrained is None and b.name == TINY
    # open_clip's own "No pretrained weights loaded" line is dropped (ours says what to do) ...
    assert not any("No pretrained weights" in r.getMessage() for r in caplog.records)
    # ... and only that line: other warnings logged meanwhile still come through
    with quiet_random_init():
        logging.warning("something else")
        logging.warning("No pretrained weights loaded for model 'x'")
    assert [r.getMessage() for r in caplog.records] == ["something else"]
    info = tower_info(b.model)
    assert info == {
        "text": {"width": 48, "depth": 4, "features": 32},
        "image": {"width": 64, "depth": 4, "features": 32},
    }


def test_tower_info_from_config_matches_built_model():
    assert tower_info_from_config(TINY) == tower_info(_load().model)
    assert tower_info_from_config("ViT-B-16") == {
        "text": {"width": 512, "depth": 12, "features": 512},
        "image": {"width": 768, "depth": 12, "features": 512},
    }
    assert tower_info_from_config("ViT-L-14")["image"] == {"width": 1024, "depth": 24, "features": 768}


@pytest.mark.parametrize("suffix", [".pt", ".safetensors"])
def test_local_checkpoint_round_trip(tmp_path, suffix):
    torch.manual_seed(0)
    src = _load().model
    path = tmp_path / f"w{suffix}"
    sd = {k: v.contiguous() for k, v in src.state_dict().items()}
    torch.save(sd, path) if suffix == ".pt" else save_file(sd, str(path))
    b = load_clip(TINY, pretrained=str(path))
    for k, v in b.model.state_dict().items():
        assert torch.equal(v, sd[k]), k


def test_openai_torchscript_file(tmp_path):
    src = _load().model
    path = tmp_path / "openai.pt"
    torch.jit.script(src).save(str(path))
    b = load_clip(TINY, pretrained=str(path))
    for k, v in b.model.state_dict().items():
        assert torch.equal(v, src.state_dict()[k]), k
    # OpenAI's weights were trained with QuickGELU; the loader switches it on for their files.
    act = b.model.visual.transformer.resblocks[0].mlp.gelu
    assert type(act).__name__ == "QuickGELU"


def test_checkpoint_of_other_architecture_is_rejected(tmp_path):
    other = copy.deepcopy(TINY_CONFIG)
    other["vision_cfg"]["width"] = 32
    register_model_config("trkit-test-tiny-narrow", other)
    path = tmp_path / "narrow.pt"
    torch.save(_load("trkit-test-tiny-narrow").model.state_dict(), path)
    with pytest.raises(ValueError, match="does not match architecture 'trkit-test-tiny'.*size mismatch"):
        load_clip(TINY, pretrained=str(path))


def test_bad_inputs():
    with pytest.raises(ValueError, match="unknown open_clip model 'ViT-Q-99'"):
        load_clip("ViT-Q-99")
    with pytest.raises(FileNotFoundError, match="checkpoint file not found"):
        load_clip(TINY, pretrained="/no/such/file.pt")
    with pytest.raises(ValueError, match="lacks"):
        register_model_config("broken", {"embed_dim": 8})
    with pytest.raises(TypeError):
        clip_towers(torch.nn.Linear(2, 2))


def test_hub_name_fails_fast_offline():
    # conftest sets HF_HUB_OFFLINE=1, so this must fail at once with advice, not hang.
    with pytest.raises(RuntimeError, match="pass a local checkpoint file|local\\s+checkpoint"):
        load_clip("ViT-B-32", pretrained="openai")


def test_feature_helpers():
    b = _load()
    names = ["t_shirt", "dog", "cat"]
    t = encode_text(b.model, b.tokenizer, names)
    assert t.shape == (3, 32)
    torch.testing.assert_close(t.norm(dim=-1), torch.ones(3))
    ref = b.model.encode_text(b.tokenizer(["a photo of a t shirt.", "a photo of a dog.", "a photo of a cat."]))
    torch.testing.assert_close(t, ref / ref.norm(dim=-1, keepdim=True))
    img = torch.randn(2, 3, 32, 32)
    f = encode_image(b.model, img)
    logits = clip_logits(b.model, f, t)
    torch.testing.assert_close(logits, b.model.logit_scale.exp() * f @ t.T)
    with pytest.raises(TypeError):
        encode_text(b.model, b.tokenizer, "dog")
