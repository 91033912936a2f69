"""RingPreconditioner: the core Grams against a dense Jacobian, the step ratio and direction against
the dense gradient and its exact tangent-space projection, zero cores, float32, checkpoint resume."""

import io
import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import trkit.nn as tn
from trkit.errors import InputError, InputTypeError
from trkit.nn.precondition import (
    RingPreconditioner,
    _NormalEquations,
    core_grams,
    limit_relative_steps,
    precondition_ring_grads,
    ring_cores,
    tangent_projection,
)
from trkit.ring import TensorRing

F64 = torch.float64


def dense(cores):
    return TensorRing(list(cores), validate=False).to_dense()


def jacobian(cores):
    """Dense Jacobian of the ring's entries with respect to all cores, ``(numel, n_params)``."""
    sizes = [c.numel() for c in cores]

    def f(flat):
        parts = torch.split(flat, sizes)
        return dense([p.reshape(c.shape) for p, c in zip(parts, cores)]).reshape(-1)

    flat = torch.cat([c.detach().reshape(-1) for c in cores])
    return torch.autograd.functional.jacobian(f, flat)


def projected(cores, d_grad):
    """Reference ``P_T D`` by the pseudo-inverse of the explicit Jacobian."""
    j = jacobian(cores)
    return (j @ (torch.linalg.pinv(j) @ d_grad.reshape(-1))).reshape(d_grad.shape)


def cos(a, b):
    return float((a * b).sum() / (a.norm() * b.norm()))


@settings(max_examples=15, deadline=None)
@given(
    modes=st.lists(st.integers(1, 4), min_size=2, max_size=4),
    ranks=st.lists(st.integers(1, 3), min_size=4, max_size=4),
    seed=st.integers(0, 1000),
)
def test_core_grams_equal_jacobian_blocks(modes, ranks, seed):
    d = len(modes)
    ring = TensorRing.random(modes, ranks[:d], seed=seed)
    j = jacobian(ring.cores)
    start = 0
    for k, (c, h) in enumerate(zip(ring.cores, core_grams(ring.cores))):
        jk = j[:, start : start + c.numel()]
        start += c.numel()
        ra, n, rb = c.shape
        jtj = (jk.T @ jk).reshape(ra, n, rb, ra, n, rb)
        for i in range(n):  # J_k^T J_k is block diagonal over the mode index, each block H_k
            torch.testing.assert_close(jtj[:, i, :, :, i, :].reshape(ra * rb, ra * rb), h, rtol=1e-10, atol=1e-10)
        off = jtj.clone()
        for i in range(n):
            off[:, i, :, :, i, :] = 0
        assert float(off.abs().max()) < 1e-10, f"core {k}: J_k^T J_k has off-diagonal mode blocks"


def test_scaled_gd_is_least_squares_per_core():
    """``scaled_gd`` without damping: core k's update solves ``min ||J_k u - D||`` (others fixed)."""
    torch.manual_seed(0)
    ring = TensorRing.random((5, 4, 3), (2, 3, 2), seed=1)
    d_grad = torch.randn(5, 4, 3, dtype=F64)
    grads = torch.func.vjp(lambda *c: dense(c), *ring.cores)[1](d_grad)
    upd = precondition_ring_grads(ring.cores, grads, "scaled_gd", damping=0.0, rel_damping=0.0)
    j = jacobian(ring.cores)
    start = 0
    for c, u in zip(ring.cores, upd):
        jk = j[:, start : start + c.numel()]
        start += c.numel()
        ref = torch.linalg.lstsq(jk, d_grad.reshape(-1, 1)).solution.reshape(c.shape)
        torch.testing.assert_close(u, ref, rtol=1e-8, atol=1e-10)


