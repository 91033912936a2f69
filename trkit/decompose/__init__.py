"""Decompositions of dense (or sampled) tensors into tensor-ring form, and rounding of rings.

- :func:`tr_svd`: sequential truncated SVDs, fixed ranks or a guaranteed relative error.
- :func:`tr_als`: alternating least squares, one core at a time via normal equations.
- :func:`tr_als_adaptive`: two-core (DMRG-like) sweeps whose ranks grow/shrink to meet a tolerance.
- :func:`tr_als_sampled`: ALS on sampled entries (leverage scores or uniform), for huge tensors.
- :func:`tr_complete`: fit only observed entries (tensor completion).
- :func:`tr_round`: lower the ranks of a ring without densifying it.

Every function follows one convention (``docs/api/decompose.md``): ``fn(x, rank=None, *, tol=None,
...)`` with keyword-only options, ``tol`` a relative-error target, ``stop_tol`` the iteration stop
threshold, ``callback(ring, info)``, and ``return_info=True`` adding a
:class:`~trkit.decompose.info.DecompositionInfo` (or its method's declared subclass).
"""

from trkit.decompose.adaptive import tr_als_adaptive
from trkit.decompose.als import tr_als
from trkit.decompose.completion import tr_complete
from trkit.decompose.info import (
    AdaptiveInfo,
    CompletionInfo,
    DecompositionInfo,
    RoundInfo,
    SampledInfo,
    SVDInfo,
)
from trkit.decompose.sampled import tr_als_sampled
from trkit.decompose.svd import tr_svd

__all__ = [
    "DecompositionInfo",
    "SVDInfo",
    "AdaptiveInfo",
    "SampledInfo",
    "CompletionInfo",
    "RoundInfo",
    "tr_svd",
    "tr_als",
    "tr_als_adaptive",
    "tr_als_sampled",
    "tr_complete",
]
