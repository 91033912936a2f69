"""TRLinear: forward vs F.linear on the reconstructed weight, gradients, init variance, fits,
serialisation, argument checks, torch.compile."""

import io
import math
import time

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

import trkit.nn as tn
from trkit.nn.init import target_std
from trkit.nn.utils import balanced_factors, resolve_modes

F64 = torch.float64


def dense_from_cores(layer: tn.TRLinear) -> torch.Tensor:
    """Independent reference: multiply core slices entry by entry (no planner, no einsum strings)."""
    cores = [c.detach() for c in layer.cores]
    modes = layer.out_modes + layer.in_modes
    out = torch.empty(modes, dtype=cores[0].dtype)
    for idx in torch.cartesian_prod(*[torch.arange(m) for m in modes]).reshape(-1, len(modes)).tolist():
        m = cores[0][:, idx[0], :]
        for k in range(1, len(cores)):
            m = m @ cores[k][:, idx[k], :]
        out[tuple(idx)] = torch.trace(m)
    return out.reshape(layer.out_features, layer.in_features)


def test_weight_matches_slice_products():
    torch.manual_seed(0)
    layer = tn.TRLinear(6, 4, (2, 3, 1), in_modes=(3, 2), out_modes=(4,), dtype=F64)
    torch.testing.assert_close(layer.weight.detach(), dense_from_cores(layer), rtol=0, atol=1e-12)


dims = st.sampled_from([1, 2, 4, 6, 12, 16, 30, 32])


@settings(max_examples=30, deadline=None)
@given(
    in_f=dims,
    out_f=dims,
    n_in=st.integers(1, 3),
    n_out=st.integers(1, 2),
    r=st.integers(1, 4),
    batch=st.lists(st.integers(0, 5), min_size=0, max_size=3),
    path=st.sampled_from(["auto", "contract", "dense"]),
    bias=st.booleans(),
    seed=st.integers(0, 10_000),
)
def test_forward_equals_f_linear(in_f, out_f, n_in, n_out, r, batch, path, bias, seed):
    torch.manual_seed(seed)
    in_modes, out_modes = balanced_factors(in_f, n_in), balanced_factors(out_f, n_out)
    d = len(in_modes) + len(out_modes)
    ranks = [1 + (r + k) % 4 for k in range(d)]
    layer = tn.TRLinear(in_f, out_f, ranks, in_modes=in_modes, out_modes=out_modes, bias=bias, path=path, dtype=F64)
    x = torch.randn(*batch, in_f, dtype=F64)
    y = layer(x)
    assert y.shape == (*batch, out_f)
    torch.testing.assert_close(y, F.linear(x, layer.weight, layer.bias), rtol=0, atol=1e-10)


@pytest.mark.parametrize("path", ["contract", "dense"])
def test_gradcheck(path):
    torch.manual_seed(1)
    layer = tn.TRLinear(6, 4, (2, 3, 2), in_modes=(2, 3), out_modes=(4,), path=path, dtype=F64)
    x = torch.randn(3, 6, dtype=F64, requires_grad=True)
    # functional form so gradcheck perturbs the core values themselves
    names = [n for n, _ in layer.named_parameters()]

    def g(x, *ps):
        return torch.func.functional_call(layer, dict(zip(names, ps)), (x,))

    ps = [p.detach().clone().requires_grad_(True) for p in layer.parameters()]
    assert torch.autograd.gradcheck(g, (x, *ps))


def test_init_variance_matches_target():
    # average of the empirical variance over many draws -> the target variance (within 10%)
    for scheme, ranks, (i, o) in [
        ("kaiming", 3, (24, 16)),
        ("xavier", (1, 2, 5), (24, 16)),
        ("torch", 6, (32, 8)),
        (0.37, 2, (12, 12)),
    ]:
        torch.manual_seed(0)
        layer = tn.TRLinear(
            i, o, ranks, in_modes=2, out_modes=(o,) if isinstance(ranks, tuple) else None, init=scheme, dtype=F64
        )
        var = []
        for _ in range(400):
            layer.reset_parameters()
            var.append(float((layer.weight.detach() ** 2).mean()))
        target = target_std(i, o, scheme) ** 2
        assert abs(sum(var) / len(var) / target - 1) < 0.10, (scheme, sum(var) / len(var), target)


