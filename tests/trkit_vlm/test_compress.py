"""compress_mma: exact recovery, the budget, the output-aware weighting against independent references,
the MMA scale, and the adapters on a tiny CLIP."""

import pytest
import torch
from _helpers import tiny_model
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from trkit.nn import CrossLayerTR
from trkit_vlm.adapters import MMAConfig, adapters_disabled, get_adapters, import_mma_checkpoint, save_adapters
from trkit_vlm.compression import Calibration, compress_mma, gaussian_calibration
from trkit_vlm.compression.fit import Whitening
from trkit_vlm.compression.projections import OutputMeter, mma_projections

DT, DV, H, LAYERS = 24, 32, 8, range(2, 5)
DIMS = {"down_text": (DT, H), "down_image": (DV, H), "shared": (H, H), "up_text": (H, DT), "up_image": (H, DV)}
NAMES = {
    "down_text": "text_adapter.{}.down.0",
    "down_image": "visual_adapter.{}.down.0",
    "shared": "shared_adapter.{}.0",
    "up_text": "text_adapter.{}.up",
    "up_image": "visual_adapter.{}.up",
}
LOW = {"down_text": (1, 2, 2), "down_image": 2, "shared": (2, 1, 1), "up_text": (2, 2, 1), "up_image": 1}


def _mma_sd(dims=DIMS, layers=LAYERS, ranks=None, seed=0):
    """MMA state dict (official keys); with ``ranks`` every stacked projection is an exact TR of those ranks."""
    torch.manual_seed(seed)
    L = len(layers)
    sd = {}
    for p, (i, o) in dims.items():
        if ranks is None:
            stack = torch.randn(L, i, o) / i**0.5
        else:
            stack = CrossLayerTR(i, o, L, ranks[p], bias=False).double().weights().detach()
        for k, layer in enumerate(layers):
            sd[NAMES[p].format(layer) + ".weight"] = stack[k].t().float().contiguous()
            sd[NAMES[p].format(layer) + ".bias"] = torch.randn(o) * 0.1
    return sd


def _low_dim_calibration(n_pairs=3, n=200, rank=3, seed=0):
    """Adapter inputs in a ``rank``-dimensional subspace (plus a little noise), with block-output energies."""
    g = torch.Generator().manual_seed(seed)
    inputs, energy = {}, {}
    for tower, width in (("text", DT), ("image", DV)):
        basis = torch.randn(rank, width, generator=g, dtype=torch.float64)
        inputs[tower] = [
            torch.randn(n, rank, generator=g, dtype=torch.float64) @ basis
            + 0.01 * torch.randn(n, width, generator=g, dtype=torch.float64)
            for _ in range(n_pairs)
        ]
        energy[tower] = [torch.full((n,), 1e-3, dtype=torch.float64) for _ in range(n_pairs)]
    return Calibration(inputs, energy, "data")


@pytest.mark.parametrize("data_aware", [False, True])
def test_budget_one_is_exact_on_an_exactly_low_rank_set(data_aware):
    sd = _mma_sd(ranks=LOW)
    cal = _low_dim_calibration() if data_aware else None
    res = compress_mma(sd, budget=1.0, calibration=cal)
    assert res.n_params <= res.mma_params
    for p, r in res.projections.items():
        assert r["weight_rel_error"] < 1e-6, (p, r)
    assert max(res.output_rel_error.values()) < 1e-6
    exact_tol = compress_mma(sd, tol=1e-6)
    assert all(r["weight_rel_error"] < 1e-6 for r in exact_tol.projections.values())


def test_budget_never_exceeded_and_above_one_reaches_the_exact_fit():
    sd = _mma_sd(seed=3)  # full-rank stacks: the exact fit needs more than MMA's parameters
    small, large = compress_mma(sd, budget=0.15), compress_mma(sd, budget=0.5)
    for res, b in ((small, 0.15), (large, 0.5)):
        assert res.n_params <= b * res.mma_params
        assert res.n_params == sum(r["n_params"] for r in res.projections.values()) + 1
        assert res.n_params == sum(v.numel() for v in res.adapter_set().state_dict().values())
    assert sum(v**2 for v in large.output_rel_error.values()) < sum(v**2 for v in small.output_rel_error.values())
    exact = compress_mma(sd, budget=3.0)
    assert all(r["weight_rel_error"] < 1e-6 for r in exact.projections.values())
    assert 1.0 < exact.fraction <= 3.0
    assert "total" in small.table() and "weight err" in small.table()
    with pytest.raises(ValueError, match="below the smallest AdaRing fit"):
        compress_mma(sd, budget=0.001)
    with pytest.raises(ValueError, match="positive fraction"):
        compress_mma(sd, budget=0.0)
    with pytest.raises(ValueError, match="tol must be in"):
        compress_mma(sd, tol=1.5)


