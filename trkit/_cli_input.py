"""Reading and checking the dense arrays ``trkit decompose`` works on.

Arrays keep the dtype they have in the file and ``.npy`` files are memory-mapped, so a float32
input is never copied to float64 unless asked; values are checked in blocks (NaN, Inf, float32
overflow) without a second full-size array. Every problem is a :class:`CLIError` naming the file
and the reason; nothing is ever unpickled.
"""

from __future__ import annotations

import math
import resource
from pathlib import Path

import numpy as np

from trkit.errors import InputError

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp"}

# Values per block when scanning an array (4 MiB of float32).
_SCAN_BLOCK = 1 << 20


class CLIError(InputError):
    """A user-facing problem: printed as one line, exit code 2."""


def _pick(mapping: dict, key: str | None, path: Path):
    if key is not None:
        if key not in mapping:
            raise CLIError(f"{path}: no array named {key!r} (has: {', '.join(sorted(mapping)) or 'none'})")
        return mapping[key]
    if len(mapping) != 1:
        raise CLIError(f"{path} holds {len(mapping)} arrays ({', '.join(sorted(mapping))}); choose one with --key")
    return next(iter(mapping.values()))


def _tensor_to_numpy(t):
    import torch

    t = t.detach().cpu()
    return (t.float() if t.dtype == torch.bfloat16 else t).numpy()  # numpy has no bfloat16


def _open_npy(p: Path) -> np.ndarray:
    """Memory-map a ``.npy`` file (copy-on-write: the file is never modified), after checking its header."""
    fmt = np.lib.format
    with open(p, "rb") as f:
        start = f.read(len(fmt.MAGIC_PREFIX))
        if start[:1] == b"\x80":
            raise CLIError(f"{p}: is a Python pickle, not a .npy file; refused (trkit never unpickles files)")
        if start != fmt.MAGIC_PREFIX:
            raise CLIError(f"{p}: not a .npy file (it does not start with the NumPy header)")
        f.seek(0)
        version = fmt.read_magic(f)
        if version not in ((1, 0), (2, 0), (3, 0)):
            raise CLIError(f"{p}: not a valid .npy file (unknown format version {version[0]}.{version[1]})")
        try:
            read_header = fmt.read_array_header_1_0 if version == (1, 0) else fmt.read_array_header_2_0
            shape, _, dtype = read_header(f)
        except ValueError as exc:
            raise CLIError(f"{p}: not a valid .npy file (corrupt header: {str(exc)[:100]})") from None
        offset = f.tell()
    if dtype.hasobject:
        raise CLIError(f"{p}: holds Python objects (a pickled object array), not numbers; refused for safety")
    nbytes = math.prod(shape) * dtype.itemsize
    have = p.stat().st_size - offset
    if have < nbytes:
        raise CLIError(f"{p}: truncated: the header promises {nbytes} bytes of data, the file has {have}")
    arr = np.load(p, mmap_mode="c", allow_pickle=False)
    return arr if arr.flags.c_contiguous else np.ascontiguousarray(arr)


