"""PrefixEvaluator (trkit_vlm.evaluation.cached): the same accuracies as evaluate_base_novel, for every method,
from a frozen prefix computed once."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch
from _helpers import TINY_SMALL_CLIP_CONFIG

import trkit_vlm as tv
from trkit_vlm.adapters import adapter_config_from_dict, adapter_parameters, available_methods, get_method
from trkit_vlm.data.fashion_mnist import fashion_mnist_data
from trkit_vlm.data.tasks import apply_task
from trkit_vlm.evaluation.cached import PrefixEvaluator
from trkit_vlm.evaluation.evaluate import evaluate_base_novel
from trkit_vlm.models import load_clip, register_model_config

NAME = "trkit-test-tiny-28-cached-eval"


@pytest.fixture(scope="module")
def setup():
    register_model_config(NAME, TINY_SMALL_CLIP_CONFIG)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # random weights
        torch.manual_seed(0)
        bundle = load_clip(NAME)
    rng = np.random.default_rng(0)
    arrays = (
        rng.integers(0, 256, (40, 28, 28), dtype=np.uint8),
        np.tile(np.arange(10), 4),
        rng.integers(0, 256, (70, 28, 28), dtype=np.uint8),
        np.tile(np.arange(10), 7),
    )
    data = apply_task(fashion_mnist_data(arrays), {"shift": "noise", "params": {"sigma": 0.2}, "eval_per_class": 5})
    return bundle, data


@pytest.mark.parametrize("method", [None, *available_methods()])
def test_same_accuracies_as_the_full_evaluation(setup, method):
    bundle, data = setup
    template = "a photo of a {}."
    evaluator = PrefixEvaluator(bundle.model, bundle.tokenizer, data, template, n_layers=1, batch_size=16)
    model = bundle.model
    if method is not None:
        cfg = adapter_config_from_dict({"method": method, **get_method(method).test_config})
        if hasattr(cfg, "text_layers"):
            cfg.text_layers, cfg.image_layers = [2, 3], [2, 3]  # after the cached prefix of 1 block
        tv.add_adapters(model, cfg)
        g = torch.Generator().manual_seed(1)
        with torch.no_grad():
            for p in adapter_parameters(model):
                p.add_(0.3 * torch.randn(p.shape, generator=g))
    try:
        want = evaluate_base_novel(model, bundle.tokenizer, data, template, batch_size=16)
        got = evaluator(model)
        again = evaluator(model)  # the deeper prefixes it keeps give the same again
    finally:
        if method is not None:
            tv.remove_adapters(model)
    assert got == want == again
    assert set(got) >= {"base", "novel", "hm", "all"}


def test_refuses_adapters_inside_the_prefix_and_another_backbone(setup):
    bundle, data = setup
    evaluator = PrefixEvaluator(bundle.model, bundle.tokenizer, data, "a {}.", n_layers=2)
    model = tv.add_adapters(bundle.model, tv.MMAConfig(hidden=4, text_layers=[1, 3], image_layers=[1, 3]))
    try:
        with pytest.raises(ValueError, match="inside the cached prefix"):
            evaluator(model)
    finally:
        tv.remove_adapters(model)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        other = load_clip(NAME).model
    with pytest.raises(ValueError, match="another one"):
        evaluator(other)
