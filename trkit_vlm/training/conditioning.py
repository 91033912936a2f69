"""What happens to the adapter gradients between ``backward()`` and the optimiser step, and after it.

Per optimiser step (gradients already unscaled under AMP)::

    cond.before_step(lr) # raw gradient norm logged; rank scores accumulated; preconditioning;
                         # the cores' step limit (optim.core_step_ratio); clipping
    optimizer.step()
    cond.after_step(step)   # rank allocation on schedule (step counts from 1)

and ``cond.finish()`` once after the last epoch (rank adaptation prunes the adapters to their final
shapes). The preconditioner and the rank allocator come from the adapter set
(``AdapterSet.preconditioner`` / ``rank_allocator``), so this module knows no method by name.

Logged per epoch (:meth:`StepConditioning.epoch_stats`): the raw gradient norm before any
preconditioning or clipping (median, max), the norm of the update direction after preconditioning,
the fraction of steps whose norm was clipped, the conjugate-gradient iterations of the
Gauss-Newton preconditioner, and with ``core_step_ratio`` the fraction of core steps it shrank.
"""

from __future__ import annotations

import math
import statistics
from typing import Any

import torch

from trkit.errors import InputError
from trkit.nn.cross_layer import CrossLayerTR
from trkit.nn.linear import TRLinear
from trkit.nn.precondition import limit_relative_steps, ring_cores
from trkit_vlm.adapters.base import AdapterSet
from trkit_vlm.training.config import OptimConfig

__all__ = ["StepConditioning", "grad_norm"]


def grad_norm(params: list[torch.Tensor]) -> float:
    """The 2-norm of all gradients of ``params`` together (parameters without one count as zero)."""
    grads = [p.grad for p in params if p.grad is not None]
    if not grads:
        return 0.0
    return float(torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(g.float()) for g in grads])))


class StepConditioning:
    """Preconditioning, clipping and rank adaptation of one run's adapters (module docs).

    Args:
        adapters: the run's adapter set.
        optim: ``precondition`` ("none", "gauss_newton", "scaled_gd") and ``max_grad_norm`` are read.
        total_steps: optimiser steps of the whole run (the rank schedule's length).
    """

    def __init__(self, adapters: AdapterSet, optim: OptimConfig, total_steps: int):
        self.adapters = adapters
        self.max_norm = optim.max_grad_norm
        self.step_ratio = optim.core_step_ratio
        # the tensor-ring modules whose cores the step limit acts on, found once (as the preconditioner does)
        self.rings = [m for m in adapters.modules() if isinstance(m, (TRLinear, CrossLayerTR))]
        self.precondition = optim.precondition
        self.pre = None
        if optim.precondition != "none":
            self.pre = adapters.preconditioner(optim.precondition, damping=optim.precondition_damping)
        self.ranks = adapters.rank_allocator(total_steps)
        self.params = list(adapters.parameters())
        self._reset()

    def _reset(self) -> None:
        self._norms: list[float] = []
        self._updates: list[float] = []
        self._clipped = 0
        self._cg: list[float] = []
        self._limited = [0, 0]  # cores whose step was limited, cores stepped

    @torch.no_grad()
    def before_step(self, lr: float | None = None) -> None:
        """Between backward (unscaled gradients) and ``optimizer.step()``; ``lr``: the step's learning rate
        (needed with ``core_step_ratio``)."""
        self._norms.append(grad_norm(self.params))
        if not math.isfinite(self._norms[-1]):  # an AMP overflow: the scaler skips this step
            self._updates.append(self._norms[-1])
            return
        if self.ranks is not None:
            self.ranks.accumulate()  # sensitivities from the raw gradients
        if self.pre is not None:
            self.pre.step()
            if "cg_iterations_mean" in self.pre.last_stats:
                self._cg.append(self.pre.last_stats["cg_iterations_mean"])
        update = grad_norm(self.params) if self.pre is not None else self._norms[-1]
        self._updates.append(update)
        if self.step_ratio is not None:
            if lr is None:
                raise InputError("optim.core_step_ratio needs the step's learning rate: call before_step(lr)")
            if lr > 0:  # lr 0 (the schedule's end) takes no step to limit
                cores = [c for m in self.rings for c in ring_cores(m)]
                limited, total = limit_relative_steps(cores, lr, self.step_ratio)
                self._limited[0] += limited
                self._limited[1] += total
        if self.max_norm:
            torch.nn.utils.clip_grad_norm_(self.params, self.max_norm)
            self._clipped += int(update > self.max_norm)

    def after_step(self, step: int) -> None:
        """After ``optimizer.step()``; ``step`` counts the optimiser steps taken, from 1."""
        if self.ranks is not None:
            self.ranks.update(step)

    def epoch_stats(self) -> dict[str, Any]:
        """Gradient statistics of the steps since the last call (then reset)."""
        n = len(self._norms)
        out: dict[str, Any] = {}
        if n:
            out = {
                "grad_norm_median": statistics.median(self._norms),
                "grad_norm_max": max(self._norms),
                "update_norm_median": statistics.median(self._updates),
                "clip_fraction": self._clipped / n,
            }
            if self._cg:
                out["cg_iterations_mean"] = sum(self._cg) / len(self._cg)
            if self.step_ratio is not None:
                out["core_step_limited_fraction"] = self._limited[0] / max(self._limited[1], 1)
        if self.ranks is not None:
            out["adapter_params"] = self.ranks.n_params()
        self._reset()
        return out

    def finish(self) -> dict[str, Any] | None:
        """After the last epoch: the rank allocator's summary (None without one); the adapters are pruned."""
        if self.ranks is None:
            return None
        summary = self.ranks.finish()
        self.params = list(self.adapters.parameters())
        return summary

    def describe(self) -> dict[str, Any]:
        """For metrics.json: which preconditioner acted (None when the adapters have no tensor rings)."""
        return {
            "precondition": self.precondition if self.pre is not None else None,
            "precondition_damping": self.pre.damping if self.pre is not None else None,
            "max_grad_norm": self.max_norm,
            "core_step_ratio": self.step_ratio,
        }

    def state_dict(self) -> dict:
        return {"ranks": self.ranks.state_dict() if self.ranks is not None else None}

    def load_state_dict(self, state: dict) -> None:
        if self.ranks is not None and state.get("ranks") is not None:
            self.ranks.load_state_dict(state["ranks"])