def test_normal_equations_operator_equals_dense_jtj():
    ring = TensorRing.random((5, 4, 3, 2), (2, 3, 1, 2), seed=2)
    u = [torch.randn_like(c) for c in ring.cores]
    op = _NormalEquations(list(ring.cores), damping=0.0, rel_damping=0.0)
    j = jacobian(ring.cores)
    ref = j.T @ (j @ torch.cat([v.reshape(-1) for v in u]))
    flat = [v.permute(1, 0, 2).reshape(v.shape[1], -1) for v in u]  # (n, r_a r_b) slices
    got = torch.cat(
        [
            v.reshape(v.shape[0], c.shape[0], c.shape[2]).permute(1, 0, 2).reshape(-1)
            for v, c in zip(op(flat), ring.cores)
        ]
    )
    torch.testing.assert_close(got, ref, rtol=1e-10, atol=1e-10 * float(ref.abs().max()))


@pytest.mark.parametrize("modes,ranks", [((6, 3, 4), (2, 2, 3)), ((4, 5), (2, 3)), ((3, 2, 2, 3), (2, 1, 2, 2))])
def test_gauss_newton_step_is_tangent_projection(modes, ranks):
    """Solved to a tight tolerance, the Gauss-Newton update moves the ring by exactly ``P_T D``;
    with the default settings (at most 10 iterations) within 10% and in the same direction."""
    ring = TensorRing.random(modes, ranks, seed=4)
    d_grad = torch.randn(modes, dtype=F64, generator=torch.Generator().manual_seed(5))
    grads = torch.func.vjp(lambda *c: dense(c), *ring.cores)[1](d_grad)
    ref = projected(ring.cores, d_grad)
    for kw, tol in ((dict(damping=0.0, rel_damping=1e-9, max_iter=500, tol=1e-12), 1e-7), ({}, 0.1)):
        upd = precondition_ring_grads(ring.cores, grads, **kw)
        moved = torch.func.jvp(lambda *c: dense(c), tuple(ring.cores), tuple(upd))[1]
        err = float((moved - ref).norm() / ref.norm())
        assert err < tol and cos(moved, ref) > 0.99, (kw, err)


