"""A start taken from the data: the frozen model's adapter inputs on the training shots.

Some adapter inits (AdaRing's ``init="pca"``) read where the inputs of the adapted blocks vary most. Before
the first step, one pass of the frozen model over the training batches (one epoch, at most ``max_batches``)
accumulates, per tower and adapted layer, the mean and second moment of ``ln_1(x)`` over every token (text:
the class prompts as training feeds them, padding included); the adapter set receives each tower's
covariance averaged over its adapted layers (every layer weighs the same) through
``AdapterSet.start_from_inputs``. Only ``d x d`` sums are kept, so memory does not grow with the
data, and under DDP the sums are added over the processes so every rank starts from the same weights.
"""

from __future__ import annotations

import itertools

import torch

from trkit_vlm.adapters.base import TOWERS, adapters_disabled, get_adapters
from trkit_vlm.models import clip_towers
from trkit_vlm.training.distributed import all_reduce_sum
from trkit_vlm.training.seeding import rng_state, set_rng_state

__all__ = ["input_covariances", "start_from_data"]


class _Moments:
    """Forward pre-hook on one block: token count, sum and sum of outer products of ``ln_1(x)``."""

    def __init__(self, width: int):
        self.n = torch.zeros((), dtype=torch.float64)
        self.s = torch.zeros(width, dtype=torch.float64)
        self.ss = torch.zeros(width, width, dtype=torch.float64)

    def __call__(self, module, args, kwargs):
        x = args[0] if args else kwargs.get("q_x", kwargs.get("x"))
        h = module.ln_1(x).detach().reshape(-1, x.shape[-1]).to("cpu", torch.float64)
        self.n += h.shape[0]
        self.s += h.sum(0)
        self.ss += h.t() @ h


def input_covariances(trainer, max_batches: int = 64) -> dict[str, torch.Tensor]:
    """``{tower: (width, width)}``: the covariance of the frozen model's ``ln_1`` inputs of the adapted blocks
    over the trainer's first-epoch batches, averaged over the adapted layers. The global random state is
    left as it was, so the run trains as it would without this pass."""
    model, adapters = trainer.model, get_adapters(trainer.model)
    towers = clip_towers(model)
    moments: dict[str, list[_Moments]] = {tower: [] for tower in TOWERS}
    handles = []
    for tower in TOWERS:
        for layer in adapters.adapted_layers(tower):
            blk = towers[tower].resblocks[layer - 1]
            moments[tower].append(m := _Moments(int(blk.ln_1.normalized_shape[0])))
            handles.append(blk.register_forward_pre_hook(m, with_kwargs=True))
    state = rng_state()
    try:
        with torch.no_grad(), adapters_disabled(model), trainer._autocast():
            for x, _, _ in itertools.islice(trainer.batches(0), max_batches):
                trainer.forward(x, trainer.cached)
    finally:
        for h in handles:
            h.remove()
        set_rng_state(state)
    out: dict[str, torch.Tensor] = {}
    for tower, per_layer in moments.items():
        covs = []
        for m in per_layer:
            n, s, ss = (all_reduce_sum(t, trainer.info) for t in (m.n, m.s, m.ss))
            mean = s / n
            covs.append(ss / n - torch.outer(mean, mean))
        if covs:
            out[tower] = torch.stack(covs).mean(0)
    return out


def start_from_data(trainer) -> bool:
    """Give the adapters their data-dependent start when their config asks for one; True if it did."""
    adapters = get_adapters(trainer.model)
    if not adapters.needs_input_statistics():
        return False
    adapters.start_from_inputs(input_covariances(trainer))
    return True
