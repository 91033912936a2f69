"""AdaRing's training mechanisms inside a (tiny) CLIP: the preconditioned step against the dense gradient,
rank adaptation under its budget, resume with both, and evaluation of a rank-adapted run."""

from __future__ import annotations

import json
from collections import defaultdict
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from _helpers import make_coop_dataset, register_tiny, tiny_config, tiny_model
from safetensors.torch import load_file

import trkit_vlm as tv
from trkit.nn import CrossLayerTR
from trkit.nn.precondition import ring_cores, tangent_projection
from trkit.ring import TensorRing
from trkit_vlm.adapters import AdaRingConfig, MMAConfig, adapter_parameters, count_trainable, get_adapters
from trkit_vlm.adapters.adaring.config import rank_budget_params
from trkit_vlm.evaluation.run import evaluate_run
from trkit_vlm.models import tower_info
from trkit_vlm.training.conditioning import StepConditioning
from trkit_vlm.training.config import OptimConfig
from trkit_vlm.training.train import train

pytestmark = pytest.mark.filterwarnings("ignore:.*RANDOM weights")


@pytest.fixture(scope="module")
def data_root(tmp_path_factory) -> Path:
    register_tiny()
    return make_coop_dataset(tmp_path_factory.mktemp("tiny"))


def _rings(aset) -> dict[str, CrossLayerTR]:
    return {n: m for n, m in aset.named_modules() if isinstance(m, CrossLayerTR)}


def _dense_gradients(model, aset) -> dict[str, torch.Tensor]:
    """One backward pass of a CLIP loss; returns ``dL/dW`` of every ring's dense weights ``(L, d_in, d_out)``
    (read from the per-pass dense weights the adapter set builds; the shared projection sums both towers)."""
    built = defaultdict(list)
    real = aset.tower_pre_forward

    def pre(tower):
        real(tower)
        for b, weights in enumerate(aset._dense[tower]):
            for p, w in weights.items():
                w.retain_grad()
                built[f"branches.{b}.{p}"].append(w)

    aset.tower_pre_forward = pre
    g = torch.Generator().manual_seed(5)
    images = torch.randn(4, 3, 32, 32, generator=g, dtype=torch.float64)
    ids = torch.randint(1, 1000, (3, 16), generator=g)
    img, txt = model(images, ids)[:2]
    F.cross_entropy(20.0 * img @ txt.T, torch.tensor([0, 1, 2, 1])).backward()
    aset.tower_pre_forward = real
    return {name: sum(w.grad for w in ws) for name, ws in built.items()}


def _dense(module: CrossLayerTR) -> torch.Tensor:
    return module.weights().detach().clone()


