"""The AdaRing adapter set: every projection of every branch is one ``trkit.nn.CrossLayerTR``."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from trkit.nn import CrossLayerTR
from trkit.nn.init import core_std
from trkit_vlm.adapters.adaring.config import PROJECTIONS, projection_dims
from trkit_vlm.adapters.adaring.ranks import AdaRingRankAdaptation
from trkit_vlm.adapters.paired import PairedAdapterSet

__all__ = ["AdaRingAdapterSet", "branch_similarity"]


def branch_similarity(outs: list[torch.Tensor]) -> torch.Tensor:
    """Mean over branch pairs and tokens of ``cos(o_i, o_j)^2`` (0: orthogonal outputs, 1: parallel)."""
    sims = [
        F.cosine_similarity(outs[i], outs[j], dim=-1).pow(2).mean()
        for i in range(len(outs))
        for j in range(i + 1, len(outs))
    ]
    return torch.stack(sims).mean()


def _kaiming_std(tr: CrossLayerTR) -> float:
    """MMA's Kaiming (fan_out, relu) std, the one every reconstructed weight starts with."""
    return math.sqrt(2.0 / tr.d_out)


def _linear(x: torch.Tensor, w: torch.Tensor, bias: torch.Tensor | None, k: int) -> torch.Tensor:
    """``x @ w + bias[k]`` with ``w`` of shape ``(d_in, d_out)``."""
    return F.linear(x, w.t(), bias[k] if bias is not None else None)


