"""compress_mma: exact recovery of low-TR-rank MMA sets, budget respected, end to end on a tiny CLIP, CLI."""

import json

import pytest
import torch
from _helpers import tiny_model

from trkit.nn import CrossLayerTR
from trkit_vlm.adapters import adapters_disabled, get_adapters, import_mma_checkpoint, load_adapters
from trkit_vlm.cli import main as cli_main
from trkit_vlm.compress import compress_mma


def _mma_sd(dt, dv, h, layers, ranks=None, seed=0):
    """MMA state dict (official keys); with ``ranks`` every stacked projection is an exact TR of those ranks."""
    torch.manual_seed(seed)
    L = len(layers)
    dims = {"down_text": (dt, h), "down_image": (dv, h), "shared": (h, h), "up_text": (h, dt), "up_image": (h, dv)}
    stacks = {}
    for p, (i, o) in dims.items():
        if ranks is None:
            stacks[p] = torch.randn(L, i, o) / i**0.5
        else:
            tr = CrossLayerTR(i, o, L, ranks[p], bias=False).double()
            stacks[p] = tr.weights().detach()
    names = {
        "down_text": "text_adapter.{}.down.0",
        "down_image": "visual_adapter.{}.down.0",
        "shared": "shared_adapter.{}.0",
        "up_text": "text_adapter.{}.up",
        "up_image": "visual_adapter.{}.up",
    }
    sd = {}
    for p, key in names.items():
        for k, layer in enumerate(layers):
            sd[key.format(layer) + ".weight"] = stacks[p][k].t().float().contiguous()
            sd[key.format(layer) + ".bias"] = torch.randn(dims[p][1]) * 0.1
    return sd


LOW = {"down_text": (1, 2, 2), "down_image": 2, "shared": (2, 1, 1), "up_text": (2, 2, 1), "up_image": 1}


def test_exact_low_rank_set_is_recovered():
    sd = _mma_sd(128, 192, 16, range(5, 9), ranks=LOW)
    res = compress_mma(sd, budget=0.2)
    assert res.n_params <= 0.2 * res.mma_params
    for p, r in res.projections.items():
        assert r["rel_error"] < 1e-6, (p, r)
    assert max(res.output_rel_error.values()) < 1e-5
    res_tol = compress_mma(sd, tol=1e-6)
    assert all(r["rel_error"] < 1e-6 for r in res_tol.projections.values())


def test_budget_respected_and_more_budget_lowers_error():
    sd = _mma_sd(64, 96, 8, range(2, 6))
    small, large = compress_mma(sd, budget=0.12), compress_mma(sd, budget=0.4)
    for res, b in ((small, 0.12), (large, 0.4)):
        assert res.n_params <= b * res.mma_params
        assert res.n_params == sum(r["n_params"] for r in res.projections.values()) + 1
        assert set(res.projections) == {"down_text", "down_image", "shared", "up_text", "up_image"}

    def err(r):
        return sum(v["rel_error"] ** 2 for v in r.projections.values())

    assert err(large) < err(small)
    assert "total" in small.table()
    with pytest.raises(ValueError, match="below the smallest AdaRing fit"):
        compress_mma(sd, budget=0.001)
    with pytest.raises(ValueError, match="fraction in"):
        compress_mma(sd, budget=2.0)


def test_end_to_end_tiny_clip_and_cli(tmp_path, capsys):
    sd = _mma_sd(48, 64, 8, range(2, 5), ranks=LOW, seed=1)
    ckpt = tmp_path / "model.pth.tar-5"
    torch.save({"state_dict": sd, "epoch": 5}, ckpt)
    base, other = tiny_model(), tiny_model()
    img, tok = torch.randn(2, 3, 32, 32), torch.randint(1, 1000, (3, 16))
    mma = import_mma_checkpoint(base, str(ckpt), scale=1.0)  # scale 1 so adapter errors would show
    res = compress_mma(str(ckpt), budget=1.0)
    res.config.scale = 1.0
    ring = res.apply(other)
    assert get_adapters(ring).config.method == "adaring"
    with torch.no_grad():
        a, b = mma(img, tok), ring(img, tok)
        with adapters_disabled(mma):
            f = mma(img, tok)
    torch.testing.assert_close(b[0], a[0], rtol=1e-4, atol=1e-5)
    assert (a[0] - f[0]).abs().max() > 1e-3  # the adapters matter, so the match above means something

    out = tmp_path / "ring"
    rc = cli_main(["compress", str(ckpt), "--budget", "0.5", "--out", str(out)])
    assert rc == 0
    report = json.loads((out / "report.json").read_text())
    assert report["n_params"] <= 0.5 * report["mma_params"]
    assert "rel.error" in capsys.readouterr().out
    fresh = load_adapters(tiny_model(), out / "adapters.safetensors")
    assert get_adapters(fresh).config.method == "adaring"
    assert cli_main(["compress", str(tmp_path / "missing.pt"), "--out", str(out)]) == 2
    assert "not found" in capsys.readouterr().err
