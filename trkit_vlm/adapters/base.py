"""Wrapping an open_clip CLIP with adapters: the generic adapter set, and the entry points
(``add_adapters``, ``remove_adapters``, ``adapters_disabled``, ...).

Adapters are attached peft-style without forking open_clip: the adapter parameters live in one
submodule ``model.trkit_adapters`` (an :class:`AdapterSet`), which installs forward hooks where its
method acts; the backbone's state-dict keys stay unchanged and ``remove_adapters`` restores the model.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any, Protocol

import torch
from torch import nn
from torch.utils.hooks import RemovableHandle

from trkit.errors import InputError, InputTypeError
from trkit.nn import CrossLayerTR, RingPreconditioner, TRLinear
from trkit_vlm.adapters.config import AdapterConfig
from trkit_vlm.adapters.registry import available_methods, get_method
from trkit_vlm.models import ClipBundle, clip_towers, tower_info

__all__ = [
    "RankAdaptation",
    "ADAPTER_ATTR",
    "TOWERS",
    "AdapterSet",
    "add_adapters",
    "remove_adapters",
    "adapters_disabled",
    "get_adapters",
    "adapter_parameters",
    "adapter_state_dict",
    "count_trainable",
    "trainable_summary",
    "adapter_regularization",
]

ADAPTER_ATTR = "trkit_adapters"
TOWERS = ("text", "image")


class RankAdaptation(Protocol):
    """Rank adaptation of an adapter set during training (see :meth:`AdapterSet.rank_allocator`)."""

    def accumulate(self) -> None: ...
    def update(self, step: int) -> bool: ...
    def finish(self) -> dict[str, Any]: ...
    def n_params(self) -> int: ...
    def state_dict(self) -> dict: ...
    def load_state_dict(self, state: dict) -> None: ...


class AdapterSet(nn.Module):
    """Base of every adapter method's module: it holds the method's parameters and hooks them into the model.

    ``add_adapters`` freezes the backbone, attaches the set as ``model.trkit_adapters``, calls
    :meth:`attach` and installs the per-pass notifications; ``remove_adapters`` undoes all of it. A
    method subclass implements:

    - :meth:`attach`: install its hooks (on blocks, attention modules, the tower outputs, ...) and
      record each handle with :meth:`hold`, so removal is generic. Its hooks do nothing while
      ``self.enabled`` is False (``adapters_disabled``).
    - :meth:`adapted_layers`: which blocks (1-based) of a tower it changes; the frozen-prefix cache runs
      the blocks before the first of them once, and adapter files record them.
    - optionally :meth:`tower_pre_forward` / :meth:`tower_post_forward` (per-pass state, e.g. weights
      built once per pass), :meth:`regularization` (an extra loss term), :meth:`parts` (the summary
      table), :meth:`split_forward_reason`, :meth:`rank_allocator` (rank adaptation during training).

    **Training hooks.** The training loop asks the set for :meth:`preconditioner` (tensor-ring cores
    found in the set get ``trkit.nn.RingPreconditioner``; others None) and :meth:`rank_allocator`, and
    never for the method's name.

    **The tower-pass rule.** ``add_adapters`` hooks each tower's transformer so that
    :meth:`tower_pre_forward` runs before and :meth:`tower_post_forward` after each pass. Code that
    runs CLIP blocks itself, past the transformer module, must announce the pass: use
    ``trkit_vlm.training.prefix_cache.run_blocks``, which does. Otherwise a method with per-pass state
    silently takes a slower path (AdaRing contracts its cores again in every layer).

    **The split forward.** The prefix cache computes features as embeddings, blocks (through
    ``run_blocks``), pooling and projection, without calling the tower modules' ``forward``. A method
    whose hooks sit outside the blocks (a head on the pooled features, a hook on ``model.visual``)
    returns the reason from :meth:`split_forward_reason`, and training then runs the full forward.
    """

    def __init__(self, config: AdapterConfig, info: dict[str, dict[str, int]]):
        super().__init__()
        self.config = config
        self.info = {t: dict(v) for t, v in info.items()}  # width and depth per tower (models.tower_info)
        self.enabled = True
        self.passes_in_progress: set[str] = set()  # towers whose pass prefix_cache.tower_pass announced
        self._handles: list[RemovableHandle] = []
        self._orig_requires_grad: dict[str, bool] = {}

    # ------------------------------------------------------------------ what a method implements
    def attach(self, model: nn.Module, towers: dict[str, nn.Module]) -> None:
        """Install this method's hooks on ``model`` (``towers``: ``clip_towers(model)``); :meth:`hold` each."""
        raise NotImplementedError

    def adapted_layers(self, tower: str) -> list[int]:
        """1-based indices of the blocks of ``tower`` ("text"/"image") whose computation the adapters change."""
        return []

    def split_forward_reason(self, tower: str) -> str | None:
        """None when the prefix cache's split forward of ``tower`` computes what the adapted model does.

        True for methods that act only inside transformer blocks and keep per-pass state in
        :meth:`tower_pre_forward`; otherwise the reason, and training runs the full forward.
        """
        return None

    def tower_pre_forward(self, tower: str) -> None:
        """Called before each forward pass of a tower while adapters are enabled (per-pass caches)."""

    def tower_post_forward(self, tower: str) -> None:
        """Called after each forward pass of a tower (drop per-pass caches)."""

    def regularization(self) -> torch.Tensor:
        """Extra loss term of the method (0 when it has none)."""
        p = next(self.parameters(), None)
        return torch.zeros((), device=p.device if p is not None else None)

    def preconditioner(self, method: str, damping: float = 1e-3) -> RingPreconditioner | None:
        """A ``trkit.nn.RingPreconditioner`` (``method``: "gauss_newton" or "scaled_gd", ``damping`` in gain
        units) over the tensor-ring layers in this set, or None when it has none (a dense weight needs no
        preconditioning)."""
        if not any(isinstance(m, (TRLinear, CrossLayerTR)) for m in self.modules()):
            return None
        return RingPreconditioner(self, method=method, damping=damping)

    def rank_allocator(self, total_steps: int) -> RankAdaptation | None:
        """What adapts this set's ranks over ``total_steps`` optimiser steps, or None (fixed shapes).

        The object has ``accumulate()`` (after backward, before any preconditioning), ``update(step)``
        (after each optimiser step, ``step`` from 1), ``finish() -> dict`` (at the end: shrinks the set to
        its final ranks in place, makes :attr:`config` describe the new shapes, returns a summary for
        metrics.json), ``n_params()`` (the set's size at the ranks kept so far) and ``state_dict()`` /
        ``load_state_dict()`` (checkpoints).
        """
        return None

    def needs_input_statistics(self) -> bool:
        """True when the start depends on the data: training then calls :meth:`start_from_inputs` before
        the first step (``trkit_vlm.training.data_start``)."""
        return False

    def start_from_inputs(self, covariances: dict[str, torch.Tensor]) -> None:
        """Set the starting weights from ``{tower: (width, width)}``, the covariance of the frozen model's
        ``ln_1`` inputs of the adapted blocks on the training data (averaged over the adapted layers)."""

    def parts(self) -> dict[str, int]:
        """Parameter count per named part, for ``trainable_summary``."""
        out: dict[str, int] = {}
        for name, p in self.named_parameters():
            key = name.split(".")[0]
            out[key] = out.get(key, 0) + p.numel()
        return out

    # ------------------------------------------------------------------------------ shared logic
    def hold(self, handle: RemovableHandle) -> None:
        """Keep a hook handle so :meth:`detach` removes it."""
        self._handles.append(handle)

    def detach(self) -> None:
        """Remove every hook this set installed."""
        for h in self._handles:
            h.remove()
        self._handles = []


