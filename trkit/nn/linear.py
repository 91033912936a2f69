"""TRLinear: a linear layer whose weight is a tensor ring over tensorised dimensions.

``in_features = prod(in_modes)``, ``out_features = prod(out_modes)``. The weight
``W`` of shape ``(out_features, in_features)`` (``nn.Linear``'s layout) is the ring with cores
``G_1..G_q`` over ``out_modes`` followed by ``G_{q+1}..G_{q+p}`` over ``in_modes``::

    W.reshape(*out_modes, *in_modes)[j_1..j_q, i_1..i_p]
        = trace(G_1[:, j_1, :] ... G_q[:, j_q, :] G_{q+1}[:, i_1, :] ... G_{q+p}[:, i_p, :])

``ranks[k]`` is the left bond of core ``k`` (``ranks[0]`` closes the ring).
"""

from __future__ import annotations

import math
import sys
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from trkit._kernels import einsum_letters
from trkit.contract import compiled as _exec
from trkit.errors import InputError, InputTypeError
from trkit.nn import init as _init
from trkit.nn.cache import DenseCacheMixin
from trkit.nn.utils import gemm_cost, path_cost, positive_int, resolve_modes, resolve_ranks
from trkit.ring import TensorRing

__all__ = ["TRLinear"]

_PATHS = ("auto", "contract", "dense")


