"""trkit: tensor rings for PyTorch.

The format (`TensorRing`), its algebra, planned contraction (`trkit.contract`), decompositions
(`tr_svd`, `tr_als`, ...), rounding, serialisation and neural layers (`trkit.nn`).

The public names below load on first use, so importing a light submodule (``trkit.errors``) does
not import torch.
"""

from typing import TYPE_CHECKING

from trkit._lazy import lazy_exports
from trkit._version import __version__

if TYPE_CHECKING:
    from trkit import contract as contract
    from trkit.algebra import (
        add as add,
    )
    from trkit.algebra import (
        contract_vectors as contract_vectors,
    )
    from trkit.algebra import (
        hadamard as hadamard,
    )
    from trkit.algebra import (
        inner as inner,
    )
    from trkit.algebra import (
        mode_product as mode_product,
    )
    from trkit.algebra import (
        norm as norm,
    )
    from trkit.algebra import (
        scale as scale,
    )
    from trkit.algebra import (
        sub as sub,
    )
    from trkit.algebra import (
        tensorize as tensorize,
    )
    from trkit.decompose import (
        DecompositionInfo as DecompositionInfo,
    )
    from trkit.decompose import (
        tr_als as tr_als,
    )
    from trkit.decompose import (
        tr_als_adaptive as tr_als_adaptive,
    )
    from trkit.decompose import (
        tr_als_sampled as tr_als_sampled,
    )
    from trkit.decompose import (
        tr_complete as tr_complete,
    )
    from trkit.decompose import (
        tr_svd as tr_svd,
    )
    from trkit.io import from_tensorly as from_tensorly
    from trkit.io import load as load
    from trkit.io import save as save
    from trkit.io import to_tensorly as to_tensorly
    from trkit.ring import TensorRing as TensorRing
    from trkit.rounding import round as round  # noqa: A004  (deprecated alias of tr_round)
    from trkit.rounding import tr_round as tr_round


_EXPORTS = {
    "TensorRing": "trkit.ring",
    "contract": "trkit.contract",
    **dict.fromkeys(
        ["inner", "norm", "add", "sub", "scale", "hadamard", "mode_product", "contract_vectors", "tensorize"],
        "trkit.algebra",
    ),
    **dict.fromkeys(["save", "load", "from_tensorly", "to_tensorly"], "trkit.io"),
    **dict.fromkeys(
        ["DecompositionInfo", "tr_svd", "tr_als", "tr_als_adaptive", "tr_als_sampled", "tr_complete"],
        "trkit.decompose",
    ),
    "tr_round": "trkit.rounding",
}
__all__ = ["__version__", *_EXPORTS]
# trkit.round: the deprecated name of tr_round, reachable as an attribute but kept out of __all__
# (``from trkit import *`` must not shadow the builtin round).
__getattr__, __dir__ = lazy_exports(__name__, {**_EXPORTS, "round": "trkit.rounding"})