def test_tangent_projection_matches_pseudo_inverse():
    ring = TensorRing.random((6, 3, 4), (2, 2, 3), seed=3)
    d_grad = torch.randn(6, 3, 4, dtype=F64, generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(tangent_projection(ring.cores, d_grad), projected(ring.cores, d_grad), atol=1e-9, rtol=0)


# ---- step ratio and direction on a toy regression ------------------------------------------------
def regression(d_in=24, d_out=6, n_layers=4, ranks=(2, 3, 2), seed=0):
    """A CrossLayerTR initialised as AdaRing does, and a per-layer least-squares problem whose target
    (a random dense stack) it cannot represent."""
    torch.manual_seed(seed)
    m = tn.CrossLayerTR(d_in, d_out, n_layers, ranks, bias=False, dtype=F64)
    m.reset_parameters(std=math.sqrt(2.0 / d_out))
    x = torch.randn(n_layers, 64, d_in, dtype=F64)
    y = x @ (torch.randn(n_layers, d_in, d_out, dtype=F64) * math.sqrt(2.0 / d_out))
    return m, x, y


def loss_of(m, x, y):
    with tn.dense_weights_cache(m):  # per-layer calls, as an adapter makes them
        return sum(0.5 * ((m(x[layer], layer) - y[layer]) ** 2).sum() for layer in range(m.n_layers)) / x[0].numel()


def ring_dense_grad(m, x, y):
    """Gradient of the loss with respect to the ring's dense tensor ``(d_in, d_out, L)``."""
    t = dense(m.cores).detach().requires_grad_()
    w = t.permute(2, 0, 1)
    loss = 0.5 * ((x @ w - y) ** 2).sum() / x[0].numel()
    return torch.autograd.grad(loss, t)[0]


def step_stats(m, x, y, precondition: bool):
    """``(||dW|| / ||lr D||, cos(dW, -D), ||dW|| / ||lr P_T D||, cos(dW, -P_T D))`` of one small
    SGD step on the cores."""
    d_grad = ring_dense_grad(m, x, y)
    proj = projected(m.cores, d_grad)
    w0 = dense(m.cores).detach()
    lr = 1e-7 * float(w0.norm() / d_grad.norm())
    saved = [c.detach().clone() for c in m.cores]
    m.zero_grad()
    loss_of(m, x, y).backward()
    if precondition:
        RingPreconditioner(m).step()
    with torch.no_grad():
        for c in m.cores:
            c -= lr * c.grad
        dw = dense(m.cores) - w0
        for c, s in zip(m.cores, saved):
            c.copy_(s)
    return (
        float(dw.norm() / (lr * d_grad.norm())),
        cos(dw, -d_grad),
        float(dw.norm() / (lr * proj.norm())),
        cos(dw, -proj),
    )


def train(m, x, y, steps, lr, precondition=True, **opt_kw):
    opt = torch.optim.SGD(m.parameters(), lr=lr, **opt_kw)
    pre = RingPreconditioner(m) if precondition else None
    for _ in range(steps):
        opt.zero_grad()
        loss_of(m, x, y).backward()
        if pre is not None:
            pre.step()
        opt.step()


def test_step_moves_weight_like_projected_dense_step():
    m, x, y = regression()
    lines, stats = [], {}
    for when in ("init", "after 20 steps"):
        if when != "init":
            train(m, x, y, 20, lr=0.5)
        for pre in (True, False):
            stats[when, pre] = s = step_stats(m, x, y, pre)
            lines.append(
                f"{when:>15} {'precond' if pre else 'plain':>8}: ratio {s[0]:.3g} cos {s[1]:.3f} "
                f"ratio_T {s[2]:.3g} cos_T {s[3]:.3f}"
            )
    msg = "\n".join(lines)
    for when in ("init", "after 20 steps"):
        ratio, cos_d, ratio_t, cos_t = stats[when, True]
        assert 0.9 <= ratio_t <= 1.1 and cos_t > 0.98, msg  # the best rank-constrained move
        assert 0.5 <= ratio <= 2.0 and cos_d > 0.5, msg  # here most of D lies in the tangent space
        assert not 0.5 <= stats[when, False][2] <= 2.0, msg  # plain SGD on the cores: far off
        assert stats[when, True][1] > stats[when, False][1], msg  # closer to the dense direction


@pytest.mark.parametrize("kind", ["cross", "linear"])
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_step_ratio_when_dense_step_is_representable(kind, dtype):
    """Target = the model's own ring with perturbed cores: the dense gradient lies (to first order)
    in the tangent space, so the preconditioned core step reproduces the dense step itself."""
    torch.manual_seed(1)
    if kind == "cross":
        m = tn.CrossLayerTR(16, 8, 3, (2, 3, 2), bias=False, dtype=dtype)
        m.reset_parameters(std=0.5)
    else:
        m = tn.TRLinear(36, 16, ranks=(2, 2, 3, 2), in_modes=(6, 6), out_modes=(4, 4), bias=False, dtype=dtype)
    with torch.no_grad():
        target = dense([c + 0.05 * c.norm() / c.numel() ** 0.5 * torch.randn_like(c) for c in ring_cores(m)])

    def loss_fn():
        return 0.5 * ((dense(ring_cores(m)) - target) ** 2).sum()

    def stats(precondition):
        w0 = dense(ring_cores(m)).detach()
        d_grad = w0 - target
        lr = 1e-3 * float(w0.norm() / d_grad.norm())
        m.zero_grad()
        loss_fn().backward()
        if precondition:
            RingPreconditioner(m).step()
        dw = dense([c - lr * c.grad for c in ring_cores(m)]).detach() - w0
        return float(dw.norm() / (lr * d_grad.norm())), cos(dw, -d_grad)

    report = {}
    for when in ("init", "after 20 steps"):
        if when != "init":
            opt = torch.optim.SGD(m.parameters(), lr=0.3)
            pre = RingPreconditioner(m)
            for _ in range(20):
                opt.zero_grad()
                loss_fn().backward()
                pre.step()
                opt.step()
        report[when] = (stats(True), stats(False))
    msg = "; ".join(
        f"{w}: precond ratio {p[0]:.3g} cos {p[1]:.3f}, plain ratio {q[0]:.3g} cos {q[1]:.3f}"
        for w, (p, q) in report.items()
    )
    for (ratio, c), (plain_ratio, plain_cos) in report.values():
        assert 0.5 <= ratio <= 2.0 and c > 0.9, msg
        assert not 0.5 <= plain_ratio <= 2.0 and plain_cos < c, msg
    assert dense(ring_cores(m)).dtype == dtype


def test_zero_core_trains_stably():
    """AdaRing's zero_up: a zero layer core makes the other cores' Grams zero; their steps stay
    plain (zero) and only the layer core moves at first; training then lowers the loss."""
    m, x, y = regression()
    with torch.no_grad():
        m.g_layer.zero_()
    loss_of(m, x, y).backward()
    grads = [c.grad.clone() for c in m.cores]
    RingPreconditioner(m).step()
    assert all(torch.isfinite(c.grad).all() for c in m.cores)
    assert torch.count_nonzero(m.g_in.grad) == 0 and torch.count_nonzero(m.g_out.grad) == 0
    # the layer core's step is the least-squares one for that core alone (the other two fixed)
    h = core_grams(m.cores)[2]
    ra, n, rb = m.g_layer.shape
    lhs = m.g_layer.grad.permute(1, 0, 2).reshape(n, ra * rb) @ h
    torch.testing.assert_close(lhs, grads[2].permute(1, 0, 2).reshape(n, ra * rb), rtol=1e-3, atol=1e-9)
    first = float(loss_of(m, x, y))
    losses = []
    opt = torch.optim.SGD(m.parameters(), lr=1.0)
    pre = RingPreconditioner(m)
    for _ in range(30):
        opt.zero_grad()
        loss = loss_of(m, x, y)
        losses.append(float(loss))
        loss.backward()
        pre.step()
        opt.step()
    assert all(math.isfinite(v) for v in losses) and max(losses) <= first * 1.001
    assert losses[-1] < 0.8 * first, losses


def test_checkpoint_resume_with_momentum_weight_decay_and_schedule():
    def build():
        torch.manual_seed(0)
        model = torch.nn.Sequential(
            tn.TRLinear(12, 8, ranks=2, in_modes=(3, 4), out_modes=(2, 4)),
            torch.nn.ReLU(),
            tn.TRLinear(8, 4, ranks=2, in_modes=(2, 4), out_modes=(4,)),
        )
        opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9, weight_decay=5e-4)
        sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=10)
        return model, opt, sched, RingPreconditioner(model, damping=2e-3)

    data = torch.randn(32, 12, generator=torch.Generator().manual_seed(1))
    target = torch.randn(32, 4, generator=torch.Generator().manual_seed(2))

    def run(model, opt, sched, pre, steps):
        for _ in range(steps):
            opt.zero_grad()
            ((model(data) - target) ** 2).mean().backward()
            pre.step()
            opt.step()
            sched.step()

    model, opt, sched, pre = build()
    run(model, opt, sched, pre, 4)
    buf = io.BytesIO()
    torch.save(
        {"model": model.state_dict(), "opt": opt.state_dict(), "sched": sched.state_dict(), "pre": pre.state_dict()},
        buf,
    )
    run(model, opt, sched, pre, 4)
    expected = [p.detach().clone() for p in model.parameters()]

    model2, opt2, sched2, pre2 = build()
    buf.seek(0)
    state = torch.load(buf, weights_only=True)
    model2.load_state_dict(state["model"])
    opt2.load_state_dict(state["opt"])
    sched2.load_state_dict(state["sched"])
    pre2 = RingPreconditioner(model2)
    pre2.load_state_dict(state["pre"])
    assert pre2.damping == 2e-3
    run(model2, opt2, sched2, pre2, 4)
    for a, b in zip(expected, model2.parameters()):
        torch.testing.assert_close(b, a, rtol=0, atol=0)


