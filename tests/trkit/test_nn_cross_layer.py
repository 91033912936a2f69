"""CrossLayerTR: the original API, forward vs dense per-layer weights, forward_all, the dense
weight cache, fits from stacked matrices, init, serialisation, argument checks."""

import io

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import trkit.nn as tn
from trkit.nn.utils import balanced_factors

F64 = torch.float64


def test_original_api_and_formula():
    torch.manual_seed(0)
    m = tn.CrossLayerTR(12, 5, 3, (2, 3, 4), bias=True, dtype=F64, device="cpu")
    assert m.g_in.shape == (2, 12, 3) and m.g_out.shape == (3, 5, 4) and m.g_layer.shape == (4, 3, 2)
    assert m.bias.shape == (3, 5) and m.ranks == (2, 3, 4)
    assert [n for n, _ in m.named_parameters()] == ["g_in", "g_out", "g_layer", "bias"]
    assert m.n_params == 2 * 12 * 3 + 3 * 5 * 4 + 4 * 3 * 2 + 3 * 5 == tn.count_params(m)
    # W_l[i, j] = trace(G_in[:, i, :] G_out[:, j, :] G_layer[:, l, :]), written out independently
    for layer in range(3):
        ref = torch.empty(12, 5, dtype=F64)
        for i in range(12):
            for j in range(5):
                ref[i, j] = torch.trace(m.g_in[:, i, :] @ m.g_out[:, j, :] @ m.g_layer[:, layer, :])
        torch.testing.assert_close(m.weight(layer), ref, rtol=0, atol=1e-12)
        torch.testing.assert_close(m.weights()[layer], ref, rtol=0, atol=1e-12)
    torch.testing.assert_close(m.ring().to_dense().permute(2, 0, 1), m.weights(), rtol=0, atol=1e-12)
    m.reset_parameters(std=0.5)
    assert torch.count_nonzero(m.bias) == 0
    assert tn.CrossLayerTR(4, 4, 2, 3).ranks == (3, 3, 3)


@settings(max_examples=30, deadline=None)
@given(
    d_in=st.sampled_from([1, 4, 6, 12, 16]),
    d_out=st.sampled_from([1, 3, 8, 12]),
    L=st.integers(1, 4),
    n_in=st.integers(1, 2),
    n_out=st.integers(1, 2),
    r=st.integers(1, 4),
    batch=st.lists(st.integers(0, 4), max_size=2),
    path=st.sampled_from(["auto", "contract", "dense"]),
    bias=st.booleans(),
    cache=st.booleans(),
    seed=st.integers(0, 10_000),
)
def test_forward_equals_dense(d_in, d_out, L, n_in, n_out, r, batch, path, bias, cache, seed):
    torch.manual_seed(seed)
    in_modes, out_modes = balanced_factors(d_in, n_in), balanced_factors(d_out, n_out)
    n = len(in_modes) + len(out_modes) + 1
    ranks = [1 + (r + k) % 4 for k in range(n)]
    m = tn.CrossLayerTR(d_in, d_out, L, ranks, bias=bias, in_modes=in_modes, out_modes=out_modes, path=path, dtype=F64)
    if bias:
        torch.nn.init.normal_(m.bias)
    xs = torch.randn(L, *batch, d_in, dtype=F64)
    ref = [xs[layer] @ m.weight(layer) + (m.bias[layer] if bias else 0) for layer in range(L)]
    if cache:
        with tn.dense_weights_cache(m):
            ys = [m(xs[layer], layer) for layer in range(L)]
    else:
        ys = [m(xs[layer], layer) for layer in range(L)]
    for y, yr in zip(ys, ref):
        assert y.shape == (*batch, d_out)
        torch.testing.assert_close(y, yr, rtol=0, atol=1e-10)
    torch.testing.assert_close(m.forward_all(xs), torch.stack(ref), rtol=0, atol=1e-10)
    for y, yr in zip(m.forward_all(list(xs)), ref):
        torch.testing.assert_close(y, yr, rtol=0, atol=1e-10)


