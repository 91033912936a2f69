"""Bond slices of tensor-ring layers: masks, parameter counts, pruning and rank truncation.

Bond ``k`` is the left bond of core ``k`` (``module.ranks[k]``), shared with the right bond of core
``k - 1``. Its slice ``j`` is the pair ``G_{k-1}[:, :, j]``, ``G_k[j, :, :]``: one term of the sum
over that bond index. Zeroing both halves removes the term exactly, so a ring whose bond ``k``
keeps ``r'_k`` slices computes what a ring of rank ``r'_k`` computes, with
``sum_k r'_k n_k r'_{k+1}`` parameters; :func:`prune` then builds that smaller ring.

A mask is a boolean buffer ``bond_mask_<k>`` per bond, registered on the module by
:func:`attach_bond_masks` (so it travels with the module's ``state_dict``). Masks do not enter the
forward pass: :func:`apply_bond_masks_` zeroes the masked slices in place, and must be called again
after every optimiser step (momentum or weight decay could move them).
"""

from __future__ import annotations

import torch
from torch import nn

from trkit.errors import InputError
from trkit.nn.precondition import ring_cores

__all__ = [
    "attach_bond_masks",
    "bond_masks",
    "apply_bond_masks_",
    "kept_ranks",
    "non_core_params",
    "ring_params",
    "masked_n_params",
    "prune",
    "truncate",
]


def non_core_params(module: nn.Module) -> int:
    """Parameters of the module that are not cores (its bias)."""
    bias = getattr(module, "bias", None)
    return bias.numel() if bias is not None else 0


def ring_params(modes, ranks) -> int:
    """``sum_k r_k n_k r_{k+1}``: parameters of a ring with these modes and bond ranks."""
    d = len(ranks)
    return sum(int(ranks[k]) * int(modes[k]) * int(ranks[(k + 1) % d]) for k in range(d))


def attach_bond_masks(module: nn.Module) -> list[torch.Tensor]:
    """Register one all-true boolean buffer per bond (``bond_mask_0`` ...) unless present; returns them."""
    cores = ring_cores(module)
    if bond_masks(module) is None:
        for k, c in enumerate(cores):
            module.register_buffer(f"bond_mask_{k}", torch.ones(c.shape[0], dtype=torch.bool, device=c.device))
    return bond_masks(module)


def bond_masks(module: nn.Module) -> list[torch.Tensor] | None:
    """The module's bond masks, or ``None`` when none are attached."""
    d = len(ring_cores(module))
    masks = [getattr(module, f"bond_mask_{k}", None) for k in range(d)]
    return None if any(m is None for m in masks) else masks


def kept_ranks(module: nn.Module) -> tuple[int, ...]:
    """Number of unmasked slices per bond (the ring's ranks when no masks are attached)."""
    masks = bond_masks(module)
    if masks is None:
        return tuple(int(c.shape[0]) for c in ring_cores(module))
    return tuple(int(m.sum()) for m in masks)


def masked_n_params(module: nn.Module) -> int:
    """Parameters the module has once pruned: cores at :func:`kept_ranks`, plus the bias."""
    modes = [c.shape[1] for c in ring_cores(module)]
    return ring_params(modes, kept_ranks(module)) + non_core_params(module)


@torch.no_grad()
def apply_bond_masks_(module: nn.Module) -> None:
    """Zero the masked slices of every bond in both adjacent cores (in place)."""
    masks = bond_masks(module)
    if masks is None:
        return
    cores = ring_cores(module)
    d = len(cores)
    for k, mask in enumerate(masks):
        if bool(mask.all()):
            continue
        keep = mask.to(cores[k].dtype)
        cores[k].mul_(keep.view(-1, 1, 1))
        cores[(k - 1) % d].mul_(keep.view(1, 1, -1))


def _rebuild(module: nn.Module, cores: list[torch.Tensor]) -> nn.Module:
    """A new module of the same class, shape and options as ``module`` with these cores (any
    ranks) and a copy of its bias; no masks."""
    from trkit.nn.cross_layer import CrossLayerTR
    from trkit.nn.linear import TRLinear

    ranks = [int(c.shape[0]) for c in cores]
    kw = {"dtype": cores[0].dtype, "device": cores[0].device}
    if isinstance(module, CrossLayerTR):
        many_in, many_out = len(module.in_modes) > 1, len(module.out_modes) > 1
        new = CrossLayerTR(
            module.d_in,
            module.d_out,
            module.n_layers,
            ranks,
            bias=module.bias is not None,
            in_modes=module.in_modes if many_in else None,
            out_modes=module.out_modes if many_out else None,
            path=module.path,
            **kw,
        )
    else:
        assert isinstance(module, TRLinear)
        new = TRLinear(
            module.in_features,
            module.out_features,
            ranks,
            in_modes=module.in_modes,
            out_modes=module.out_modes,
            bias=module.bias is not None,
            init=module.init,
            path=module.path,
            **kw,
        )
    with torch.no_grad():
        for p, c in zip(ring_cores(new), cores):
            p.copy_(c)
        if module.bias is not None:
            new.bias.copy_(module.bias)
    new.train(module.training)
    return new


@torch.no_grad()
def prune(module: nn.Module) -> nn.Module:
    """A new, smaller module holding only the unmasked slices of every bond.

    Its output equals the masked module's exactly (the removed terms are zero) and its
    ``n_params`` equals :func:`masked_n_params`. Without masks, a copy.
    """
    masks = bond_masks(module)
    cores = [c.detach() for c in ring_cores(module)]
    if masks is not None:
        d = len(cores)
        for k, mask in enumerate(masks):
            if not bool(mask.any()):
                raise InputError(f"bond {k} has every slice masked; a ring needs at least one per bond")
            idx = mask.nonzero().flatten()
            cores[k] = cores[k].index_select(0, idx)
            cores[(k - 1) % d] = cores[(k - 1) % d].index_select(2, idx)
    return _rebuild(module, cores)


def _dense_weights(module: nn.Module) -> torch.Tensor:
    from trkit.nn.cross_layer import CrossLayerTR

    return module.weights() if isinstance(module, CrossLayerTR) else module.weight


@torch.no_grad()
def truncate(module: nn.Module, tol: float | None = None, max_rank: int | None = None) -> tuple[nn.Module, float]:
    """Lower the ranks of a trained ring by TR rounding (:func:`trkit.tr_round`).

    Args:
        tol: relative Frobenius error target for the weights; ``max_rank``: cap on every bond.

    Returns:
        ``(new_module, rel_error)`` with ``rel_error = ||W_new - W|| / ||W||`` measured on the dense
        weights (all layers for ``CrossLayerTR``), not estimated. Biases are copied unchanged.
    """
    import trkit

    masked = prune(module)  # masked slices are zero: drop them first
    ring = trkit.TensorRing([c.detach() for c in ring_cores(masked)], validate=False)
    rounded = trkit.tr_round(ring, tol=tol, max_rank=max_rank)
    new = _rebuild(module, list(rounded.cores))
    ref = _dense_weights(masked)
    err = torch.linalg.vector_norm(_dense_weights(new) - ref) / torch.linalg.vector_norm(ref).clamp_min(1e-300)
    return new, float(err)
