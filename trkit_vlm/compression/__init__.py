"""Compressing trained MMA adapters into AdaRing: output-aware fits under a parameter budget.

``compress_mma`` (the fit), ``collect_calibration`` / ``gaussian_calibration`` (what the fit weighs
errors by), ``compress_run`` (a run folder in, a run folder out: calibration on the run's own few-shot
images and prompts, evaluation, an optional heal fine-tune). Names load on first use.
"""

from typing import TYPE_CHECKING

from trkit._lazy import lazy_exports

if TYPE_CHECKING:
    from trkit_vlm.compression.calibration import Calibration as Calibration
    from trkit_vlm.compression.calibration import collect_calibration as collect_calibration
    from trkit_vlm.compression.calibration import gaussian_calibration as gaussian_calibration
    from trkit_vlm.compression.compress import compress_mma as compress_mma
    from trkit_vlm.compression.projections import mma_projections as mma_projections
    from trkit_vlm.compression.result import CompressionResult as CompressionResult
    from trkit_vlm.compression.run import compress_run as compress_run

_EXPORTS = {
    **dict.fromkeys(
        ["Calibration", "collect_calibration", "gaussian_calibration"], "trkit_vlm.compression.calibration"
    ),
    "compress_mma": "trkit_vlm.compression.compress",
    "mma_projections": "trkit_vlm.compression.projections",
    "CompressionResult": "trkit_vlm.compression.result",
    "compress_run": "trkit_vlm.compression.run",
}
__all__ = list(_EXPORTS)
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
