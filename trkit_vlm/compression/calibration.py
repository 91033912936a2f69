"""Calibration inputs for output-aware compression: what a trained MMA adapter set reads on real inputs.

Output-aware compression weighs each projection's error by what it does to the adapted blocks' outputs
on a calibration batch (a few training images and the class prompts the run trained with), as
data-aware compression methods do. :func:`collect_calibration` runs the adapted model once and records,
at every adapted block ``k`` of each tower, the adapter's input ``h = ln_1(x)`` (the tokens that
reach the output: every image token; the prompt tokens up to the end-of-text token) and the energy of
the block's output. :func:`gaussian_calibration` is the data-free stand-in: ``h ~ N(0, I)`` and
errors relative to the adapter's own output.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from trkit.errors import InputError
from trkit_vlm.adapters.base import TOWERS, get_adapters
from trkit_vlm.models import clip_towers

__all__ = ["Calibration", "collect_calibration", "gaussian_calibration"]


@dataclass
class Calibration:
    """Adapter inputs per tower and adapted-layer pair, and what an output error is measured against.

    Attributes:
        inputs: ``{tower: [h_k (N_k, width) float64 for each pair k]}``: the adapter's inputs.
        token_energy: ``{tower: [(N_k,) float64]}``: the squared norm of the block output at each of those
            tokens; ``None`` for the data-free calibration (errors are then relative to the adapter's
            own output).
        source: ``"data"`` or ``"gaussian"``.
    """

    inputs: dict[str, list[torch.Tensor]]
    token_energy: dict[str, list[torch.Tensor]] | None
    source: str

    @property
    def block_energy(self) -> dict[str, float] | None:
        """``{tower: sum over layers and tokens of ||block output||^2}`` (None when data-free)."""
        if self.token_energy is None:
            return None
        return {t: float(sum(e.sum() for e in es)) for t, es in self.token_energy.items()}

    def n_tokens(self) -> dict[str, int]:
        """Tokens per tower, all layers together."""
        return {t: sum(int(h.shape[0]) for h in hs) for t, hs in self.inputs.items()}

    def subsample(self, max_tokens: int, seed: int = 0) -> Calibration:
        """At most ``max_tokens`` tokens per tower and layer (a fixed random draw)."""
        g = torch.Generator().manual_seed(seed)
        inputs: dict[str, list[torch.Tensor]] = {}
        energy: dict[str, list[torch.Tensor]] | None = None if self.token_energy is None else {}
        for tower, hs in self.inputs.items():
            picks = [torch.randperm(h.shape[0], generator=g)[:max_tokens] for h in hs]
            inputs[tower] = [h[i] for h, i in zip(hs, picks)]
            if energy is not None:
                energy[tower] = [e[i] for e, i in zip(self.token_energy[tower], picks)]
        return Calibration(inputs, energy, self.source)


class _Recorder:
    """Forward hook on an adapted block: keeps ``ln_1(x)`` and the block output of the selected tokens."""

    def __init__(self, keep: torch.Tensor | None, batch_first: bool):
        self.keep, self.batch_first = keep, batch_first
        self.h: torch.Tensor | None = None
        self.energy: torch.Tensor | None = None

    def __call__(self, module, args, kwargs, output):
        x = args[0] if args else kwargs.get("q_x", kwargs.get("x"))
        h, out = module.ln_1(x), output
        if not self.batch_first:
            h, out = h.transpose(0, 1), out.transpose(0, 1)
        if self.keep is not None:
            h, out = h[self.keep], out[self.keep]
        self.h = h.reshape(-1, h.shape[-1]).detach().double()
        self.energy = out.reshape(-1, out.shape[-1]).detach().double().pow(2).sum(dim=1)


@torch.no_grad()
def collect_calibration(model: nn.Module, images: torch.Tensor, text: torch.Tensor) -> Calibration:
    """Record the adapter inputs of ``model`` (with its paired adapters, e.g. MMA, enabled).

    Args:
        model: an open_clip CLIP with paired adapters (``model.trkit_adapters``).
        images: preprocessed calibration images ``(N, 3, H, W)``.
        text: token ids of the class prompts ``(C, context)``.
    Returns:
        a :class:`Calibration` with every image token and every prompt token up to its end-of-text token.
    """
    aset = get_adapters(model)
    if aset is None or not hasattr(aset, "layers"):
        raise InputError("collect_calibration needs a model with paired (MMA-style) adapters")
    towers = clip_towers(model)
    # Under the causal mask the text features depend on the tokens up to end-of-text only (open_clip
    # pools the arg-max token, the end-of-text id); later positions are padding.
    eot = text.argmax(dim=-1)
    keep_text = torch.arange(text.shape[1])[None, :] <= eot[:, None]
    recorders: dict[str, list[_Recorder]] = {}
    handles = []
    try:
        for tower in TOWERS:
            batch_first = getattr(towers[tower], "batch_first", True)
            recorders[tower] = []
            for layer in aset.layers(tower):
                rec = _Recorder(keep_text if tower == "text" else None, batch_first)
                blk = towers[tower].resblocks[layer - 1]
                handles.append(blk.register_forward_hook(rec, with_kwargs=True))
                recorders[tower].append(rec)
        was_training = model.training
        model.eval()
        model.encode_image(images)
        model.encode_text(text)
        model.train(was_training)
    finally:
        for h in handles:
            h.remove()
    return Calibration(
        inputs={t: [r.h for r in rs] for t, rs in recorders.items()},
        token_energy={t: [r.energy for r in rs] for t, rs in recorders.items()},
        source="data",
    )


def gaussian_calibration(widths: dict[str, int], n_pairs: int, n_tokens: int = 256, seed: int = 0) -> Calibration:
    """Data-free calibration: ``n_tokens`` N(0, I) inputs per tower and pair (what ``ln_1`` outputs look like
    without its affine part); errors are then measured relative to the adapter's own output."""
    g = torch.Generator().manual_seed(seed)
    inputs = {
        t: [torch.randn(n_tokens, widths[t], generator=g, dtype=torch.float64) for _ in range(n_pairs)] for t in TOWERS
    }
    return Calibration(inputs=inputs, token_energy=None, source="gaussian")