@settings(max_examples=5, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(budget=st.floats(0.15, 1.2), seed=st.integers(0, 3), data_aware=st.booleans())
def test_budget_is_never_exceeded(budget, seed, data_aware):
    sd = _mma_sd(seed=seed)
    res = compress_mma(sd, budget=budget, calibration=_low_dim_calibration(seed=seed) if data_aware else None)
    assert res.n_params <= budget * res.mma_params


def test_output_errors_match_the_adapter_modules():
    """The reported output errors equal ||scale (AdaRing branch - MMA branch)|| / sqrt(block energy), computed
    with the real adapter modules on the calibration inputs."""
    sd = _mma_sd(seed=1)
    cal = _low_dim_calibration(seed=1)
    res = compress_mma(sd, budget=0.3, calibration=cal, scale=0.5)
    towers = {"text": {"width": DT, "depth": 4}, "image": {"width": DV, "depth": 4}}
    mma = MMAConfig(hidden=H, text_layers=(2, 4), image_layers=(2, 4), scale=0.5).build(towers).double()
    mma.load_state_dict(sd)
    ring = res.adapter_set().double()
    with torch.no_grad():
        for tower, hs in cal.inputs.items():
            num = sum(
                float((ring.branch(tower, k, h) - mma.branch(tower, k, h)).pow(2).sum()) for k, h in enumerate(hs)
            )
            ref = (num * 0.5**2 / cal.block_energy[tower]) ** 0.5
            assert res.output_rel_error[tower] == pytest.approx(ref, rel=1e-4)
    assert res.output_reference == "block output"


def test_data_aware_fit_beats_data_free_on_the_outputs():
    """Inputs confined to a 3-dimensional subspace: weighting by them lowers the calibration output error
    at the same budget (the data-free fit spends parameters on directions the data never visits)."""
    sd = _mma_sd(seed=2)
    cal = _low_dim_calibration(seed=2)
    aware, free = compress_mma(sd, budget=0.3, calibration=cal), compress_mma(sd, budget=0.3)
    meter = OutputMeter(mma_projections(sd)[0], cal, 0.001)

    def err(res):
        ring = res.adapter_set().double()
        stacks = {p: (ring.branches[0][p].weights().detach(), ring.branches[0][p].bias.detach()) for p in DIMS}
        return meter.error(stacks)

    assert err(aware) < 0.8 * err(free)
    assert aware.n_params <= 0.3 * aware.mma_params and free.n_params <= 0.3 * free.mma_params


def test_whitening_keeps_the_ring_structure():
    """Unwhitened cores reconstruct lam_k^-1 A^-1/2 W~_k B^-1/2: whitening acts on one mode each."""
    g = torch.Generator().manual_seed(0)
    n_layers, d_in, d_out = 3, 5, 4

    def spd(n):
        m = torch.randn(n, n, generator=g, dtype=torch.float64)
        return m @ m.T + n * torch.eye(n, dtype=torch.float64)

    a, b = spd(d_in), spd(d_out)
    ea, va = torch.linalg.eigh(a)
    eb, vb = torch.linalg.eigh(b)
    wh = Whitening(
        (va * ea.sqrt()) @ va.T,
        (va / ea.sqrt()) @ va.T,
        (vb * eb.sqrt()) @ vb.T,
        (vb / eb.sqrt()) @ vb.T,
        torch.tensor([0.5, 1.0, 2.0], dtype=torch.float64),
    )
    cores = [torch.randn(s, generator=g, dtype=torch.float64) for s in ((2, d_in, 3), (3, d_out, 2), (2, n_layers, 2))]
    whitened = torch.einsum("aib,bjc,cla->lij", *cores)
    g_in, g_out, g_layer = wh.unwhiten(cores)
    got = torch.einsum("aib,bjc,cla->lij", g_in, g_out, g_layer)
    ref = wh.left_inv @ whitened @ wh.right_inv / wh.layer[:, None, None]
    torch.testing.assert_close(got, ref)
    torch.testing.assert_close(wh.left_inv @ wh.left_inv, torch.linalg.inv(a))  # left_inv is A^-1/2
    w = torch.randn(n_layers, d_in, d_out, generator=g, dtype=torch.float64)
    torch.testing.assert_close(wh.apply(w).permute(2, 0, 1), wh.layer[:, None, None] * (wh.left @ w @ wh.right))


def test_scale_is_kept(tmp_path):
    """A stored MMA scale survives compression; official checkpoints take MMA's 0.001 unless told."""
    model = tiny_model()
    from trkit_vlm.adapters import add_adapters

    add_adapters(model, MMAConfig(hidden=8, scale=0.01))
    path = save_adapters(model, tmp_path / "mma.safetensors")
    res = compress_mma(str(path), budget=0.5)
    assert res.config.scale == 0.01 and res.report()["scale"] == 0.01
    assert res.report()["scale_origin"] == "adapter file"
    with pytest.raises(ValueError, match="trained with scale 0.01"):
        compress_mma(str(path), budget=0.5, scale=0.02)
    sd = get_adapters(model).state_dict()
    assert compress_mma(sd, budget=0.5).config.scale == 0.001
    assert compress_mma(sd, budget=0.5, scale=0.05).config.scale == 0.05


def test_end_to_end_tiny_clip(tmp_path):
    """The compressed adapter on a tiny CLIP computes MMA's outputs (exactly low-rank set, budget 1.0)."""
    dims = {"down_text": (48, 8), "down_image": (64, 8), "shared": (8, 8), "up_text": (8, 48), "up_image": (8, 64)}
    sd = _mma_sd(dims, range(2, 5), ranks=LOW, seed=1)
    ckpt = tmp_path / "model.pth.tar-5"
    torch.save({"state_dict": sd, "epoch": 5}, ckpt)
    base, other = tiny_model(), tiny_model()
    img, tok = torch.randn(2, 3, 32, 32), torch.randint(1, 1000, (3, 16))
    mma = import_mma_checkpoint(base, str(ckpt), scale=1.0)  # scale 1 so adapter errors would show
    res = compress_mma(str(ckpt), budget=1.0, scale=1.0, calibration=gaussian_calibration({"text": 48, "image": 64}, 3))
    ring = res.apply(other)
    assert get_adapters(ring).config.method == "adaring"
    with torch.no_grad():
        a, b = mma(img, tok), ring(img, tok)
        with adapters_disabled(mma):
            f = mma(img, tok)
    torch.testing.assert_close(b[0], a[0], rtol=1e-4, atol=1e-5)
    assert (a[0] - f[0]).abs().max() > 1e-3  # the adapters matter, so the match above means something
