"""Cross approximation of a tensor given as a function of its indices (a tensor you cannot store).

:func:`tr_cross` asks ``f`` for a few thousand well-chosen entries instead of all of them:
a one-site tensor-train cross with maxvol pivots (``trkit.decompose._tt_cross``), with ranks
that follow the fibres' numerical ranks, an exact evaluation cache, and stopping on an error
estimate. The train is then closed into a ring where a real closing bond lowers the parameter
count (``trkit.decompose._close``): a tensor whose train ranks are products ``r_0 r_k``, e.g. a
function with a cyclic coupling ``x_d <-> x_1``, becomes a ring of ranks ``r_k``; otherwise the
train (``r_0 = 1``) is returned.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable, Sequence

import numpy as np
import torch

from trkit.decompose._blackbox import BlackBox, BudgetExhausted
from trkit.decompose._close import close_ring, round_train, within
from trkit.decompose._common import check_max_iter, check_stop_tol, check_tol
from trkit.decompose._run import IterationLog, scaled_ring
from trkit.decompose._tt_cross import TTCross, tt_distance, tt_entries
from trkit.decompose.info import CrossInfo
from trkit.errors import InputError, InputTypeError
from trkit.ring import TensorRing

__all__ = ["tr_cross"]

PASS_EXTRA = 2  # default random test columns beyond the last pivots in every pass of a fixed-rank cross


def _check_shape(shape) -> tuple[int, ...]:
    if isinstance(shape, (int, np.integer)) or not isinstance(shape, (Sequence, np.ndarray, torch.Size)):
        raise InputTypeError(f"shape must be a sequence of ints, got {type(shape).__name__}")
    try:
        out = tuple(int(n) for n in shape)
    except (TypeError, ValueError):
        raise InputTypeError(f"shape must be a sequence of ints, got {shape!r}") from None
    if len(out) < 2 or min(out) < 1:
        raise InputError(f"shape needs >= 2 modes of size >= 1, got {out}")
    return out


def _rank_caps(rank, shape: tuple[int, ...], init: TensorRing | None) -> list[int]:
    """``d + 1`` caps on the train's bonds: ``rank`` (one int or ``d - 1``), else the init's, else none."""
    d = len(shape)
    if rank is None and init is not None:
        caps = [init.ranks[k] * init.ranks[0] for k in range(1, d)]
    elif rank is None:
        caps = [10**9] * (d - 1)
    elif isinstance(rank, (int, np.integer)) and not isinstance(rank, bool):
        caps = [int(rank)] * (d - 1)
    elif isinstance(rank, (Sequence, np.ndarray)) and not isinstance(rank, str):
        caps = [int(r) for r in rank]
        if len(caps) != d - 1:
            raise InputError(f"rank: give one int or {d - 1} ints (the train's inner bonds), got {len(caps)}")
    else:
        raise InputTypeError(f"rank must be an int or a sequence of ints, got {type(rank).__name__}")
    if min(caps) < 1:
        raise InputError(f"ranks must be >= 1, got {caps}")
    # a bond cannot exceed the number of index tuples on either side of it
    left = np.cumprod([float(n) for n in shape])
    right = np.cumprod([float(n) for n in shape[::-1]])[::-1]
    caps = [int(min(c, left[k], right[k + 1])) for k, c in enumerate(caps)]
    return [1] + caps + [1]


def _relative(pred: np.ndarray, vals: np.ndarray) -> float:
    den = float(np.linalg.norm(vals))
    num = float(np.linalg.norm(pred - vals))
    return num / den if den > 0 else num


def _working_ring(cores: list[np.ndarray]) -> TensorRing:
    """The cross's cores (numpy, in the scale of ``f / box.scale``) as a float64/complex128 ring."""
    return TensorRing([torch.from_numpy(np.ascontiguousarray(c)) for c in cores], validate=False)


def _first_caps(caps: list[int], oversample: int) -> list[int]:
    """Rank caps of a fixed-rank cross's first pass from random pivots: ``oversample`` below ``caps``.

    That pass's test indices are random draws, so its pivots are provisional: the next pass
    replaces them, and its ``oversample`` random test indices let every bond grow back to its
    cap. Reading the first fibres at the lower rank costs fewer evaluations than reading them
    at the cap and finds pivots as good (inv_sum, rank 14, two passes, medians over 9 seeds:
    41,448 evaluations at 3.5e-15 instead of 47,520 at 2.6e-15; the cross benchmark).
    """
    return [max(1, c - oversample) for c in caps]  # the ends stay 1


