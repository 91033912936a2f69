"""Decompositions of dense (or sampled) tensors into tensor-ring form.

- :func:`tr_svd`: sequential truncated SVDs, fixed ranks or a guaranteed relative error.
- :func:`tr_als`: alternating least squares, one core at a time via normal equations.
- :func:`tr_als_adaptive`: two-core (DMRG-like) sweeps whose ranks grow/shrink to meet a tolerance.
- :func:`tr_als_sampled`: ALS on sampled entries (leverage scores or uniform), for huge tensors.
- :func:`tr_complete`: fit only observed entries (tensor completion).
- :func:`tr_cross`: cross approximation of a tensor given as a function of its indices.

All return a :class:`~trkit.TensorRing`; ``return_info=True`` adds a :class:`DecompositionInfo`.
"""

from trkit.decompose._common import DecompositionInfo
from trkit.decompose.adaptive import tr_als_adaptive
from trkit.decompose.als import tr_als
from trkit.decompose.completion import tr_complete
from trkit.decompose.cross import CrossInfo, tr_cross
from trkit.decompose.sampled import tr_als_sampled
from trkit.decompose.svd import tr_svd

__all__ = [
    "DecompositionInfo",
    "CrossInfo",
    "tr_svd",
    "tr_als",
    "tr_als_adaptive",
    "tr_als_sampled",
    "tr_complete",
    "tr_cross",
]
