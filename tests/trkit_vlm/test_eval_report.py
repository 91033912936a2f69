"""Evaluation (base / novel / HM / all against a hand-computed reference) and the results tables."""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from _helpers import CLASSES, make_coop_dataset, register_tiny, tiny_config

from trkit_vlm.data import load_dataset
from trkit_vlm.evaluation.evaluate import evaluate, evaluate_base_novel, harmonic_mean
from trkit_vlm.evaluation.report import aggregate, collect_results, write_report
from trkit_vlm.models import load_clip

pytestmark = pytest.mark.filterwarnings("ignore:.*RANDOM weights")


def test_harmonic_mean():
    assert harmonic_mean(80.0, 60.0) == pytest.approx(2 * 80 * 60 / 140)
    assert harmonic_mean(0.0, 0.0) == 0.0 and harmonic_mean(50.0, 50.0) == 50.0


def test_base_novel_against_reference(tmp_path):
    root = make_coop_dataset(tmp_path, n_train=1, n_val=1, n_test=4)
    data = load_dataset("coop", root)
    torch.manual_seed(0)
    bundle = load_clip(register_tiny())
    model, tok = bundle.model, bundle.tokenizer
    out = evaluate_base_novel(model, tok, data, batch_size=5)
    # Reference: one image at a time through open_clip's own transform and model.
    from PIL import Image

    with torch.no_grad():
        img = torch.cat(
            [model.encode_image(bundle.preprocess_val(Image.open(p).convert("RGB"))[None]) for p, _ in data.test]
        )
        txt = model.encode_text(tok([f"a photo of a {c.replace('_', ' ')}." for c in CLASSES]))
    img, txt = F.normalize(img, dim=-1), F.normalize(txt, dim=-1)
    y = torch.tensor([label for _, label in data.test])
    sims = img @ txt.t()
    ref_all = 100 * (sims.argmax(1) == y).float().mean().item()
    b = y < 2
    ref_base = 100 * (sims[b][:, :2].argmax(1) == y[b]).float().mean().item()
    ref_novel = 100 * (sims[~b][:, 2:].argmax(1) == y[~b] - 2).float().mean().item()
    assert out["all"] == pytest.approx(ref_all) and out["base"] == pytest.approx(ref_base)
    assert out["novel"] == pytest.approx(ref_novel) and out["hm"] == pytest.approx(harmonic_mean(ref_base, ref_novel))
    assert evaluate(model, tok, data.test, data.classnames) == pytest.approx(ref_all)


def _fake_runs(root: Path) -> dict:
    rng = np.random.default_rng(0)
    truth = {}
    for ds in ("dtd", "eurosat"):
        for method in ("mma", "adaring"):
            vals = []
            for seed in (1, 2, 3):
                b, n = rng.uniform(60, 90), rng.uniform(40, 80)
                vals.append((b, n))
                d = root / ds / method / "shots_16" / f"seed{seed}"
                d.mkdir(parents=True)
                (d / "metrics.json").write_text(
                    json.dumps(
                        {
                            "dataset": ds,
                            "method": method,
                            "shots": 16,
                            "seed": seed,
                            "subsample": "base",
                            "base": b,
                            "novel": n,
                            "hm": harmonic_mean(b, n),
                            "all": (b + n) / 2,
                            "n_trainable": 1000,
                        }
                    )
                )
            truth[(ds, method)] = np.array(vals)
    return truth


def test_aggregate_and_tables(tmp_path):
    truth = _fake_runs(tmp_path)
    agg = {(r["dataset"], r["method"]): r for r in aggregate(collect_results(tmp_path))}
    for key, v in truth.items():
        r = agg[key]
        assert r["n_seeds"] == 3
        assert r["base_mean"] == pytest.approx(v[:, 0].mean()) and r["base_std"] == pytest.approx(v[:, 0].std(ddof=1))
        assert r["hm_mean"] == pytest.approx(harmonic_mean(v[:, 0].mean(), v[:, 1].mean()))
        hms = [harmonic_mean(b, n) for b, n in v]
        assert r["hm_std"] == pytest.approx(np.std(hms, ddof=1))
    paths = write_report(tmp_path, tmp_path / "rep")
    md = paths["markdown"].read_text()
    assert "### Average (2)" in md and "### dtd" in md and "| Base | Novel | HM |" in md
    avg_b = np.mean([truth[("dtd", "mma")][:, 0].mean(), truth[("eurosat", "mma")][:, 0].mean()])
    rows = list(csv.DictReader(io.StringIO(paths["csv"].read_text())))
    avg = next(r for r in rows if r["dataset"] == "Average (2)" and r["method"] == "mma")
    assert float(avg["base_mean"]) == pytest.approx(avg_b, abs=1e-4)
    assert paths["png"].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_cli_eval_and_table(tmp_path, capsys):
    from trkit_vlm.cli import main
    from trkit_vlm.training.train import train

    root = make_coop_dataset(tmp_path / "d", n_train=2, n_val=1, n_test=2)
    register_tiny()
    cfg = tiny_config(tmp_path, root)
    m = train(cfg, progress=False)
    assert main(["eval", str(cfg.run_dir())]) == 0
    res = json.loads(capsys.readouterr().out)
    assert res["hm"] == pytest.approx(m["hm"]) and res["all"] == pytest.approx(m["all"])
    assert (cfg.run_dir() / f"eval_{res['dataset']}_test.json").is_file()
    # Cross-dataset: the run's adapters on an ImageFolder tree with other classes.
    from PIL import Image

    for split in ("train", "test"):
        for c in ("cat", "dog", "owl"):
            (tmp_path / "f" / split / c).mkdir(parents=True)
            Image.new("RGB", (32, 32), (len(c) * 30, 0, 0)).save(tmp_path / "f" / split / c / "0.png")
    assert main(["eval", str(cfg.run_dir()), "--dataset", "folder", "--root", str(tmp_path / "f")]) == 0
    res = json.loads(capsys.readouterr().out)
    assert res["dataset"] == "f" and res["trained_on"] == root.name and "all" in res
    assert main(["eval", str(tmp_path / "nothing")]) == 2
    assert "not a run folder" in capsys.readouterr().err
    assert main(["table", str(tmp_path / "out"), "--no-plot"]) == 0
    assert "| mma | 2 | 1 |" in capsys.readouterr().out
    assert main(["table", str(tmp_path / "empty_nope")]) == 2