def _passes(eng: TTCross, log: IterationLog, tol, stop_tol: float, held, first_caps, oversample: int, as_ring):
    """Run passes until tol is met on the held-out entries (``tol``) or the train settles.

    The first pass runs at ``first_caps`` (None: the engine's caps); at a fixed rank it adds no
    random test indices (its test side is random or init's). Every pass's error goes to ``log``
    (held-out; else the change made by the last pass that read new entries, a rough
    estimate). Returns the last complete train (None if the budget ran out in the first
    pass) and why it stopped.
    """
    hold_idx, hold_val = held
    adaptive = tol is not None
    cores, change_prev = None, None
    while log.n_iter < log.max_iter:
        # random test indices on top of the last pivots. Fixed rank: ``oversample`` in every pass
        # after the first, as in a randomised range finder: each fibre shows its dominant column
        # space beyond what the last pivots see, so the pivots keep moving towards it instead of
        # settling where the first pass put them (abs_sin, rank 25: 1.5e-2 after 4 passes
        # instead of 1.9e-2 after 5). With tol: half the current rank, so a bond whose fibres
        # are full-rank grows by up to 50% a pass
        caps = first_caps if cores is None else None
        if adaptive:
            extra = max(2, (2 if cores is None else max(c.shape[2] for c in cores[:-1])) // 2)
        else:
            extra = 0 if cores is None else oversample
        evals_before = eng.box.n_evals
        try:
            new = eng.sweep(left_to_right=log.n_iter % 2 == 0, extra=extra, caps=caps)
        except BudgetExhausted:
            return cores, "max_evals"
        # how far the pass moved the train: close to the error of the previous train. A pass
        # that read nothing new left the pivots where they were: its change says nothing, so the
        # estimate stays that of the last pass that moved them
        change = None if cores is None else tt_distance(cores, new)
        cores = new
        if hold_idx is not None:
            err = _relative(tt_entries(cores, hold_idx), hold_val)
        elif change is None:
            err = math.nan  # nothing to compare the first train with
        elif eng.box.n_evals == evals_before and not math.isnan(log.history[-1]):
            err = log.history[-1]
        else:
            err = change
        rank = max(c.shape[2] for c in cores[:-1])
        if log.record(err, functools.partial(as_ring, cores), check=False, evals=eng.box.n_evals, rank=rank):
            return cores, "callback"
        settled = change is not None and (
            eng.box.n_evals == evals_before or (change_prev is not None and change > 0.2 * change_prev)
        )
        if adaptive:
            if err <= tol:
                log.converged = True
                return cores, "tol"
            if settled and eng.saturated == 0:
                eng.rank_tol /= 10  # no fibre is full-rank at this threshold, yet tol is not met
        elif stop_tol > 0 and change is not None and (change <= stop_tol or settled):
            log.converged = True
            return cores, "converged"
        change_prev = change
    return cores, "max_iter"


def _check_dtype(dtype) -> torch.dtype | None:
    if dtype is None:
        return None
    if not isinstance(dtype, torch.dtype) or not (dtype.is_floating_point or dtype.is_complex):
        raise InputTypeError(f"dtype must be a torch floating-point or complex dtype, got {dtype}")
    if dtype == torch.complex32:
        raise InputTypeError("dtype complex32 is not supported; use complex64 or complex128")
    return dtype


def _check_device(device) -> torch.device | None:
    if device is None:
        return None
    try:
        device = torch.device(device)
    except (RuntimeError, TypeError) as exc:
        raise InputError(f"device: {exc}") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise InputError(f"device {device} was asked for but CUDA is not available")
    return device


def tr_cross(
    f: Callable,
    rank: int | Sequence[int] | None = None,
    *,
    shape: Sequence[int],
    tol: float | None = None,
    stop_tol: float = 1e-12,
    max_iter: int = 12,
    init: TensorRing | None = None,
    seed: int | None = 0,
    callback: Callable | None = None,
    verbose: bool = False,
    return_info: bool = False,
    max_evals: int | None = None,
    oversample: int = PASS_EXTRA,
    ring: bool = True,
    n_holdout: int | None = None,
    index_type: str = "numpy",
    dtype: torch.dtype | None = None,
    device=None,
):
    """Tensor ring of a tensor given as a function of its indices, from a few of its entries.

    Args:
        f: the tensor as a function of an index batch: takes an ``(m, d)`` int64 array (numpy
            by default, a torch tensor with ``index_type="torch"``) and returns ``m`` values
            (numpy, a torch tensor on any device, or a list; real or complex). Called with
            batches only, never twice for the same index (values are cached).
        rank: cap on the bond ranks of the train the cross builds (one int, or ``d - 1`` ints
            for the inner bonds). Without ``tol`` the cross runs at these ranks (fixed-rank
            mode; ranks only drop where the function's rank is lower); with ``tol`` it caps the
            adaptive ranks.
        shape: ``(n_1, ..., n_d)``, ``d >= 2`` (keyword-only, required).
        tol: target relative error, checked on ``n_holdout`` random held-out entries. Ranks then
            start at 2 and each pass can add up to half the current rank to every bond whose
            fibres are full-rank at a share of ``tol``, until the held-out error is ``<= tol``.
        stop_tol: fixed-rank mode stops when a pass changes the train by less than this
            (relative), or by more than a fifth of what the pass before changed, or not at all
            (the pivots have settled); ``0`` runs all ``max_iter`` passes.
        max_iter: maximum number of passes (one pass visits every core once, alternating
            left-to-right and right-to-left).
        init: a ``TensorRing`` of this shape to start from: its right interfaces give the first
            pivots (maxvol, no evaluations) and, without ``rank``, its ranks ``r_k r_0`` the caps.
        seed: seed of the random first pivots and held-out entries (same seed, same result).
        callback: ``callback(ring, info)`` after every pass (the current train in the output's
            scale and dtype, and a :class:`~trkit.decompose.info.CrossInfo` so far); return
            ``True`` to stop.
        verbose: tqdm bar over the passes.
        return_info: also return a :class:`~trkit.decompose.info.CrossInfo`.
        max_evals: budget of distinct entries; the last complete pass is returned when the next
            one would exceed it.
        oversample: random test multi-indices added to every fibre's far side in each pass of a
            fixed-rank cross (with ``tol`` the cross adds half the current rank instead). They
            cost about ``2 (d - 1) n r`` new evaluations a pass and keep the pivots moving
            towards each fibre's dominant directions: worth it where the rank cap is below what
            the function needs (a non-smooth function: ``abs_sin`` in the cross benchmark needs
            them to reach teneva's error); ``0`` or ``1`` save evaluations where the cap
            resolves the function with room to spare (``ackley`` at rank 16, 4 passes: 0.86x
            the evaluations, 2.7e-10 instead of 1.8e-10), but at a cap equal to the exact rank
            some seeds then never find every direction. From random pivots (no ``init``) the
            first pass runs at ``rank - oversample`` against random test sets of ``rank`` rows
            (its pivots are provisional) and the second pass's test columns bring the ranks up
            to ``rank``: a cheaper first pass (``inv_sum``, rank 14, two passes: 41,448
            evaluations at 3.5e-15 instead of 47,520 at 2.6e-15), but at a rank equal to the
            tensor's exact rank a third pass may be needed (``max_iter=1``: one pass at
            ``rank``). See the cross tutorial.
        ring: close the result into a ring where that lowers the parameter count at equal
            error (real values only); ``False`` always returns the tensor train (``r_0 = 1``).
        n_holdout: random entries kept aside to measure the error (counted in ``n_evals``);
            default 1000 with ``tol``, 0 without.
        index_type: ``"numpy"`` or ``"torch"`` (the indices ``f`` receives; torch indices live on
            ``device``, or the CPU).
        dtype: dtype of the returned ring; default: that of ``f``'s values (float64 for
            integers, booleans and lists). The cross itself computes in float64 (complex128 for
            complex values).
        device: device of the returned ring; default: where ``f``'s torch results lived, else CPU.

    Returns:
        ``TensorRing`` with cores ``(r_k, n_k, r_{k+1})`` (and the info when asked).

    Raises:
        InputError: bad arguments, or ``f`` raising, returning the wrong number of values, NaN/Inf
            or non-numbers (the message names ``f`` and the batch size).
        InputTypeError: an argument of the wrong type (``f`` not callable, a non-integer shape).
    """
    if not callable(f):
        raise InputTypeError(f"f must be callable (an index batch -> values), got {type(f).__name__}")
    shape = _check_shape(shape)
    d = len(shape)
    if init is not None:
        if not isinstance(init, TensorRing):
            raise InputTypeError(f"init must be a TensorRing, got {type(init).__name__}")
        if tuple(init.shape) != shape:
            raise InputError(f"init has shape {tuple(init.shape)}, expected {shape}")
    if rank is None and tol is None and init is None:
        raise InputError("give rank (fixed-rank cross) or tol (target relative error)")
    tol = None if tol is None else check_tol(tol)
    stop_tol, max_iter = check_stop_tol(stop_tol), check_max_iter(max_iter)
    if max_evals is not None and int(max_evals) < 1:
        raise InputError(f"max_evals must be >= 1, got {max_evals}")
    if isinstance(oversample, bool) or not isinstance(oversample, (int, np.integer)) or oversample < 0:
        raise InputError(f"oversample must be an int >= 0, got {oversample!r}")
    if index_type not in ("numpy", "torch"):
        raise InputError(f"index_type must be 'numpy' or 'torch', got {index_type!r}")
    dtype, device = _check_dtype(dtype), _check_device(device)
    n_holdout = (1000 if tol is not None else 0) if n_holdout is None else int(n_holdout)
    if n_holdout < 0:
        raise InputError(f"n_holdout must be >= 0, got {n_holdout}")
    caps = _rank_caps(rank, shape, init)
    rng = np.random.default_rng(seed)
    box = BlackBox(f, shape, index_type, device, None if max_evals is None else int(max_evals))

    def out_dtype() -> torch.dtype:
        if dtype is not None:
            return dtype
        return box.value_dtype or torch.float64

    def as_ring(cores: list[np.ndarray]) -> TensorRing:
        """The cores in ``f``'s scale, dtype and device (``box.scale`` undone)."""
        out = scaled_ring(_working_ring(cores).cores, box.scale or 1.0, out_dtype())
        return out.to(device if device is not None else (box.value_device or "cpu"))

    log = IterationLog(
        "tr_cross",
        tol=tol,
        stop_tol=stop_tol,
        max_iter=max_iter,
        callback=callback,
        verbose=verbose,
        info_cls=CrossInfo,
    )
    with log:
        hold_idx = hold_val = None
        if n_holdout:
            hold_idx = np.unique(np.stack([rng.integers(0, n, n_holdout) for n in shape], 1), axis=0)
            try:
                hold_val, _ = box(hold_idx)
            except BudgetExhausted:
                raise InputError(f"max_evals={max_evals} is smaller than n_holdout={n_holdout}") from None

        adaptive = tol is not None
        # fixed rank keeps every direction a fibre shows (dropping near-dependent ones early loses
        # pivots); with tol each fibre is truncated at a share of it
        eng = TTCross(box, caps, max(tol, 1e-15) / (10 * math.sqrt(d)) if tol is not None else 0.0, rng=rng)
        if init is not None:
            wide = torch.complex128 if init.dtype.is_complex else torch.float64
            eng.right_from_train([c.detach().cpu().to(wide).numpy() for c in init.cores])
        else:  # nested random test sets of the full caps
            eng.random_right(2 if adaptive else max(caps))
        # a fixed-rank first pass from them has `oversample` fewer pivots when a second pass will
        # bring them back up
        first_caps = None
        if init is None and not adaptive and max_iter > 1:
            first_caps = _first_caps(caps, int(oversample))
        held = (hold_idx, hold_val)
        cores, stop_reason = _passes(eng, log, tol, stop_tol, held, first_caps, int(oversample), as_ring)
        if cores is None:
            raise InputError(f"max_evals={max_evals} does not cover one pass of the cross at ranks {caps[1:-1]}")
        history = log.history
        if dtype is not None and not dtype.is_complex and box.np_dtype == np.complex128:
            raise InputError(f"f returned complex values but dtype={dtype} was asked for")

        # what is left of tol goes half to rounding, half to closing (so the result stays within
        # tol); at fixed rank the rounding only drops the noise-level directions the cross keeps,
        # and the ring may differ from the train by a quarter of the train's own error
        last = 0.0 if math.isnan(history[-1]) else history[-1]
        round_tol, close_tol = 1e-15 * math.sqrt(d), max(last / 4, 1e-13)
        if tol is not None and stop_reason == "tol":
            close_tol = (tol - last) / 2
            round_tol = max(round_tol, close_tol)
        rounded, check_seed = round_train(cores, round_tol), 0 if seed is None else int(seed)
        better = None
        if ring and box.np_dtype != np.complex128:  # the Kronecker split is written for real trains
            better = close_ring(rounded, close_tol, seed=check_seed)
        # a ring is worth the rounding's float64 noise (r_0^2 fewer numbers); a train keeps its
        # unrounded cores when the rounding changed it by more than round_tol (at a fixed rank
        # past the function's numerical rank: 1e-14 instead of 2e-15 on inv_sum)
        closed = better is not None
        train = rounded if closed or within(cores, rounded, round_tol, seed=check_seed) else cores
        tt_ranks = tuple(c.shape[0] for c in train)
        cores = train if better is None else better
        result = as_ring(cores)
        if not return_info:
            return result
        heldout = None
        if n_holdout and hold_val is not None:
            heldout = _relative(_working_ring(cores).entries(torch.from_numpy(hold_idx)).numpy(), hold_val)
        return result, log.info(
            heldout if heldout is not None else history[-1],
            result.ranks,
            n_evals=box.n_evals,
            n_cache_hits=box.n_hits,
            heldout_error=heldout,
            tt_ranks=tt_ranks,
            closed=closed,
            stop_reason=stop_reason,
        )