def test_from_linear_exact_at_full_rank():
    torch.manual_seed(2)
    lin = torch.nn.Linear(24, 12).double()
    layer = tn.TRLinear.from_linear(lin)
    assert layer.fit_info["rel_error"] < 1e-12
    torch.testing.assert_close(layer.weight.detach(), lin.weight.detach(), rtol=0, atol=1e-12)
    x = torch.randn(5, 24, dtype=F64)
    torch.testing.assert_close(layer(x), lin(x), rtol=0, atol=1e-10)


@pytest.mark.parametrize("tol", [0.05, 0.3, 0.7])
def test_from_linear_meets_tol(tol):
    torch.manual_seed(3)
    # a weight with decaying structure so different tolerances give different rings
    w = dense_from_cores(tn.TRLinear(32, 16, 3, dtype=F64)) + 0.05 * torch.randn(16, 32, dtype=F64)
    layer = tn.TRLinear.from_linear(w, tol=tol)
    err = float(torch.linalg.norm(layer.weight.detach() - w) / torch.linalg.norm(w))
    assert err <= tol + 1e-12
    assert abs(err - layer.fit_info["rel_error"]) < 1e-10


@settings(max_examples=8, deadline=None)
@given(budget=st.integers(20, 700), seed=st.integers(0, 100), bias=st.booleans())
def test_from_linear_budget_never_exceeded(budget, seed, bias):
    torch.manual_seed(seed)
    lin = torch.nn.Linear(16, 12, bias=bias).double()
    smallest = sum(resolve_modes(16, None, "") + resolve_modes(12, None, "")) + (12 if bias else 0)
    if budget < smallest:
        with pytest.raises(ValueError, match="smallest ring"):
            tn.TRLinear.from_linear(lin, max_params=budget)
        return
    layer = tn.TRLinear.from_linear(lin, max_params=budget)
    assert tn.count_params(layer) <= budget
    w = lin.weight.detach()
    err = float(torch.linalg.norm(layer.weight.detach() - w) / torch.linalg.norm(w))
    assert abs(err - layer.fit_info["rel_error"]) < 1e-10


def test_budget_error_decreases_with_budget():
    torch.manual_seed(4)
    lin = torch.nn.Linear(32, 32, bias=False).double()
    errs = [tn.TRLinear.from_linear(lin, max_params=b).fit_info["rel_error"] for b in (100, 400, 1600)]
    assert errs[0] >= errs[1] >= errs[2]


def test_state_dict_round_trip_and_safe_load():
    torch.manual_seed(5)
    a = tn.TRLinear(48, 20, (2, 3, 4), in_modes=2, dtype=F64)
    b = tn.TRLinear(48, 20, (2, 3, 4), in_modes=2, dtype=F64)
    buf = io.BytesIO()
    torch.save(a.state_dict(), buf)
    buf.seek(0)
    b.load_state_dict(torch.load(buf, weights_only=True))
    x = torch.randn(7, 48, dtype=F64)
    assert torch.equal(a(x), b(x))


def test_to_dtype_and_params_fixed():
    layer = tn.TRLinear(16, 8, 2)
    names = [n for n, _ in layer.named_parameters()]
    layer = layer.to(F64)
    assert all(p.dtype == F64 for p in layer.parameters())
    x = torch.randn(3, 16, dtype=F64)
    layer(x).sum().backward()
    assert [n for n, _ in layer.named_parameters()] == names  # nothing created lazily
    assert all(p.grad is not None for p in layer.parameters())  # DDP: every parameter used


@pytest.mark.parametrize("path", ["contract", "dense"])
def test_all_parameters_get_gradients(path):
    layer = tn.TRLinear(12, 6, 2, path=path)
    layer(torch.randn(4, 12)).sum().backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in layer.parameters())