def test_leaves_other_parameters_and_missing_grads_alone():
    m = tn.CrossLayerTR(6, 4, 2, 2, bias=True, dtype=F64)
    x = torch.randn(3, 6, dtype=F64)
    m(x, 0).sum().backward()
    bias_grad = m.bias.grad.clone()
    RingPreconditioner([m]).step()
    torch.testing.assert_close(m.bias.grad, bias_grad, rtol=0, atol=0)
    m2 = tn.CrossLayerTR(6, 4, 2, 2, dtype=F64)
    RingPreconditioner(m2).step()  # no gradients at all: nothing to do
    assert all(c.grad is None for c in m2.cores)


def test_bad_input():
    with pytest.raises(InputError, match="found no TRLinear"):
        RingPreconditioner(torch.nn.Linear(3, 3))
    with pytest.raises(InputTypeError):
        RingPreconditioner([object()])
    with pytest.raises(InputError, match="damping"):
        RingPreconditioner(tn.TRLinear(4, 4, 2), damping=-1.0)
    with pytest.raises(InputError, match="method"):
        RingPreconditioner(tn.TRLinear(4, 4, 2), method="adam")
    with pytest.raises(InputError, match="max_iter"):
        RingPreconditioner(tn.TRLinear(4, 4, 2), max_iter=0)
    with pytest.raises(InputTypeError):
        ring_cores(torch.nn.Linear(2, 2))
    ring = TensorRing.random((3, 3), (2, 2), seed=0)
    with pytest.raises(InputError, match="gradients"):
        precondition_ring_grads(ring.cores, [None])
    with pytest.raises(InputError, match="shape"):
        tangent_projection(ring.cores, torch.zeros(3, 4, dtype=F64))


