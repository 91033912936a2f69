"""Frozen-prefix caching: run the layers before the first adapter once, then train on the rest.

When adapters start at layer ``k`` of a tower, layers ``1..k-1`` (and the embeddings before them) do
not depend on any trainable weight. For a fixed input (the class prompts; an image under the eval
transform or one of N stored augmented views) their output never changes, so it is computed once and
every epoch runs only layers ``k..L`` plus pooling and projection.

The split forward reproduces open_clip exactly (``VisionTransformer.forward``: ``_embeds`` = conv
patch embedding, class token, positional embedding, patch dropout, ``ln_pre``; the blocks;
``_pool`` = ``ln_post`` and token pooling in the configured order; ``@ proj``. ``CLIP.encode_text``:
token + positional embedding, blocks with the causal mask, ``ln_final``, EOT pooling, projection).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from open_clip.transformer import text_global_pool
from torch import nn

from trkit_vlm.adapters import adapters_disabled, get_adapters
from trkit_vlm.data.transforms import build_transforms, load_image
from trkit_vlm.files import atomic_torch_save
from trkit_vlm.models import clip_towers
from trkit_vlm.training.config import RunConfig


def first_adapted_layer(model: nn.Module, tower: str) -> int:
    """1-based index of the first layer of ``tower`` ("text"/"image") with an adapter; depth+1 if none."""
    depth = len(clip_towers(model)[tower].resblocks)
    aset = get_adapters(model)
    layers = aset.adapted_layers(tower) if aset is not None else []
    return min(layers) if layers else depth + 1


@contextlib.contextmanager
def tower_pass(model: nn.Module, tower: str) -> Iterator[None]:
    """One pass of ``tower`` ("text"/"image") as the adapters see it when blocks are called one by one.

    ``add_adapters`` hooks the tower's ``Transformer`` module so an adapter set can prepare per-pass
    state (AdaRing builds every layer's dense weights once per pass). Code that calls the blocks
    directly bypasses those hooks, so it announces the pass here; without it AdaRing falls back to
    contracting its cores again in every layer (slower, and a different rounding order). Use
    :func:`run_blocks`, which does this itself; an enclosing ``tower_pass`` makes the inner ones no-ops
    (one announcement per pass, e.g. when timing blocks one at a time).
    """
    aset = get_adapters(model)
    if aset is None or tower in aset.passes_in_progress:
        yield
        return
    aset.passes_in_progress.add(tower)
    if aset.enabled:
        aset.tower_pre_forward(tower)
    try:
        yield
    finally:
        aset.passes_in_progress.discard(tower)
        aset.tower_post_forward(tower)


def run_blocks(
    model: nn.Module, tower: str, x: torch.Tensor, start: int, stop: int, attn_mask: torch.Tensor | None = None
) -> torch.Tensor:
    """Blocks ``start+1 .. stop`` (1-based; ``resblocks[start:stop]``) of ``tower`` on batch-first tokens ``x``.

    open_clip's ``Transformer.forward`` on a slice of its blocks, with the pass announced to the
    adapters (:func:`tower_pass`) when the slice holds an adapted block: the one way code outside
    open_clip runs CLIP blocks. ``x``: ``(B, T, width)``; returns the same shape.
    """
    transformer = clip_towers(model)[tower]
    aset = get_adapters(model)
    adapted = aset is not None and any(start < layer <= stop for layer in aset.adapted_layers(tower))
    with tower_pass(model, tower) if adapted else contextlib.nullcontext():
        if not transformer.batch_first:
            x = x.transpose(0, 1).contiguous()
        for blk in transformer.resblocks[start:stop]:
            x = blk(x, attn_mask=attn_mask)
        if not transformer.batch_first:
            x = x.transpose(0, 1)
    return x


def image_prefix_supported(model: nn.Module) -> str | None:
    """None when the image tower can be split, else the reason it cannot."""
    visual = getattr(model, "visual", None)
    if visual is None or not hasattr(visual, "_embeds") or not hasattr(visual, "transformer"):
        return "the image tower is not an open_clip VisionTransformer"
    pd = getattr(visual, "patch_dropout", None)
    if pd is not None and float(getattr(pd, "prob", 0.0)) > 0:
        return "patch dropout makes the prefix random"
    if getattr(visual.transformer, "grad_checkpointing", False):
        return "gradient checkpointing is on"
    return _adapters_reason(model, "image")


def image_prefix(model: nn.Module, images: torch.Tensor, n_layers: int) -> torch.Tensor:
    """Tokens after the embeddings and the first ``n_layers`` image blocks.

    Args:
        images: ``(B, 3, H, W)`` preprocessed. n_layers: blocks to run (``first_adapted_layer - 1``).
    Returns:
        ``(B, 1 + grid**2, width)`` batch-first tokens.
    """
    return run_blocks(model, "image", model.visual._embeds(images), 0, n_layers)


def image_suffix(model: nn.Module, tokens: torch.Tensor, n_layers: int, normalize: bool = True) -> torch.Tensor:
    """Image features from prefix tokens: blocks ``n_layers+1..L``, pooling, ``ln_post``, projection.

    ``image_suffix(m, image_prefix(m, x, n), n)`` equals ``m.encode_image(x, normalize=True)``.
    Returns ``(B, embed_dim)``.
    """
    visual = model.visual
    x = run_blocks(model, "image", tokens, n_layers, len(visual.transformer.resblocks))
    pooled, _ = visual._pool(x)
    if visual.proj is not None:
        pooled = pooled @ visual.proj
    return F.normalize(pooled, dim=-1) if normalize else pooled


def text_prefix_supported(model: nn.Module) -> str | None:
    """None when the text tower can be split (open_clip ``CLIP``), else the reason it cannot."""
    for attr in ("token_embedding", "positional_embedding", "transformer", "ln_final"):
        if not hasattr(model, attr):
            return f"the text tower has no {attr} (not an open_clip CLIP text tower)"
    if getattr(model.transformer, "grad_checkpointing", False):
        return "gradient checkpointing is on"
    return _adapters_reason(model, "text")


def _adapters_reason(model: nn.Module, tower: str) -> str | None:
    aset = get_adapters(model)
    return None if aset is None else aset.split_forward_reason(tower)


def pooled_length(model: nn.Module, text: torch.Tensor) -> int:
    """Shortest context giving the same text features as the full one for these token ids.

    Under the causal mask a token's state depends only on the tokens before it, so everything after
    the pooled (EOT) token is dead work: trimming to ``max pooled position + 1`` changes no value.
    Returns the full length when the tower is not causal or pools from a fixed position.
    """
    n = text.shape[-1]
    pool = getattr(model, "text_pool_type", "argmax")
    if getattr(model, "attn_mask", None) is None or pool not in ("argmax", "eos"):
        return n
    if pool == "argmax":
        idx = text.argmax(dim=-1)
    else:
        eos = getattr(model, "text_eos_id", None)
        if eos is None:
            return n
        idx = (text == eos).int().argmax(dim=-1)
    return int(idx.max()) + 1


def causal_mask(model: nn.Module, n: int) -> torch.Tensor | None:
    """The text tower's causal attention mask cut to ``n`` positions (None for a bidirectional tower)."""
    mask = model.attn_mask
    return mask if mask is None or mask.shape[-1] == n else mask[..., :n, :n]


def text_prefix(model: nn.Module, text: torch.Tensor, n_layers: int) -> torch.Tensor:
    """Token states after the embeddings and the first ``n_layers`` text blocks: ``(C, ctx, width)``.

    ``text`` may be cut to ``ctx <= context_length`` columns (see :func:`pooled_length`); the
    positional embedding and causal mask are cut to match.
    """
    n = text.shape[-1]
    cast_dtype = model.transformer.get_cast_dtype()
    x = model.token_embedding(text).to(cast_dtype)
    x = x + model.positional_embedding[:n].to(cast_dtype)
    return run_blocks(model, "text", x, 0, n_layers, attn_mask=causal_mask(model, n))


def text_suffix(
    model: nn.Module, states: torch.Tensor, text: torch.Tensor, n_layers: int, normalize: bool = True
) -> torch.Tensor:
    """Text features from prefix states (``text`` = the token ids, for EOT pooling): ``(C, embed_dim)``.

    ``text_suffix(m, text_prefix(m, t, n), t, n)`` equals ``m.encode_text(t, normalize=True)``, also
    for ``t`` cut to :func:`pooled_length` columns.
    """
    depth = len(model.transformer.resblocks)
    x = run_blocks(model, "text", states, n_layers, depth, attn_mask=causal_mask(model, states.shape[1]))
    x = model.ln_final(x)
    x = text_global_pool(x, text, model.text_pool_type, eos_token_id=getattr(model, "text_eos_id", None))
    if model.text_projection is not None:
        x = model.text_projection(x) if isinstance(model.text_projection, nn.Linear) else x @ model.text_projection
    return F.normalize(x, dim=-1) if normalize else x


# ------------------------------------------------------------------ token store for fixed image views


def view_transform(cfg: RunConfig, model: nn.Module, records: list) -> tuple[Callable, int, str]:
    """``(f(index, view) -> tensor, views per image, description)`` for the prefix cache: the eval view,
    or ``data.cached_views`` seeded augmented views."""
    train_tf, eval_tf = build_transforms(model, augment=cfg.data.augment)
    if not cfg.data.augment:
        return (lambda i, v: eval_tf(load_image(records[i][0]))), 1, "eval"
    n = max(1, cfg.data.cached_views)

    def f(i: int, v: int) -> torch.Tensor:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed((cfg.seed * 1_000_003 + i) * 997 + v)
            return train_tf(load_image(records[i][0]))

    return f, n, f"aug{n}-seed{cfg.seed}"


def _weights_digest(model: nn.Module, n_layers: int) -> str:
    """Hash of every weight the image prefix uses (random-weight models differ per seed)."""
    visual = model.visual
    h = hashlib.sha256()
    mods = [m for name, m in visual.named_children() if name not in ("transformer", "ln_post", "attn_pool")]
    mods += list(visual.transformer.resblocks[:n_layers])
    for m in mods:
        for name, t in sorted(m.state_dict().items()):
            h.update(name.encode())
            h.update(t.detach().float().cpu().numpy().tobytes())
    for name in ("class_embedding", "positional_embedding"):
        if hasattr(visual, name):
            h.update(getattr(visual, name).detach().float().cpu().numpy().tobytes())
    return h.hexdigest()


def _source_digest(records: list) -> str:
    h = hashlib.sha256()
    for src, label in records:
        if isinstance(src, (str, os.PathLike)):
            st = os.stat(src)
            h.update(f"{os.fspath(src)}|{st.st_size}|{st.st_mtime_ns}|{label}".encode())
        elif isinstance(src, np.ndarray):
            h.update(src.tobytes())
            h.update(str(src.shape).encode())
        else:  # PIL image
            h.update(src.tobytes())
            h.update(str(src.size).encode())
    return h.hexdigest()


@torch.no_grad()
def build_image_cache(
    model: nn.Module,
    records: list,
    view_transform,
    n_views: int,
    n_layers: int,
    frozen_features: bool = False,
    batch_size: int = 64,
    disk_dir: str | None = None,
    describe: str = "",
) -> dict[str, torch.Tensor]:
    """Prefix tokens (and optionally frozen image features) of every record's fixed views.

    Args:
        records: ``(image_source, label)`` list.
        view_transform: ``f(index, view) -> (3, H, W)`` tensor; must be deterministic.
        n_views: views per image.
        n_layers: image blocks in the prefix.
        frozen_features: also store the frozen model's features (adapters off) for the image
            consistency loss.
        disk_dir: when given, the store is read from / written to ``disk_dir/prefix_<key>.pt``,
            keyed by the prefix weights, the images and ``describe`` (the view recipe).
    Returns:
        ``{"tokens": (N, V, T, W)}`` on CPU (+ ``"frozen": (N, V, D)``).
    """
    path = None
    if disk_dir is not None:
        key = hashlib.sha256(
            json.dumps(
                [
                    _weights_digest(model, n_layers),
                    _source_digest(records),
                    n_views,
                    n_layers,
                    describe,
                    bool(frozen_features),
                ]
            ).encode()
        ).hexdigest()
        path = Path(disk_dir) / f"prefix_{key[:24]}.pt"
        if path.is_file():
            try:
                return torch.load(path, map_location="cpu", weights_only=True)
            except Exception:  # a damaged cache is rebuilt, never trusted
                path.unlink(missing_ok=True)
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    tokens, frozen = [], []
    flat = [(i, v) for i in range(len(records)) for v in range(n_views)]
    try:
        for start in range(0, len(flat), batch_size):
            chunk = flat[start : start + batch_size]
            x = torch.stack([view_transform(i, v) for i, v in chunk]).to(device)
            t = image_prefix(model, x, n_layers)
            tokens.append(t.cpu())
            if frozen_features:
                with adapters_disabled(model):
                    frozen.append(image_suffix(model, t, n_layers).float().cpu())
    finally:
        model.train(was_training)
    out = {"tokens": torch.cat(tokens).reshape(len(records), n_views, *tokens[0].shape[1:])}
    if frozen_features:
        out["frozen"] = torch.cat(frozen).reshape(len(records), n_views, -1)
    if path is not None:
        atomic_torch_save(out, path)
    return out