class TRLinear(DenseCacheMixin, nn.Module):
    """Drop-in ``nn.Linear`` replacement with a tensor-ring weight.

    Args:
        in_features, out_features: layer sizes.
        ranks: one int for every bond, or ``len(out_modes) + len(in_modes)`` bond ranks.
        in_modes, out_modes: factorisation of the sizes (product must match); an int asks for
            that many balanced factors; ``None`` picks balanced factors near 16
            (768 -> (32, 24), 4096 -> (16, 16, 16), 32 -> (32,)).
        bias: learnable bias of shape ``(out_features,)`` (``nn.Linear``'s init).
        init: target distribution of the reconstructed weight: ``"kaiming"``, ``"xavier"``,
            ``"torch"`` (``nn.Linear``'s default std) or a float std; see :mod:`trkit.nn.init`.
        path: ``"auto"`` (cost model picks per batch size), ``"contract"`` or ``"dense"``.
            Under ``torch.no_grad()`` ``"auto"`` may also pick ``"factored"`` (see :meth:`choose_path`).

    Forward: ``x (..., in_features) -> (..., out_features)``, equal to
    ``F.linear(x, self.weight, self.bias)``.
    """

    def __init__(
        self,
        in_features: int,
        out_features: int,
        ranks,
        in_modes=None,
        out_modes=None,
        bias: bool = True,
        init: str | float = "kaiming",
        path: str = "auto",
        dtype=None,
        device=None,
    ):
        super().__init__()
        in_features, out_features = positive_int("in_features", in_features), positive_int("out_features", out_features)
        if path not in _PATHS:
            raise InputError(f"path must be one of {_PATHS}, got {path!r}")
        self.in_features, self.out_features = in_features, out_features
        self.in_modes = resolve_modes(in_features, in_modes, "in_modes")
        self.out_modes = resolve_modes(out_features, out_modes, "out_modes")
        d = len(self.in_modes) + len(self.out_modes)
        self.ranks = resolve_ranks(ranks, d)
        self.init, self.path = init, path
        modes = self.out_modes + self.in_modes
        kw = {"dtype": dtype, "device": device}
        self.cores = nn.ParameterList(
            nn.Parameter(torch.empty(self.ranks[k], modes[k], self.ranks[(k + 1) % d], **kw)) for k in range(d)
        )
        self.bias = nn.Parameter(torch.empty(out_features, **kw)) if bias else None
        self._build_equations()
        self._core_shapes = tuple(tuple(c.shape) for c in self.cores)  # fixed: load_state_dict checks shapes
        self._init_cache()
        self._choices: dict = {}
        self._plans: dict = {}  # compiled forward plan per (tokens, contiguity)
        self._set(_factors=None)  # inference factors, see _inference_factors
        self.fit_info: dict | None = None
        self.reset_parameters()

    # ---- construction helpers ------------------------------------------------------------
    def _build_equations(self) -> None:
        p, q = len(self.in_modes), len(self.out_modes)
        d = p + q
        let = einsum_letters(1 + 2 * d)
        t, bonds, outs, ins = let[0], let[1 : 1 + d], let[1 + d : 1 + d + q], let[1 + d + q :]
        mode_letters = outs + ins
        cores = [bonds[k] + mode_letters[k] + bonds[(k + 1) % d] for k in range(d)]
        self._eq_dense = ",".join(cores) + "->" + "".join(mode_letters)
        self._eq_fwd = t + "".join(ins) + "," + ",".join(cores) + "->" + t + "".join(outs)

    def reset_parameters(self, init: str | float | None = None) -> None:
        """Redraw the cores so the reconstructed weight has the target std; bias as ``nn.Linear``."""
        std = _init.target_std(self.in_features, self.out_features, self.init if init is None else init)
        _init.init_ring_(list(self.cores), std)
        if self.bias is not None:
            bound = 1.0 / math.sqrt(self.in_features)
            with torch.no_grad():
                self.bias.uniform_(-bound, bound)
        self._choices.clear()

    # ---- sizes ------------------------------------------------------------------------------
    @property
    def n_params(self) -> int:
        """``sum_k r_k n_k r_{k+1}`` (+ ``out_features`` with bias)."""
        return sum(c.numel() for c in self.cores) + (self.bias.numel() if self.bias is not None else 0)

    @property
    def dense_params(self) -> int:
        return self.in_features * self.out_features + (self.out_features if self.bias is not None else 0)

    # ---- dense views -----------------------------------------------------------------------
    def ring(self) -> TensorRing:
        """The weight as a TensorRing of shape ``(*out_modes, *in_modes)`` (shares storage)."""
        return TensorRing(list(self.cores), validate=False)

    def _dense(self) -> torch.Tensor:
        return _exec.run(self._eq_dense, *self.cores, out_shape=(self.out_features, self.in_features))

    @property
    def weight(self) -> torch.Tensor:
        """The reconstructed dense weight ``(out_features, in_features)`` (differentiable)."""
        return self._cached(self._dense)

    # ---- path choice ----------------------------------------------------------------------------
    def _factor_rank(self) -> int:
        """Bond product at the cut between output and input cores: the rank of ``W`` as ``B @ A``."""
        return self.ranks[0] * self.ranks[len(self.out_modes)]

    def _factored_cost(self, tokens: int) -> float | None:
        """Cost of ``(x @ A) @ B`` with cached factors, or None when the factors would take more
        memory than the dense weight (the cache must never cost more than ``nn.Linear`` holds)."""
        rank = self._factor_rank()
        if rank * (self.in_features + self.out_features) > self.in_features * self.out_features:
            return None
        return gemm_cost(tokens, self.in_features, rank).cost + gemm_cost(tokens, rank, self.out_features).cost

    def _costs(self, tokens: int, cached: bool) -> tuple[float, float]:
        shapes = tuple(tuple(c.shape) for c in self.cores)
        c_contract = path_cost(self._eq_fwd, ((tokens, *self.in_modes), *shapes)).cost
        c_dense = gemm_cost(tokens, self.in_features, self.out_features).cost
        if not cached:
            c_dense += path_cost(self._eq_dense, shapes).cost
        return c_contract, c_dense

    def choose_path(self, tokens: int) -> str:
        """``"contract"``, ``"dense"`` or (only without autograd) ``"factored"`` for ``tokens``
        input rows, by the cost model; cached per size, cache state and grad mode.

        ``"factored"``: the ring cut between its output and input cores is ``W = B @ A`` with
        ``A (rank, in_features)``, ``B (out_features, rank)``, ``rank = ranks[0] * ranks[q]``.
        Under ``torch.no_grad()`` the two factors are built once and reused while the cores are
        unchanged (two GEMMs a call; taken only when the factors hold fewer numbers than the dense
        weight). Any call with autograd on drops them.
        """
        if self.path != "auto":
            return self.path
        key = (tokens, self.has_valid_cache(), torch.is_grad_enabled())
        choice = self._choices.get(key)  # hot path: a dict hit, no planning
        return choice if choice is not None else self._decide(key)

    @torch.compiler.disable  # planning is Python-only; dynamo need not trace opt_einsum
    def _decide(self, key: tuple) -> str:
        tokens, cached, grad = key
        c_contract, c_dense = self._costs(tokens, cached)
        costs = {"dense": c_dense, "contract": c_contract}  # ties go to dense, as before
        c_factored = None if grad else self._factored_cost(tokens)
        if c_factored is not None:
            costs["factored"] = c_factored
        choice = self._choices[key] = min(costs, key=costs.get)
        return choice

    @torch.compiler.disable  # a Python-side cache keyed by parameter identity and version
    def _inference_factors(self, cores: tuple) -> tuple[torch.Tensor, torch.Tensor]:
        """``(A^T (in, rank), B^T (rank, out))`` with ``W = B @ A``, rebuilt when a core changes."""
        f = self._factors
        if f is not None and all(a is b for a, b in zip(f[0], cores)) and [c._version for c in cores] == f[1]:
            return f[2], f[3]
        q = len(self.out_modes)
        two = TensorRing(list(cores), validate=False).merge_modes(q, len(cores)).merge_modes(0, q)
        b, a = two.cores  # b (r_0, out, r_q), a (r_q, in, r_0)
        a_t = a.permute(1, 0, 2).reshape(self.in_features, -1).contiguous()  # columns (r_q, r_0)
        b_t = b.permute(2, 0, 1).reshape(-1, self.out_features).contiguous()  # rows (r_q, r_0)
        self._set(_factors=(cores, [c._version for c in cores], a_t, b_t))
        return a_t, b_t

    def _cache_params(self) -> list:
        return [p for p in (*self.cores, self.bias) if p is not None]

    def explain(self, batch_shape: int | Sequence[int], file=None) -> dict:
        """Print and return both path costs for an input of leading shape ``batch_shape``."""
        tokens = math.prod((batch_shape,) if isinstance(batch_shape, int) else tuple(batch_shape))
        shapes = tuple(tuple(c.shape) for c in self.cores)
        c_contract, c_dense = self._costs(tokens, self.has_valid_cache())
        fwd = path_cost(self._eq_fwd, ((tokens, *self.in_modes), *shapes))
        recon = path_cost(self._eq_dense, shapes)
        report = {
            "tokens": tokens,
            "choice": self.choose_path(tokens),
            "contract_cost": c_contract,
            "dense_cost": c_dense,
            "contract_flops": fwd.flops,
            "dense_flops": recon.flops + 2 * tokens * self.in_features * self.out_features,
            "contract_steps": fwd.steps,
            "equation": self._eq_fwd,
            "factored_cost": None if torch.is_grad_enabled() else self._factored_cost(tokens),
            "path": [s["eq"] for s in _exec.describe(self._eq_fwd, (tokens, *self.in_modes), *shapes)],
        }
        print(
            f"TRLinear {self.in_features}->{self.out_features} modes {self.in_modes}->{self.out_modes} "
            f"ranks {self.ranks}, {tokens} tokens\n"
            f"  contract cores: cost {c_contract:.4g} ({fwd.flops:.4g} FLOPs, {fwd.steps} steps, "
            f"path {report['path']})\n"
            f"  densify+matmul: cost {c_dense:.4g} ({report['dense_flops']:.4g} FLOPs)\n"
            + (
                ""
                if report["factored_cost"] is None
                else f"  factored (no grad, rank {self._factor_rank()}): cost {report['factored_cost']:.4g}\n"
            )
            + f"  choice: {report['choice']}"
            + ("" if self.path == "auto" else f" (forced by path={self.path!r})"),
            file=file or sys.stdout,
        )
        return report

    # ---- forward -------------------------------------------------------------------------------
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[-1] != self.in_features:
            raise InputError(f"input has last dimension {x.shape[-1]}, expected in_features={self.in_features}")
        lead = x.shape[:-1]
        tokens = math.prod(lead)
        choice = self.choose_path(tokens) if tokens else "dense"
        if self._factors is not None and choice != "factored":
            self._set(_factors=None)  # training (or another path) again: free the inference factors
        if choice == "dense":
            return F.linear(x, self.weight, self.bias)
        # Cores straight from the registry: ParameterList iteration costs ~6 us per call.
        cores = tuple(self._modules["cores"]._parameters.values())
        x2 = x.reshape(tokens, self.in_features)
        if choice == "factored":
            a_t, b_t = self._inference_factors(cores)
            h = x2 @ a_t
            y = torch.addmm(self.bias, h, b_t) if self.bias is not None else h @ b_t
            return y.reshape(*lead, self.out_features)
        # the input goes in as (tokens, in_features); the compiled plan regroups it for its first GEMM.
        key = (tokens, x2.is_contiguous(), *[c.is_contiguous() for c in cores])
        plan = self._plans.get(key)
        if plan is None:
            plan = self._plans[key] = self._get_plan(key)
        return _exec.execute(plan, (x2, *cores), self.bias, (*lead, self.out_features))

    @torch.compiler.disable  # planning is Python-only
    def _get_plan(self, key: tuple):
        if len(self._plans) >= 64:  # many distinct batch sizes: start over rather than grow without bound
            self._plans.clear()
        shapes = ((key[0], *self.in_modes), *self._core_shapes)
        return _exec.get_plan(self._eq_fwd, shapes, ((key[0], self.in_features), *self._core_shapes), key[1:])

    def extra_repr(self) -> str:
        return (
            f"in_features={self.in_features}, out_features={self.out_features}, in_modes={self.in_modes}, "
            f"out_modes={self.out_modes}, ranks={self.ranks}, bias={self.bias is not None}, "
            f"n_params={self.n_params}"
        )

    # ---- initialisation from existing weights ------------------------------------------------------
    @classmethod
    def from_linear(
        cls,
        linear,
        bias=None,
        tol: float | None = None,
        max_params: int | None = None,
        ranks=None,
        in_modes=None,
        out_modes=None,
        path: str = "auto",
    ) -> TRLinear:
        """Closest TRLinear to an ``nn.Linear`` (or a weight ``(out, in)`` plus optional ``bias``).

        Exactly one of ``tol`` (relative Frobenius error of the weight), ``max_params`` (total
        parameters of the new layer, bias included) or ``ranks`` (fixed TR-SVD ranks) may be
        given; with none, the ring is exact (full TR-SVD). The achieved relative error and
        ranks are in ``layer.fit_info`` (``layer.fit_info["rel_error"]``).
        """
        from trkit.nn.fit import fit_ring

        if isinstance(linear, nn.Linear):
            weight, bias = linear.weight.detach(), (linear.bias.detach() if linear.bias is not None else None)
        elif isinstance(linear, torch.Tensor):
            weight = linear.detach()
        else:
            raise InputTypeError(f"from_linear expects an nn.Linear or a weight tensor, got {type(linear).__name__}")
        if weight.ndim != 2:
            raise InputError(f"weight must be 2-D (out_features, in_features), got shape {tuple(weight.shape)}")
        out_f, in_f = (int(s) for s in weight.shape)
        if bias is not None and tuple(bias.shape) != (out_f,):
            raise InputError(f"bias must have shape ({out_f},), got {tuple(bias.shape)}")
        i_modes = resolve_modes(in_f, in_modes, "in_modes")
        o_modes = resolve_modes(out_f, out_modes, "out_modes")
        extra = out_f if bias is not None else 0
        ring, info = fit_ring(
            weight.reshape(*o_modes, *i_modes), tol=tol, max_params=max_params, ranks=ranks, extra_params=extra
        )
        layer = cls(
            in_f,
            out_f,
            ring.ranks,
            in_modes=i_modes,
            out_modes=o_modes,
            bias=bias is not None,
            path=path,
            dtype=weight.dtype,
            device=weight.device,
        )
        with torch.no_grad():
            for p, c in zip(layer.cores, ring.cores):
                p.copy_(c)
            if bias is not None:
                layer.bias.copy_(bias)
        info["n_params"] = layer.n_params
        info["compression"] = layer.dense_params / layer.n_params
        layer.fit_info = info
        return layer