@settings(max_examples=40, deadline=None)
@given(
    st.lists(st.tuples(st.integers(1, 4), st.integers(1, 6), st.floats(1e-3, 1e3)), min_size=1, max_size=5),
    st.floats(1e-3, 1.0),
    st.floats(1e-3, 1.0),
    st.integers(0, 2**31 - 1),
)
def test_limit_relative_steps_caps_each_core_and_keeps_directions(specs, lr, ratio, seed):
    """After the limit, ``lr * ||grad_k|| <= ratio * ||G_k||`` for every core; a gradient under its cap is
    untouched, one over it keeps its direction; the count of limited cores is exact."""
    g = torch.Generator().manual_seed(seed)
    cores = []
    for r, n, scale in specs:
        c = torch.randn(r, n, r, generator=g, dtype=torch.float64).requires_grad_(False)
        c.grad = scale * torch.randn(r, n, r, generator=g, dtype=torch.float64)
        cores.append(c)
    before = [c.grad.clone() for c in cores]
    over = [lr * float(b.norm()) > ratio * float(c.norm()) for b, c in zip(before, cores)]
    limited, total = limit_relative_steps(cores, lr, ratio)
    assert (limited, total) == (sum(over), len(cores))
    for c, b, o in zip(cores, before, over):
        assert lr * float(c.grad.norm()) <= ratio * float(c.norm()) * (1 + 1e-9)
        if o:
            cos = float((c.grad * b).sum() / (c.grad.norm() * b.norm()))
            assert cos == pytest.approx(1.0, abs=1e-12)
            assert lr * float(c.grad.norm()) == pytest.approx(ratio * float(c.norm()), rel=1e-9)
        else:
            assert torch.equal(c.grad, b)


def test_limit_relative_steps_bad_input_and_missing_grads():
    c = torch.ones(1, 2, 1)
    assert limit_relative_steps([c], 0.1, 0.5) == (0, 0)  # no gradient: nothing to limit
    with pytest.raises(InputError, match="must be > 0"):
        limit_relative_steps([c], 0.0, 0.5)
    with pytest.raises(InputError, match="must be > 0"):
        limit_relative_steps([c], 0.1, -1.0)
