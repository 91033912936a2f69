"""Bond masks, pruning, truncation and the budgeted rank allocator: masked == pruned exactly, the
budget is never exceeded, scores against independent formulas, training and checkpoint resume."""

import io
import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import trkit.nn as tn
from trkit.errors import InputError, InputTypeError
from trkit.nn import bonds
from trkit.nn.precondition import RingPreconditioner, ring_cores
from trkit.nn.rank import RankAllocator, allocate_slices, slice_magnitudes

F64 = torch.float64


def masked_dense(cores, masks):
    """Reference: the ring with ``diag(mask_k)`` inserted at every bond, by one einsum (the cores
    themselves untouched)."""
    d = len(cores)
    letters = "abcdefghijklmnopqrstuvwxyz"
    bond, mode, diag = letters[:d], letters[d : 2 * d], letters[2 * d : 3 * d]
    # core k: (left bond after its mask) x mode x (right bond before the next mask)
    terms = [diag[k] + mode[k] + bond[(k + 1) % d] for k in range(d)]
    masks_eq = [bond[k] + diag[k] for k in range(d)]
    eq = ",".join(terms + masks_eq) + "->" + mode
    mats = [torch.diag(m.to(cores[0].dtype)) for m in masks]
    return torch.einsum(eq, *cores, *mats)


def make_module(kind, seed, r):
    torch.manual_seed(seed)
    if kind == "cross":
        return tn.CrossLayerTR(6, 4, 3, [r, r + 1, r], bias=True, dtype=F64)
    if kind == "cross_modes":
        return tn.CrossLayerTR(6, 4, 2, [r, 2, r + 1, 2], in_modes=(2, 3), bias=False, dtype=F64)
    return tn.TRLinear(12, 6, [r + 1, r, 2], in_modes=(3, 4), out_modes=(6,), dtype=F64)


def random_masks(module, gen):
    masks = bonds.attach_bond_masks(module)
    for m in masks:
        m.copy_(torch.rand(m.shape, generator=gen) < 0.6)
        m[torch.randint(len(m), (1,), generator=gen)] = True  # at least one slice per bond
    return masks


@settings(max_examples=25, deadline=None)
@given(kind=st.sampled_from(["cross", "cross_modes", "linear"]), r=st.integers(1, 4), seed=st.integers(0, 999))
def test_masked_module_equals_pruned_module(kind, r, seed):
    module = make_module(kind, seed, r)
    masks = random_masks(module, torch.Generator().manual_seed(seed))
    ref = masked_dense([c.detach() for c in ring_cores(module)], masks)
    bonds.apply_bond_masks_(module)
    small = bonds.prune(module)
    assert type(small) is type(module) and bonds.bond_masks(small) is None
    assert small.ranks == bonds.kept_ranks(module) == tuple(int(m.sum()) for m in masks)
    assert small.n_params == bonds.masked_n_params(module) <= module.n_params
    assert (small.n_params == module.n_params) == all(bool(m.all()) for m in masks)
    torch.testing.assert_close(module.ring().to_dense(), ref, rtol=0, atol=1e-12)
    torch.testing.assert_close(small.ring().to_dense(), ref, rtol=0, atol=1e-12)
    x = torch.randn(5, 6 if kind != "linear" else 12, dtype=F64)
    if kind == "linear":
        torch.testing.assert_close(small(x), module(x), rtol=0, atol=1e-12)
    else:
        for layer in range(module.n_layers):
            torch.testing.assert_close(small(x, layer), module(x, layer), rtol=0, atol=1e-12)


def test_masks_travel_with_state_dict():
    a = make_module("cross", 0, 3)
    random_masks(a, torch.Generator().manual_seed(1))
    state = a.state_dict()
    assert {f"bond_mask_{k}" for k in range(3)} <= set(state)
    b = make_module("cross", 5, 3)
    bonds.attach_bond_masks(b)
    b.load_state_dict(state)
    assert bonds.kept_ranks(b) == bonds.kept_ranks(a)


