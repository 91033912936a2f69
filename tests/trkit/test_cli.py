"""`trkit decompose / info / reconstruct` end to end, and one-line errors for bad files."""

import subprocess
import sys

import numpy as np
import pytest
import torch
from PIL import Image

import trkit
from trkit.cli import main


def test_decompose_npy_info_reconstruct(tmp_path, capsys):
    x = trkit.TensorRing.random((6, 7, 8), 2, seed=0).to_numpy()
    src = tmp_path / "x.npy"
    np.save(src, x)
    out = tmp_path / "ring.safetensors"
    assert main(["decompose", str(src), "--tol", "1e-8", "--out", str(out)]) == 0
    text = capsys.readouterr().out
    assert "ranks" in text and "parameters" in text and "compression" in text and "time" in text
    ring = trkit.load(out)
    assert np.linalg.norm(ring.to_numpy() - x) / np.linalg.norm(x) < 1e-8
    assert main(["info", str(out)]) == 0
    assert str(list(ring.ranks)) in capsys.readouterr().out
    rec = tmp_path / "rec.npy"
    assert main(["reconstruct", str(out), "--out", str(rec)]) == 0
    np.testing.assert_allclose(np.load(rec), ring.to_numpy())
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []  # no temp files left


def test_decompose_png_with_reshape_and_plot(tmp_path, capsys):
    img = (np.add.outer(np.arange(64), np.arange(64)) * 2 % 256).astype(np.uint8)
    png = tmp_path / "img.png"
    Image.fromarray(img).save(png)
    out, plot = tmp_path / "r.safetensors", tmp_path / "curve.png"
    assert (
        main(
            [
                "decompose",
                str(png),
                "--rank",
                "3",
                "--method",
                "als",
                "--reshape",
                "4,4,4,4,4,4",
                "--out",
                str(out),
                "--plot",
                str(plot),
            ]
        )
        == 0
    )
    assert trkit.load(out).shape == (4,) * 6
    with Image.open(plot) as im:
        assert im.size[0] > 100
    rgb = tmp_path / "rgb.png"
    Image.fromarray(np.stack([img] * 3, -1)).save(rgb)
    assert main(["decompose", str(rgb), "--tol", "0.1", "--method", "svd"]) == 0
    assert "(64, 64, 3)" in capsys.readouterr().out


def test_other_formats(tmp_path):
    x = np.arange(60, dtype=np.float64).reshape(3, 4, 5)
    np.savez(tmp_path / "a.npz", w=x, b=x[0])
    torch.save({"weight": torch.from_numpy(x)}, tmp_path / "a.pt")
    from safetensors.numpy import save_file

    save_file({"w": x}, str(tmp_path / "a.safetensors"))
    assert main(["decompose", str(tmp_path / "a.npz"), "--key", "w", "--tol", "1e-6"]) == 0
    assert main(["decompose", str(tmp_path / "a.npz"), "--tol", "1e-6"]) == 2  # two arrays, no --key
    assert main(["decompose", str(tmp_path / "a.pt"), "--tol", "1e-6"]) == 0
    assert main(["decompose", str(tmp_path / "a.safetensors"), "--rank", "2"]) == 0


@pytest.mark.parametrize(
    "argv_fn,needle",
    [
        (lambda d: ["decompose", str(d / "missing.npy"), "--tol", "0.1"], "no such file"),
        (lambda d: ["decompose", str(d / "bad.npy"), "--tol", "0.1"], "bad.npy: not a valid .npy file"),
        (lambda d: ["decompose", str(d / "bad.png"), "--tol", "0.1"], "cannot read"),
        (lambda d: ["info", str(d / "bad.npy")], "bad.npy"),
        (lambda d: ["info", str(d / "missing.safetensors")], "no such file"),
        (lambda d: ["reconstruct", str(d / "missing.safetensors"), "--out", str(d / "o.npy")], "no such file"),
        (lambda d: ["decompose", str(d / "ok.npy"), "--tol", "-1"], "tol"),
        (lambda d: ["decompose", str(d / "ok.npy"), "--tol", "0.1", "--reshape", "5,5"], "reshape"),
        (lambda d: ["decompose", str(d / "ok.npy"), "--tol", "0.1", "--method", "als"], "--rank"),
    ],
)
def test_errors_are_one_line(tmp_path, capsys, argv_fn, needle):
    (tmp_path / "bad.npy").write_bytes(b"\x93NUMPY garbage")
    (tmp_path / "bad.png").write_bytes(b"not an image")
    np.save(tmp_path / "ok.npy", np.ones((3, 4)))
    assert main(argv_fn(tmp_path)) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and needle in err and "Traceback" not in err


def test_console_script_exit_code(tmp_path):
    res = subprocess.run(
        [sys.executable, "-m", "trkit.cli", "decompose", str(tmp_path / "nope.npy"), "--tol", "0.1"],
        capture_output=True,
        text=True,
    )
    assert res.returncode == 2 and res.stderr.count("\n") == 1 and "Traceback" not in res.stderr
