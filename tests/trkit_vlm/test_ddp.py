"""Two CPU processes under torchrun (DDP, gloo) train to the same adapters as one process.

With a fixed view per image the only difference is summation order: DDP averages two half-batch
gradients where one process averages the whole batch (the sampler hands both the same images per
step). Stated tolerance: adapter weights within rtol 1e-4 / atol 1e-6, accuracies equal.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from _helpers import TINY_CONFIG, make_coop_dataset, register_tiny, tiny_config
from safetensors.torch import load_file

from trkit_vlm.training.train import train

pytestmark = pytest.mark.filterwarnings("ignore:.*RANDOM weights")
REPO = Path(__file__).resolve().parents[2]


def test_two_process_ddp_matches_single_process(tmp_path):
    register_tiny()
    root = make_coop_dataset(tmp_path / "d", n_train=4, n_val=1, n_test=2)
    over = {
        "optim.epochs": 2,
        "optim.batch_size": 4,
        "data.shots": 4,
        "model_config": TINY_CONFIG,
        "loss.lambda_text": 1.0,
    }
    single = train(tiny_config(tmp_path / "one", root, **over), progress=False)
    cfg = tiny_config(tmp_path / "two", root, **over)
    (tmp_path / "cfg.json").write_text(json.dumps(cfg.to_dict()))
    env = {
        **os.environ,
        "OMP_NUM_THREADS": "1",
        "HF_HUB_OFFLINE": "1",
        "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]),
    }
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--standalone",
            "--nproc_per_node",
            "2",
            "-m",
            "trkit_vlm",
            "train",
            "-c",
            str(tmp_path / "cfg.json"),
            "--no-progress",
        ],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=240,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    run = cfg.run_dir()
    two = json.loads((run / "metrics.json").read_text())
    assert two["world_size"] == 2 and single["world_size"] == 1
    for k in ("base", "novel", "hm", "all"):
        assert two[k] == single[k], k
    assert two["final_train_loss"] == pytest.approx(single["final_train_loss"], rel=1e-4)
    a = load_file(Path(single["run_dir"]) / "adapters.safetensors")
    b = load_file(run / "adapters.safetensors")
    for k in a:
        torch.testing.assert_close(b[k], a[k], rtol=1e-4, atol=1e-6)
    # Rank 0 alone writes: one epoch line per epoch in the log.
    lines = [json.loads(x) for x in (run / "log.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in lines if r["type"] == "epoch"] == [1, 2]
