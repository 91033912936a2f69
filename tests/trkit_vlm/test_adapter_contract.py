"""The contract every adapter method keeps, run over every registered method (``available_methods()``)
and over a toy method defined here that hooks only the image tower's output (no blocks, no text/image
pairs), which shows the generic base assumes neither.

Each method declares small test fields in its registration (``test_config``); the adapters are
perturbed so they visibly change the output, and every check compares against the frozen model.
"""

from __future__ import annotations

import copy
import dataclasses
import json
from typing import ClassVar

import pytest
import torch
from _helpers import TINY, register_tiny, tiny_bundle, tiny_model
from torch import nn

import trkit_vlm as tv
from trkit_vlm.adapters import (
    AdapterConfig,
    AdapterSet,
    adapter_config_from_dict,
    adapter_parameters,
    adapters_disabled,
    available_methods,
    count_trainable,
    get_adapters,
    get_method,
    load_adapters,
    save_adapters,
)
from trkit_vlm.adapters import registry as registry_module
from trkit_vlm.training import prefix_cache as pc

register_tiny()


# --------------------------------------------------------------- a toy method: a head on image features
@dataclasses.dataclass
class ToyHeadConfig(AdapterConfig):
    """A residual linear map on the projected image features."""

    method: ClassVar[str] = "toy_image_head"
    gain: float = 1.0


class ToyHeadSet(AdapterSet):
    def __init__(self, config: ToyHeadConfig, info):
        super().__init__(config, info)
        d = info["image"]["features"]
        self.head = nn.Linear(d, d)

    def attach(self, model, towers):
        self.hold(model.visual.register_forward_hook(_ToyHook(self)))

    def split_forward_reason(self, tower):
        return "the head acts on the pooled image features" if tower == "image" else None


class _ToyHook:
    def __init__(self, aset):
        self.aset = aset

    def __call__(self, module, args, output):
        return output + self.aset.config.gain * self.aset.head(output) if self.aset.enabled else None


TOY = registry_module.AdapterMethod(
    "toy_image_head", ToyHeadConfig, f"{__name__}:ToyHeadSet", "test only", {"gain": 0.5}
)
# AdaRing after rank adaptation: larger starting ranks, adapted to a budget (see _adapted), so the set
# the contract runs on is the pruned one whose config lists per-projection ranks.
RANK_ADAPTED = "adaring, rank-adapted"
RANK_ADAPTED_FIELDS = {"hidden": 8, "ranks": [2, (2, 3, 2)], "init": "kaiming", "scale": 0.5, "rank_budget": 2000}
METHODS = [*available_methods(), TOY.name, RANK_ADAPTED]


@pytest.fixture(params=METHODS)
def method(request, monkeypatch):
    """Each registered method, the toy one (registered for the test only) and rank-adapted AdaRing."""
    if request.param == TOY.name:
        monkeypatch.setitem(registry_module._METHODS, TOY.name, TOY)
    if request.param == RANK_ADAPTED:
        return dataclasses.replace(get_method("adaring"), test_config=RANK_ADAPTED_FIELDS)
    return get_method(request.param)


def _config(method):
    return method.config_class(**method.test_config)


def _adapted(method, seed=0):
    """The method's adapters on the tiny model, perturbed to non-zero everywhere (AdaRing's zero_up starts
    at the frozen model). A method that adapts its ranks runs its allocator over a few steps of random
    gradients and finishes, so the set is its final, pruned one."""
    model = tv.add_adapters(tiny_model(seed=seed), _config(method))
    g = torch.Generator().manual_seed(3)
    aset = get_adapters(model)
    allocator = aset.rank_allocator(total_steps=3)
    for step in range(1, 4 if allocator is not None else 1):
        for p in adapter_parameters(model):
            p.grad = torch.randn(p.shape, generator=g)
        allocator.accumulate()
        allocator.update(step)
    if allocator is not None:
        summary = allocator.finish()
        assert summary["n_params"] <= summary["budget"] and get_adapters(model).config.rank_budget is None
    with torch.no_grad():
        for p in adapter_parameters(model):
            p.grad = None
            p.add_(0.1 * torch.randn(p.shape, generator=g))
    return model


