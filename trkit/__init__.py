"""trkit: tensor rings for PyTorch.

The format (`TensorRing`), its algebra, planned contraction (`trkit.contract`), decompositions
(`tr_svd`, `tr_als`, ...), rounding, serialisation and neural layers (`trkit.nn`).
"""

from trkit import contract
from trkit._version import __version__
from trkit.algebra import add, contract_vectors, hadamard, inner, mode_product, norm, scale, sub, tensorize
from trkit.io import from_tensorly, load, save, to_tensorly
from trkit.ring import TensorRing

__all__ = [
    "__version__",
    "TensorRing",
    "contract",
    "inner",
    "norm",
    "add",
    "sub",
    "scale",
    "hadamard",
    "mode_product",
    "contract_vectors",
    "tensorize",
    "save",
    "load",
    "from_tensorly",
    "to_tensorly",
]

from trkit.decompose import (
    DecompositionInfo,
    tr_als,
    tr_als_adaptive,  # noqa: E402
    tr_als_sampled,
    tr_complete,
    tr_svd,
)
from trkit.rounding import round as round  # noqa: E402  (deprecated alias; not in __all__: it shadows the builtin)
from trkit.rounding import tr_round  # noqa: E402

__all__ += ["DecompositionInfo", "tr_svd", "tr_als", "tr_als_adaptive", "tr_als_sampled", "tr_complete", "tr_round"]
