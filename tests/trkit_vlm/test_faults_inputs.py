"""Bad configs, options and data files for `trkit-vlm train` / `eval` / `quickstart`: each is one
`error:` line (exit status 2) that names the culprit, found before any training."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from _helpers import make_coop_dataset, register_tiny, tiny_config

from trkit_vlm.cli import main

pytestmark = pytest.mark.filterwarnings("ignore:.*RANDOM weights")


@pytest.fixture(scope="module")
def data_root(tmp_path_factory) -> Path:
    register_tiny()
    return make_coop_dataset(tmp_path_factory.mktemp("tiny"))


@pytest.fixture
def config_file(tmp_path, data_root) -> Path:
    path = tmp_path / "c.json"
    path.write_text(json.dumps(tiny_config(tmp_path, data_root).to_dict()))
    return path


def _error(capsys, command: str = "train") -> str:
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "Traceback" not in err, err
    assert err.startswith(f"trkit-vlm {command}: error: "), err
    return err


def _edit(path: Path, section: str | None, key: str, value) -> Path:
    d = json.loads(path.read_text())
    (d[section] if section else d)[key] = value
    path.write_text(json.dumps(d))
    return path


@pytest.mark.parametrize(
    "override,needle",
    [
        ("optim.lr=abc", "optim.lr must be a number, got 'abc' (str)"),
        ("optim.betas=[a, b]", "optim.betas must be a list of 2 numbers, got ('a', 'b')"),
        ("optim.momentum=1.5", "optim.momentum must be a finite number in [0, 1), got 1.5"),
        ("optim.weight_decay=-.inf", "optim.weight_decay must be a finite number >= 0, got -inf"),
        ("loss.lambda_text=.nan", "loss.lambda_text must be a finite number >= 0, got nan"),
        ("device=tpu", "device must be 'auto', 'cpu', 'cuda' or 'cuda:N' (or 'mps', 'xpu'), got 'tpu'"),
        ("eval_every=-1", "eval_every must be >= 0"),
    ],
)
def test_wrong_values_name_the_key(config_file, capsys, override, needle):
    assert main(["train", "-c", str(config_file), "--set", override]) == 2
    assert needle in _error(capsys)


def test_a_json_string_for_a_boolean_is_refused(config_file, capsys):
    _edit(config_file, "data", "augment", "no")
    assert main(["train", "-c", str(config_file)]) == 2
    assert "data.augment must be true or false, got 'no' (str)" in _error(capsys)


def test_numbers_in_exponent_notation_are_numbers(tmp_path, config_file, capsys):
    assert main(["train", "-c", str(config_file), "--set", "optim.lr=2e-3", "--print-config"]) == 0
    assert json.loads(capsys.readouterr().out)["optim"]["lr"] == 0.002
    (tmp_path / "c.yaml").write_text("optim:\n  lr: 5E-4\n  weight_decay: 1e-4\n")
    assert main(["train", "-c", str(tmp_path / "c.yaml"), "--print-config"]) == 0
    optim = json.loads(capsys.readouterr().out)["optim"]
    assert (optim["lr"], optim["weight_decay"]) == (0.0005, 0.0001)


def test_a_config_file_that_is_not_a_mapping_is_named(tmp_path, capsys):
    (tmp_path / "list.json").write_text("[1, 2]")
    assert main(["train", "-c", str(tmp_path / "list.json")]) == 2
    assert f"{tmp_path / 'list.json'}: a run config is a mapping, got list" in _error(capsys)
    (tmp_path / "typo.yaml").write_text("optim:\n  lrr: 0.1\n")
    assert main(["train", "-c", str(tmp_path / "typo.yaml")]) == 2
    assert f"{tmp_path / 'typo.yaml'}: unknown config key(s) ['optim.lrr']" in _error(capsys)


def test_device_tpu_is_one_line_in_eval_too(tmp_path, data_root, capsys):
    cfg = tiny_config(tmp_path, data_root)
    (tmp_path / "c.json").write_text(json.dumps(cfg.to_dict()))
    assert main(["train", "-c", str(tmp_path / "c.json"), "--no-progress"]) == 0
    capsys.readouterr()
    assert main(["eval", str(cfg.run_dir()), "--device", "tpu"]) == 2
    assert "device 'tpu' is not a torch device; use 'auto', 'cpu', 'cuda' or 'cuda:N'" in _error(capsys, "eval")


def test_a_broken_run_config_is_named_by_eval(tmp_path, data_root, capsys):
    cfg = tiny_config(tmp_path, data_root)
    (tmp_path / "c.json").write_text(json.dumps(cfg.to_dict()))
    assert main(["train", "-c", str(tmp_path / "c.json"), "--no-progress"]) == 0
    capsys.readouterr()
    run_config = cfg.run_dir() / "config.json"
    good = run_config.read_text()
    run_config.write_text(good[: len(good) // 2])
    assert main(["eval", str(cfg.run_dir())]) == 2
    assert f"{run_config}: invalid JSON (" in _error(capsys, "eval")
    run_config.write_text(good)
    _edit(run_config, "optim", "eval_batch_size", "many")
    assert main(["eval", str(cfg.run_dir())]) == 2
    assert f"{run_config}: optim.eval_batch_size must be an integer, got 'many'" in _error(capsys, "eval")


def test_a_broken_split_file_is_named(tmp_path, config_file, capsys):
    root = make_coop_dataset(tmp_path / "data")
    split = root / "split_zhou_Tiny.json"
    _edit(config_file, "data", "root", str(root))
    good = split.read_text()
    split.write_text(good[:100])
    assert main(["train", "-c", str(config_file)]) == 2
    assert f"{split}: not valid JSON (" in _error(capsys)
    rows = json.loads(good)
    rows["train"][1][1] = "one"
    split.write_text(json.dumps(rows))
    assert main(["train", "-c", str(config_file)]) == 2
    assert f"{split}: train[1] should be [relative_path, label, classname], got [" in _error(capsys)


def test_a_class_without_training_images_is_an_error(tmp_path, config_file, capsys):
    root = make_coop_dataset(tmp_path / "data")
    split = json.loads((root / "split_zhou_Tiny.json").read_text())
    split["train"] = [row for row in split["train"] if row[2] != "red_thing"]  # a base class
    (root / "split_zhou_Tiny.json").write_text(json.dumps(split))
    _edit(config_file, "data", "root", str(root))
    assert main(["train", "-c", str(config_file), "--no-progress"]) == 2
    assert "shots=2 is larger than the 0 train images of class 'red_thing' (label 0)" in _error(capsys)


def test_bad_seeds_are_one_line(capsys):
    assert main(["quickstart", "--seeds", "a,b"]) == 2
    assert "--seeds must be comma-separated integers, got 'a,b'" in _error(capsys, "quickstart")