@pytest.mark.parametrize("init", ["kaiming", "zero_up"])
def test_gauss_newton_step_is_the_projected_dense_step(init):
    """With the Gauss-Newton preconditioner one small SGD step moves every ring's weights along
    ``-lr P_T D`` (cosine > 0.99, size within 5%); plain SGD on the cores moves them several times
    further and off that direction."""
    torch.manual_seed(0)
    model = tv.add_adapters(tiny_model().double(), AdaRingConfig(hidden=8, ranks=[2, (1, 2, 3)], init=init))
    aset = get_adapters(model)
    if init == "zero_up":  # one step from zero: the up rings are non-zero, as after the first update
        with torch.no_grad():
            for name, m in _rings(aset).items():
                if ".up_" in name:
                    m.g_layer.normal_(0, 0.3)
    dense_grad = _dense_gradients(model, aset)
    lr = 1e-4
    targets = {  # -lr P_T D in the (L, d_in, d_out) layout; the ring's own mode order is (d_in, d_out, L)
        n: -lr * tangent_projection(ring_cores(m), dense_grad[n].permute(1, 2, 0)).permute(2, 0, 1)
        for n, m in _rings(aset).items()
    }
    results = {}
    for method in ("gauss_newton", "none"):
        before = {n: _dense(m) for n, m in _rings(aset).items()}
        saved = [p.detach().clone() for p in aset.parameters()]
        grads = [None if p.grad is None else p.grad.clone() for p in aset.parameters()]
        cond = StepConditioning(aset, OptimConfig(precondition=method, precondition_damping=1e-3), total_steps=1)
        cond.before_step()
        torch.optim.SGD(adapter_parameters(model), lr=lr).step()
        for name, m in _rings(aset).items():
            target, step = targets[name], _dense(m) - before[name]
            cos = float(F.cosine_similarity(step.flatten(), target.flatten(), dim=0))
            results[(method, name)] = (cos, float(step.norm() / target.norm()))
        with torch.no_grad():  # back to the same point for the other method
            for p, s, g in zip(aset.parameters(), saved, grads):
                p.copy_(s)
                p.grad = g
    gn = [results[("gauss_newton", n)] for n in _rings(aset)]
    # The damping (1e-3 in gain units) leaves out directions of near-zero gain, so a ring whose
    # Gram is nearly singular moves a little less than P_T D; every other ring moves by it exactly.
    assert all(c > 0.85 and 0.8 < r < 1.01 for c, r in gn), gn
    assert sorted(c for c, _ in gn)[len(gn) // 2] > 0.995 and sorted(r for _, r in gn)[len(gn) // 2] > 0.99
    plain = [results[("none", n)] for n in _rings(aset)]
    assert max(r for _, r in plain) > 3.0  # the test can tell the two apart
    assert min(c for c, _ in plain) < 0.9


def test_preconditioned_update_follows_the_dense_gradient_in_training():
    """The issue's check on a tiny CLIP problem: the reconstructed-weight update of a preconditioned
    step has cosine > 0.9 with the dense projected gradient, for both preconditioners, on every ring."""
    torch.manual_seed(1)
    model = tv.add_adapters(tiny_model().double(), AdaRingConfig(hidden=8, ranks=[1, 2], init="kaiming"))
    aset = get_adapters(model)
    dense_grad = _dense_gradients(model, aset)
    projected = {
        n: tangent_projection(ring_cores(m), dense_grad[n].permute(1, 2, 0)).permute(2, 0, 1)
        for n, m in _rings(aset).items()
    }
    cosines = {}
    for method in ("gauss_newton", "scaled_gd"):
        cores = {n: [c.detach().clone() for c in ring_cores(m)] for n, m in _rings(aset).items()}
        grads = {n: [c.grad.clone() for c in ring_cores(m)] for n, m in _rings(aset).items()}
        StepConditioning(aset, OptimConfig(precondition=method, precondition_damping=1e-3), total_steps=1).before_step()
        for n, m in _rings(aset).items():
            u = [c.grad for c in ring_cores(m)]
            # first-order move of the weights along -u: a jvp of the ring's reconstruction
            move = torch.func.jvp(lambda *c: TensorRing(list(c), validate=False).to_dense(), tuple(cores[n]), tuple(u))
            cos = F.cosine_similarity(move[1].permute(2, 0, 1).flatten(), projected[n].flatten(), dim=0)
            cosines[(method, n)] = float(cos)
            for c, g in zip(ring_cores(m), grads[n]):
                c.grad = g.clone()
    assert all(c > 0.9 for (method, _), c in cosines.items() if method == "gauss_newton"), cosines
    assert all(c > 0.85 for c in cosines.values()), cosines  # ScaledGD counts some directions twice


def test_the_run_config_sets_the_preconditioner():
    aset = get_adapters(tv.add_adapters(tiny_model(), AdaRingConfig(hidden=4, ranks=[1, 2])))
    cond = StepConditioning(aset, OptimConfig(precondition="scaled_gd", precondition_damping=0.5), total_steps=3)
    assert (cond.pre.method, cond.pre.damping) == ("scaled_gd", 0.5) and len(cond.pre.modules) == 10
    assert cond.describe() == {
        "precondition": "scaled_gd",
        "precondition_damping": 0.5,
        "max_grad_norm": None,
        "core_step_ratio": None,
    }
    assert StepConditioning(aset, OptimConfig(), total_steps=3).pre is None


def test_dense_adapters_get_no_preconditioner():
    model = tv.add_adapters(tiny_model(), MMAConfig(hidden=4))
    cond = StepConditioning(get_adapters(model), OptimConfig(precondition="gauss_newton"), total_steps=3)
    assert cond.pre is None and cond.ranks is None
    assert cond.describe() == {
        "precondition": None,
        "precondition_damping": None,
        "max_grad_norm": None,
        "core_step_ratio": None,
    }


def _ranked(**over) -> dict:
    return {
        "adapter.ranks": [2, [2, 3, 2]],
        "adapter.init": "kaiming",
        "adapter.rank_budget": 2400,
        "adapter.rank_warmup": 0.0,
        "adapter.rank_final": 0.2,
        "adapter.rank_every": 1,
        "adapter.learn_branch_scale": False,
        "optim.precondition": "gauss_newton",
        "optim.epochs": 4,
        "optim.lr": 0.05,
        **over,
    }


def test_rank_adaptation_keeps_the_budget_and_eval_reproduces_it(tmp_path, data_root, monkeypatch):
    """Every allocation step stays within the scheduled budget, the run ends within the budget with
    different ranks per projection, the saved adapter is the pruned one, and ``evaluate_run`` rebuilds
    it from the run folder alone and reproduces metrics.json."""
    from trkit.nn import RankAllocator

    seen = []
    real_update = RankAllocator.update

    def update(self, step):
        changed = real_update(self, step)
        seen.append((step, self.n_params(), self.budget_at(step)))
        return changed

    monkeypatch.setattr(RankAllocator, "update", update)
    cfg = tiny_config(tmp_path, data_root, method="adaring", **_ranked())
    m = train(cfg, progress=False)
    steps = m["epochs"] * 2  # 2 shots of 2 base classes, batch 2
    assert [s for s, _, _ in seen] == list(range(1, steps + 1))
    assert all(n <= budget for _, n, budget in seen)
    assert seen[-1][2] == 2400 and seen[0][1] > 2400  # it started above the budget and came down
    ra = m["rank_adaptation"]
    assert m["n_trainable"] == ra["n_params"] <= ra["budget"] == 2400
    assert len({tuple(r) for r in ra["ranks"].values()}) > 1  # projections ended with different ranks
    assert ra["ranks"] != ra["init_ranks"]
    run = cfg.run_dir()
    saved = load_file(run / "adapters.safetensors")
    assert sum(v.numel() for k, v in saved.items() if "bond_mask" not in k and k != "branch_scale") == ra["n_params"]
    assert not any("bond_mask" in k for k in saved)
    ev = evaluate_run(str(run))
    metrics = json.loads((run / "metrics.json").read_text())
    for k in ("base", "novel", "hm", "all"):
        assert ev[k] == metrics[k]
    log = [json.loads(line) for line in (run / "log.jsonl").read_text().splitlines()]
    epochs = [r for r in log if r["type"] == "epoch"]
    assert all(r["clip_fraction"] == 0.0 and r["grad_norm_median"] > 0 for r in epochs)
    assert epochs[-1]["adapter_params"] <= 2400


def test_fraction_budget_is_of_mma_at_its_own_placement():
    info = tower_info(tiny_model())
    cfg = AdaRingConfig(hidden=8, rank_budget=0.1)
    mma = count_trainable(tv.add_adapters(tiny_model(), MMAConfig(hidden=8)))
    assert rank_budget_params(cfg, info) == int(0.1 * mma)
    # Adapting every layer does not raise the budget: it stays a fraction of MMA as MMA runs.
    every = AdaRingConfig(hidden=8, rank_budget=0.1, text_layers="all", image_layers="ALL")
    assert rank_budget_params(every, info) == int(0.1 * mma)
    every_mma = MMAConfig(hidden=8, text_layers="all", image_layers="all")
    mma_every = count_trainable(tv.add_adapters(tiny_model(), every_mma))
    assert mma_every > mma and rank_budget_params(every, info) < int(0.1 * mma_every)
    assert rank_budget_params(AdaRingConfig(rank_budget=1234), info) == 1234
    assert rank_budget_params(AdaRingConfig(), info) is None


def test_a_budget_below_rank_one_is_refused(tmp_path, data_root):
    cfg = tiny_config(tmp_path, data_root, method="adaring", **_ranked(**{"adapter.rank_budget": 50}))
    with pytest.raises(ValueError, match="below the smallest allowed rings"):
        train(cfg, progress=False)


def test_resume_with_preconditioner_and_rank_allocator_is_bitwise(tmp_path, data_root):
    """Interrupted after epoch 2 (masks changing every step) and resumed: the same adapter bytes and
    metrics as the uninterrupted run."""
    over = _ranked(**{"optim.epochs": 4, "loss.lambda_text": 1.0, "data.augment": True})
    full = train(tiny_config(tmp_path / "a", data_root, method="adaring", **over), progress=False)
    cfg = tiny_config(tmp_path / "b", data_root, method="adaring", **over)
    assert train(cfg, progress=False, stop_after_epoch=2)["stopped_after_epoch"] == 2
    resumed = train(cfg, progress=False, resume=True)
    a = load_file(Path(full["run_dir"]) / "adapters.safetensors")
    b = load_file(Path(resumed["run_dir"]) / "adapters.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert resumed["rank_adaptation"] == full["rank_adaptation"]
    assert (resumed["base"], resumed["novel"]) == (full["base"], full["novel"])


def test_run_config_checks_the_training_options():
    from trkit_vlm.training.config import RunConfig, apply_overrides

    cfg = RunConfig(method="adaring")
    ok = apply_overrides(cfg, ["optim.precondition=scaled_gd", "loss.frozen_templates=openai_imagenet"]).validate()
    assert ok.optim.precondition == "scaled_gd"
    for bad, msg in (
        ("optim.precondition=newton", "optim.precondition must be one of"),
        ("optim.precondition_damping=0", "precondition_damping must be a finite number > 0"),
        ("loss.lambda_logits=-1", "loss.lambda_logits must be a finite number >= 0"),
        ("loss.frozen_templates=imagenet", "unknown template set"),
        ("loss.frozen_templates=[no placeholder]", "containing"),
        ("adapter.rank_budget=0", "rank_budget must be > 0"),
        ("adapter.rank_budget=1500.5", "must be whole"),
        ("adapter.rank_warmup=0.8", "sum <= 1"),
        ("adapter.rank_score=random", "rank_score must be one of"),
    ):
        with pytest.raises(ValueError, match=msg):
            apply_overrides(cfg, [bad]).validate()


def test_core_step_ratio_limits_steps_and_is_inert_when_loose(tmp_path, data_root):
    """``optim.core_step_ratio``: a tiny ratio shrinks the core steps (logged fraction) and moves the cores
    less than an unlimited run; a ratio no step reaches gives exactly the unlimited run."""
    import torch
    from safetensors.torch import load_file

    def run(name, **over):
        cfg = tiny_config(
            tmp_path / name, data_root, method="adaring", **_ranked(**{"adapter.rank_budget": None, **over})
        )
        m = train(cfg, progress=False)
        log = [json.loads(line) for line in (cfg.run_dir() / "log.jsonl").read_text().splitlines()]
        return m, [r for r in log if r["type"] == "epoch"], load_file(cfg.run_dir() / "adapters.safetensors")

    free, free_log, free_w = run("free")
    loose, loose_log, loose_w = run("loose", **{"optim.core_step_ratio": 1e6})
    tight, tight_log, tight_w = run("tight", **{"optim.core_step_ratio": 1e-4})
    assert "core_step_limited_fraction" not in free_log[0]
    assert all(r["core_step_limited_fraction"] == 0.0 for r in loose_log)
    assert all(torch.equal(free_w[k], loose_w[k]) for k in free_w) and loose["hm"] == free["hm"]
    # every step limited at first; fewer as the cosine schedule takes lr towards 0 (the cap is ratio/lr)
    assert tight_log[0]["core_step_limited_fraction"] == 1.0
    assert all(r["core_step_limited_fraction"] > 0 for r in tight_log)
    _, _, init_w = run("init", **{"optim.lr": 1e-12})  # the same seed: the cores as initialised
    cores = [k for k in free_w if ".g_" in k]
    assert cores

    def moved(w):
        return sum(float((w[k] - init_w[k]).norm()) for k in cores)

    assert 0 < moved(tight_w) < 0.2 * moved(free_w)