def test_explain_reports_both_costs_and_min_choice(capsys):
    layer = tn.TRLinear(768, 32, 8)
    for tokens in (1, 4096):
        rep = layer.explain((tokens,))
        assert {"contract_cost", "dense_cost", "choice"} <= set(rep)
        assert rep["choice"] == ("dense" if rep["dense_cost"] <= rep["contract_cost"] else "contract")
    out = capsys.readouterr().out
    assert "contract cores" in out and "densify+matmul" in out
    # densifying a 768x32 weight is cheaper than ring contraction only for large batches
    assert layer.choose_path(1) == "contract" and layer.choose_path(4096) == "dense"


def test_parameter_counts():
    layer = tn.TRLinear(768, 768, (4, 8, 2, 3), in_modes=(24, 32), out_modes=(32, 24))
    r, m = (4, 8, 2, 3), (32, 24, 24, 32)
    expected = sum(r[k] * m[k] * r[(k + 1) % 4] for k in range(4)) + 768
    assert layer.n_params == tn.count_params(layer) == expected
    assert tn.compression_ratio(layer) == pytest.approx((768 * 768 + 768) / expected)
    assert tn.compression_ratio(100, dense_params=1000) == 10.0


@pytest.mark.parametrize(
    "kwargs,match",
    [
        (dict(in_features=8, out_features=4, ranks=0), "ranks must all be >= 1"),
        (dict(in_features=8, out_features=4, ranks=(2, 2, 2)), "needs 2 entries"),
        (dict(in_features=8, out_features=4, ranks=2, in_modes=(3, 3)), "multiply to 9, not to the dimension 8"),
        (dict(in_features=0, out_features=4, ranks=2), "in_features must be a positive int"),
        (dict(in_features=8, out_features=4, ranks=2, path="fast"), "path must be one of"),
        (dict(in_features=8, out_features=4, ranks=2, init="he"), "unknown init scheme"),
    ],
)
def test_bad_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        tn.TRLinear(**kwargs)


def test_bad_inputs():
    layer = tn.TRLinear(8, 4, 2)
    with pytest.raises(ValueError, match="expected in_features=8"):
        layer(torch.randn(3, 7))
    with pytest.raises(TypeError, match="nn.Linear or a weight tensor"):
        tn.TRLinear.from_linear([[1.0]])
    with pytest.raises(ValueError, match="ranks or tol/max_params"):
        tn.TRLinear.from_linear(torch.nn.Linear(8, 4), ranks=2, tol=0.1)


def test_balanced_factors():
    assert balanced_factors(768, 2) == (32, 24)
    assert balanced_factors(4096, 3) == (16, 16, 16)
    assert balanced_factors(13, 3) == (13,)
    assert resolve_modes(4096, None, "x") == (16, 16, 16)
    assert math.prod(resolve_modes(768, None, "x")) == 768


def test_dense_cache_reuses_weight_and_tracks_updates():
    torch.manual_seed(6)
    layer = tn.TRLinear(32, 48, 2, path="dense", dtype=F64)
    calls = []
    orig = layer._dense
    layer._dense = lambda: calls.append(1) or orig()
    opt = torch.optim.SGD(layer.parameters(), lr=0.1)
    x = torch.randn(5, 32, dtype=F64)
    with tn.dense_weights_cache(layer):
        y = layer(x) + layer(x)
        assert len(calls) == 1
        y.sum().backward()
        opt.step()  # parameters change in place: the cache must not be reused
        y2 = layer(x)
        assert len(calls) == 2
        torch.testing.assert_close(y2, F.linear(x, orig(), layer.bias), rtol=0, atol=1e-12)
        y2.sum().backward()  # graph of the rebuilt weight is fresh
        y3 = layer(x)  # backward consumed the cached graph: rebuilt, so a second backward works
        y3.sum().backward()
        assert len(calls) == 3
    layer(x)
    assert len(calls) == 4  # no caching outside the context


def test_torch_compile_eager_backend():
    torch.manual_seed(7)
    layer = tn.TRLinear(24, 16, 2, dtype=F64)
    compiled = torch.compile(layer, backend="eager")
    x = torch.randn(4, 24, dtype=F64)
    torch.testing.assert_close(compiled(x), layer(x), rtol=0, atol=1e-12)