class _TowerHook:
    """Forward pre-hook (and forward hook) on a tower's transformer: per-pass notifications.

    A callable object rather than a closure so ``copy.deepcopy(model)`` re-points it at the copy's adapters.
    """

    def __init__(self, adapters: AdapterSet, tower: str):
        self.adapters, self.tower = adapters, tower

    def __call__(self, module, args, *output):
        if output:  # registered as forward hook too: the pass is over
            self.adapters.tower_post_forward(self.tower)
        elif self.adapters.enabled:
            self.adapters.tower_pre_forward(self.tower)


# ------------------------------------------------------------------------------------- entry points


def _model_of(model: nn.Module | ClipBundle) -> nn.Module:
    """The CLIP module of a model or of the ``ClipBundle`` that ``load_clip`` returns."""
    return model.model if isinstance(model, ClipBundle) else model


def get_adapters(model: nn.Module | ClipBundle) -> AdapterSet | None:
    """The model's adapter set, or None."""
    return getattr(_model_of(model), ADAPTER_ATTR, None)


def _require(model: nn.Module | ClipBundle) -> AdapterSet:
    a = get_adapters(model)
    if a is None:
        raise InputError("model has no trkit adapters; call trkit_vlm.add_adapters(model, config) first")
    return a


def add_adapters(model: nn.Module | ClipBundle, config: AdapterConfig) -> nn.Module:
    """Add the adapters ``config`` describes and freeze everything else (in place).

    Args:
        model: an open_clip ViT-style CLIP, or the ``ClipBundle`` from ``load_clip``.
        config: an adapter config (``MMAConfig``, ``AdaRingConfig``, or any registered method's).
    Returns:
        the model, with ``model.trkit_adapters`` holding the only trainable parameters.
    """
    model = _model_of(model)
    if not isinstance(config, AdapterConfig):
        kinds = ", ".join(f"{get_method(m).config_class.__name__} ({m})" for m in available_methods())
        raise InputTypeError(f"config must be an adapter config ({kinds}), got {type(config).__name__}")
    if get_adapters(model) is not None:
        raise InputError("model already has adapters; call trkit_vlm.remove_adapters(model) first")
    towers = clip_towers(model)
    aset = config.build(tower_info(model))
    ref = next(iter(towers["image"].resblocks[0].parameters()))
    aset.to(device=ref.device, dtype=ref.dtype if ref.is_floating_point() else None)
    try:
        aset.attach(model, towers)
        for tower in TOWERS:
            aset.hold(towers[tower].register_forward_pre_hook(_TowerHook(aset, tower)))
            aset.hold(towers[tower].register_forward_hook(_TowerHook(aset, tower)))
    except Exception:
        aset.detach()  # a refused model is left as it was
        raise
    aset._orig_requires_grad = {n: p.requires_grad for n, p in model.named_parameters()}
    for p in model.parameters():
        p.requires_grad_(False)
    model.add_module(ADAPTER_ATTR, aset)
    for p in aset.parameters():
        p.requires_grad_(True)
    return model


