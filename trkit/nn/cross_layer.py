"""CrossLayerTR: the weights of many layers stored as one tensor ring.

``n_layers`` matrices ``W_l`` of shape ``(d_in, d_out)`` are the slices of a 3-way tensor
``T[i, j, l]`` kept as three cores::

    G_in    (R1, d_in,  R2)   shared by all layers
    G_out   (R2, d_out, R3)   shared by all layers
    G_layer (R3, L,     R1)   G_layer[:, l, :] belongs to layer l
    W_l[i, j] = trace(G_in[:, i, :] @ G_out[:, j, :] @ G_layer[:, l, :])

Optionally ``d_in``/``d_out`` are tensorised further (``in_modes``/``out_modes``): the ring is then
``G_in^1 .. G_in^p, G_out^1 .. G_out^q, G_layer`` with ``p + q + 1`` bond ranks. The first in/out
cores keep the names ``g_in``/``g_out``; the others live in ``g_in_rest``/``g_out_rest``.
"""

from __future__ import annotations

import math
import operator
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from trkit._kernels import einsum_letters
from trkit.contract import compiled as _exec
from trkit.errors import InputError, InputTypeError
from trkit.nn import init as _init
from trkit.nn.cache import DenseCacheMixin, dense_weights_cache
from trkit.nn.utils import gemm_cost, path_cost, positive_int, resolve_modes, resolve_ranks
from trkit.ring import TensorRing

__all__ = ["CrossLayerTR"]