@pytest.mark.slow
def test_torch_compile_inductor():
    torch.manual_seed(8)
    layer = tn.TRLinear(24, 16, 2)
    x = torch.randn(4, 24)
    t0 = time.perf_counter()
    y = torch.compile(layer)(x)
    torch.testing.assert_close(y, layer(x), rtol=1e-5, atol=1e-6)
    print(f"inductor compile+run: {time.perf_counter() - t0:.1f}s")


# ---- inference: the factored path (W = B @ A cut between output and input cores) ----------------


def _bench_layer(**kw):
    # the benchmark's 768x32 layer (4.55% of the dense parameters), float64 for exact comparisons
    return tn.TRLinear(768, 32, ranks=4, in_modes=(32, 24), out_modes=(8, 4), dtype=F64, **kw)


@settings(max_examples=25, deadline=None)
@given(st.integers(1, 3), st.integers(1, 2), st.integers(1, 3), st.integers(1, 70), st.booleans(), st.integers(0, 99))
def test_factored_forward_equals_dense_linear(p, q, r, tokens, bias, seed):
    torch.manual_seed(seed)
    in_modes, out_modes = (3, 4, 2)[:p], (5, 3)[:q]
    layer = tn.TRLinear(
        math.prod(in_modes), math.prod(out_modes), ranks=r, in_modes=in_modes, out_modes=out_modes, bias=bias, dtype=F64
    )
    x = torch.randn(tokens, layer.in_features, dtype=F64)
    ref = F.linear(x, layer.weight, layer.bias).detach()
    with torch.no_grad():
        a_t, b_t = layer._inference_factors(tuple(layer.cores))
        torch.testing.assert_close(b_t.T @ a_t.T, layer.weight, rtol=0, atol=1e-10)  # W = B @ A exactly
        fact = x @ a_t @ b_t + (layer.bias if bias else 0)
        torch.testing.assert_close(fact, ref, rtol=0, atol=1e-10)
        torch.testing.assert_close(layer(x), ref, rtol=0, atol=1e-10)  # whichever path no-grad picks


def test_factored_path_is_taken_without_grad_and_tracks_the_cores():
    layer = _bench_layer()
    x = torch.randn(64, 768, dtype=F64)
    assert layer.choose_path(64) != "factored"  # autograd on: never
    with torch.no_grad():
        assert layer.choose_path(64) == "factored" and layer.choose_path(1) == "factored"
        torch.testing.assert_close(layer(x), F.linear(x, layer.weight, layer.bias), rtol=0, atol=1e-10)
        assert layer._factors is not None
        layer.cores[1].mul_(-2.0)  # an in-place update (optimizer.step, load_state_dict) moves _version
        torch.testing.assert_close(layer(x), F.linear(x, layer.weight, layer.bias), rtol=0, atol=1e-10)
    y = layer(x)  # autograd on again: the contraction path, and the factors are freed
    assert layer._factors is None and y.requires_grad
    torch.testing.assert_close(y, F.linear(x, layer.weight, layer.bias), rtol=0, atol=1e-10)
    moved = layer.to(torch.float32)  # new parameter tensors: the factors are rebuilt, not reused
    with torch.no_grad():
        xf = x.float()
        torch.testing.assert_close(moved(xf), F.linear(xf, moved.weight, moved.bias), rtol=1e-4, atol=1e-4)
        import copy

        clone = copy.deepcopy(moved)  # the factor cache is not part of the pickled state
        assert clone._factors is None
        torch.testing.assert_close(clone(xf), moved(xf), rtol=0, atol=0)


def test_factored_path_never_holds_more_than_the_dense_weight():
    # 12 -> 6 with ranks 4: the cut rank 16 makes factors of 16 * 18 = 288 > 72 dense numbers
    layer = tn.TRLinear(12, 6, ranks=4, in_modes=(3, 4), out_modes=(6,), dtype=F64)
    with torch.no_grad():
        assert layer._factored_cost(5) is None and layer.choose_path(5) != "factored"
        layer(torch.randn(5, 12, dtype=F64))
    assert layer._factors is None