@pytest.mark.parametrize("ranks", [(3, 2, 4), (1, 5, 2)])  # a rank-1 bond, and one wider than its modes
def test_slice_magnitudes_against_dense(ranks):
    ring = tn.CrossLayerTR(5, 4, 3, ranks, dtype=F64).ring()
    mags = slice_magnitudes(ring.cores)
    for k, bond_mags in enumerate(mags):
        assert bond_mags.shape == (ring.ranks[k],)
        for j in range(ring.ranks[k]):
            masks = [torch.ones(r, dtype=torch.bool) for r in ring.ranks]
            masks[k] = torch.zeros(ring.ranks[k], dtype=torch.bool)
            masks[k][j] = True
            ref = float(masked_dense(ring.cores, masks).norm())
            assert math.isclose(float(bond_mags[j]), ref, rel_tol=1e-9), (k, j)


# ---- allocation -----------------------------------------------------------------------------------
@settings(max_examples=40, deadline=None)
@given(
    shapes=st.lists(
        st.tuples(st.lists(st.integers(1, 12), min_size=2, max_size=4), st.integers(1, 6)), min_size=1, max_size=4
    ),
    frac=st.floats(0.0, 1.0),
    fixed=st.integers(0, 50),
    min_rank=st.integers(1, 2),
    seed=st.integers(0, 10_000),
)
def test_allocation_never_exceeds_budget(shapes, frac, fixed, min_rank, seed):
    gen = torch.Generator().manual_seed(seed)
    modes = [m for m, _ in shapes]
    ranks = [[1 + int(torch.randint(r, (1,), generator=gen)) for _ in m] for m, r in shapes]
    masks = [[torch.ones(r, dtype=torch.bool) for r in rk] for rk in ranks]
    scores = [[torch.rand(r, generator=gen, dtype=F64) for r in rk] for rk in ranks]
    full = fixed + sum(bonds.ring_params(m, r) for m, r in zip(modes, ranks))
    floor = fixed + sum(bonds.ring_params(m, [min(min_rank, x) for x in r]) for m, r in zip(modes, ranks))
    budget = int(floor + frac * (full - floor))
    new = allocate_slices(modes, masks, scores, budget, fixed, min_rank)
    kept = [[int(m.sum()) for m in ring] for ring in new]
    total = fixed + sum(bonds.ring_params(m, r) for m, r in zip(modes, kept))
    assert total <= budget
    assert all(k >= min(min_rank, r) for kr, rr in zip(kept, ranks) for k, r in zip(kr, rr))
    if budget >= full:
        assert kept == ranks
    assert all(torch.equal(m, torch.ones_like(m)) for ring in masks for m in ring)  # inputs untouched
    with pytest.raises(InputError, match="below the smallest"):
        allocate_slices(modes, masks, scores, floor - 1, fixed, min_rank)


def test_allocation_removes_lowest_score_per_parameter():
    # two identical rings; ring 1's slices all matter less: it loses slices first
    modes = [[8, 8, 8], [8, 8, 8]]
    masks = [[torch.ones(3, dtype=torch.bool) for _ in range(3)] for _ in range(2)]
    scores = [[torch.full((3,), 10.0, dtype=F64) for _ in range(3)], [torch.tensor([5.0, 1.0, 3.0], dtype=F64)] * 3]
    full = 2 * bonds.ring_params([8, 8, 8], [3, 3, 3])
    one = full - bonds.ring_params([8, 8, 8], [3, 3, 3]) + bonds.ring_params([8, 8, 8], [2, 3, 3])
    new = allocate_slices(modes, masks, scores, one)
    assert [int(m.sum()) for m in new[0]] == [3, 3, 3]
    assert new[1][0].tolist() == [True, False, True]  # slice 1 (score 1) of bond 0 went first
    # a slice whose removal frees more parameters goes first at equal score: bond 1 touches the 32-mode
    modes = [[2, 32, 2]]
    masks = [[torch.ones(2, dtype=torch.bool) for _ in range(3)]]
    scores = [[torch.ones(2, dtype=F64)] * 3]
    new = allocate_slices(modes, masks, scores, bonds.ring_params([2, 32, 2], [2, 2, 2]) - 1)
    assert [int(m.sum()) for m in new[0]] in ([2, 1, 2], [2, 2, 1])