def remove_adapters(model: nn.Module | ClipBundle) -> nn.Module:
    """Undo ``add_adapters``: hooks and adapter parameters removed, requires_grad flags restored."""
    model = _model_of(model)
    aset = _require(model)
    aset.detach()
    delattr(model, ADAPTER_ATTR)
    for n, p in model.named_parameters():
        p.requires_grad_(aset._orig_requires_grad.get(n, True))
    return model


@contextlib.contextmanager
def adapters_disabled(model: nn.Module | ClipBundle) -> Iterator[nn.Module]:
    """Inside this context the adapted model computes exactly the frozen backbone."""
    model = _model_of(model)
    aset = get_adapters(model)
    if aset is None:
        yield model
        return
    prev = aset.enabled
    aset.enabled = False
    try:
        yield model
    finally:
        aset.enabled = prev


def adapter_parameters(model: nn.Module | ClipBundle) -> list[nn.Parameter]:
    """The adapter parameters (what the optimiser should get)."""
    return list(_require(model).parameters())


def adapter_state_dict(model: nn.Module | ClipBundle) -> dict[str, torch.Tensor]:
    """Adapter tensors only (detached copies), keyed as inside ``model.trkit_adapters``."""
    return {k: v.detach().clone() for k, v in _require(model).state_dict().items()}


def adapter_regularization(model: nn.Module | ClipBundle) -> torch.Tensor:
    """The method's regulariser from the latest forward pass (AdaRing diversity; 0 otherwise)."""
    return _require(model).regularization()


def count_trainable(model: nn.Module | ClipBundle) -> int:
    """Number of parameters with ``requires_grad``."""
    return sum(p.numel() for p in _model_of(model).parameters() if p.requires_grad)


_TEXT_PREFIXES = ("transformer.", "text.", "token_embedding", "positional_embedding", "ln_final", "text_projection")


def trainable_summary(model: nn.Module | ClipBundle, print_it: bool = False) -> str:
    """Trainable / total parameters per part (text tower, image tower, adapters, other) as a table."""
    model = _model_of(model)
    rows: dict[str, list[int]] = {}
    for name, p in model.named_parameters():
        if name.startswith(ADAPTER_ATTR + "."):
            part = "adapters"
        elif name.startswith("visual."):
            part = "image tower"
        elif name.startswith(_TEXT_PREFIXES):
            part = "text tower"
        else:
            part = "other"
        r = rows.setdefault(part, [0, 0])
        r[0] += p.numel() if p.requires_grad else 0
        r[1] += p.numel()
    lines = [f"{'part':<26}{'trainable':>12}{'total':>14}"]
    order = [k for k in ("text tower", "image tower", "other", "adapters") if k in rows]
    for part in order:
        lines.append(f"{part:<26}{rows[part][0]:>12,}{rows[part][1]:>14,}")
        if part == "adapters":
            for sub, n in _require(model).parts().items():
                lines.append(f"{'  ' + sub:<26}{n:>12,}")
    tt = sum(r[0] for r in rows.values())
    tot = sum(r[1] for r in rows.values())
    lines.append(f"{'total':<26}{tt:>12,}{tot:>14,}  ({100.0 * tt / max(tot, 1):.4f}% trainable)")
    text = "\n".join(lines)
    if print_it:
        print(text)
    return text