class CrossLayerTR(DenseCacheMixin, nn.Module):
    """``n_layers`` linear maps ``d_in -> d_out`` sharing tensor-ring cores.

    Args:
        d_in, d_out, n_layers: matrix shape and how many layers share the ring.
        ranks: one int for every bond, or ``(R1, R2, R3)`` (``p + q + 1`` values when
            ``in_modes``/``out_modes`` give ``p``/``q`` factors).
        bias: a per-layer bias of shape ``(n_layers, d_out)`` (zero-initialised).
        in_modes, out_modes: optional factorisation of ``d_in``/``d_out`` into more cores
            (default: one core each).
        path: ``"auto"`` (cost model), ``"contract"`` or ``"dense"``.

    Forward: ``forward(x, layer)`` maps ``x (..., d_in)`` to ``x @ W_layer + b_layer``;
    ``forward_all`` applies every layer at once. Inside :func:`trkit.nn.dense_weights_cache`
    the dense weights are built at most once and shared by all layers' calls.
    """

    def __init__(
        self,
        d_in: int,
        d_out: int,
        n_layers: int,
        ranks,
        bias: bool = True,
        dtype=None,
        device=None,
        in_modes=None,
        out_modes=None,
        path: str = "auto",
    ):
        super().__init__()
        d_in, d_out, n_layers = (
            positive_int("d_in", d_in),
            positive_int("d_out", d_out),
            positive_int("n_layers", n_layers),
        )
        if path not in ("auto", "contract", "dense"):
            raise InputError(f"path must be 'auto', 'contract' or 'dense', got {path!r}")
        self.d_in, self.d_out, self.n_layers = int(d_in), int(d_out), int(n_layers)
        self.in_modes = (self.d_in,) if in_modes is None else resolve_modes(self.d_in, in_modes, "in_modes")
        self.out_modes = (self.d_out,) if out_modes is None else resolve_modes(self.d_out, out_modes, "out_modes")
        p, q = len(self.in_modes), len(self.out_modes)
        self.ranks = resolve_ranks(ranks, p + q + 1)
        self.path = path
        kw = {"dtype": dtype, "device": device}
        modes = self.in_modes + self.out_modes + (self.n_layers,)
        r = self.ranks
        d = len(r)
        shapes = [(r[k], modes[k], r[(k + 1) % d]) for k in range(d)]
        # Registration order g_in, g_out, g_layer, bias is the original API's parameter order.
        self.g_in = nn.Parameter(torch.empty(shapes[0], **kw))
        self.g_in_rest = nn.ParameterList(nn.Parameter(torch.empty(s, **kw)) for s in shapes[1:p])
        self.g_out = nn.Parameter(torch.empty(shapes[p], **kw))
        self.g_out_rest = nn.ParameterList(nn.Parameter(torch.empty(s, **kw)) for s in shapes[p + 1 : p + q])
        self.g_layer = nn.Parameter(torch.empty(shapes[-1], **kw))
        self.bias = nn.Parameter(torch.zeros(self.n_layers, self.d_out, **kw)) if bias else None
        self._build_equations()
        self._core_shapes = tuple(tuple(c.shape) for c in self.cores)  # fixed: load_state_dict checks shapes
        self._plans: dict = {}  # compiled contraction per (which, tokens, contiguity)
        self._init_cache()
        self._set(_views=[], _views_src=None)
        self._choices: dict = {}
        self.fit_info: dict | None = None
        self.reset_parameters()

    def _build_equations(self) -> None:
        p, q = len(self.in_modes), len(self.out_modes)
        d = p + q + 1
        let = einsum_letters(2 + 2 * d)
        t, lay, bonds, ins, outs = (
            let[0],
            let[1],
            let[2 : 2 + d],
            let[2 + d : 2 + d + p],
            let[2 + d + p : 2 + 2 * d - 1],
        )
        mode_letters = ins + outs + [lay]
        cores = [bonds[k] + mode_letters[k] + bonds[(k + 1) % d] for k in range(d)]
        shared, layer_core = ",".join(cores[:-1]), cores[-1]
        slice_ = bonds[-1] + bonds[0]
        i_str, o_str = "".join(ins), "".join(outs)
        self._eq_all = f"{shared},{layer_core}->{lay}{i_str}{o_str}"
        self._eq_one = f"{shared},{slice_}->{i_str}{o_str}"
        self._eq_fwd = f"{t}{i_str},{shared},{slice_}->{t}{o_str}"
        self._eq_fwd_all = f"{lay}{t}{i_str},{shared},{layer_core}->{lay}{t}{o_str}"

    def reset_parameters(self, std: float | None = None) -> None:
        """Draw cores so each reconstructed entry has standard deviation ``std``
        (default ``sqrt(1 / (3 d_in))``, the std of ``nn.Linear``'s default init); zero biases."""
        if std is None:
            std = _init.target_std(self.d_in, self.d_out, "torch")
        _init.init_ring_(self.cores, std)
        if self.bias is not None:
            with torch.no_grad():
                self.bias.zero_()
        self._choices.clear()

    # ---- structure ----------------------------------------------------------------------------
    @property
    def cores(self) -> list[nn.Parameter]:
        """All cores in ring order: in-cores, out-cores, layer core."""
        # straight from the registries: nn.Module.__getattr__ and ParameterList iteration cost
        # ~0.5-1.5 us per core, a visible share of a small layer's call
        p, m = self._parameters, self._modules
        return [
            p["g_in"],
            *m["g_in_rest"]._parameters.values(),
            p["g_out"],
            *m["g_out_rest"]._parameters.values(),
            p["g_layer"],
        ]

    @property
    def n_params(self) -> int:
        """``sum_k r_k n_k r_{k+1}`` over the ring (``R1 R2 d_in + R2 R3 d_out + R3 R1 L`` for three
        cores), plus ``n_layers * d_out`` with bias."""
        return sum(c.numel() for c in self.cores) + (self.bias.numel() if self.bias is not None else 0)

    @property
    def dense_params(self) -> int:
        """Parameters of ``n_layers`` separate dense ``(d_in, d_out)`` maps with the same biases."""
        return self.n_layers * self.d_out * (self.d_in + (1 if self.bias is not None else 0))

    def ring(self) -> TensorRing:
        """The stacked tensor ``(*in_modes, *out_modes, n_layers)`` as a TensorRing (shares storage)."""
        return TensorRing(self.cores, validate=False)

    # ---- dense weights ---------------------------------------------------------------------------
    def weight(self, layer: int) -> torch.Tensor:
        """Dense ``W_layer`` of shape ``(d_in, d_out)`` (from the cache when one is valid)."""
        layer = self._check_layer(layer)
        if self.has_valid_cache():
            return self._cache_value[layer]
        return self._weight_one(layer)

    def _weight_one(self, layer: int) -> torch.Tensor:
        *shared, g_layer = self.cores
        w = _exec.run(self._eq_one, *shared, g_layer[:, layer, :])
        return w.reshape(self.d_in, self.d_out)

    def weights(self) -> torch.Tensor:
        """All layers at once, shape ``(n_layers, d_in, d_out)`` (cached inside a cache context)."""
        return self._cached(self._weights_all)

    def _layer_views(self) -> list:
        """Per-layer ``(W_l^T, b_l)`` views of the cached weights, made with one ``unbind`` each:
        its backward stacks the layer gradients once instead of scattering each into a zero
        ``(L, d_in, d_out)`` tensor as ``weights()[l]`` would."""
        w = self.weights()
        if self._views_src is not w:
            wts = w.transpose(1, 2).unbind(0)
            bs = self.bias.unbind(0) if self.bias is not None else (None,) * self.n_layers
            self._set(_views=list(zip(wts, bs)), _views_src=w)
        return self._views

    def _clear_cache(self) -> None:
        super()._clear_cache()
        self._set(_views=[], _views_src=None)

    def _weights_all(self) -> torch.Tensor:
        cores = self.cores
        key = ("weights", *(c.is_contiguous() for c in cores))
        plan = self._plans.get(key)
        if plan is None:
            plan = self._plans[key] = _exec.get_plan(self._eq_all, self._core_shapes, self._core_shapes, key[1:])
        return _exec.execute(plan, cores, None, (self.n_layers, self.d_in, self.d_out))

    # ---- path choice ------------------------------------------------------------------------------
    def _shapes(self) -> tuple:
        return tuple(tuple(c.shape) for c in self.cores)

    def _costs(self, tokens: int, cached: bool, all_layers: bool) -> tuple[float, float]:
        *shared, g_layer = self._core_shapes
        L = self.n_layers
        if all_layers:  # contract = one compiled contraction batched over the layer index
            c_contract = path_cost(self._eq_fwd_all, ((L, tokens, *self.in_modes), *shared, g_layer)).cost
            c_dense = gemm_cost(L * tokens, self.d_in, self.d_out).cost  # one baddbmm over all layers
            return c_contract, c_dense + (0.0 if cached else path_cost(self._eq_all, (*shared, g_layer)).cost)
        slice_shape = (g_layer[0], g_layer[2])
        c_contract = path_cost(self._eq_fwd, ((tokens, *self.in_modes), *shared, slice_shape)).cost
        c_dense = gemm_cost(tokens, self.d_in, self.d_out).cost
        if cached:
            pass
        elif self.caching:  # one reconstruction shared by the n_layers calls of this pass
            c_dense += path_cost(self._eq_all, (*shared, g_layer)).cost / L
        else:
            c_dense += path_cost(self._eq_one, (*shared, slice_shape)).cost
        return c_contract, c_dense

    def choose_path(self, tokens: int, all_layers: bool = False) -> str:
        """``"contract"`` or ``"dense"`` for ``tokens`` rows (cached per size and cache state)."""
        if self.path != "auto":
            return self.path
        key = (tokens, self.has_valid_cache(), all_layers, self._cache_depth > 0)
        choice = self._choices.get(key)  # hot path: a dict hit, no planning
        return choice if choice is not None else self._decide(key)

    @torch.compiler.disable  # planning is Python-only; dynamo need not trace opt_einsum
    def _decide(self, key: tuple) -> str:
        c_contract, c_dense = self._costs(*key[:3])
        choice = self._choices[key] = "dense" if c_dense <= c_contract else "contract"
        return choice

    def _cache_params(self) -> list:
        return [p for p in (*self.cores, self.bias) if p is not None]

    def explain(self, batch_shape: int | Sequence[int], all_layers: bool = False, file=None) -> dict:
        """Print and return both path costs and the choice for ``forward`` (or ``forward_all``)."""
        tokens = math.prod((batch_shape,) if isinstance(batch_shape, int) else tuple(batch_shape))
        c_contract, c_dense = self._costs(tokens, self.has_valid_cache(), all_layers)
        report = {
            "tokens": tokens,
            "all_layers": all_layers,
            "contract_cost": c_contract,
            "dense_cost": c_dense,
            "choice": self.choose_path(tokens, all_layers),
            "caching": self.caching,
        }
        what = "forward_all" if all_layers else "forward(x, layer)"
        print(
            f"CrossLayerTR {self.d_in}->{self.d_out} x{self.n_layers} ranks {self.ranks}, {what}, {tokens} tokens"
            f"{' (inside dense_weights_cache)' if self.caching else ''}\n"
            f"  contract cores: cost {c_contract:.4g}\n  densify+matmul: cost {c_dense:.4g}\n"
            f"  choice: {report['choice']}",
            file=file,
        )
        return report

    # ---- forward -------------------------------------------------------------------------------------
    def _check_input(self, x: torch.Tensor) -> None:
        if x.shape[-1] != self.d_in:
            raise InputError(f"input has last dimension {x.shape[-1]}, expected d_in={self.d_in}")

    def forward(self, x: torch.Tensor, layer: int) -> torch.Tensor:
        """``x @ W_layer + b_layer`` for ``x`` of shape ``(..., d_in)`` -> ``(..., d_out)``."""
        layer = self._check_layer(layer)
        self._check_input(x)
        lead = x.shape[:-1]
        tokens = math.prod(lead)
        # one validity check per call (it compares every parameter's version counter)
        valid = self._cache_depth > 0 and self.has_valid_cache()
        path = self.path
        if path == "auto":
            key = (tokens, valid, False, self._cache_depth > 0)
            path = self._choices.get(key) or self._decide(key)
        if tokens == 0 or path == "dense":
            if self._cache_depth > 0:
                views = self._views if valid and self._views_src is self._cache_value else self._layer_views()
                w_t, b = views[layer]
                return F.linear(x, w_t, b)
            return F.linear(x, self._weight_one(layer).t(), self.bias[layer] if self.bias is not None else None)
        return self._contract_layer(x.reshape(tokens, self.d_in), layer).reshape(*lead, self.d_out)

    def _plan(self, which: str, x: torch.Tensor, ops: tuple):
        """Compiled contraction for ``which`` ("one": a layer, "all": every layer) and these operands."""
        key = (which, tuple(x.shape), *(o.is_contiguous() for o in ops))
        plan = self._plans.get(key)
        if plan is None:
            plan = self._plans[key] = self._make_plan(key, ops)
        return plan

    @torch.compiler.disable  # planning is Python-only
    def _make_plan(self, key: tuple, ops: tuple):
        if len(self._plans) >= 64:  # many distinct batch sizes: start over rather than grow without bound
            self._plans.clear()
        which, x_shape = key[0], key[1]
        *shared, g_layer = self._core_shapes
        if which == "one":
            eq, last = self._eq_fwd, (g_layer[0], g_layer[2])
        else:
            eq, last = self._eq_fwd_all, g_layer
        shapes = ((*x_shape[:-1], *self.in_modes), *shared, last)
        return _exec.get_plan(eq, shapes, tuple(tuple(o.shape) for o in ops), key[2:])

    def _contract_layer(self, x2: torch.Tensor, layer: int) -> torch.Tensor:
        """``(T, d_in) -> (T, d_out)`` by the compiled contraction with layer ``layer``'s slice, plus bias."""
        *shared, g_layer = self.cores
        ops = (x2, *shared, g_layer[:, layer, :])
        return _exec.execute(
            self._plan("one", x2, ops),
            ops,
            self.bias[layer] if self.bias is not None else None,
            (x2.shape[0], self.d_out),
        )

    def forward_all(self, xs):
        """Apply every layer: ``xs`` is ``(n_layers, ..., d_in)`` (layer ``l`` gets ``xs[l]``) or a
        sequence of ``n_layers`` tensors ``(..., d_in)``; returns the same structure with ``d_out``.

        The dense weights, when the cost model prefers them, are reconstructed once for all layers.
        """
        if isinstance(xs, torch.Tensor):
            if xs.ndim < 2 or xs.shape[0] != self.n_layers:
                raise InputError(f"forward_all expects (n_layers={self.n_layers}, ..., d_in), got {tuple(xs.shape)}")
            self._check_input(xs)
            lead = xs.shape[1:-1]
            tokens = math.prod(lead)
            x3 = xs.reshape(self.n_layers, tokens, self.d_in)
            if tokens == 0 or self.choose_path(tokens, all_layers=True) == "dense":
                w = self.weights()
                y = torch.bmm(x3, w) if self.bias is None else torch.baddbmm(self.bias.unsqueeze(1), x3, w)
            else:
                # one compiled contraction: the layer-shared cores meet all L*T rows in single GEMMs,
                # only the small layer-slice step is batched over layers
                ops = (x3, *self.cores)
                y = _exec.execute(self._plan("all", x3, ops), ops, None, (self.n_layers, tokens, self.d_out))
                if self.bias is not None:
                    # y is a view of the GEMM output: in place only without autograd (else backward
                    # clones the whole gradient, CopySlices)
                    b = self.bias.unsqueeze(1)
                    y = y.add_(b) if not torch.is_grad_enabled() else y + b
            return y.reshape(self.n_layers, *lead, self.d_out)
        xs = list(xs)
        if len(xs) != self.n_layers:
            raise InputError(f"forward_all expects {self.n_layers} inputs, got {len(xs)}")
        with dense_weights_cache(self):
            return [self.forward(x, layer) for layer, x in enumerate(xs)]

    def _check_layer(self, layer: int) -> int:
        try:
            idx = operator.index(layer)
        except TypeError:
            raise InputTypeError(f"layer must be an int, got {type(layer).__name__}") from None
        if not 0 <= idx < self.n_layers:
            raise IndexError(f"layer {layer!r} out of range for n_layers={self.n_layers}")
        return idx

    def extra_repr(self) -> str:
        modes = "" if len(self.ranks) == 3 else f", in_modes={self.in_modes}, out_modes={self.out_modes}"
        return (
            f"d_in={self.d_in}, d_out={self.d_out}, n_layers={self.n_layers}, ranks={self.ranks}{modes}, "
            f"bias={self.bias is not None}, n_params={self.n_params}"
        )

    # ---- initialisation from existing weights -------------------------------------------------------------
    @classmethod
    def from_matrices(
        cls,
        matrices,
        biases=None,
        tol: float | None = None,
        max_params: int | None = None,
        ranks=None,
        in_modes=None,
        out_modes=None,
        path: str = "auto",
    ) -> CrossLayerTR:
        """Closest CrossLayerTR to ``n_layers`` matrices of shape ``(d_in, d_out)`` (the layout of
        :meth:`weight`; for ``nn.Linear`` weights pass ``lin.weight.T``) or one ``(L, d_in, d_out)``
        tensor, with optional biases ``(L, d_out)``.

        At most one of ``tol`` (relative Frobenius error of the stacked tensor), ``max_params``
        (total parameters, biases included) or ``ranks``; none gives the exact ring.
        ``module.fit_info`` holds ``rel_error`` (stacked) and ``layer_rel_errors`` (per layer).
        """
        from trkit.nn.fit import fit_ring

        if isinstance(matrices, torch.Tensor):
            stack = matrices.detach()
        else:
            mats = [m.detach() if isinstance(m, torch.Tensor) else torch.as_tensor(m) for m in matrices]
            if not mats:
                raise InputError("from_matrices needs at least one matrix")
            if any(m.shape != mats[0].shape for m in mats):
                raise InputError(f"all matrices must share one shape, got {sorted({tuple(m.shape) for m in mats})}")
            stack = torch.stack(mats)
        if stack.ndim != 3:
            raise InputError(f"expected matrices of shape (d_in, d_out), got stacked shape {tuple(stack.shape)}")
        L, d_in, d_out = (int(s) for s in stack.shape)
        if biases is not None:
            biases = torch.stack(list(biases)) if not isinstance(biases, torch.Tensor) else biases.detach()
            if tuple(biases.shape) != (L, d_out):
                raise InputError(f"biases must have shape ({L}, {d_out}), got {tuple(biases.shape)}")
        i_modes = (d_in,) if in_modes is None else resolve_modes(d_in, in_modes, "in_modes")
        o_modes = (d_out,) if out_modes is None else resolve_modes(d_out, out_modes, "out_modes")
        target = stack.permute(1, 2, 0).reshape(*i_modes, *o_modes, L)
        ring, info = fit_ring(
            target, tol=tol, max_params=max_params, ranks=ranks, extra_params=L * d_out if biases is not None else 0
        )
        module = cls(
            d_in,
            d_out,
            L,
            ring.ranks,
            bias=biases is not None,
            dtype=stack.dtype,
            device=stack.device,
            in_modes=i_modes if len(i_modes) > 1 else None,
            out_modes=o_modes if len(o_modes) > 1 else None,
            path=path,
        )
        with torch.no_grad():
            for p, c in zip(module.cores, ring.cores):
                p.copy_(c)
            if biases is not None:
                module.bias.copy_(biases)
            approx = module._weights_all()
            err = torch.linalg.matrix_norm(approx - stack) / torch.linalg.matrix_norm(stack).clamp_min(1e-300)
        info["layer_rel_errors"] = [float(e) for e in err]
        info["n_params"] = module.n_params
        info["compression"] = module.dense_params / module.n_params
        module.fit_info = info
        return module