@pytest.mark.parametrize("path", ["contract", "dense"])
def test_gradcheck(path):
    torch.manual_seed(1)
    m = tn.CrossLayerTR(6, 4, 3, (2, 1, 3, 2), in_modes=(2, 3), path=path, dtype=F64)
    names = [n for n, _ in m.named_parameters()]
    x = torch.randn(2, 6, dtype=F64, requires_grad=True)
    ps = [p.detach().clone().requires_grad_(True) for p in m.parameters()]

    def g(x, *ps):
        return torch.func.functional_call(m, dict(zip(names, ps)), (x, 1))

    assert torch.autograd.gradcheck(g, (x, *ps))


def test_cache_builds_weights_once_with_identical_gradients():
    torch.manual_seed(2)
    m = tn.CrossLayerTR(16, 8, 4, 2, path="dense", dtype=F64)
    calls = []
    orig = m._weights_all
    m._weights_all = lambda: calls.append(1) or orig()
    xs = torch.randn(4, 5, 16, dtype=F64)

    def loss():
        h = xs[0]
        for layer in range(4):  # sequential, as adapters inside transformer blocks are
            h = torch.tanh(m(h, layer) @ torch.ones(8, 16, dtype=F64) / 8)
        return h.square().sum()

    loss().backward()
    ref = [p.grad.clone() for p in m.parameters()]
    m.zero_grad()
    with tn.dense_weights_cache(m):
        value = loss()
    assert len(calls) == 1  # one reconstruction for all four layers
    value.backward()
    for p, g in zip(m.parameters(), ref):
        torch.testing.assert_close(p.grad, g, rtol=1e-12, atol=1e-12)


def test_cache_choice_amortises_reconstruction():
    m = tn.CrossLayerTR(768, 32, 8, 4)
    out = io.StringIO()
    alone = m.explain(16 * 197, file=out)
    with tn.dense_weights_cache(m):
        inside = m.explain(16 * 197, file=out)
    assert inside["dense_cost"] < alone["dense_cost"]
    assert inside["caching"] and "inside dense_weights_cache" in out.getvalue()


def test_init_std_within_ten_percent():
    torch.manual_seed(3)
    for ranks, kw in [((2, 3, 4), {}), (5, {"in_modes": 2}), ((1, 1, 1), {})]:
        m = tn.CrossLayerTR(24, 8, 6, ranks, dtype=F64, **kw)
        target = 1.0 / (3 * 24)
        var = []
        for _ in range(300):
            m.reset_parameters()
            var.append(float(m.weights().detach().square().mean()))
        assert abs(sum(var) / len(var) / target - 1) < 0.10, (ranks, sum(var) / len(var), target)
        m.reset_parameters(std=0.2)


def test_from_matrices_exact_and_per_layer_errors():
    torch.manual_seed(4)
    mats = [torch.randn(12, 6, dtype=F64) for _ in range(5)]
    biases = torch.randn(5, 6, dtype=F64)
    m = tn.CrossLayerTR.from_matrices(mats, biases=biases)
    assert max(m.fit_info["layer_rel_errors"]) < 1e-12
    x = torch.randn(3, 12, dtype=F64)
    for layer in range(5):
        torch.testing.assert_close(m(x, layer), x @ mats[layer] + biases[layer], rtol=0, atol=1e-10)


@pytest.mark.parametrize("tol", [0.1, 0.5])
def test_from_matrices_meets_tol_and_recovers_exact_ring(tol):
    torch.manual_seed(5)
    src = tn.CrossLayerTR(16, 8, 6, 2, bias=False, dtype=F64)
    noisy = src.weights().detach() + 0.02 * torch.randn(6, 16, 8, dtype=F64)
    m = tn.CrossLayerTR.from_matrices(noisy, tol=tol)
    stacked = float(torch.linalg.norm(m.weights().detach() - noisy) / torch.linalg.norm(noisy))
    assert stacked <= tol + 1e-12
    per = [float(torch.linalg.norm(m.weight(k).detach() - noisy[k]) / torch.linalg.norm(noisy[k])) for k in range(6)]
    assert per == pytest.approx(m.fit_info["layer_rel_errors"], abs=1e-10)
    exact = tn.CrossLayerTR.from_matrices(src.weights().detach(), tol=1e-8)
    assert exact.fit_info["rel_error"] < 1e-8


