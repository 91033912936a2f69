"""trkit.contract.compiled: the compiled contraction executor against torch.einsum (float64), gradients,
layouts (strided inputs, size-1 indices, batch indices), bias fusion and the fallbacks."""

import string

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from trkit.contract import compiled as _exec

F64 = torch.float64


def ring_equation(n_modes: int, lead: str = "t") -> tuple[str, list[str]]:
    """``t m1..mp, core_1..core_p -> t`` ... a ring over the modes with the batch index ``t``."""
    pool = [c for c in string.ascii_letters if c != lead]
    modes, bonds = pool[:n_modes], pool[n_modes : 2 * n_modes]
    cores = [bonds[k] + modes[k] + bonds[(k + 1) % n_modes] for k in range(n_modes)]
    return cores, modes


@st.composite
def networks(draw):
    """A random tensor-ring layer contraction: input ``t i..``, cores over in and out modes."""
    p, q = draw(st.integers(1, 3)), draw(st.integers(1, 2))
    cores, modes = ring_equation(p + q)
    outs, ins = modes[:q], modes[q:]
    eq = "t" + "".join(ins) + "," + ",".join(cores) + "->t" + "".join(outs)
    sizes = {c: draw(st.integers(1, 5)) for c in "".join(cores)}
    sizes["t"] = draw(st.sampled_from([1, 2, 7]))
    terms = eq.split("->")[0].split(",")
    return eq, [tuple(sizes[c] for c in t) for t in terms]


@settings(max_examples=60, deadline=None)
@given(net=networks(), seed=st.integers(0, 1000))
def test_matches_einsum(net, seed):
    eq, shapes = net
    g = torch.Generator().manual_seed(seed)
    ops = [torch.randn(s, dtype=F64, generator=g) for s in shapes]
    torch.testing.assert_close(_exec.run(eq, *ops), torch.einsum(eq, *ops), rtol=0, atol=1e-10)


@settings(max_examples=30, deadline=None)
@given(net=networks(), seed=st.integers(0, 1000))
def test_grouped_input_and_fused_bias(net, seed):
    # the layer passes the input as (tokens, prod(in modes)) with its index shapes given separately
    eq, shapes = net
    g = torch.Generator().manual_seed(seed)
    ops = [torch.randn(s, dtype=F64, generator=g) for s in shapes]
    out = eq.split("->")[1]
    sizes = {c: n for t, s in zip(eq.split("->")[0].split(","), shapes) for c, n in zip(t, s)}
    n_out = 1
    for c in out[1:]:
        n_out *= sizes[c]
    bias = torch.randn(n_out, dtype=F64, generator=g)
    x2 = ops[0].reshape(shapes[0][0], -1)
    y = _exec.run(eq, x2, *ops[1:], shapes=tuple(shapes), bias=bias, out_shape=(shapes[0][0], n_out))
    ref = torch.einsum(eq, *ops).reshape(shapes[0][0], n_out) + bias
    torch.testing.assert_close(y, ref, rtol=0, atol=1e-10)


def test_strided_and_transposed_operands():
    torch.manual_seed(0)
    x = torch.randn(6, 5, dtype=F64).t()  # (5, 6), not contiguous
    a = torch.randn(4, 6, 3, dtype=F64)[:, :, ::1].permute(1, 0, 2)  # (6, 4, 3) strided
    b = torch.randn(3, 2, 8, dtype=F64)[:, :, ::2]  # (3, 2, 4) strided
    eq = "ti,iab,bcd->tacd"
    torch.testing.assert_close(_exec.run(eq, x, a, b), torch.einsum(eq, x, a, b), rtol=0, atol=1e-12)


def test_batch_index_uses_bmm():
    torch.manual_seed(1)
    # the layer index l is shared by the input and one core and kept: a batched GEMM
    eq = "lti,ria,alb,bor->lto"
    shapes = [(3, 5, 4), (2, 4, 3), (3, 3, 2), (2, 6, 2)]
    ops = [torch.randn(s, dtype=F64) for s in shapes]
    torch.testing.assert_close(_exec.run(eq, *ops), torch.einsum(eq, *ops), rtol=0, atol=1e-12)
    kinds = {s["kind"] for s in _exec.describe(eq, *shapes)}
    assert "bmm" in kinds and "einsum" not in kinds


def test_single_token_needs_no_copy():
    # at one token the batch index has size 1 and may sit anywhere: the input is never copied
    cores, modes = ring_equation(4)
    eq = "t" + "".join(modes[2:]) + "," + ",".join(cores) + "->t" + "".join(modes[:2])
    shapes = [(1, 32, 24), (4, 8, 4), (4, 4, 4), (4, 32, 4), (4, 24, 4)]
    plan = _exec.plan_cost(eq, *shapes)
    assert all(s.kind == "mm" for s in plan.steps)
    assert plan.copies <= sum(a * b * c for a, b, c in shapes[1:])  # only core-sized copies