class AdaRingAdapterSet(PairedAdapterSet):
    """Branches of cross-layer TR adapters (see ``AdaRingConfig``).

    ``branches[b][p]`` is the ``CrossLayerTR`` of projection ``p`` in branch ``b``; its layer index is the
    position ``k`` of the adapted layer pair.
    """

    def __init__(self, config, info):
        super().__init__(config, info)
        dims = projection_dims(info, config.hidden)
        L = self.n_pairs
        self.branches = nn.ModuleList()
        for b in range(config.n_branches):
            ranks = config.branch_ranks(b)
            self.branches.append(
                nn.ModuleDict(
                    {p: CrossLayerTR(dims[p][0], dims[p][1], L, ranks[p], bias=config.has_bias(p)) for p in PROJECTIONS}
                )
            )
        scales = torch.full((config.n_branches,), float(config.branch_scale_init))
        if config.learn_branch_scale:
            self.branch_scale = nn.Parameter(scales)
        else:  # a buffer keeps the state-dict keys of a learned scale
            self.register_buffer("branch_scale", scales)
        # Latest diversity term per (tower, pair); a dict keeps memory bounded if nobody reads it.
        self._similarity: dict[tuple[str, int], torch.Tensor] = {}
        # Dense per-layer weights built once per tower forward pass (see tower_pre_forward).
        self._dense: dict[str, list[dict[str, torch.Tensor]]] = {}
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Cores drawn so each reconstructed weight has MMA's Kaiming (fan_out, relu) std ``sqrt(2/d_out)``;
        biases zero; with ``init="zero_up"`` the layer core of the up projections is zero."""
        with torch.no_grad():
            for md in self.branches:
                for p, tr in md.items():
                    tr.reset_parameters(std=_kaiming_std(tr))
                    if tr.bias is not None:
                        tr.bias.zero_()
                    if self.config.init == "zero_up" and p.startswith("up_"):
                        tr.g_layer.zero_()
            self.branch_scale.fill_(float(self.config.branch_scale_init))

    def needs_input_statistics(self) -> bool:
        return self.config.init == "pca"

    def start_from_inputs(self, covariances: dict[str, torch.Tensor]) -> None:
        """``init="pca"``: the input core ``G_in (R1, d_in, R2)`` of each down projection gets the leading
        ``R1 R2`` eigenvectors of its tower's input covariance (the first ``R2`` in ``G_in[0]``, and so on),
        each scaled to the norm a column of the random core has in expectation; the other cores keep their
        random start."""
        with torch.no_grad():
            for tower, cov in covariances.items():
                s = "text" if tower == "text" else "image"
                _, vecs = torch.linalg.eigh(cov.double())
                vecs = vecs.flip(-1)  # descending variance
                for md in self.branches:
                    tr = md["down_" + s]
                    g = tr.g_in
                    r1, d_in, r2 = g.shape
                    m = min(r1 * r2, d_in)
                    norm = core_std(_kaiming_std(tr), tr.ranks) * math.sqrt(d_in)
                    dirs = (vecs[:, :m].t() * norm).to(g)  # (m, d_in)
                    flat = g.permute(0, 2, 1).reshape(r1 * r2, d_in).clone()
                    flat[:m] = dirs
                    g.copy_(flat.reshape(r1, r2, d_in).permute(0, 2, 1))

    def tower_pre_forward(self, tower: str) -> None:
        """Build each projection's dense weights for all layers once per tower pass: one contraction
        per projection instead of one per layer (same values, part of this pass's autograd graph)."""
        s = "text" if tower == "text" else "image"
        self._dense[tower] = [{p: md[p].weights() for p in ("down_" + s, "shared", "up_" + s)} for md in self.branches]

    def tower_post_forward(self, tower: str) -> None:
        self._dense.pop(tower, None)

    def branch(self, tower: str, k: int, h: torch.Tensor) -> torch.Tensor:
        s = "text" if tower == "text" else "image"
        dense = self._dense.get(tower)
        diversity = (
            self.config.diversity_weight > 0 and len(self.branches) > 1 and self.training and torch.is_grad_enabled()
        )
        if dense is not None and not diversity:
            return self._fused(s, k, h, dense)
        outs = []
        for b, md in enumerate(self.branches):
            if dense is None:
                z = F.relu(md["down_" + s](h, k))
                z = F.relu(md["shared"](z, k))
                outs.append(md["up_" + s](z, k))
            else:
                z = F.relu(_linear(h, dense[b]["down_" + s][k], md["down_" + s].bias, k))
                z = F.relu(_linear(z, dense[b]["shared"][k], md["shared"].bias, k))
                outs.append(_linear(z, dense[b]["up_" + s][k], md["up_" + s].bias, k))
        if diversity:
            self._similarity[(tower, k)] = branch_similarity(outs)
        y = outs[0] * self.branch_scale[0]
        for b in range(1, len(outs)):
            y = y + outs[b] * self.branch_scale[b]
        return y

    def _fused(self, s: str, k: int, h: torch.Tensor, dense) -> torch.Tensor:
        """``sum_b scale_b (z_b W_b + c_b) = [scale_b z_b]_b @ [W_b]_b + sum_b scale_b c_b``: one up
        matmul for all branches, so no full-width output is stored per branch."""
        zs, ws, bias = [], [], None
        for b, md in enumerate(self.branches):
            z = F.relu(_linear(h, dense[b]["down_" + s][k], md["down_" + s].bias, k))
            z = F.relu(_linear(z, dense[b]["shared"][k], md["shared"].bias, k))
            zs.append(z * self.branch_scale[b])
            ws.append(dense[b]["up_" + s][k])
            c = md["up_" + s].bias
            if c is not None:
                bias = c[k] * self.branch_scale[b] if bias is None else bias + c[k] * self.branch_scale[b]
        z = zs[0] if len(zs) == 1 else torch.cat(zs, dim=-1)
        w = ws[0] if len(ws) == 1 else torch.cat(ws, dim=0)
        return F.linear(z, w.t(), bias)

    def regularization(self) -> torch.Tensor:
        """``diversity_weight`` x mean branch similarity over the adapted layers of the latest forward
        pass(es) since the last call; 0 when disabled."""
        if not self._similarity or self.config.diversity_weight == 0:
            return torch.zeros((), device=self.branch_scale.device)
        reg = torch.stack(list(self._similarity.values())).mean() * float(self.config.diversity_weight)
        self._similarity = {}
        return reg

    def rank_allocator(self, total_steps: int) -> AdaRingRankAdaptation | None:
        """With ``rank_budget`` set: the ranks are adapted over ``total_steps`` (``AdaRingRankAdaptation``)."""
        if self.config.rank_budget is None:
            return None
        return AdaRingRankAdaptation(self, total_steps)

    def parts(self) -> dict[str, int]:
        out = {p: 0 for p in PROJECTIONS}
        for md in self.branches:
            for p, tr in md.items():
                out[p] += sum(q.numel() for q in tr.parameters())
        out["branch_scale"] = self.branch_scale.numel() if self.config.learn_branch_scale else 0
        return out