@pytest.fixture
def batch():
    g = torch.Generator().manual_seed(1)
    return torch.randn(2, 3, 32, 32, generator=g), torch.randint(1, 1000, (3, 16), generator=g)


def _frozen():
    """The tiny backbone frozen as add_adapters freezes it (the flags select torch's attention kernels)."""
    return tiny_model().requires_grad_(False)


def _outputs(model, batch):
    with torch.no_grad():
        img, txt = model(*batch)[:2]
    return img, txt


def test_only_adapter_parameters_get_gradients(method, batch):
    model = _adapted(method)
    img, txt = model(*batch)[:2]
    (img @ txt.T).pow(2).sum().backward()
    ids = {id(p) for p in adapter_parameters(model)}
    assert count_trainable(model) == sum(p.numel() for p in adapter_parameters(model)) > 0
    for name, p in model.named_parameters():
        if id(p) not in ids:
            assert not p.requires_grad and p.grad is None, name
    grads = [p.grad for p in adapter_parameters(model)]
    assert any(g is not None and g.abs().sum() > 0 for g in grads)


def test_disabled_equals_frozen_and_enabled_differs(method, batch):
    frozen = _outputs(_frozen(), batch)
    model = _adapted(method)
    adapted = _outputs(model, batch)
    with adapters_disabled(model):
        off = _outputs(model, batch)
    for a, f in zip(off, frozen):
        assert torch.equal(a, f)
    assert max((a - f).abs().max() for a, f in zip(adapted, frozen)) > 1e-4


def test_remove_restores_the_model(method, batch):
    model = tiny_model()
    model.logit_scale.requires_grad_(False)  # a user's own flag must come back too
    state = {k: v.clone() for k, v in model.state_dict().items()}
    flags = {n: p.requires_grad for n, p in model.named_parameters()}
    ref = _outputs(model, batch)
    tv.add_adapters(model, _config(method))
    with torch.no_grad():
        for p in adapter_parameters(model):
            p.add_(0.1)
    tv.remove_adapters(model)
    assert get_adapters(model) is None
    assert list(model.state_dict()) == list(state)
    assert all(torch.equal(v, state[k]) for k, v in model.state_dict().items())
    assert {n: p.requires_grad for n, p in model.named_parameters()} == flags
    for a, b in zip(_outputs(model, batch), ref):
        assert torch.equal(a, b)
    with pytest.raises(ValueError, match="no trkit adapters"):
        tv.remove_adapters(model)


def test_deepcopy_is_independent(method, batch):
    model = _adapted(method)
    before = _outputs(model, batch)
    copied = copy.deepcopy(model)
    with torch.no_grad():
        for p in adapter_parameters(copied):
            p.add_(0.5)
    changed = _outputs(copied, batch)
    for a, b in zip(_outputs(model, batch), before):  # the original is untouched by the copy's weights
        assert torch.equal(a, b)
    assert max((a - b).abs().max() for a, b in zip(changed, before)) > 1e-4  # the copy's hooks use its own
    with adapters_disabled(copied):  # ... and its own switch
        frozen = _outputs(copied, batch)
        for a, b in zip(_outputs(model, batch), before):
            assert torch.equal(a, b)
    for a, b in zip(frozen, _outputs(_frozen(), batch)):
        assert torch.equal(a, b)


def test_save_load_round_trip(method, batch, tmp_path):
    model = _adapted(method)
    path = save_adapters(model, tmp_path / "a.safetensors")
    fresh = load_adapters(tiny_model(), path)  # a fresh backbone with the same weights
    for a, b in zip(_outputs(model, batch), _outputs(fresh, batch)):
        assert torch.equal(a, b)
    assert get_adapters(fresh).config == get_adapters(model).config
    assert count_trainable(fresh) == count_trainable(model)  # pruned shapes are rebuilt from the config


