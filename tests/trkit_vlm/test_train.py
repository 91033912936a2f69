"""End-to-end training on a tiny model and a tiny on-disk CoOp dataset: MMA and AdaRing, resume,
checkpoint safety, gradient accumulation, in-memory data with a passed-in bundle, the CLI's errors."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from _helpers import CLASSES, make_coop_dataset, register_tiny, tiny_config
from safetensors.torch import load_file

from trkit_vlm.data import ClassificationData
from trkit_vlm.training.train import train

pytestmark = pytest.mark.filterwarnings("ignore:.*RANDOM weights")


@pytest.fixture(scope="module")
def data_root(tmp_path_factory) -> Path:
    register_tiny()
    return make_coop_dataset(tmp_path_factory.mktemp("tiny"))


@pytest.mark.parametrize("method", ["mma", "adaring"])
def test_train_one_epoch_end_to_end(tmp_path, data_root, method):
    cfg = tiny_config(tmp_path, data_root, method=method, **{"loss.lambda_text": 1.0, "loss.lambda_image": 1.0})
    m = train(cfg, progress=False)
    run = cfg.run_dir()
    assert run == tmp_path / "out" / data_root.name / method / "shots_2" / "seed1"
    for f in ("config.json", "log.jsonl", "checkpoint.pt", "adapters.safetensors", "metrics.json"):
        assert (run / f).is_file(), f
    assert json.loads((run / "metrics.json").read_text())["hm"] == pytest.approx(m["hm"])
    assert m["hm"] == pytest.approx(2 * m["base"] * m["novel"] / (m["base"] + m["novel"]))
    assert m["n_base"] == 6 and m["n_novel"] == 6 and 0 <= m["all"] <= 100
    log = [json.loads(line) for line in (run / "log.jsonl").read_text().splitlines()]
    assert log[-1]["type"] == "epoch" and log[-1]["epoch"] == 1 and np.isfinite(log[-1]["loss"])
    # Training moved the adapters away from their initialisation (seeded, so rebuildable here).
    from trkit_vlm.adapters import adapter_config_from_dict, add_adapters, get_adapters
    from trkit_vlm.models import load_clip

    fresh = load_clip(cfg.model)
    torch.manual_seed(cfg.seed)
    add_adapters(fresh.model, adapter_config_from_dict({"method": method, **cfg.adapter}))
    init = get_adapters(fresh.model).state_dict()
    trained = load_file(run / "adapters.safetensors")
    assert set(init) == set(trained)
    assert max((init[k] - trained[k]).abs().max().item() for k in init) > 1e-4
    assert (tmp_path / "out" / data_root.name / "fewshot" / "shots_2-seed_1.json").is_file()


def test_resume_gives_the_same_result(tmp_path, data_root):
    over = {"optim.epochs": 3, "data.augment": True, "loss.lambda_text": 1.0}
    full = train(tiny_config(tmp_path / "a", data_root, **over), progress=False)
    cfg = tiny_config(tmp_path / "b", data_root, **over)
    stopped = train(cfg, progress=False, stop_after_epoch=1)
    assert stopped["stopped_after_epoch"] == 1 and not (cfg.run_dir() / "metrics.json").exists()
    resumed = train(cfg, progress=False, resume=True)
    for k in ("base", "novel", "hm", "all", "final_train_loss"):
        assert resumed[k] == full[k], k
    a = load_file(tmp_path / "a" / "out" / data_root.name / "mma" / "shots_2" / "seed1" / "adapters.safetensors")
    b = load_file(cfg.run_dir() / "adapters.safetensors")
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=0, atol=0)
    epochs = [
        r["epoch"]
        for r in map(json.loads, (cfg.run_dir() / "log.jsonl").read_text().splitlines())
        if r["type"] == "epoch"
    ]
    assert epochs == [1, 2, 3]


def test_corrupt_or_foreign_checkpoint_is_refused(tmp_path, data_root):
    cfg = tiny_config(tmp_path, data_root, **{"optim.epochs": 2})
    train(cfg, progress=False, stop_after_epoch=1)
    ckpt = cfg.run_dir() / "checkpoint.pt"
    good = ckpt.read_bytes()
    other = tiny_config(tmp_path, data_root, **{"optim.epochs": 2, "optim.lr": 0.5})
    with pytest.raises(ValueError, match=r"different run \(differs in: optim.lr\)"):
        train(other, progress=False, resume=True)
    ckpt.write_bytes(good[: len(good) // 2])
    with pytest.raises(ValueError, match="corrupt"):
        train(cfg, progress=False, resume=True)
    assert ckpt.read_bytes() == good[: len(good) // 2]  # left for inspection, not overwritten


def test_gradient_accumulation_matches_a_big_batch(tmp_path, data_root):
    big = train(tiny_config(tmp_path / "a", data_root, **{"optim.batch_size": 4}), progress=False)
    acc = train(
        tiny_config(tmp_path / "b", data_root, **{"optim.batch_size": 2, "optim.grad_accum": 2}), progress=False
    )
    a = load_file(Path(big["run_dir"]) / "adapters.safetensors")
    b = load_file(Path(acc["run_dir"]) / "adapters.safetensors")
    assert big["run_dir"] != acc["run_dir"]
    # Same images per optimiser step (the sampler order depends only on seed and epoch) -> same weights.
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=1e-4, atol=1e-6)


def test_in_memory_data_and_reusable_bundle(tmp_path):
    from trkit_vlm.adapters import get_adapters
    from trkit_vlm.models import load_clip

    rng = np.random.default_rng(0)

    def recs(n):
        return [(rng.integers(0, 256, (32, 32), dtype=np.uint8), c) for c in range(4) for _ in range(n)]

    data = ClassificationData("mem", list(CLASSES), train=recs(3), val=[], test=recs(2))
    bundle = load_clip(register_tiny())
    cfg = tiny_config(tmp_path, tmp_path, **{"data.dataset": "fashion_mnist"})
    for method in ("mma", "adaring"):
        cfg.method = method
        cfg.adapter = {}
        m = train(cfg, bundle=bundle, data=data, progress=False)
        assert m["prefix_cache"]["image"] and m["n_base"] == 4
        assert get_adapters(bundle.model) is None  # removed again: the bundle is reusable


def test_cli_train_and_errors(tmp_path, data_root, capsys):
    from trkit_vlm.cli import main

    cfg = tiny_config(tmp_path, data_root)
    (tmp_path / "c.json").write_text(json.dumps(cfg.to_dict()))
    with pytest.raises(SystemExit):
        main(["train", "--help"])
    assert "torchrun --nproc_per_node" in capsys.readouterr().out
    with pytest.raises(SystemExit) as exit_:  # --method choices come from the adapter registry
        main(["train", "-c", str(tmp_path / "c.json"), "--method", "dora"])
    assert exit_.value.code == 2 and "invalid choice: 'dora'" in capsys.readouterr().err
    assert main(["train", "-c", str(tmp_path / "c.json"), "--set", "method=dora"]) == 2
    known = "['adaring', 'linear_probe', 'lora', 'mma']"
    assert f"unknown method 'dora'; expected one of {known}" in capsys.readouterr().err
    assert main(["train", "-c", str(tmp_path / "c.json"), "--shots", "9", "--no-progress"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "shots=9 is larger than the 4 train images" in err
    assert main(["train", "-c", str(tmp_path / "c.json"), "--set", "data.classnames=[a, b, c, d]"]) == 2
    assert "class-name mismatch" in capsys.readouterr().err
    (data_root / "images" / "red_thing" / "test_1.png").rename(tmp_path / "moved.png")
    try:
        assert main(["train", "-c", str(tmp_path / "c.json"), "--no-progress"]) == 2
        assert "missing image file:" in capsys.readouterr().err
    finally:
        (tmp_path / "moved.png").rename(data_root / "images" / "red_thing" / "test_1.png")
    assert main(["train", "-c", str(tmp_path / "c.json"), "--no-progress", "--seed", "2"]) == 0
    assert json.loads(capsys.readouterr().out)["seed"] == 2


def test_init_seed_sets_the_adapters_start_and_nothing_else(tmp_path, data_root):
    """init_seed draws the adapters' initial weights (default: seed); the few-shot draw stays the seed's."""
    from trkit_vlm.adapters import get_adapters
    from trkit_vlm.training.distributed import init_distributed
    from trkit_vlm.training.train import build_model, prepare_data

    def start(**over):
        cfg = tiny_config(tmp_path, data_root, method="adaring", **over)
        _, model, _ = build_model(cfg, None, torch.device("cpu"))
        return cfg, get_adapters(model).state_dict()

    cfg, default = start()
    _, same = start(init_seed=cfg.seed)
    cfg7, other = start(init_seed=7)
    assert cfg7.init_seed == 7 and cfg7.run_dir() == cfg.run_dir()
    assert all(torch.equal(default[k], same[k]) for k in default)
    assert max((default[k] - other[k]).abs().max().item() for k in default) > 1e-3
    info = init_distributed("cpu")
    shots = [prepare_data(c, None, info)[1].train for c in (cfg, cfg7)]
    assert shots[0] == shots[1] and len(shots[0]) > 0


def test_pca_start_reads_the_frozen_inputs_and_not_the_seed(tmp_path, data_root, monkeypatch):
    """AdaRing's init="pca": the down projections' input cores are the leading eigenvectors of the frozen
    model's ln_1 inputs on the shots (recomputed here from ln_1's own outputs and numpy's eigh), the same
    for any init_seed; the other cores stay random."""
    import trkit_vlm.training.train as train_module
    from trkit_vlm.adapters import adapters_disabled, get_adapters
    from trkit_vlm.data.transforms import build_transforms, load_image
    from trkit_vlm.models import clip_towers
    from trkit_vlm.training.distributed import init_distributed
    from trkit_vlm.training.seeding import seed_everything
    from trkit_vlm.training.train import build_model, prepare_data

    class Started(Exception):
        pass

    def start_and_stop(trainer):
        before = (torch.get_rng_state(), np.random.get_state()[1].copy())
        assert original(trainer)
        # The pass leaves the random state as it was, so the run's batches and dropout masks do not change.
        assert torch.equal(torch.get_rng_state(), before[0]) and np.array_equal(np.random.get_state()[1], before[1])
        starts.append({k: v.clone() for k, v in get_adapters(trainer.model).state_dict().items()})
        raise Started

    original, starts = train_module.start_from_data, []
    monkeypatch.setattr(train_module, "start_from_data", start_and_stop)

    def start(init_seed, **over):
        cfg = tiny_config(tmp_path / f"s{init_seed}", data_root, method="adaring", init_seed=init_seed,
                          **{"adapter.init": "pca", **over})  # fmt: skip
        with pytest.raises(Started):
            train(cfg, progress=False)
        return cfg, starts[-1]

    cfg, a = start(1)
    _, b = start(7)
    start(3, **{"data.augment": True})  # random crops draw from the global generator: it must be restored
    downs = [k for k in a if ".down_" in k and k.endswith("g_in")]
    assert len(downs) == 4  # two branches x two towers
    assert all(torch.equal(a[k], b[k]) for k in downs)
    assert max((a[k] - b[k]).abs().max().item() for k in a if ".shared." in k) > 1e-3

    # The reference: ln_1's outputs at every adapted image block over all training images, on the random
    # tiny model train() drew (seeded, then the data, then the model, as train() does).
    seed_everything(cfg.seed)
    records = prepare_data(cfg, None, init_distributed("cpu"))[1].train
    _, model, _ = build_model(cfg, None, torch.device("cpu"))
    tf, _ = build_transforms(model, augment=False)
    images = torch.stack([tf(load_image(p)) for p, _ in records])
    outs: list[torch.Tensor] = []
    blocks = clip_towers(model)["image"].resblocks
    hooks = [
        blocks[layer - 1].ln_1.register_forward_hook(lambda m, i, o: outs.append(o.reshape(-1, o.shape[-1])))
        for layer in get_adapters(model).adapted_layers("image")
    ]
    with torch.no_grad(), adapters_disabled(model):
        model.encode_image(images)
    for h in hooks:
        h.remove()
    cov = np.mean([np.cov(o.double().numpy(), rowvar=False, bias=True) for o in outs], axis=0)
    vals, vecs = np.linalg.eigh(cov)
    vals, vecs = vals[::-1], vecs[:, ::-1]
    for k in (k for k in downs if "down_image" in k):
        g = a[k].double()  # (R1, d_in, R2)
        cols = g.permute(0, 2, 1).reshape(-1, g.shape[1]).numpy()
        m = cols.shape[0]
        assert vals[m - 1] - vals[m] > 1e-6 * vals[0]  # the subspace is well defined
        norms = np.linalg.norm(cols, axis=1)
        np.testing.assert_allclose(norms, norms[0], rtol=1e-6)  # one norm for all directions
        np.testing.assert_allclose(np.abs(np.sum(cols / norms[:, None] * vecs[:, :m].T, axis=1)), 1.0, atol=1e-5)
