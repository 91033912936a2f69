"""Saving/loading adapters alone, errors on mismatched backbones, importing official MMA checkpoints."""

import copy
import json
import os

import pytest
import torch
from _helpers import register_tiny, tiny_model
from safetensors import safe_open
from safetensors.torch import save_file

import trkit_vlm as tv
from trkit_vlm.adapters import (
    AdaRingConfig,
    MMAConfig,
    adapter_state_dict,
    get_adapters,
    import_mma_checkpoint,
    load_adapters,
    save_adapters,
)
from trkit_vlm.models import TINY_CONFIG, register_model_config

TINY = register_tiny()


_model = tiny_model


def _perturb(model):
    g = torch.Generator().manual_seed(3)
    with torch.no_grad():
        for p in get_adapters(model).parameters():
            p.add_(torch.randn(p.shape, generator=g) * 0.1)


def test_file_is_written_atomically_and_reloads_in_place(tmp_path):
    # Output equality after a round trip, for every method: test_adapter_contract.py.
    cfg = AdaRingConfig(ranks=[2, (1, 3, 2)], bias="all", scale=0.5)
    m = tv.add_adapters(_model(), cfg)
    _perturb(m)
    path = save_adapters(m, tmp_path / "sub" / "adapters.safetensors")
    assert os.listdir(tmp_path / "sub") == ["adapters.safetensors"]  # no temp file left behind
    with safe_open(str(path), framework="pt") as f:
        meta = f.metadata()
    assert json.loads(meta["config"]) == cfg.to_dict() and json.loads(meta["layers"])["image"] == [2, 3, 4]
    fresh = load_adapters(_model(), path)
    _perturb(fresh)  # loading again into an adapted model replaces the weights in place
    load_adapters(fresh, path)
    for k, v in adapter_state_dict(fresh).items():
        assert torch.equal(v, adapter_state_dict(m)[k])


def test_file_holds_only_adapters(tmp_path):
    m = tv.add_adapters(_model(), MMAConfig())
    path = save_adapters(m, tmp_path / "a.safetensors")
    with safe_open(str(path), framework="pt") as f:
        keys = set(f.keys())
    assert keys == set(get_adapters(m).state_dict())
    assert os.path.getsize(path) < 4 * sum(p.numel() for p in get_adapters(m).parameters()) + 10_000


def test_mismatched_backbone_errors(tmp_path):
    m = tv.add_adapters(_model(), MMAConfig())
    path = save_adapters(m, tmp_path / "a.safetensors")
    wide = copy.deepcopy(TINY_CONFIG)
    wide["text_cfg"]["width"] = 64
    register_model_config("trkit-test-tiny-wide", wide)
    other = _model("trkit-test-tiny-wide")
    with pytest.raises(ValueError, match="text tower of width 48; this backbone's text tower has width 64"):
        load_adapters(other, path)
    deep = copy.deepcopy(TINY_CONFIG)
    deep["vision_cfg"]["layers"] = 6
    register_model_config("trkit-test-tiny-deep", deep)
    with pytest.raises(ValueError, match="image tower of depth 4; this backbone's image tower has depth 6"):
        load_adapters(_model("trkit-test-tiny-deep"), path)
    # a tensor of the wrong shape is named
    sd = {k: v.contiguous() for k, v in get_adapters(m).state_dict().items()}
    sd["visual_adapter.3.up.weight"] = torch.zeros(64, 5)
    with safe_open(str(path), framework="pt") as f:
        meta = f.metadata()
    bad = tmp_path / "bad.safetensors"
    save_file(sd, str(bad), metadata=meta)
    fresh = _model()
    with pytest.raises(ValueError, match=r"visual_adapter\.3\.up\.weight has shape \(64, 5\).*needs \(64, 32\)"):
        load_adapters(fresh, bad)
    assert get_adapters(fresh) is None  # a failed load leaves the model untouched
    with pytest.raises(ValueError, match="different adapters"):
        load_adapters(tv.add_adapters(_model(), AdaRingConfig()), path)
    with pytest.raises(FileNotFoundError):
        load_adapters(fresh, tmp_path / "none.safetensors")
    junk = tmp_path / "junk.safetensors"
    junk.write_bytes(b"not a file")
    with pytest.raises(ValueError, match="not a safetensors adapter file"):
        load_adapters(fresh, junk)
    with pytest.raises(ValueError, match="no trkit adapters to save"):
        save_adapters(fresh, tmp_path / "x.safetensors")


def _official_checkpoint(layers=range(2, 5), h=32, dt=48, dv=64, seed=0):
    """A Dassl-style MMA checkpoint as the official trainer writes it (random values, official keys)."""
    g = torch.Generator().manual_seed(seed)
    sd = {"token_embedding": torch.zeros(3, 77, dt), "tokenized_prompts": torch.zeros(3, 77, dtype=torch.long)}
    for i in layers:
        for name, d in (("text_adapter", dt), ("visual_adapter", dv)):
            sd[f"{name}.{i}.down.0.weight"] = torch.randn(h, d, generator=g)
            sd[f"{name}.{i}.down.0.bias"] = torch.randn(h, generator=g)
            sd[f"{name}.{i}.up.weight"] = torch.randn(d, h, generator=g)
            sd[f"{name}.{i}.up.bias"] = torch.randn(d, generator=g)
        sd[f"shared_adapter.{i}.0.weight"] = torch.randn(h, h, generator=g)
        sd[f"shared_adapter.{i}.0.bias"] = torch.randn(h, generator=g)
    return {
        "state_dict": sd,
        "epoch": 5,
        "optimizer": {"state": {}, "param_groups": [{"lr": 0.0015}]},
        "val_result": None,
    }


def test_import_official_mma_checkpoint(tmp_path):
    ckpt = _official_checkpoint()
    path = tmp_path / "model.pth.tar-5"
    torch.save(ckpt, path)
    m = import_mma_checkpoint(_model(), str(path))
    a = get_adapters(m)
    assert a.text_layers == [2, 3, 4] and a.config.hidden == 32 and a.config.scale == 0.001
    for k, v in a.state_dict().items():
        assert torch.equal(v, ckpt["state_dict"][k]), k
    bad = _official_checkpoint(layers=[0, 1])
    with pytest.raises(ValueError, match="layer-0"):
        import_mma_checkpoint(_model(), bad)
    with pytest.raises(ValueError, match="no MMA adapter tensors"):
        import_mma_checkpoint(_model(), {"state_dict": {"foo": torch.zeros(1)}})
    with pytest.raises(ValueError, match="outside the text tower's 4 layers"):
        import_mma_checkpoint(_model(), _official_checkpoint(layers=range(5, 13)))
