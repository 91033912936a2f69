from trkit._version import __version__  # one distribution, one version

__all__ = ["__version__"]
