"""Neural-network layers built on tensor rings.

- :class:`TRLinear`: ``nn.Linear`` with a tensor-ring weight; planned contraction or
  densify-then-matmul, whichever the cost model says is cheaper for the batch.
- :class:`CrossLayerTR`: ``n_layers`` matrices sharing one ring (AdaRing's layer-shared cores
  plus per-layer slices).
- :func:`dense_weights_cache`: reconstruct dense weights once per forward pass.
- :func:`count_params`, :func:`compression_ratio`; :mod:`trkit.nn.init` for variance-preserving init.
- :class:`RingPreconditioner` (:mod:`trkit.nn.precondition`): core gradients rewritten so a step on
  the cores moves the weight like a dense step.
- :class:`RankAllocator` (:mod:`trkit.nn.rank`) and :mod:`trkit.nn.bonds`: bond masks, budgeted
  rank adaptation, pruning and rank truncation.
"""

from trkit.nn import bonds, init, precondition, rank
from trkit.nn.cache import dense_weights_cache
from trkit.nn.cross_layer import CrossLayerTR
from trkit.nn.linear import TRLinear
from trkit.nn.precondition import RingPreconditioner
from trkit.nn.rank import RankAllocator
from trkit.nn.utils import balanced_factors, compression_ratio, count_params

__all__ = [
    "TRLinear",
    "CrossLayerTR",
    "dense_weights_cache",
    "count_params",
    "compression_ratio",
    "balanced_factors",
    "init",
    "RingPreconditioner",
    "RankAllocator",
    "precondition",
    "rank",
    "bonds",
]
