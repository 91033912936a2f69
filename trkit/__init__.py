"""trkit: tensor rings for PyTorch.

The format (`TensorRing`), its algebra, planned contraction (`trkit.contract`), decompositions
(`tr_svd`, `tr_als`, ...), rounding, serialisation and neural layers (`trkit.nn`).
"""
from trkit._version import __version__
from trkit import contract
from trkit.ring import TensorRing
from trkit.algebra import inner

__all__ = ["__version__", "TensorRing", "contract", "inner"]