def _load_pt(p: Path, key: str | None):
    import torch

    try:
        obj = torch.load(p, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises RuntimeError, OSError, EOFError, KeyError, ...
        text = str(exc)
        if "WeightsUnpickler error:" in text:
            reason = text.split("WeightsUnpickler error:", 1)[1].strip().split(". ")[0]
            raise CLIError(
                f"{p}: refused: it holds pickled Python objects, not only tensors ({reason}); trkit reads .pt "
                "files with torch.load(weights_only=True) and never runs pickled code"
            ) from None
        # an OSError here is torch's zip reader seeking past the end of a cut file: its text
        # ("Invalid argument") says nothing about the file
        short = text.strip().splitlines()[0][:100] if text.strip() and not isinstance(exc, OSError) else ""
        detail = f"torch.load: {short}" if short else f"torch.load raised {type(exc).__name__}"
        raise CLIError(f"{p}: truncated or corrupt .pt file ({detail})") from None
    if isinstance(obj, dict):
        obj = _pick({str(k): v for k, v in obj.items() if isinstance(v, torch.Tensor)}, key, p)
    if not isinstance(obj, torch.Tensor):
        raise CLIError(f"{p}: expected a tensor or a dict of tensors, got {type(obj).__name__}")
    return _tensor_to_numpy(obj)


def _load_safetensors(p: Path, key: str | None):
    from safetensors import safe_open

    try:
        with safe_open(str(p), framework="pt") as f:
            name = _pick({n: n for n in f.keys()}, key, p)
            return _tensor_to_numpy(f.get_tensor(name))
    except CLIError:
        raise
    except Exception as exc:  # safetensors' own error types for damaged files
        detail = str(exc).strip().splitlines()[0][:100] if str(exc).strip() else type(exc).__name__
        raise CLIError(f"{p}: not a valid safetensors file ({detail})") from None


def load_array(path: str, key: str | None = None) -> np.ndarray:
    """Read an array from ``.npy/.npz/.pt/.pth/.safetensors`` or an image file, in its own dtype.

    ``.npy`` files are memory-mapped (copy-on-write), so only the parts read are in memory;
    bfloat16 tensors become float32 (numpy has no bfloat16).
    """
    p = Path(path)
    if p.is_dir():
        raise CLIError(f"{p}: is a directory, not a file")
    if not p.is_file():
        raise CLIError(f"{p}: no such file")
    suffix = p.suffix.lower()
    try:
        if suffix == ".npy":
            arr = _open_npy(p)
        elif suffix == ".npz":
            with np.load(p, allow_pickle=False) as z:
                arr = z[_pick({k: k for k in z.files}, key, p)]  # reads only the chosen array
        elif suffix in (".pt", ".pth"):
            arr = _load_pt(p, key)
        elif suffix == ".safetensors":
            arr = _load_safetensors(p, key)
        elif suffix in IMAGE_SUFFIXES:
            from PIL import Image

            with Image.open(p) as img:
                img = img.convert("L") if img.mode in ("L", "I", "I;16", "F", "1", "LA") else img.convert("RGB")
                arr = np.asarray(img)
        else:
            raise CLIError(f"{p}: unsupported file type {suffix!r} (use .npy, .npz, .pt, .safetensors or an image)")
    except (CLIError, ModuleNotFoundError):
        raise
    except Exception as exc:  # corrupt/truncated files raise many different types
        text = str(exc).strip()
        if "pickled" in text or "allow_pickle" in text:
            text = "it holds pickled Python objects; refused for safety"
        detail = text.splitlines()[0][:120] if text else type(exc).__name__
        raise CLIError(f"{p}: cannot read file ({detail})") from None
    if arr.dtype.kind not in "fiub":
        raise CLIError(f"{p}: array has dtype {arr.dtype}; need numbers")
    return arr


def _blocks(arr: np.ndarray):
    """The values of ``arr`` in C order, a block at a time (memory-mapped files are read, not mapped)."""
    filename = getattr(arr, "filename", None) if isinstance(arr, np.memmap) else None
    if filename and arr.flags.c_contiguous:
        # plain reads leave the pages in the page cache instead of this process's resident set
        with open(filename, "rb") as f:
            f.seek(getattr(arr, "offset", 0))
            left = arr.size
            while left:
                block = np.fromfile(f, dtype=arr.dtype, count=min(_SCAN_BLOCK, left))
                if block.size == 0:
                    return
                left -= block.size
                yield block
        return
    flat = arr.reshape(-1)
    for start in range(0, flat.size, _SCAN_BLOCK):
        yield flat[start : start + _SCAN_BLOCK]


def check_values(arr: np.ndarray, name: str, float32: bool) -> None:
    """Refuse NaN and Inf values, and (``float32``) finite values too large for float32.

    Raises:
        CLIError: naming which problem it is and how many values have it.
    """
    if arr.dtype.kind != "f":
        return  # integers are finite and fit float32's range
    nan = inf = over = 0
    biggest = 0.0
    limit = float(np.finfo(np.float32).max)
    for block in _blocks(arr):
        finite = np.isfinite(block)
        if finite.all():
            if float32:
                top = float(np.abs(block).max(initial=0))
                if top > limit:
                    over += int(np.count_nonzero(np.abs(block) > limit))
                    biggest = max(biggest, top)
            continue
        nan += int(np.count_nonzero(np.isnan(block)))
        inf += int(np.count_nonzero(~finite)) - int(np.count_nonzero(np.isnan(block)))
    if nan or inf:
        parts = [f"{nan} NaN" if nan else "", f"{inf} infinite" if inf else ""]
        raise CLIError(f"{name}: contains {' and '.join(p for p in parts if p)} values; trkit needs finite numbers")
    if over:
        raise CLIError(
            f"{name}: {over} values overflow float32 (largest magnitude {biggest:.3e} > {limit:.3e}); "
            "use --dtype float64"
        )


def available_memory() -> int | None:
    """Bytes this process can still allocate: the least of free RAM, its address-space limit and
    its cgroup's memory limit (None when none of them can be read)."""
    limits = []
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                limits.append(int(line.split()[1]) * 1024)
    except OSError:
        pass
    soft, _ = resource.getrlimit(resource.RLIMIT_AS)
    if soft != resource.RLIM_INFINITY:
        try:
            for line in Path("/proc/self/status").read_text().splitlines():
                if line.startswith("VmSize:"):
                    limits.append(soft - int(line.split()[1]) * 1024)
        except OSError:
            pass
    try:
        cg = Path("/sys/fs/cgroup")
        maximum = (cg / "memory.max").read_text().strip()
        if maximum != "max":
            limits.append(int(maximum) - int((cg / "memory.current").read_text()))
    except (OSError, ValueError):
        pass
    return max(0, min(limits)) if limits else None


def exact_in_float32(dtype: np.dtype) -> bool:
    """Whether every value of ``dtype`` is a float32 value (so float32 loses nothing on input)."""
    return dtype in (np.float16, np.float32) or (dtype.kind in "iub" and dtype.itemsize <= 2)
