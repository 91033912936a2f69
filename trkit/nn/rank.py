"""Rank adaptation under a parameter budget: start tensor-ring layers at large ranks and remove the
least important bond slices during training (in the spirit of AdaLoRA's budgeted allocation).

Importance of a bond slice (see :mod:`trkit.nn.bonds` for slices and masks):

* ``"sensitivity"`` (default): AdaLoRA's smoothed sensitivity. Per core entry ``I = |theta * grad|``,
  ``I_bar <- b1 I_bar + (1 - b1) I``, ``U_bar <- b2 U_bar + (1 - b2) |I - I_bar|``; a slice scores
  the sum of ``I_bar * U_bar`` over its entries in the two cores it joins.
* ``"magnitude"``: the Frobenius norm of the slice's term in the reconstructed tensor, from the
  transfer matrices (no gradient needed; for pruning a trained ring).

Allocation: while the masked parameter count exceeds the budget, remove the kept slice with the
lowest score per parameter it frees (what removing it saves depends on the ranks kept at the
neighbouring bonds, so it is recomputed after every removal). The budget follows AdaLoRA's cubic
schedule from the initial count down to the target between ``warmup_steps`` and
``total_steps - final_steps``. Removal is final: a slice zeroed on both sides gets no gradient.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
from torch import nn

from trkit.errors import InputError, InputTypeError
from trkit.nn import bonds
from trkit.nn.precondition import ring_cores, transfer_matrices

__all__ = ["RankAllocator", "allocate_slices", "slice_magnitudes"]

_SCORES = ("sensitivity", "magnitude")


def slice_magnitudes(cores: Sequence[torch.Tensor]) -> list[torch.Tensor]:
    """``||Y_{k, j}||_F`` for every bond ``k`` and slice ``j``: the norm of the ring restricted to
    slice ``j`` of bond ``k`` (all other bonds summed), one vector of length ``r_k`` per bond."""
    cs = [c.detach().to(torch.float64) for c in cores]
    d = len(cs)
    transfers = transfer_matrices(cs)
    out = []
    for k in range(d):
        # ||Y_{k,j}||^2 is entry ((j, j), (j, j)) of the ring's transfer product opened at bond k,
        # T_k T_{k+1} ... T_{k-1}. Only those r diagonal entries are needed, so the product is taken
        # from the right on the r columns (j, j) alone: at a rank-128 bond the whole r^2 x r^2
        # matrix would be 2 GiB.
        r = cs[k].shape[0]
        j = torch.arange(r, device=cs[0].device)
        jj = j * (r + 1)  # flat index of (j, j)
        v = transfers[(k - 1) % d][:, jj]
        for i in range(2, d + 1):
            v = transfers[(k - i) % d] @ v
        out.append(v[jj, j].clamp_min(0).sqrt().to(cores[0].dtype))
    return out


def _smallest(modes, ranks, min_rank: int, fixed: int) -> int:
    """Parameters with every bond at ``min_rank`` (or its current rank when smaller)."""
    return fixed + sum(bonds.ring_params(md, [min(min_rank, r) for r in rk]) for md, rk in zip(modes, ranks))


def allocate_slices(
    modes: Sequence[Sequence[int]],
    masks: Sequence[Sequence[torch.Tensor]],
    scores: Sequence[Sequence[torch.Tensor]],
    budget: int,
    fixed_params: int = 0,
    min_rank: int = 1,
) -> list[list[torch.Tensor]]:
    """Greedy removal of bond slices until ``fixed_params + sum_m ring_params(m) <= budget``.

    Args:
        modes: per ring, its core mode sizes.
        masks: per ring, one boolean vector per bond (True: kept); not modified.
        scores: same shapes as ``masks``; higher = more important.
        fixed_params: parameters outside the rings (biases, scales) counted against the budget.
        min_rank: fewest slices any bond keeps.

    Returns:
        New masks. Raises :class:`~trkit.errors.InputError` when even ``min_rank`` everywhere does
        not fit.
    """
    new = [[m.clone().bool() for m in ring] for ring in masks]
    ranks = [[int(m.sum()) for m in ring] for ring in new]
    floor = _smallest(modes, ranks, min_rank, fixed_params)
    if floor > budget:
        raise InputError(
            f"parameter budget {budget} is below the smallest allowed rings ({floor} parameters with every "
            f"bond at rank {min_rank})"
        )
    total = fixed_params + sum(bonds.ring_params(md, rk) for md, rk in zip(modes, ranks))
    while total > budget:
        best: tuple[float, int, int, int, int] | None = None
        for i, (md, rk) in enumerate(zip(modes, ranks)):
            here = bonds.ring_params(md, rk)
            for k, r in enumerate(rk):
                if r <= min_rank:
                    continue
                kept = new[i][k].nonzero().flatten()
                j = int(kept[torch.argmin(scores[i][k][kept])])
                saved = here - bonds.ring_params(md, rk[:k] + [r - 1] + rk[k + 1 :])
                value = float(scores[i][k][j]) / saved
                if best is None or value < best[0]:
                    best = (value, i, k, j, saved)
        assert best is not None  # total > budget >= floor: some bond is still above min_rank
        _, i, k, j, saved = best
        new[i][k][j] = False
        ranks[i][k] -= 1
        total -= saved
    return new


class RankAllocator:
    """Budgeted rank adaptation for the tensor-ring layers of a model.

    Args:
        model: a module (every ``TRLinear`` / ``CrossLayerTR`` inside is adapted, and :meth:`prune`
            replaces them in it) or a mapping ``name -> module``.
        budget: parameter budget for the adapted modules (cores + biases) plus ``extra_params``.
        total_steps: length of training in optimiser steps.
        warmup_steps, final_steps: no removal before ``warmup_steps``; the budget is reached at
            ``total_steps - final_steps`` and held after.
        update_every: re-allocate every this many steps inside the schedule.
        score: ``"sensitivity"`` or ``"magnitude"`` (module docs).
        beta1, beta2: smoothing of the sensitivity and of its uncertainty.
        min_rank: fewest slices any bond keeps.
        extra_params: other trainable parameters counted against the budget (e.g. branch scales).

    Per training step::

        loss.backward()
        allocator.accumulate()     # sensitivities from the raw gradients (before any preconditioner)
        preconditioner.step()      # optional
        optimizer.step()
        allocator.update(step)     # re-zero masked slices; shrink to the scheduled budget
        optimizer.zero_grad()

    and at the end ``allocator.prune()``. Masks are buffers of the modules (in the model's
    ``state_dict``); the allocator's own state (smoothed scores) is in :meth:`state_dict`. To
    resume, build the model, then the allocator, then load both.
    """

    def __init__(
        self,
        model: nn.Module | Mapping[str, nn.Module],
        budget: int,
        total_steps: int,
        warmup_steps: int = 0,
        final_steps: int = 0,
        update_every: int = 1,
        score: str = "sensitivity",
        beta1: float = 0.85,
        beta2: float = 0.85,
        min_rank: int = 1,
        extra_params: int = 0,
    ):
        from trkit.nn.cross_layer import CrossLayerTR
        from trkit.nn.linear import TRLinear

        named: dict[str, nn.Module]
        self.root: nn.Module | None
        if isinstance(model, nn.Module):
            self.root = model
            named = {n: m for n, m in model.named_modules() if isinstance(m, (TRLinear, CrossLayerTR))}
        elif isinstance(model, Mapping):
            self.root = None
            named = dict(model)
        else:
            raise InputTypeError(f"RankAllocator expects a module or a mapping of modules, got {type(model).__name__}")
        if not named:
            raise InputError("RankAllocator found no TRLinear or CrossLayerTR module")
        for name, m in named.items():
            if not isinstance(m, (TRLinear, CrossLayerTR)):
                raise InputTypeError(f"{name!r} is a {type(m).__name__}, not a TRLinear or CrossLayerTR")
        if score not in _SCORES:
            raise InputError(f"score must be one of {_SCORES}, got {score!r}")
        if not 0 <= warmup_steps <= total_steps - final_steps or final_steps < 0 or update_every < 1:
            raise InputError(
                f"need 0 <= warmup_steps <= total_steps - final_steps, final_steps >= 0 and update_every >= 1; "
                f"got warmup {warmup_steps}, total {total_steps}, final {final_steps}, every {update_every}"
            )
        if not (0.0 <= beta1 < 1.0 and 0.0 <= beta2 < 1.0):
            raise InputError(f"beta1 and beta2 must be in [0, 1), got {beta1}, {beta2}")
        self.modules = named
        self.budget, self.total_steps = int(budget), int(total_steps)
        self.warmup_steps, self.final_steps, self.update_every = int(warmup_steps), int(final_steps), int(update_every)
        self.score, self.beta1, self.beta2 = score, float(beta1), float(beta2)
        self.min_rank, self.extra_params = int(min_rank), int(extra_params)
        mods = list(named.values())
        floor = _smallest(
            [[c.shape[1] for c in ring_cores(m)] for m in mods],
            [bonds.kept_ranks(m) for m in mods],
            self.min_rank,
            self.extra_params + sum(bonds.non_core_params(m) for m in mods),
        )
        if floor > self.budget:
            raise InputError(
                f"parameter budget {self.budget} is below the smallest allowed rings ({floor} parameters with "
                f"every bond at rank {self.min_rank}, biases and extra_params included)"
            )
        for m in mods:
            bonds.attach_bond_masks(m)
        self.initial_params = self.n_params()
        # smoothed sensitivity and uncertainty per core entry, float32 (scores only rank slices)
        self._ipt: dict[str, list[torch.Tensor]] = {}
        self._unc: dict[str, list[torch.Tensor]] = {}

    # ---- bookkeeping ---------------------------------------------------------------------------------
    def n_params(self) -> int:
        """Parameters of the modules once pruned (kept slices and biases) plus ``extra_params``."""
        return self.extra_params + sum(bonds.masked_n_params(m) for m in self.modules.values())

    def ranks(self) -> dict[str, tuple[int, ...]]:
        """Kept ranks per module."""
        return {n: bonds.kept_ranks(m) for n, m in self.modules.items()}

    def budget_at(self, step: int) -> int:
        """The scheduled budget after ``step`` optimiser steps (cubic decay, AdaLoRA)."""
        start, end = self.warmup_steps, self.total_steps - self.final_steps
        if step < start:
            return self.initial_params
        if step >= end or end == start:
            return self.budget
        frac = 1.0 - (step - start) / (end - start)
        return int(self.budget + (self.initial_params - self.budget) * frac**3)

    # ---- scores --------------------------------------------------------------------------------------
    @torch.no_grad()
    def accumulate(self) -> None:
        """Update the smoothed sensitivities from the cores' current ``.grad`` (no-op for
        ``score="magnitude"``)."""
        if self.score != "sensitivity":
            return
        for name, m in self.modules.items():
            cores = ring_cores(m)
            if all(c.grad is None for c in cores):
                continue
            ipt = [
                (c.detach() * c.grad).abs().float() if c.grad is not None else torch.zeros_like(c, dtype=torch.float32)
                for c in cores
            ]
            if name not in self._ipt:
                self._ipt[name] = [torch.zeros_like(t) for t in ipt]
                self._unc[name] = [torch.zeros_like(t) for t in ipt]
            for i_bar, u_bar, i_now in zip(self._ipt[name], self._unc[name], ipt):
                i_bar.mul_(self.beta1).add_(i_now, alpha=1.0 - self.beta1)
                u_bar.mul_(self.beta2).add_((i_now - i_bar).abs(), alpha=1.0 - self.beta2)

    def slice_scores(self, name: str) -> list[torch.Tensor]:
        """Score of every slice of every bond of module ``name`` (one vector per bond)."""
        m = self.modules[name]
        cores = ring_cores(m)
        if self.score == "magnitude":
            return [s.double().cpu() for s in slice_magnitudes(cores)]
        d = len(cores)
        if name not in self._ipt:
            return [torch.zeros(c.shape[0], dtype=torch.float64) for c in cores]
        ent = [(i * u).double().cpu() for i, u in zip(self._ipt[name], self._unc[name])]
        return [ent[k].sum(dim=(1, 2)) + ent[(k - 1) % d].sum(dim=(0, 1)) for k in range(d)]

    # ---- allocation ----------------------------------------------------------------------------------
    @torch.no_grad()
    def allocate(self, budget: int) -> bool:
        """Remove slices until :meth:`n_params` is at most ``budget``; returns whether masks changed."""
        names = list(self.modules)
        mods = [self.modules[n] for n in names]
        if self.score == "sensitivity" and not self._ipt:
            raise InputError("no sensitivities yet: call accumulate() after each backward pass, before update()")
        fixed = self.extra_params + sum(bonds.non_core_params(m) for m in mods)
        # attach returns the masks registered in __init__ (and registers new ones on modules that
        # prune() replaced)
        old = [[mk.cpu() for mk in bonds.attach_bond_masks(m)] for m in mods]
        new = allocate_slices(
            [[c.shape[1] for c in ring_cores(m)] for m in mods],
            old,
            [self.slice_scores(n) for n in names],
            budget,
            fixed,
            self.min_rank,
        )
        changed = False
        for m, before, after in zip(mods, old, new):
            for mk, b, a in zip(bonds.attach_bond_masks(m), before, after):
                if not torch.equal(a, b):
                    mk.copy_(a)
                    changed = True
            bonds.apply_bond_masks_(m)
        return changed

    @torch.no_grad()
    def update(self, step: int) -> bool:
        """Call after each optimiser step (``step`` counts the steps taken, from 1): re-zeroes the
        masked slices and, on schedule, shrinks to :meth:`budget_at`. Returns whether masks changed."""
        for m in self.modules.values():
            bonds.apply_bond_masks_(m)
        end = self.total_steps - self.final_steps
        on_schedule = step >= self.warmup_steps and ((step - self.warmup_steps) % self.update_every == 0 or step >= end)
        if not on_schedule or self.n_params() <= self.budget_at(step):
            return False
        return self.allocate(self.budget_at(step))

    def prune(self) -> dict[str, nn.Module]:
        """Enforce the final budget, then replace every module by its pruned copy (in ``model`` when
        one was given) and return ``name -> pruned module``. Optimiser state for the old
        parameters no longer applies."""
        if self.n_params() > self.budget:
            self.allocate(self.budget)
        pruned = {n: bonds.prune(m) for n, m in self.modules.items()}
        if self.root is not None:
            for n, m in pruned.items():
                self.root.set_submodule(n, m)
        self.modules = pruned
        self._ipt, self._unc = {}, {}
        return pruned

    # ---- checkpoints ---------------------------------------------------------------------------------
    def state_dict(self) -> dict:
        return {"ipt": {n: list(v) for n, v in self._ipt.items()}, "unc": {n: list(v) for n, v in self._unc.items()}}

    def load_state_dict(self, state: dict) -> None:
        unknown = set(state["ipt"]) - set(self.modules)
        if unknown:
            raise InputError(f"allocator state has scores for unknown modules {sorted(unknown)}")
        self._ipt = {n: [t.clone() for t in v] for n, v in state["ipt"].items()}
        self._unc = {n: [t.clone() for t in v] for n, v in state["unc"].items()}
