"""What a decomposition reports with ``return_info=True``: one dataclass, plus a declared subclass
for each method that has fields of its own (no attribute is looked up dynamically)."""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field, fields

__all__ = ["DecompositionInfo", "SVDInfo", "AdaptiveInfo", "SampledInfo", "CompletionInfo", "RoundInfo"]


@dataclass(kw_only=True)
class DecompositionInfo:
    """What a decomposition did (every method returns this or a subclass of it).

    Attributes:
        method: the function that produced it, e.g. ``"tr_als"``.
        rel_error: ``||x - x_tr|| / ||x||`` of the returned ring: exact (dense, or through ring inner
            products for :func:`~trkit.tr_round`), or for the sampled and completion methods an
            estimate on held-out entries.
        ranks: ranks ``(r_1, ..., r_d)`` of the returned ring.
        n_iter: sweeps run (0 for non-iterative methods).
        time_s: wall time of the call in seconds.
        converged: whether a stopping rule fired (``tol`` met, or the error changed by less than
            ``stop_tol``); False when ``max_iter`` ran out or the callback stopped the run; True
            for non-iterative methods.
        tol: the relative-error target asked for (``None``: none).
        tol_met: ``rel_error <= tol`` (``None`` without a target).
        history: relative error after each sweep (iterative methods) or of the result (others).
    """

    method: str
    rel_error: float
    ranks: tuple[int, ...]
    n_iter: int = 0
    time_s: float = 0.0
    converged: bool = True
    tol: float | None = None
    tol_met: bool | None = None
    history: list[float] = field(default_factory=list)

    @property
    def extra(self) -> dict:
        """Deprecated: the method-specific fields are attributes of the subclass now."""
        warnings.warn(
            "DecompositionInfo.extra is deprecated; read the method's fields as attributes (e.g. info.error_bound)",
            DeprecationWarning,
            stacklevel=2,
        )
        base = {f.name for f in fields(DecompositionInfo)}
        return {f.name: getattr(self, f.name) for f in fields(self) if f.name not in base}


@dataclass(kw_only=True)
class SVDInfo(DecompositionInfo):
    """:func:`~trkit.tr_svd`: how the ring was cut and split, and the a-priori error bound.

    Attributes:
        first_split: ``(r_1, r_2)`` of the first SVD, in the order of the ring cut at ``start``.
        start: the mode the ring was cut at first.
        structured_split: whether the first core's bond split came from its Kronecker structure.
        error_bound: the guaranteed bound on ``rel_error`` from the discarded singular values.
    """

    first_split: tuple[int, int] = (1, 1)
    start: int = 0
    structured_split: bool = False
    error_bound: float = 0.0


@dataclass(kw_only=True)
class AdaptiveInfo(DecompositionInfo):
    """:func:`~trkit.tr_als_adaptive`: ``params_history`` is the parameter count after each sweep."""

    params_history: list[int] = field(default_factory=list)


@dataclass(kw_only=True)
class SampledInfo(DecompositionInfo):
    """:func:`~trkit.tr_als_sampled` (``rel_error`` and ``history`` are held-out estimates).

    Attributes:
        n_samples: fibres drawn per core update.
        sampling: ``"leverage"`` or ``"uniform"``.
        entries_read: tensor entries read in total (starts, sweeps and the held-out set).
        start: the starting point that was kept (``"sketch"``, ``"gaussian"``, ``"positive"`` or
            ``"given"``).
    """

    n_samples: int = 0
    sampling: str = "leverage"
    entries_read: int = 0
    start: str = "given"


@dataclass(kw_only=True)
class CompletionInfo(DecompositionInfo):
    """:func:`~trkit.tr_complete` (``rel_error`` is the held-out error, the training error when
    ``holdout=0``).

    Attributes:
        train_error: relative error on the fitted entries.
        heldout_error: relative error on the withheld observed entries (None when ``holdout=0``).
        unobserved_error: dense ``x`` only: relative error on the entries the mask hides
            (meaningful when ``x`` holds their true values).
        n_observed: observed entries; ``n_train``: those fitted.
    """

    train_error: float = 0.0
    heldout_error: float | None = None
    unobserved_error: float | None = None
    n_observed: int = 0
    n_train: int = 0


@dataclass(kw_only=True)
class RoundInfo(DecompositionInfo):
    """:func:`~trkit.tr_round`: ``rel_error`` is computed through ring inner products.

    Attributes:
        error_bound: the a-priori bound from the discarded singular values of the truncations
            (``rel_error`` is the achieved error, at most this before any refinement).
        input_ranks: ranks of the ring that was rounded.
    """

    error_bound: float = 0.0
    input_ranks: tuple[int, ...] = ()