# ---- the allocator over a model ---------------------------------------------------------------------------
class TwoBranches(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.branches = torch.nn.ModuleList(
            torch.nn.ModuleDict(
                {"down": tn.CrossLayerTR(16, 6, 3, r, dtype=F64), "up": tn.CrossLayerTR(6, 16, 3, r, dtype=F64)}
            )
            for r in (4, 3)
        )
        self.scale = torch.nn.Parameter(torch.ones(2, dtype=F64))

    def forward(self, x, layer):
        return sum(s * b["up"](torch.relu(b["down"](x, layer)), layer) for s, b in zip(self.scale, self.branches))


def make_task(seed=0):
    torch.manual_seed(seed)
    model = TwoBranches()
    x = torch.randn(3, 32, 16, dtype=F64)
    y = torch.randn(3, 32, 16, dtype=F64)
    return model, x, y


def run(model, x, y, alloc, opt, pre, start, stop):
    for step in range(start, stop):
        opt.zero_grad()
        loss = sum(((model(x[i], i) - y[i]) ** 2).mean() for i in range(3))
        loss.backward()
        alloc.accumulate()
        pre.step()
        opt.step()
        alloc.update(step + 1)
    return float(loss)


def test_allocator_trains_to_budget_and_prunes_exactly():
    model, x, y = make_task()
    total = sum(bonds.masked_n_params(m) for m in model.modules() if isinstance(m, tn.CrossLayerTR)) + 2
    budget = total // 2
    alloc = RankAllocator(model, budget, total_steps=30, warmup_steps=5, final_steps=5, update_every=2, extra_params=2)
    assert alloc.n_params() == total and alloc.budget_at(0) == total and alloc.budget_at(25) == budget
    sched = [alloc.budget_at(s) for s in range(31)]
    assert all(a >= b for a, b in zip(sched, sched[1:]))
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    pre = RingPreconditioner(model)
    seen = []
    for step in range(30):
        run(model, x, y, alloc, opt, pre, step, step + 1)
        seen.append(alloc.n_params())
        if (step + 1 - 5) % 2 == 0 or step + 1 >= 25:  # a re-allocation step: on budget
            assert seen[-1] <= alloc.budget_at(step + 1)
    assert seen[-1] <= budget
    before = {i: model(x[i], i).detach() for i in range(3)}
    pruned = alloc.prune()
    assert set(pruned) == {"branches.0.down", "branches.0.up", "branches.1.down", "branches.1.up"}
    assert model.branches[0]["down"] is pruned["branches.0.down"]
    n_after = sum(m.n_params for m in pruned.values()) + 2
    assert n_after == alloc.n_params() <= budget
    assert tn.count_params(model) == n_after
    for i in range(3):
        torch.testing.assert_close(model(x[i], i), before[i], rtol=0, atol=1e-12)
    # the budget is spread unevenly: bonds of one module end at different ranks
    assert any(len(set(m.ranks)) > 1 for m in pruned.values()), {n: m.ranks for n, m in pruned.items()}


def test_allocator_checkpoint_resume():
    def build():
        model, x, y = make_task()
        alloc = RankAllocator(model, 900, total_steps=12, warmup_steps=2, update_every=1)
        opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
        return model, x, y, alloc, opt, RingPreconditioner(model)

    model, x, y, alloc, opt, pre = build()
    run(model, x, y, alloc, opt, pre, 0, 6)
    buf = io.BytesIO()
    torch.save({"model": model.state_dict(), "opt": opt.state_dict(), "alloc": alloc.state_dict()}, buf)
    run(model, x, y, alloc, opt, pre, 6, 12)
    final = {k: v.clone() for k, v in model.state_dict().items()}

    model2, x, y, alloc2, opt2, pre2 = build()
    buf.seek(0)
    state = torch.load(buf, weights_only=True)
    model2.load_state_dict(state["model"])
    opt2.load_state_dict(state["opt"])
    alloc2.load_state_dict(state["alloc"])
    run(model2, x, y, alloc2, opt2, pre2, 6, 12)
    for k, v in model2.state_dict().items():
        torch.testing.assert_close(v, final[k], rtol=0, atol=0, msg=k)
    assert alloc2.n_params() <= 900


def test_sensitivity_score_formula():
    m = tn.CrossLayerTR(4, 3, 2, (2, 3, 2), bias=False, dtype=F64)
    alloc = RankAllocator({"m": m}, 10**6, total_steps=10, beta1=0.5, beta2=0.25)
    grads = [[torch.randn_like(c) for c in m.cores] for _ in range(2)]
    i_bar = [torch.zeros_like(c) for c in m.cores]
    u_bar = [torch.zeros_like(c) for c in m.cores]
    for gs in grads:
        for c, g in zip(m.cores, gs):
            c.grad = g.clone()
        alloc.accumulate()
        for k, (c, g) in enumerate(zip(m.cores, gs)):
            ipt = (c.detach() * g).abs()
            i_bar[k] = 0.5 * i_bar[k] + 0.5 * ipt
            u_bar[k] = 0.25 * u_bar[k] + 0.75 * (ipt - i_bar[k]).abs()
    scores = alloc.slice_scores("m")
    for k in range(3):
        ent_right, ent_left = i_bar[k] * u_bar[k], i_bar[k - 1] * u_bar[k - 1]
        ref = ent_right.sum(dim=(1, 2)) + ent_left.sum(dim=(0, 1))
        torch.testing.assert_close(scores[k], ref, rtol=1e-5, atol=1e-12)


def test_magnitude_allocator_drops_a_zero_slice_first():
    m = tn.CrossLayerTR(8, 5, 3, (3, 3, 3), bias=False, dtype=F64)
    with torch.no_grad():
        m.g_out[:, :, 1] = 0  # slice 1 of bond 2 contributes nothing
    alloc = RankAllocator({"m": m}, m.n_params - 1, total_steps=1, score="magnitude")
    before = m.weights().detach()
    assert alloc.update(1)
    assert bonds.bond_masks(m)[2].tolist() == [True, False, True]
    torch.testing.assert_close(m.weights(), before, rtol=0, atol=0)


# ---- truncation ---------------------------------------------------------------------------------------------
def test_truncate_reports_the_exact_error():
    torch.manual_seed(0)
    small = tn.CrossLayerTR(10, 6, 4, (2, 2, 2), bias=True, dtype=F64)
    padded = tn.CrossLayerTR(10, 6, 4, (4, 4, 4), bias=True, dtype=F64)
    with torch.no_grad():  # the same ring embedded in larger ranks (zero padding), plus noise
        for p, c in zip(padded.cores, small.cores):
            p.zero_()
            p[:2, :, :2] = c
            p.add_(1e-3 * torch.randn_like(p))
        padded.bias.normal_()
    out, err = bonds.truncate(padded, max_rank=2)
    assert out.ranks == (2, 2, 2) and isinstance(out, tn.CrossLayerTR)
    ref = float((out.weights() - padded.weights()).norm() / padded.weights().norm())
    assert math.isclose(err, ref, rel_tol=1e-12) and err < 0.05
    torch.testing.assert_close(out.bias, padded.bias, rtol=0, atol=0)
    out, err = bonds.truncate(padded, tol=0.5)
    assert err <= 0.5 and out.n_params < padded.n_params
    lin = tn.TRLinear(12, 8, 3, in_modes=(3, 4), out_modes=(2, 4), dtype=F64)
    out, err = bonds.truncate(lin, max_rank=2)
    assert math.isclose(err, float((out.weight - lin.weight).norm() / lin.weight.norm()), rel_tol=1e-12)


def test_bad_input():
    m = tn.CrossLayerTR(4, 3, 2, 2, dtype=F64)
    with pytest.raises(InputError, match="no TRLinear"):
        RankAllocator(torch.nn.Linear(2, 2), 10, 5)
    with pytest.raises(InputTypeError):
        RankAllocator({"x": torch.nn.Linear(2, 2)}, 10, 5)
    with pytest.raises(InputTypeError):
        RankAllocator([m], 10, 5)
    with pytest.raises(InputError, match="below the smallest"):
        RankAllocator({"m": m}, 5, 5)
    with pytest.raises(InputError, match="score"):
        RankAllocator({"m": m}, 1000, 5, score="random")
    with pytest.raises(InputError, match="warmup"):
        RankAllocator({"m": m}, 1000, 5, warmup_steps=4, final_steps=2)
    alloc = RankAllocator({"m": m}, 40, 5)
    with pytest.raises(InputError, match="accumulate"):
        alloc.update(5)
    with pytest.raises(InputError, match="unknown modules"):
        alloc.load_state_dict({"ipt": {"other": []}, "unc": {}})
    bonds.bond_masks(m)[0].zero_()
    with pytest.raises(InputError, match="every slice masked"):
        bonds.prune(m)
    with pytest.raises(InputTypeError):
        bonds.attach_bond_masks(torch.nn.Linear(2, 2))
