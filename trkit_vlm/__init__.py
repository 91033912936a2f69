"""trkit_vlm: AdaRing cross-layer tensor-ring adapters (and the MMA baseline) for open_clip CLIP models."""
from trkit_vlm._version import __version__

__all__ = ["__version__"]
