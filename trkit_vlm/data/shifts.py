"""Image shifts for tasks: functions ``f(images uint8 (N, H, W), **params) -> uint8 (N, H, W)``.

Each works image by image (an image's result does not depend on the others in the array), so shifting a
whole pool and then taking a subset gives the same pictures as shifting the subset. Values are grey
levels scaled to [0, 1], changed, clipped and re-quantised to uint8. ``trkit_vlm.data.tasks`` registers
them under their task names (``noise``, ``blur``, ``lowres``, ``edges``).
"""

from __future__ import annotations

import hashlib

import numpy as np
from scipy import ndimage

from trkit.errors import InputError

__all__ = ["gaussian_noise", "gaussian_blur", "low_resolution", "edge_rendering"]


def _unit(images: np.ndarray) -> np.ndarray:
    return images.astype(np.float32) / 255.0


def _uint8(x: np.ndarray) -> np.ndarray:
    return np.clip(np.rint(x * 255.0), 0, 255).astype(np.uint8)


def _number(name: str, value: float, lo: float, hi: float) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not lo <= value <= hi:
        raise InputError(f"shift parameter {name} must be a number in [{lo}, {hi}], got {value!r}")
    return float(value)


def gaussian_noise(images: np.ndarray, sigma: float, seed: int = 0) -> np.ndarray:
    """Additive Gaussian noise of standard deviation ``sigma`` on [0, 1] grey values.

    The noise of an image is drawn from a generator seeded by the image's own bytes (and ``seed``), so an
    image gets the same noise whichever array or subset it is part of.
    """
    sigma = _number("sigma", sigma, 0.0, 10.0)
    x = _unit(images)
    for i, img in enumerate(images):
        key = int.from_bytes(hashlib.blake2b(img.tobytes(), digest_size=8).digest(), "little")
        x[i] += sigma * np.random.default_rng([key, int(seed)]).standard_normal(img.shape, dtype=np.float32)
    return _uint8(x)


def gaussian_blur(images: np.ndarray, sigma: float) -> np.ndarray:
    """Gaussian blur of standard deviation ``sigma`` pixels (zero padding outside the picture)."""
    sigma = _number("sigma", sigma, 0.0, 1e3)
    return _uint8(ndimage.gaussian_filter(_unit(images), sigma=(0.0, sigma, sigma), mode="constant"))


def low_resolution(images: np.ndarray, size: int) -> np.ndarray:
    """Down to ``size x size`` pixels (area averaging) and back to the original size (bilinear)."""
    import torch
    import torch.nn.functional as F

    h, w = images.shape[1:]
    if isinstance(size, bool) or not isinstance(size, int) or not 1 <= size <= min(h, w):
        raise InputError(f"shift parameter size must be an integer in [1, {min(h, w)}], got {size!r}")
    t = torch.from_numpy(_unit(images))[:, None]
    small = F.interpolate(t, size=(size, size), mode="area")
    return _uint8(F.interpolate(small, size=(h, w), mode="bilinear", align_corners=False)[:, 0].numpy())


def edge_rendering(images: np.ndarray, mix: float) -> np.ndarray:
    """The picture blended with its edge map: ``(1 - mix) x + mix e``, ``e`` the Sobel gradient magnitude
    scaled to [0, 1] per image (``mix = 1``: the outline drawing alone)."""
    mix = _number("mix", mix, 0.0, 1.0)
    x = _unit(images)
    # 2-D Sobel kernels applied per image (ndimage.sobel on the stack would also smooth across images).
    gx = np.array([[[-1.0, 0.0, 1.0], [-2.0, 0.0, 2.0], [-1.0, 0.0, 1.0]]], dtype=np.float32)
    e = np.hypot(
        ndimage.correlate(x, gx, mode="constant"), ndimage.correlate(x, gx.transpose(0, 2, 1), mode="constant")
    )
    e /= np.maximum(e.reshape(len(e), -1).max(axis=1), 1e-6)[:, None, None]
    return _uint8((1.0 - mix) * x + mix * e)
