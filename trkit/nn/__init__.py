"""Neural-network layers built on tensor rings."""
from trkit.nn.cross_layer import CrossLayerTR

__all__ = ["CrossLayerTR"]
