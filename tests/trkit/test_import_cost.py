"""Using trkit's decompositions and layers does not import torch._dynamo (seconds of import time);
torch.compile still keeps the Python-only planners out of its graphs (see test_nn_linear)."""

import subprocess
import sys

SCRIPT = """
import sys, torch, trkit, trkit.nn as tn
trkit.tr_cross(lambda i: 1.0 / (1.0 + i.sum(1)), 3, shape=(6,) * 5)
trkit.tr_svd(torch.rand(4, 5, 6), rank=2)
layer = tn.TRLinear(12, 8, 2)
layer(torch.randn(3, 12)).sum().backward()
tn.CrossLayerTR(12, 8, 3, 2)(torch.randn(3, 12), 1).sum().backward()
print("torch._dynamo" in sys.modules)
"""


def test_decompositions_and_layers_do_not_import_dynamo():
    out = subprocess.run([sys.executable, "-c", SCRIPT], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False", out.stdout + out.stderr


def test_not_traced_uses_the_disabled_function_once_dynamo_is_loaded(monkeypatch):
    import torch

    from trkit._compile import not_traced

    made = []

    def disable(fn):
        made.append(fn)
        return lambda *a, **k: ("disabled", fn(*a, **k))

    monkeypatch.setattr(torch.compiler, "disable", disable)
    monkeypatch.delitem(sys.modules, "torch._dynamo", raising=False)
    twice = not_traced(lambda x: 2 * x)
    assert twice(3) == 6 and made == []
    monkeypatch.setitem(sys.modules, "torch._dynamo", object())
    assert twice(3) == ("disabled", 6) and twice(4) == ("disabled", 8)
    assert len(made) == 1