def test_config_dict_round_trip(method):
    for cfg in (method.config_class(), _config(method)):
        d = json.loads(json.dumps(cfg.to_dict()))
        assert d["method"] == method.name
        back = adapter_config_from_dict(d)
        assert type(back) is method.config_class and back == cfg and back.to_dict() == cfg.to_dict()
    with pytest.raises(ValueError, match="unknown .* fields"):
        adapter_config_from_dict({**_config(method).to_dict(), "no_such_field": 1})


def test_bundle_is_accepted_where_a_model_is(method):
    bundle = tiny_bundle()
    model = tv.add_adapters(bundle, _config(method))
    assert model is bundle.model and get_adapters(bundle) is get_adapters(model) is not None
    tv.remove_adapters(bundle)
    assert get_adapters(bundle.model) is None


def _same_values_and_gradients(model, split, full):
    """``split()`` equals ``full()`` in value and in the gradient of the adapter parameters (float64)."""
    params = adapter_parameters(model)
    ref, got = full(), split()
    torch.testing.assert_close(got, ref, rtol=0, atol=1e-10)
    assert got.requires_grad == ref.requires_grad
    if not ref.requires_grad:  # no adapter acts on this tower
        return
    weights = torch.arange(ref.shape[1], dtype=ref.dtype)  # a loss that sees every feature differently
    g_ref = torch.autograd.grad((ref * weights).sum(), params, allow_unused=True)
    g_got = torch.autograd.grad((got * weights).sum(), params, allow_unused=True)
    for a, b in zip(g_ref, g_got):
        assert (a is None) == (b is None)
        if a is not None:
            torch.testing.assert_close(b, a, rtol=1e-9, atol=1e-12)


def test_split_forward_equals_full_forward_and_announces_each_pass(method, batch, monkeypatch):
    """The prefix cache's split forward (prefix under no_grad, then the adapted blocks one by one)
    gives what the model gives, values and gradients, and tells the adapters about each pass exactly
    once; or the method says why it cannot be split."""
    model = _adapted(method).double()
    aset = get_adapters(model)
    passes = []
    real = type(aset).tower_pre_forward
    monkeypatch.setattr(aset, "tower_pre_forward", lambda tower: (passes.append(tower), real(aset, tower)))
    images, ids = batch[0].double(), batch[1]
    if aset.split_forward_reason("image") is not None:
        assert pc.image_prefix_supported(model) == aset.split_forward_reason("image")
    else:
        n = pc.first_adapted_layer(model, "image") - 1
        with torch.no_grad():
            tokens = pc.image_prefix(model, images, n)
        passes.clear()
        _same_values_and_gradients(
            model, lambda: pc.image_suffix(model, tokens, n), lambda: model.encode_image(images, normalize=True)
        )
        # The model's own pass is announced by its hooks; the split pass by run_blocks, when it adapts blocks.
        assert passes == ["image"] + (["image"] if aset.adapted_layers("image") else [])
    n = pc.first_adapted_layer(model, "text") - 1
    with torch.no_grad():
        states = pc.text_prefix(model, ids, n)
    passes.clear()
    _same_values_and_gradients(
        model, lambda: pc.text_suffix(model, states, ids, n), lambda: model.encode_text(ids, normalize=True)
    )
    assert passes == ["text"] + (["text"] if aset.adapted_layers("text") else [])


def test_registry_lists_methods_and_rejects_unknown_ones():
    assert {"mma", "adaring"} <= set(available_methods())
    # Every package under trkit_vlm/adapters/ is a method that registered itself.
    registered = {get_method(m).config_class.__module__.rsplit(".", 1)[0] for m in available_methods()}
    assert set(registry_module.builtin_method_packages()) <= registered
    assert TINY  # the tiny model the contract runs on is registered
    known = r"\['adaring', 'linear_probe', 'lora', 'mma'"
    with pytest.raises(ValueError, match=r"unknown adapter method 'nope'; expected one of " + known):
        get_method("nope")
    with pytest.raises(ValueError, match="'method' in"):
        adapter_config_from_dict({"method": "nope"})
    with pytest.raises(ValueError, match="registered as 'other'"):
        registry_module.register_adapter_method("other", ToyHeadConfig, "x:Y", summary="")
