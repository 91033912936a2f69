"""Models the project provides by name: ``trkit-small-clip-28`` resolves to its config and cached weights in
``load_clip``, ``tower_info_from_config`` and the command line, once it is pre-trained."""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import save_file

from trkit_vlm import models
from trkit_vlm.adapters import MMAConfig
from trkit_vlm.adapters.io import save_adapters
from trkit_vlm.cli import main as cli_main
from trkit_vlm.demo import small_clip as sc


@pytest.fixture
def fresh_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("TRKIT_CACHE", str(tmp_path / "cache"))
    models._CUSTOM_CONFIGS.pop(sc.SMALL_CLIP_NAME, None)  # as in a fresh process
    return tmp_path


def test_small_clip_by_name_needs_its_weights(fresh_cache):
    with pytest.raises(FileNotFoundError, match="trkit-vlm pretrain-small"):
        models.load_clip(sc.SMALL_CLIP_NAME)
    info = models.tower_info_from_config(sc.SMALL_CLIP_NAME)  # the config alone needs no weights
    assert info["image"] == {"width": 128, "depth": 6, "features": 128}


def test_small_clip_by_name_loads_the_cached_weights(fresh_cache, tmp_path, capsys):
    torch.manual_seed(0)
    model = sc.create_small_clip()
    path = sc.weights_path()
    path.parent.mkdir(parents=True)
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(path))
    models._CUSTOM_CONFIGS.pop(sc.SMALL_CLIP_NAME, None)
    bundle = models.load_clip(sc.SMALL_CLIP_NAME)
    assert bundle.pretrained == str(path)
    for (k, a), b in zip(model.state_dict().items(), bundle.model.state_dict().values()):
        assert torch.equal(a, b), k
    # The command line takes the name too: compress an MMA file made for the small CLIP's towers.
    holder = torch.nn.Module()
    holder.trkit_adapters = MMAConfig(hidden=4).build(models.tower_info(bundle.model))
    mma_file = save_adapters(holder, tmp_path / "mma.safetensors")
    out = tmp_path / "ring"
    assert (
        cli_main(["compress", str(mma_file), "--model", sc.SMALL_CLIP_NAME, "--budget", "0.3", "--out", str(out)]) == 0
    )
    assert (out / "adapters.safetensors").is_file() and "not a run folder" in capsys.readouterr().out
