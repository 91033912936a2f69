"""Amortised dense weights: reconstruct a ring's dense weight once per forward pass, not per call.

Usage::

    with trkit.nn.dense_weights_cache(model):
        loss = loss_fn(model(x))      # each TR module densifies at most once here
    loss.backward()
    optimizer.step()

Inside the context, a TR module whose cost model prefers "densify then matmul" keeps the dense
weight it built and reuses it for later calls (e.g. all ``n_layers`` calls of one
``CrossLayerTR``), so the reconstruction runs once per step and autograd back-propagates through
it once. The cache is dropped when

* the context exits (the usual scope: one forward pass),
* any parameter of the module changes in place (``_version`` moves, e.g. ``optimizer.step()``),
* autograd has back-propagated through the cached tensor (its graph may be freed), or
* grad mode differs from when it was built.

So a backward + step inside the context is safe (the next call rebuilds), and nothing stale is ever
used. Outside the context nothing is cached: every call is independent, as for any torch module.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager

import torch
from torch import nn

from trkit.errors import InputTypeError

__all__ = ["dense_weights_cache", "DenseCacheMixin"]


class DenseCacheMixin:
    """Mixin for modules whose dense weight may be cached by :func:`dense_weights_cache`."""

    _cache_depth: int = 0
    # set by _init_cache (through __dict__, see there)
    _cache_value: torch.Tensor | None
    _cache_stale: bool
    _cache_plist: list[torch.Tensor]
    _cache_versions: list[int]
    _cache_grad: bool

    def _init_cache(self) -> None:
        # Plain attributes, never buffers: the cache must not enter state_dict or DDP broadcasts.
        # Written straight into __dict__: nn.Module.__setattr__ checks parameters, buffers and
        # submodules on every write (~1.5 us each, a visible share of a small layer's call).
        self._set(
            _cache_depth=0,
            _cache_value=None,
            _cache_stale=False,
            _cache_plist=[],
            _cache_versions=[],
            _cache_grad=False,
        )

    def _set(self, **attrs) -> None:
        self.__dict__.update(attrs)

    def __getstate__(self) -> dict:
        # Pickling (torch.save of a whole module, deepcopy): compiled plans hold generated
        # functions that cannot be pickled and are rebuilt on the next call; the cache is never saved.
        state = self.__dict__.copy()
        state.update(
            _plans={}, _cache_depth=0, _cache_value=None, _cache_plist=[], _cache_versions=[], _cache_stale=False
        )
        if "_factors" in state:
            state["_factors"] = None
        if "_views" in state:
            state.update(_views=[], _views_src=None)
        return state

    @property
    def caching(self) -> bool:
        """True inside a :func:`dense_weights_cache` context covering this module."""
        return self._cache_depth > 0

    def _cache_params(self) -> list[torch.Tensor]:
        return list(self.parameters())  # type: ignore[attr-defined]

    def has_valid_cache(self) -> bool:
        """A cached dense weight exists and nothing it depends on has changed since."""
        if self._cache_depth == 0 or self._cache_value is None or self._cache_stale:
            return False
        if self._cache_grad != torch.is_grad_enabled():
            return False
        # in-place updates (optimizer.step, load_state_dict, .to() on .data) bump _version
        return [p._version for p in self._cache_plist] == self._cache_versions

    def _cached(self, build: Callable[[], torch.Tensor]) -> torch.Tensor:
        """``build()`` once per context (and per parameter state); plain ``build()`` outside."""
        if self._cache_depth == 0:
            return build()
        if self.has_valid_cache():
            assert self._cache_value is not None  # has_valid_cache checks it
            return self._cache_value
        value = build()
        plist = self._cache_params()
        self._set(
            _cache_plist=plist,
            _cache_versions=[p._version for p in plist],
            _cache_grad=torch.is_grad_enabled(),
            _cache_value=value,
            _cache_stale=False,
        )
        if value.requires_grad:
            value.register_hook(self._mark_stale)
        return value

    def _mark_stale(self, grad: torch.Tensor) -> None:
        # Backward has reached the cached tensor: its recorded graph is about to be consumed.
        self._set(_cache_stale=True)

    def _clear_cache(self) -> None:
        self._set(_cache_value=None, _cache_plist=[], _cache_stale=False)


@contextmanager
def dense_weights_cache(*modules: nn.Module) -> Iterator[None]:
    """Cache dense weights of every TR module inside ``modules`` for the duration of the block.

    Nested contexts are allowed; the cache is dropped when the outermost one covering a
    module exits.
    """
    targets: list[DenseCacheMixin] = []
    for mod in modules:
        if not isinstance(mod, nn.Module):
            raise InputTypeError(f"dense_weights_cache expects nn.Module arguments, got {type(mod).__name__}")
        targets.extend(m for m in mod.modules() if isinstance(m, DenseCacheMixin))
    for m in targets:
        m._set(_cache_depth=m._cache_depth + 1)
    try:
        yield
    finally:
        for m in targets:
            m._set(_cache_depth=m._cache_depth - 1)
            if m._cache_depth == 0:
                m._clear_cache()
