"""A small CLIP that the project pre-trains itself, on real images, so adaptation can be shown offline.

Real CLIP weights cannot be downloaded on the machines this project targets. To still show AdaRing
and MMA working on real images, ``pretrain_small`` trains a small open_clip model contrastively on the
Fashion-MNIST training images (minus a held-out validation part) against captions made from the class
names and several templates. It is **not** OpenAI CLIP: it has seen 10 kinds of clothing, 28x28 grey
pictures, and ~60 distinct sentences; its numbers are not comparable with published CLIP results.

The result is cached under the user cache dir (``$TRKIT_CACHE`` or ``~/.cache/trkit``) in a file named
by a hash of the recipe, so a second run (and every test or quickstart after it) reuses it.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import open_clip
import torch
import torch.nn.functional as F
from safetensors import safe_open
from safetensors.torch import save as safetensors_bytes
from tqdm.auto import tqdm

from trkit.errors import InputError
from trkit_vlm.data.fashion_mnist import FASHION_MNIST_CLASSES, load_fashion_mnist
from trkit_vlm.data.tasks import split_train_val
from trkit_vlm.files import atomic_write_bytes, atomic_write_text
from trkit_vlm.models import ClipBundle, load_clip, quiet_random_init, register_model_config

SMALL_CLIP_NAME = "trkit-small-clip-28"

# Sized for ~8 minutes of CPU pre-training: 28x28 input, 4x4 patches (49 tokens + class token),
# width 128 and 6 layers in both towers so MMA's "last two thirds of the layers" placement has
# depth to work with. The 49,408-token embedding is kept so the standard open_clip tokenizer works
# unchanged (6.3M parameters that cost a table lookup, no matrix work).
SMALL_CLIP_CONFIG: dict[str, Any] = {
    "embed_dim": 128,
    "vision_cfg": {"image_size": 28, "patch_size": 4, "width": 128, "layers": 6, "head_width": 32},
    "text_cfg": {"context_length": 16, "vocab_size": 49408, "width": 128, "heads": 4, "layers": 6},
}

# Captions for pre-training. Zero-shot evaluation and the few-shot methods use the first one only.
PRETRAIN_TEMPLATES: tuple[str, ...] = (
    "a photo of a {}.",
    "a grey picture of a {}.",
    "a picture of a {}.",
    "an image of a {}.",
    "a low resolution photo of a {}.",
    "a photo of the {}.",
    "a black and white photo of a {}.",
    "a product photo of a {}.",
)

# open_clip's default preprocessing (OpenAI mean/std); the fast tensor path below reproduces it so the
# bundle's own ``preprocess_val`` and our batched pre-processing give the same tensors.
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)

# Bump when the training code changes in a way that changes the weights for the same recipe.
_CODE_VERSION = 1


@dataclass(frozen=True)
class PretrainRecipe:
    """Everything that determines the pre-trained weights (its hash names the cache file).

    Training length is a number of steps, not wall time, so the result is the same on any machine.
    """

    model_config: dict = field(default_factory=lambda: json.loads(json.dumps(SMALL_CLIP_CONFIG)))
    steps: int = 720
    batch_size: int = 128
    lr: float = 1e-3
    warmup_steps: int = 30
    min_lr_ratio: float = 0.05
    weight_decay: float = 0.1
    templates: tuple[str, ...] = PRETRAIN_TEMPLATES
    val_per_class: int = 500
    seed: int = 0

    def to_dict(self) -> dict:
        d = dataclasses.asdict(self)
        d["templates"] = list(self.templates)
        return d

    def key(self) -> str:
        """12 hex digits of the SHA-256 of the recipe (and the code version)."""
        blob = json.dumps({"recipe": self.to_dict(), "code": _CODE_VERSION}, sort_keys=True)
        return hashlib.sha256(blob.encode()).hexdigest()[:12]


def cache_root(cache_dir: str | os.PathLike | None = None) -> Path:
    """``cache_dir``, else ``$TRKIT_CACHE``, else ``$XDG_CACHE_HOME/trkit``, else ``~/.cache/trkit``."""
    if cache_dir is not None:
        return Path(cache_dir)
    if os.environ.get("TRKIT_CACHE"):
        return Path(os.environ["TRKIT_CACHE"])
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "trkit"


def weights_path(recipe: PretrainRecipe | None = None, cache_dir: str | os.PathLike | None = None) -> Path:
    """Where the weights of ``recipe`` live (whether or not they exist yet)."""
    recipe = recipe or PretrainRecipe()
    return cache_root(cache_dir) / "small_clip" / f"{SMALL_CLIP_NAME}-{recipe.key()}.safetensors"


def register_small_clip(config: dict | None = None, name: str = SMALL_CLIP_NAME) -> str:
    """Make ``name`` a known open_clip model config (idempotent); returns the name."""
    register_model_config(name, config or SMALL_CLIP_CONFIG)
    return name


def _model_name_for(config: dict) -> str:
    """The default config keeps the public name; any other gets a name of its own (hash-suffixed)."""
    if config == SMALL_CLIP_CONFIG:
        return SMALL_CLIP_NAME
    digest = hashlib.sha256(json.dumps(config, sort_keys=True).encode()).hexdigest()[:8]
    return f"{SMALL_CLIP_NAME}-{digest}"


def create_small_clip(config: dict | None = None) -> torch.nn.Module:
    """An open_clip CLIP of the small config with random weights (for training or tests)."""
    config = config or SMALL_CLIP_CONFIG
    name = register_small_clip(config, _model_name_for(config))
    with quiet_random_init():
        return open_clip.create_model(name, pretrained=None)


def images_to_tensor(images: np.ndarray | torch.Tensor) -> torch.Tensor:
    """Grey uint8 images ``(N, H, W)`` -> normalised float ``(N, 3, H, W)``, as open_clip's preprocess does.

    Same result as ``bundle.preprocess_val`` on the PIL images when H = W = the model's image size
    (grey copied to RGB, scaled to [0, 1], OpenAI mean/std), without the per-image Python loop.
    """
    x = torch.as_tensor(images)
    if x.dtype != torch.uint8 or x.ndim != 3:
        raise InputError(f"images_to_tensor expects uint8 (N, H, W), got {tuple(x.shape)} {x.dtype}")
    x = x.to(torch.float32).div_(255.0).unsqueeze(1).expand(-1, 3, -1, -1)
    mean = torch.tensor(CLIP_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(CLIP_STD).view(1, 3, 1, 1)
    return (x - mean) / std


def _tokenize_captions(tokenizer, templates, classnames) -> tuple[torch.Tensor, torch.Tensor]:
    """All (template, class) captions: tokens ``(T*C, ctx)`` and the class of each ``(T*C,)``."""
    captions = [t.format(c) for t in templates for c in classnames]
    classes = torch.arange(len(classnames)).repeat(len(templates))
    return tokenizer(captions), classes


def multi_positive_clip_loss(
    image_features: torch.Tensor,
    text_features: torch.Tensor,
    image_labels: torch.Tensor,
    text_labels: torch.Tensor,
    logit_scale: torch.Tensor,
) -> torch.Tensor:
    """Symmetric InfoNCE where every same-class (image, caption) pair is a positive.

    Args:
        image_features: ``(B, D)`` L2-normalised. text_features: ``(U, D)`` L2-normalised (unique captions).
        image_labels: ``(B,)``; text_labels: ``(U,)``; logit_scale: scalar (already exponentiated).

    Returns:
        Scalar: mean of the image->text and text->image cross-entropies against uniform targets
        over each row's positives.
    """
    logits = logit_scale * image_features @ text_features.t()  # (B, U)
    pos = (image_labels[:, None] == text_labels[None, :]).to(logits.dtype)  # (B, U)
    i2t = -(pos / pos.sum(1, keepdim=True) * F.log_softmax(logits, 1)).sum(1)
    t2i = -(pos.t() / pos.sum(0)[:, None] * F.log_softmax(logits.t(), 1)).sum(1)
    return 0.5 * (i2t.mean() + t2i.mean())


@torch.no_grad()
def zero_shot_accuracy(
    model,
    tokenizer,
    images: torch.Tensor,
    labels: torch.Tensor,
    classnames: list[str],
    template: str = PRETRAIN_TEMPLATES[0],
    batch_size: int = 1000,
) -> float:
    """Top-1 accuracy (%) of zero-shot classification of preprocessed ``images (N, 3, H, W)``."""
    was_training = model.training
    model.eval()
    text = F.normalize(model.encode_text(tokenizer([template.format(c) for c in classnames])), dim=-1)
    correct = 0
    for i in range(0, len(images), batch_size):
        feats = F.normalize(model.encode_image(images[i : i + batch_size]), dim=-1)
        correct += (feats @ text.t()).argmax(1).eq(labels[i : i + batch_size]).sum().item()
    model.train(was_training)
    return 100.0 * correct / max(len(images), 1)


def _param_groups(model, weight_decay: float) -> list[dict]:
    # No decay on gains, biases, embeddings and the temperature (standard CLIP practice).
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        if p.ndim < 2 or "embedding" in name or "logit_scale" in name or "positional" in name:
            no_decay.append(p)
        else:
            decay.append(p)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def _lr_at(step: int, recipe: PretrainRecipe) -> float:
    """Linear warm-up, then cosine decay to ``min_lr_ratio * lr`` at the last step."""
    if step < recipe.warmup_steps:
        return recipe.lr * (step + 1) / recipe.warmup_steps
    t = (step - recipe.warmup_steps) / max(1, recipe.steps - recipe.warmup_steps)
    return recipe.lr * (recipe.min_lr_ratio + (1 - recipe.min_lr_ratio) * 0.5 * (1 + np.cos(np.pi * t)))


def train_small_clip(
    recipe: PretrainRecipe, images: np.ndarray, labels: np.ndarray, progress: bool = True, log: list | None = None
) -> tuple[torch.nn.Module, dict]:
    """Pre-train a small CLIP on ``images`` (uint8 ``(N, H, W)``) with class ``labels`` ``(N,)``.

    ``recipe.val_per_class`` images per class are held out (never trained on) and scored zero-shot at
    the end. Returns ``(model, metrics)``; ``log`` (if given) receives ``(step, loss, lr)`` tuples.
    """
    torch.manual_seed(recipe.seed)
    rng = np.random.default_rng(recipe.seed)
    model = create_small_clip(recipe.model_config)
    tokenizer = open_clip.get_tokenizer(_model_name_for(recipe.model_config))
    train_idx, val_idx = split_train_val(labels, recipe.val_per_class, seed=recipe.seed)
    tokens, caption_class = _tokenize_captions(tokenizer, recipe.templates, FASHION_MNIST_CLASSES)
    n_classes, n_templates = len(FASHION_MNIST_CLASSES), len(recipe.templates)
    images_t, labels_t = torch.from_numpy(np.ascontiguousarray(images)), torch.from_numpy(labels)
    opt = torch.optim.AdamW(_param_groups(model, recipe.weight_decay), lr=recipe.lr, betas=(0.9, 0.98), eps=1e-6)
    model.train()
    order, pos = rng.permutation(train_idx), 0
    losses, t0 = [], time.perf_counter()
    bar = tqdm(range(recipe.steps), desc="pre-training small CLIP", disable=not progress, unit="step")
    for step in bar:
        if pos + recipe.batch_size > len(order):  # new epoch
            order, pos = rng.permutation(train_idx), 0
        idx = torch.from_numpy(order[pos : pos + recipe.batch_size])
        pos += recipe.batch_size
        y = labels_t[idx]
        # Each image draws one template; the text tower runs only on the distinct captions of the step.
        cap = torch.from_numpy(rng.integers(0, n_templates, size=len(idx))) * n_classes + y
        uniq = torch.unique(cap)
        for g in opt.param_groups:
            g["lr"] = _lr_at(step, recipe)
        img_f = F.normalize(model.encode_image(images_to_tensor(images_t[idx])), dim=-1)
        txt_f = F.normalize(model.encode_text(tokens[uniq]), dim=-1)
        loss = multi_positive_clip_loss(img_f, txt_f, y, caption_class[uniq], model.logit_scale.exp())
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        with torch.no_grad():  # CLIP's clamp: temperature at most 100
            model.logit_scale.clamp_(0, np.log(100))
        losses.append(loss.item())
        if log is not None:
            log.append((step, losses[-1], opt.param_groups[0]["lr"]))
        if progress and step % 10 == 0:
            bar.set_postfix(loss=f"{np.mean(losses[-10:]):.3f}")
    train_s = time.perf_counter() - t0
    model.eval()
    acc = zero_shot_accuracy(
        model, tokenizer, images_to_tensor(images_t[val_idx]), labels_t[val_idx], FASHION_MNIST_CLASSES
    )
    metrics = {
        "zero_shot_val_acc": acc,
        "train_seconds": train_s,
        "steps": recipe.steps,
        "seconds_per_step": train_s / max(recipe.steps, 1),
        "threads": torch.get_num_threads(),
        "final_loss": float(np.mean(losses[-20:])),
        "epochs": recipe.steps * recipe.batch_size / len(train_idx),
        "logit_scale": float(model.logit_scale.detach().exp()),
        "loss_curve": [round(float(np.mean(losses[i : i + 20])), 4) for i in range(0, len(losses), 20)],
    }
    return model, metrics


def _save_atomic(model: torch.nn.Module, path: Path, meta: dict) -> None:
    """Weights (safetensors, serialised in memory) and the recipe/metrics JSON beside them, each written
    atomically (:func:`trkit.files.atomic_write`)."""
    state = {k: v.detach().contiguous() for k, v in model.state_dict().items()}
    atomic_write_bytes(path, safetensors_bytes(state, metadata={"trkit_recipe": json.dumps(meta)}))
    atomic_write_text(path.with_suffix(".json"), json.dumps(meta, indent=2))


def cached_weights_ok(path: str | os.PathLike) -> bool:
    """Whether ``path`` holds readable cached weights. A damaged file (cut short, not safetensors) is
    removed, with a warning, so that the caller trains the model again instead of failing to load it."""
    path = Path(path)
    if not path.is_file():
        return False
    try:
        with safe_open(str(path), framework="pt") as f:
            f.keys()
        return True
    except Exception as err:  # safetensors raises its own error types for damaged files
        reason = " ".join(str(err).split()) or type(err).__name__
        warnings.warn(
            f"the cached small CLIP {path} is damaged ({reason}); removing it to train it again", stacklevel=2
        )
        path.unlink(missing_ok=True)
        path.with_suffix(".json").unlink(missing_ok=True)
        return False


def pretrain_small(
    recipe: PretrainRecipe | None = None,
    cache_dir: str | os.PathLike | None = None,
    progress: bool = True,
    force: bool = False,
    data_root: str | os.PathLike | None = None,
    data: tuple[np.ndarray, np.ndarray] | None = None,
) -> Path:
    """Pre-train the small CLIP once and return the path of its cached safetensors weights.

    Args:
        recipe: the recipe (default :class:`PretrainRecipe`); its hash names the cache file, so the
            same recipe is reused and a changed one trains anew.
        cache_dir: cache root (default ``$TRKIT_CACHE`` or ``~/.cache/trkit``).
        progress: show a progress bar.
        force: retrain even when the cache holds the weights.
        data_root: Fashion-MNIST folder (default: see :func:`load_fashion_mnist`).
        data: ``(images uint8 (N, 28, 28), labels (N,))`` to train on instead of the Fashion-MNIST
            training split (tests use a subset).

    Returns:
        Path to ``<cache>/small_clip/trkit-small-clip-28-<hash>.safetensors``; a ``.json`` beside it holds
        the recipe and the pre-training metrics (zero-shot accuracy on the held-out part, time). A damaged
        cached file is removed with a warning and trained again.
    """
    recipe = recipe or PretrainRecipe()
    path = weights_path(recipe, cache_dir)
    if not force and cached_weights_ok(path):
        return path
    if data is None:
        images, labels, _, _ = load_fashion_mnist(data_root)
    else:
        images, labels = data
    model, metrics = train_small_clip(recipe, images, labels, progress=progress)
    meta = {
        "name": SMALL_CLIP_NAME,
        "key": recipe.key(),
        "recipe": recipe.to_dict(),
        "metrics": metrics,
        "torch": torch.__version__,
        "created": time.strftime("%Y-%m-%dT%H:%M:%S"),
        "note": "Small CLIP pre-trained by trkit on Fashion-MNIST; not OpenAI CLIP.",
    }
    _save_atomic(model, path, meta)
    return path


def pretrain_info(recipe: PretrainRecipe | None = None, cache_dir: str | os.PathLike | None = None) -> dict | None:
    """The JSON written beside the cached weights (recipe + metrics), or None when not trained yet."""
    p = weights_path(recipe, cache_dir).with_suffix(".json")
    return json.loads(p.read_text()) if p.is_file() else None


def load_small_clip(
    recipe: PretrainRecipe | None = None,
    cache_dir: str | os.PathLike | None = None,
    train_if_missing: bool = True,
    progress: bool = True,
    device: str = "cpu",
) -> ClipBundle:
    """The pre-trained small CLIP as a ``ClipBundle`` (pre-training it first if it is not cached).

    Raises:
        FileNotFoundError: weights not cached and ``train_if_missing`` is False.
    """
    recipe = recipe or PretrainRecipe()
    path = weights_path(recipe, cache_dir)
    if not cached_weights_ok(path):
        if not train_if_missing:
            raise FileNotFoundError(f"small CLIP weights not found at {path}; run 'trkit-vlm pretrain-small'")
        pretrain_small(recipe, cache_dir, progress=progress)
    name = register_small_clip(recipe.model_config, _model_name_for(recipe.model_config))
    return load_clip(name, pretrained=str(path), device=device)