@settings(max_examples=6, deadline=None)
@given(budget=st.integers(10, 600), seed=st.integers(0, 50))
def test_from_matrices_budget(budget, seed):
    torch.manual_seed(seed)
    mats = torch.randn(4, 12, 8, dtype=F64)
    if budget < 12 + 8 + 4:
        with pytest.raises(ValueError, match="smallest ring"):
            tn.CrossLayerTR.from_matrices(mats, max_params=budget)
        return
    m = tn.CrossLayerTR.from_matrices(mats, max_params=budget)
    assert tn.count_params(m) <= budget


def test_budget_counts_biases():
    mats, biases = torch.randn(4, 12, 8, dtype=F64), torch.randn(4, 8, dtype=F64)
    with pytest.raises(ValueError, match="including 32 bias parameters"):
        tn.CrossLayerTR.from_matrices(mats, biases=biases, max_params=40)


def test_state_dict_round_trip():
    torch.manual_seed(6)
    a = tn.CrossLayerTR(12, 8, 3, (2, 3, 2, 1), in_modes=(3, 4), dtype=F64)
    torch.nn.init.normal_(a.bias)
    b = tn.CrossLayerTR(12, 8, 3, (2, 3, 2, 1), in_modes=(3, 4), dtype=F64)
    buf = io.BytesIO()
    torch.save(a.state_dict(), buf)
    buf.seek(0)
    b.load_state_dict(torch.load(buf, weights_only=True))
    x = torch.randn(5, 12, dtype=F64)
    assert all(torch.equal(a(x, k), b(x, k)) for k in range(3))


def test_every_parameter_used_and_to_dtype():
    m = tn.CrossLayerTR(12, 6, 3, 2, in_modes=2, out_modes=2).to(F64)
    assert all(p.dtype == F64 for p in m.parameters())
    m(torch.randn(4, 12, dtype=F64), 2).sum().backward()
    assert all(p.grad is not None for p in m.parameters())


@pytest.mark.parametrize(
    "kwargs,exc,match",
    [
        (dict(ranks=0), ValueError, ">= 1"),
        (dict(ranks=(2, 2)), ValueError, "needs 3 entries"),
        (dict(ranks=2, in_modes=(5, 5)), ValueError, "multiply to 25"),
        (dict(ranks=2, path="x"), ValueError, "path must be"),
    ],
)
def test_bad_arguments(kwargs, exc, match):
    with pytest.raises(exc, match=match):
        tn.CrossLayerTR(12, 6, 3, **kwargs)


@pytest.mark.parametrize(
    "dims,match",
    [
        ((0, 6, 3), "d_in must be a positive int, got 0"),
        ((12, 6.0, 3), "d_out must be a positive int, got 6.0"),
        ((12, 6, True), "n_layers must be a positive int, got True"),
    ],
)
def test_sizes_must_be_positive_ints_as_in_trlinear(dims, match):
    with pytest.raises(ValueError, match=match):
        tn.CrossLayerTR(*dims, ranks=2)
    import numpy as np

    assert tn.CrossLayerTR(np.int64(12), 6, 3, ranks=2).d_in == 12  # numpy ints are ints
    assert tn.TRLinear(np.int64(12), 6, ranks=2).in_features == 12


def test_bad_calls():
    m = tn.CrossLayerTR(12, 6, 3, 2)
    with pytest.raises(IndexError, match="out of range"):
        m(torch.randn(2, 12), 3)
    with pytest.raises(TypeError, match="layer must be an int"):
        m(torch.randn(2, 12), 1.5)
    with pytest.raises(ValueError, match="expected d_in=12"):
        m(torch.randn(2, 11), 0)
    with pytest.raises(ValueError, match="n_layers=3"):
        m.forward_all(torch.randn(2, 4, 12))
    with pytest.raises(ValueError, match="one shape"):
        tn.CrossLayerTR.from_matrices([torch.randn(3, 2), torch.randn(2, 3)])


def test_torch_compile_eager_backend():
    torch.manual_seed(7)
    m = tn.CrossLayerTR(12, 6, 3, 2, dtype=F64)
    compiled = torch.compile(m, backend="eager")
    x = torch.randn(4, 12, dtype=F64)
    torch.testing.assert_close(compiled(x, 1), m(x, 1), rtol=0, atol=1e-12)
