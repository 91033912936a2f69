"""Fashion-MNIST from its idx files (the Debian package ``dataset-fashion-mnist``).

Real images that install from a registry: 70,000 grey 28x28 pictures of 10 kinds of clothing
(MIT licence, Zalando Research). The project pre-trains its small CLIP on the training split and
builds the quickstart's few-shot task from it (see ``trkit_vlm.demo.small_clip`` and ``trkit_vlm.demo.tasks``).
"""

from __future__ import annotations

import gzip
import os
import struct
from pathlib import Path

import numpy as np

from trkit.errors import InputError
from trkit_vlm.data.datasets import ClassificationData

DEFAULT_ROOT = "/usr/share/datasets/fashion-mnist"
ENV_ROOT = "TRKIT_FASHION_MNIST"

# Class names as a caption would say them (Zalando's labels, lower case, "T-shirt/top" -> "t-shirt").
FASHION_MNIST_CLASSES: list[str] = [
    "t-shirt",
    "trouser",
    "pullover",
    "dress",
    "coat",
    "sandal",
    "shirt",
    "sneaker",
    "bag",
    "ankle boot",
]

_FILES = {
    "train_images": "train-images-idx3-ubyte",
    "train_labels": "train-labels-idx1-ubyte",
    "test_images": "t10k-images-idx3-ubyte",
    "test_labels": "t10k-labels-idx1-ubyte",
}

# idx type codes (http://yann.lecun.com/exdb/mnist/): only unsigned bytes occur in Fashion-MNIST.
_IDX_DTYPES = {
    0x08: np.uint8,
    0x09: np.int8,
    0x0B: np.dtype(">i2"),
    0x0C: np.dtype(">i4"),
    0x0D: np.dtype(">f4"),
    0x0E: np.dtype(">f8"),
}


def read_idx(path: str | os.PathLike) -> np.ndarray:
    """Read one idx file (optionally gzip-compressed) into a numpy array.

    Args:
        path: an ``*-ubyte`` or ``*-ubyte.gz`` file.

    Returns:
        Array of the shape and type the header declares, e.g. ``(N, 28, 28)`` uint8 for images,
        ``(N,)`` uint8 for labels.

    Raises:
        ValueError: the header is not an idx header, or the payload is shorter/longer than it declares.
    """
    path = Path(path)
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rb") as f:
        data = f.read()
    if len(data) < 4 or data[0] != 0 or data[1] != 0:
        raise InputError(f"{path}: not an idx file (bad magic number)")
    type_code, ndim = data[2], data[3]
    if type_code not in _IDX_DTYPES:
        raise InputError(f"{path}: unknown idx element type 0x{type_code:02x}")
    header_len = 4 + 4 * ndim
    if len(data) < header_len:
        raise InputError(f"{path}: truncated idx header")
    shape = struct.unpack(f">{ndim}I", data[4:header_len])
    dtype = np.dtype(_IDX_DTYPES[type_code])
    expected = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
    if len(data) - header_len != expected:
        raise InputError(
            f"{path}: idx header declares shape {shape} ({expected} bytes of data) "
            f"but the file holds {len(data) - header_len} bytes"
        )
    arr = np.frombuffer(data, dtype=dtype, offset=header_len).reshape(shape)
    return arr.astype(dtype.newbyteorder("="), copy=True)


def fashion_mnist_root(root: str | os.PathLike | None = None) -> Path:
    """The folder holding the idx files: ``root``, else ``$TRKIT_FASHION_MNIST``, else the Debian path."""
    return Path(root or os.environ.get(ENV_ROOT) or DEFAULT_ROOT)


def _find(root: Path, stem: str) -> Path:
    for name in (stem + ".gz", stem):
        if (root / name).is_file():
            return root / name
    raise FileNotFoundError(
        f"Fashion-MNIST file {stem}(.gz) not found in {root}. Install the data with "
        f"'sudo apt-get install dataset-fashion-mnist' (it goes to {DEFAULT_ROOT}), or point "
        f"${ENV_ROOT} (or root=...) at a folder holding the four idx files "
        f"({', '.join(v + '.gz' for v in _FILES.values())})."
    )


def load_fashion_mnist(root: str | os.PathLike | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Load Fashion-MNIST.

    Args:
        root: folder with the idx files; default ``$TRKIT_FASHION_MNIST`` or
            ``/usr/share/datasets/fashion-mnist``.

    Returns:
        ``(train_images, train_labels, test_images, test_labels)``: images uint8 ``(N, 28, 28)``
        (N = 60,000 train / 10,000 test for the real set), labels int64 ``(N,)`` in ``0..9``
        indexing :data:`FASHION_MNIST_CLASSES`.

    Raises:
        FileNotFoundError: a file is missing (the message says how to install the data).
        ValueError: a file is malformed, or images and labels disagree in count, or a label is out of range.
    """
    base = fashion_mnist_root(root)
    out = {}
    for key, stem in _FILES.items():
        out[key] = read_idx(_find(base, stem))
    for split in ("train", "test"):
        images, labels = out[f"{split}_images"], out[f"{split}_labels"]
        if images.ndim != 3 or labels.ndim != 1 or len(images) != len(labels):
            raise InputError(
                f"Fashion-MNIST {split}: images {images.shape} and labels {labels.shape} "
                "do not match (expected (N, H, W) and (N,))"
            )
        if labels.size and int(labels.max()) >= len(FASHION_MNIST_CLASSES):
            raise InputError(f"Fashion-MNIST {split}: label {int(labels.max())} out of range 0..9")
        out[f"{split}_labels"] = labels.astype(np.int64)
    return out["train_images"], out["train_labels"], out["test_images"], out["test_labels"]


def fashion_mnist_data(
    arrays: tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray] | None = None,
    root: str | os.PathLike | None = None,
) -> ClassificationData:
    """Fashion-MNIST as a :class:`ClassificationData`: ``train`` the training images, ``test`` the test
    images, ``val`` empty; records are ``(uint8 (28, 28) array, label)``.

    Args:
        arrays: :func:`load_fashion_mnist`'s 4-tuple (read from ``root`` when None).
        root: the idx folder (see :func:`load_fashion_mnist`).
    """
    x_train, y_train, x_test, y_test = arrays if arrays is not None else load_fashion_mnist(root)
    train = [(x_train[i], int(y_train[i])) for i in range(len(y_train))]
    test = [(x_test[i], int(y_test[i])) for i in range(len(y_test))]
    return ClassificationData("fashion_mnist", list(FASHION_MNIST_CLASSES), train=train, val=[], test=test)
