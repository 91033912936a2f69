"""Files trkit_vlm writes besides checkpoints, under faults: adapter files and the small-CLIP cache go
through trkit's atomic write (a kill leaves only trkit's own temp file, which the next write removes; a
full disk is one error line), and a damaged cached small CLIP is rebuilt instead of failing to load."""

from __future__ import annotations

import json
import os
import signal
from pathlib import Path

import numpy as np
import pytest
import torch
from _faults import full_disk, start_writer_that_hangs
from _helpers import TINY_SMALL_CLIP_CONFIG, make_coop_dataset, register_tiny, tiny_config, tiny_model
from safetensors.torch import load_file

from trkit_vlm.adapters import MMAConfig, add_adapters, save_adapters
from trkit_vlm.cli import main
from trkit_vlm.demo import small_clip as sc

pytestmark = pytest.mark.filterwarnings("ignore:.*RANDOM weights")


def _temps(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if ".tmp" in p.name)


def _tensors(path: Path) -> dict[str, bytes]:
    """The tensors of a safetensors file as bytes (the header's key order may change from save to save)."""
    return {k: v.numpy().tobytes() for k, v in load_file(path).items()}


def test_a_killed_adapter_save_leaves_the_old_file_and_a_temp_the_next_save_removes(tmp_path):
    target = tmp_path / "adapters.safetensors"
    model = add_adapters(tiny_model(), MMAConfig(hidden=8))
    save_adapters(model, target)
    before = target.read_bytes()
    saved = _tensors(target)
    proc, _ = start_writer_that_hangs(
        target,
        f"""
        import sys, warnings
        warnings.simplefilter("ignore")
        sys.path.insert(0, {str(Path(__file__).parent)!r})
        from _helpers import tiny_model
        from trkit_vlm.adapters import MMAConfig, add_adapters, save_adapters
        save_adapters(add_adapters(tiny_model(seed=1), MMAConfig(hidden=8)), target)
        """,
        after_bytes=1000,
    )
    try:
        (tmp,) = _temps(tmp_path)  # trkit's temp, half written; no safetensors .tmpXXXX
        assert tmp.startswith(f".adapters.safetensors.{proc.pid}-") and (tmp_path / tmp).stat().st_size == 1000
    finally:
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
    assert target.read_bytes() == before
    save_adapters(model, target)
    assert _temps(tmp_path) == [] and _tensors(target) == saved


def test_full_disk_during_the_adapter_save_is_one_line_and_resumable(tmp_path, monkeypatch, capsys):
    register_tiny()
    cfg = tiny_config(tmp_path, make_coop_dataset(tmp_path / "data"))
    (tmp_path / "c.json").write_text(json.dumps(cfg.to_dict()))
    argv = ["train", "-c", str(tmp_path / "c.json"), "--no-progress"]
    full_disk(monkeypatch, budget=500, match=lambda p: p.name.startswith(".adapters.safetensors."))
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    run = cfg.run_dir()
    assert len(err.splitlines()) == 1 and err.startswith("trkit-vlm train: error: ")
    assert f"cannot write {run / 'adapters.safetensors'}: No space left on device" in err
    assert not (run / "metrics.json").exists() and not (run / "adapters.safetensors").exists()
    assert _temps(run) == []
    monkeypatch.undo()
    assert main([*argv, "--resume"]) == 0  # the last checkpoint is there: only the save and the evaluation run
    assert (
        load_file(run / "adapters.safetensors").keys()
        == torch.load(run / "checkpoint.pt", weights_only=True)["adapters"].keys()
    )


def _tiny_recipe() -> sc.PretrainRecipe:
    return sc.PretrainRecipe(
        model_config=TINY_SMALL_CLIP_CONFIG, steps=3, batch_size=16, warmup_steps=1, val_per_class=2
    )


def _images():
    rng = np.random.default_rng(0)
    return rng.integers(0, 256, (60, 28, 28), dtype=np.uint8), np.arange(60) % 10


def test_a_truncated_small_clip_cache_is_rebuilt(tmp_path):
    recipe = _tiny_recipe()
    path = sc.pretrain_small(recipe, cache_dir=tmp_path, progress=False, data=_images())
    good, tensors = path.read_bytes(), _tensors(path)
    path.write_bytes(good[: len(good) // 2])
    with pytest.warns(UserWarning, match=r"cached small CLIP .* is damaged \(.*\); removing it to train it again"):
        again = sc.pretrain_small(recipe, cache_dir=tmp_path, progress=False, data=_images())
    assert again == path and _tensors(path) == tensors  # the same recipe trains to the same weights
    sc.load_small_clip(recipe, cache_dir=tmp_path, train_if_missing=False)  # loads
    path.write_bytes(b"not safetensors")
    with pytest.warns(UserWarning, match="is damaged"), pytest.raises(FileNotFoundError, match="pretrain-small"):
        sc.load_small_clip(recipe, cache_dir=tmp_path, train_if_missing=False)
    assert not path.exists() and not path.with_suffix(".json").exists()


def test_full_disk_during_the_small_clip_save_names_the_file(tmp_path, monkeypatch):
    path = sc.weights_path(_tiny_recipe(), tmp_path)
    full_disk(monkeypatch, budget=4096, match=lambda p: p.name.startswith(f".{path.name}."))
    with pytest.raises(OSError, match=f"cannot write {path}: No space left on device"):
        sc.pretrain_small(_tiny_recipe(), cache_dir=tmp_path, progress=False, data=_images())
    assert os.listdir(path.parent) == []  # neither the weights nor a temp file


def test_compress_output_problems_are_one_line(tmp_path, monkeypatch, capsys):
    source = save_adapters(add_adapters(tiny_model(), MMAConfig(hidden=8)), tmp_path / "mma.safetensors")
    before = source.read_bytes()
    assert main(["compress", str(source), "--budget", "0.5", "--out", str(source)]) == 2  # a file, not a folder
    assert source.read_bytes() == before
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith("trkit-vlm compress: error: "), err
    out = tmp_path / "ring"
    full_disk(monkeypatch, budget=500, match=lambda p: p.name.startswith(".adapters.safetensors."))
    assert main(["compress", str(source), "--budget", "0.5", "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith("trkit-vlm compress: error: "), err
    assert f"cannot write {out / 'adapters.safetensors'}: No space left on device" in err
    assert os.listdir(out) == []