def test_fallback_paths_match_einsum():
    torch.manual_seed(2)
    for eq, shapes in [
        ("ii,ij->j", [(3, 3), (3, 4)]),  # repeated index
        ("ij,jk->i", [(3, 4), (4, 5)]),  # index summed inside one operand
        ("ijk->kj", [(2, 3, 4)]),
    ]:  # a lone operand
        ops = [torch.randn(s, dtype=F64) for s in shapes]
        torch.testing.assert_close(_exec.run(eq, *ops), torch.einsum(eq, *ops), rtol=0, atol=1e-12)


def test_bias_never_written_into_an_input():
    x = torch.randn(2, 3, dtype=F64)
    before = x.clone()
    y = _exec.run("ij->ij", x, bias=torch.ones(3, dtype=F64))
    torch.testing.assert_close(x, before)
    torch.testing.assert_close(y, before + 1)


def test_gradcheck():
    torch.manual_seed(3)
    eq = "tij,aib,bjc,cka->tk"
    shapes = [(3, 2, 3), (2, 2, 3), (3, 3, 2), (2, 4, 2)]
    ops = [torch.randn(s, dtype=F64, requires_grad=True) for s in shapes]
    bias = torch.randn(4, dtype=F64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda *o: _exec.run(eq, *o[:-1], bias=o[-1]), (*ops, bias))


def test_plan_cache_reuses_compiled_steps():
    shapes = ((2, 3), (3, 4))
    p1 = _exec.plan_cost("ij,jk->ik", *shapes)
    p2 = _exec.plan_cost("ij,jk->ik", *shapes)
    assert p1 is p2 and len(p1.steps) == 1 and p1.steps[0].kind == "mm"


@pytest.mark.parametrize("tokens", [1, 64])
def test_dp_path_no_worse_than_planner_flops_by_much(tokens):
    # the time model may trade FLOPs for fewer copies, but not wildly
    from trkit import contract as _contract

    cores, modes = ring_equation(4)
    eq = "t" + "".join(modes[2:]) + "," + ",".join(cores) + "->t" + "".join(modes[:2])
    shapes = [(tokens, 32, 24), (8, 32, 8), (8, 24, 8), (8, 32, 8), (8, 24, 8)]
    _, info = _contract.contract_path(eq, *shapes)
    assert _exec.plan_cost(eq, *shapes).flops <= 2 * info.opt_cost


def test_layer_one_token_fuses_bias_and_gradchecks():
    import trkit.nn as tn

    torch.manual_seed(4)
    layer = tn.TRLinear(6, 4, (2, 3, 2), in_modes=(2, 3), out_modes=(4,), path="contract", dtype=F64)
    x = torch.randn(1, 6, dtype=F64, requires_grad=True)
    torch.testing.assert_close(layer(x), torch.nn.functional.linear(x, layer.weight, layer.bias), rtol=0, atol=1e-12)
    assert all(p.fuse_bias for p in layer._plans.values())  # one token: bias goes into addmm
    names = [n for n, _ in layer.named_parameters()]
    ps = [p.detach().clone().requires_grad_(True) for p in layer.parameters()]
    assert torch.autograd.gradcheck(
        lambda x, *ps: torch.func.functional_call(layer, dict(zip(names, ps)), (x,)), (x, *ps)
    )


def test_forward_all_stacked_contraction_gradchecks():
    import trkit.nn as tn

    torch.manual_seed(5)
    m = tn.CrossLayerTR(6, 4, 3, (2, 1, 3, 2), in_modes=(2, 3), path="contract", dtype=F64)
    xs = torch.randn(3, 2, 6, dtype=F64, requires_grad=True)
    ref = torch.stack([xs[k] @ m.weight(k) + m.bias[k] for k in range(3)])
    torch.testing.assert_close(m.forward_all(xs), ref, rtol=0, atol=1e-12)
    assert any(s.kind == "bmm" for p in m._plans.values() for s in p.steps)  # the layer index is batched
    # gradcheck perturbs its inputs in place: passing the module's own parameters checks them
    params = tuple(m.parameters())
    assert torch.autograd.gradcheck(lambda xs, *ps: m.forward_all(xs), (xs, *params))


def test_modules_pickle_and_deepcopy_after_forward():
    # compiled plans hold generated functions: they must not stop torch.save(module) or deepcopy
    import copy
    import io

    import trkit.nn as tn

    torch.manual_seed(6)
    x = torch.randn(3, 12, dtype=F64)
    for mod, call in [
        (tn.TRLinear(12, 6, 2, path="contract", dtype=F64), lambda m: m(x)),
        (tn.CrossLayerTR(12, 6, 3, 2, path="contract", dtype=F64), lambda m: m(x, 1)),
    ]:
        y = call(mod)
        buf = io.BytesIO()
        torch.save(mod, buf)
        buf.seek(0)
        loaded = torch.load(buf, weights_only=False)  # our own module, just written: trusted
        torch.testing.assert_close(call(loaded), y, rtol=0, atol=0)
        torch.testing.assert_close(call(copy.deepcopy(mod)), y, rtol=0, atol=0)
