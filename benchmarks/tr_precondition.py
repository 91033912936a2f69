"""How far one step on tensor-ring cores moves the reconstructed weight, per update rule.

A toy regression per layer (``X_l (N, d_in)`` Gaussian, target ``X_l W*_l``, loss the mean squared
error; ``W*`` a random dense matrix stack, i.e. not representable by the ring) on AdaRing's shapes
(``CrossLayerTR`` 768->32 and 32->768 over 8 layers, initialised as AdaRing does: reconstructed std
``sqrt(2 / d_out)``) and on a ``TRLinear`` 256->256 over modes (16, 16) x (16, 16). With ``D`` the
gradient of the loss with respect to the dense weight and ``P_T D`` its projection onto the
tangent space of fixed-rank rings (the best move any update of the cores can make, computed
exactly by :func:`trkit.nn.precondition.tangent_projection`), each rule's step ``dW`` (taken with a
learning rate small enough to be first-order) is reported as

    ratio  = ||dW|| / ||lr D||         cos  = cos(dW, -D)
    ratio_T = ||dW|| / ||lr P_T D||    cos_T = cos(dW, -P_T D)

at initialisation and after 20 steps of Gauss-Newton training (learning rate ``1 / lambda_max``
of the dense problem's Hessian: half the largest stable dense learning rate). Rules: plain SGD on the
cores (equal core std, trkit's init), plain SGD after rebalancing the cores to equal norms (same
``W``), plain SGD after a QR sweep that makes all cores but the last orthonormal (same ``W``),
per-core scalar learning rates (gradient divided by the core's mean gain), block-diagonal ScaledGD
(``method="scaled_gd"``) and the Gauss-Newton step (``RingPreconditioner``'s default).

Then training: 100 steps at that learning rate from the same init and from an init with
the last core zero (AdaRing's ``zero_up`` zeroes the layer core), for the dense weight, plain SGD on
the cores with the gradient clipped at norm 1 (the quickstart's recipe: the fraction of clipped
steps is reported), plain SGD unclipped, ScaledGD and Gauss-Newton; final loss relative to the
initial one.

With ``--timing``: the time of one preconditioner call per ring (Gauss-Newton and ScaledGD, float32
cores) next to one forward + backward of the same ``CrossLayerTR`` over all 8 layers with
16 x 197 tokens a layer (a ViT-B/16 image tower batch of 16), interleaved, median of 7 rounds.

    python benchmarks/tr_precondition.py [--quick]   # writes benchmarks/results/tr_precondition.json
    python benchmarks/tr_precondition.py --timing    # writes benchmarks/results/tr_precondition_timing.json
"""

from __future__ import annotations

import argparse
import math
import os
import statistics
import sys
import time
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
os.environ.setdefault("OMP_NUM_THREADS", "1")

import torch  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from _common import cpu_model, write_json  # noqa: E402

import trkit.nn as tn  # noqa: E402
from trkit.nn.precondition import core_grams, precondition_ring_grads, tangent_projection  # noqa: E402
from trkit.ring import TensorRing  # noqa: E402

torch.set_num_threads(1)
F64 = torch.float64
RESULTS = Path(__file__).resolve().parent / "results"


def dense(cores):
    return TensorRing(list(cores), validate=False).to_dense()


class Problem:
    """Least squares ``0.5 mean_l ||X_l W_l - Y_l||^2 / N`` on a ring whose dense tensor is
    ``(d_in, d_out, L)`` (CrossLayerTR order) or ``(out_modes, in_modes)`` (TRLinear order)."""

    def __init__(self, kind, d_in, d_out, n_layers, ranks, modes, std, seed=0, n=256):
        g = torch.Generator().manual_seed(seed)
        self.kind, self.d_in, self.d_out, self.L = kind, d_in, d_out, n_layers
        d = len(modes)
        s = (std**2 / math.prod(ranks)) ** (1 / (2 * d))
        self.cores = [torch.randn(ranks[k], modes[k], ranks[(k + 1) % d], generator=g, dtype=F64) * s for k in range(d)]
        self.x = torch.randn(n_layers, n, d_in, generator=g, dtype=F64)
        w_star = torch.randn(n_layers, d_in, d_out, generator=g, dtype=F64) * std
        self.y = self.x @ w_star

    def stack(self, t):
        """Ring's dense tensor -> ``(L, d_in, d_out)``."""
        if self.kind == "cross":
            return t.reshape(self.d_in, self.d_out, self.L).permute(2, 0, 1)
        return t.reshape(self.d_out, self.d_in).T.unsqueeze(0)

    def dense_lr(self) -> float:
        """``1 / lambda_max`` of the loss's Hessian in the dense weight (stable up to twice that)."""
        lam = max(float(torch.linalg.eigvalsh(x.T @ x)[-1]) for x in self.x)
        return self.x.shape[0] * self.x.shape[1] / lam

    def loss(self, cores):
        w = self.stack(dense(cores))
        return 0.5 * ((self.x @ w - self.y) ** 2).sum() / (self.x.shape[0] * self.x.shape[1])

    def grads(self, cores):
        cs = [c.detach().requires_grad_() for c in cores]
        loss = self.loss(cs)
        return list(torch.autograd.grad(loss, cs)), float(loss.detach())

    def dense_grad(self, cores):
        t = dense(cores).detach().requires_grad_()
        w = self.stack(t)
        loss = 0.5 * ((self.x @ w - self.y) ** 2).sum() / (self.x.shape[0] * self.x.shape[1])
        return torch.autograd.grad(loss, t)[0]


def balanced(cores):
    """Rescale the cores to equal Frobenius norms (same ring: the scales multiply to 1)."""
    norms = [float(c.norm()) for c in cores]
    geo = math.exp(sum(math.log(v) for v in norms) / len(norms))
    return [c * (geo / v) for c, v in zip(cores, norms)]


def orthonormal(cores):
    """QR sweep: cores 0..d-2 get orthonormal ``(r_k n_k, r_{k+1})`` unfoldings (same ring)."""
    cs = [c.clone() for c in cores]
    for k in range(len(cs) - 1):
        ra, n, rb = cs[k].shape
        q, r = torch.linalg.qr(cs[k].reshape(ra * n, rb))
        cs[k] = q.reshape(ra, n, -1)
        cs[k + 1] = torch.einsum("ab,bjc->ajc", r, cs[k + 1])
    return cs


def scalar(cores, grads):
    return [g / (float(torch.diagonal(h).mean()) + 1e-300) for g, h in zip(grads, core_grams(cores))]


RULES = {
    "plain": (lambda c: c, lambda c, g: g),
    "plain_balanced": (balanced, lambda c, g: g),
    "plain_orthonormal": (orthonormal, lambda c, g: g),
    "per_core_scalar": (lambda c: c, scalar),
    "scaled_gd": (lambda c: c, lambda c, g: precondition_ring_grads(c, g, "scaled_gd")),
    "gauss_newton": (lambda c: c, lambda c, g: precondition_ring_grads(c, g)),
}


def step_metrics(prob, cores):
    d_grad = prob.dense_grad(cores)
    proj = tangent_projection(cores, d_grad)
    out = {"proj_fraction": float(proj.norm() / d_grad.norm())}
    w0 = dense(cores)
    lr = 1e-6 * float(w0.norm() / d_grad.norm())
    for name, (gauge, rule) in RULES.items():
        cs = gauge(cores)
        grads, _ = prob.grads(cs)
        upd = rule(cs, grads)
        dw = dense([c - lr * u for c, u in zip(cs, upd)]) - w0

        def cos(a, b):
            return float((a * b).sum() / (a.norm() * b.norm()))

        out[name] = {
            "ratio": float(dw.norm() / (lr * d_grad.norm())),
            "cos": cos(dw, -d_grad),
            "ratio_T": float(dw.norm() / (lr * proj.norm())),
            "cos_T": cos(dw, -proj),
        }
    return out


def train(prob, cores, rule, lr, steps, clip=None):
    cs = [c.clone() for c in cores]
    _, first = prob.grads(cs)
    clipped, losses = 0, []
    for _ in range(steps):
        grads, loss = prob.grads(cs)
        losses.append(loss)
        if not math.isfinite(loss) or loss > 1e6 * first:
            return {"final_rel": None, "diverged": True, "clip_fraction": clipped / max(len(losses), 1)}
        upd = rule(cs, grads)
        if clip is not None:
            norm = math.sqrt(sum(float((u * u).sum()) for u in upd))
            if norm > clip:
                clipped += 1
                upd = [u * (clip / norm) for u in upd]
        cs = [c - lr * u for c, u in zip(cs, upd)]
    final = float(prob.loss(cs))
    ok = math.isfinite(final)
    return {"final_rel": final / first if ok else None, "diverged": not ok, "clip_fraction": clipped / steps}


def train_dense(prob, cores, lr, steps):
    w = prob.stack(dense(cores)).clone()
    first = None
    for _ in range(steps):
        w = w.detach().requires_grad_()
        loss = 0.5 * ((prob.x @ w - prob.y) ** 2).sum() / (prob.x.shape[0] * prob.x.shape[1])
        first = float(loss.detach()) if first is None else first
        (g,) = torch.autograd.grad(loss, w)
        w = w - lr * g
    final = float(0.5 * ((prob.x @ w - prob.y) ** 2).sum() / (prob.x.shape[0] * prob.x.shape[1]))
    ok = math.isfinite(final) and final < 1e6 * first
    return {"final_rel": final / first if ok else None, "diverged": not ok, "clip_fraction": 0.0}


CASES = {
    "cross 768->32 x8 r2": ("cross", 768, 32, 8, (2, 2, 2), (768, 32, 8)),
    "cross 768->32 x8 r4": ("cross", 768, 32, 8, (4, 4, 4), (768, 32, 8)),
    "cross 32->768 x8 r4": ("cross", 32, 768, 8, (4, 4, 4), (32, 768, 8)),
    "trlinear 256->256 r4": ("linear", 256, 256, 1, (4, 4, 4, 4), (16, 16, 16, 16)),
}


# Timed only: a ring whose ranks can hold any per-layer weight (AdaRing's "free ring" screen on the small
# CLIP, 128 -> 32 over 6 layers; a rank-128 bond makes r^2 x r^2 = 16,384^2 transfer products possible).
TIMING_CASES = {**CASES, "cross 128->32 x6 (1,128,6)": ("cross", 128, 32, 6, (1, 128, 6), (128, 32, 6))}


def timing() -> None:
    rows = []
    for name, (kind, d_in, d_out, n_layers, ranks, _) in TIMING_CASES.items():
        if kind != "cross":
            continue
        torch.manual_seed(0)
        m = tn.CrossLayerTR(d_in, d_out, n_layers, ranks)
        x = torch.randn(n_layers, 16 * 197, d_in)

        def fwd_bwd():
            m.zero_grad()
            m.forward_all(x).square().mean().backward()

        fwd_bwd()
        grads = [c.grad.clone() for c in m.cores]
        info: dict = {}
        calls = {
            "forward+backward": fwd_bwd,
            "gauss_newton": lambda: precondition_ring_grads(m.cores, grads, info=info),
            "scaled_gd": lambda: precondition_ring_grads(m.cores, grads, "scaled_gd"),
        }
        times: dict = {k: [] for k in calls}
        for _ in range(7):
            for k, f in calls.items():
                t0 = time.perf_counter()
                f()
                times[k].append(time.perf_counter() - t0)
        med = {k: statistics.median(v) for k, v in times.items()}
        row = {"case": name, "tokens per layer": 16 * 197, "cg iterations": info.get("iterations")}
        row.update({f"{k} ms": 1e3 * v for k, v in med.items()})
        row["gauss_newton / fwd+bwd"] = med["gauss_newton"] / med["forward+backward"]
        row["scaled_gd / fwd+bwd"] = med["scaled_gd"] / med["forward+backward"]
        rows.append(row)
        print(", ".join(f"{k} {v:.3g}" if isinstance(v, float) else f"{k} {v}" for k, v in row.items()))
    out = RESULTS / "tr_precondition_timing.json"
    write_json(
        out,
        {
            "title": "Tensor-ring preconditioning: cost of one call next to the ring's forward + backward",
            "env": {"torch": torch.__version__, "threads": torch.get_num_threads(), "cpu": cpu_model()},
            "timing": rows,
        },
    )
    print(f"wrote {out}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="one case, fewer training steps")
    ap.add_argument("--timing", action="store_true", help="only time the preconditioner")
    args = ap.parse_args()
    if args.timing:
        return timing()
    cases = dict(list(CASES.items())[1:2]) if args.quick else CASES
    steps = 30 if args.quick else 100
    step_rows, train_rows = [], []
    for name, (kind, d_in, d_out, n_layers, ranks, modes) in cases.items():
        prob = Problem(kind, d_in, d_out, n_layers, ranks, modes, math.sqrt(2.0 / d_out))
        lr = prob.dense_lr()
        states = {"init": prob.cores}
        cs = prob.cores
        for _ in range(20):
            grads, _ = prob.grads(cs)
            cs = [c - lr * u for c, u in zip(cs, precondition_ring_grads(cs, grads))]
        states["after 20 steps"] = cs
        print(f"\n{name} (lr {lr:.3g})")
        print(f"{'state':<15}{'rule':<20}" + "".join(f"{m:>10}" for m in ("ratio", "cos", "ratio_T", "cos_T")))
        for when, state in states.items():
            metrics = step_metrics(prob, state)
            for rule in RULES:
                row = {"case": name, "state": when, "D in tangent": metrics["proj_fraction"], "rule": rule}
                row.update(metrics[rule])
                step_rows.append(row)
                print(
                    f"{when:<15}{rule:<20}"
                    + "".join(f"{metrics[rule][m]:>10.3g}" for m in ("ratio", "cos", "ratio_T", "cos_T"))
                )
        zero = [c.clone() for c in prob.cores]
        zero[-1].zero_()
        for init_name, init in (("random", prob.cores), ("last core zero", zero)):
            runs = {
                "dense": train_dense(prob, init, lr, steps),
                "plain, clip 1": train(prob, init, RULES["plain"][1], lr, steps, clip=1.0),
                "plain": train(prob, init, RULES["plain"][1], lr, steps),
                "scaled_gd": train(prob, init, RULES["scaled_gd"][1], lr, steps),
                "gauss_newton": train(prob, init, RULES["gauss_newton"][1], lr, steps),
            }
            for rule, r in runs.items():
                train_rows.append({"case": name, "init": init_name, "lr": lr, "steps": steps, "rule": rule, **r})
            print(
                f"  training {steps} steps, init {init_name}: "
                + ", ".join(
                    f"{k} {'diverged' if v['diverged'] else format(v['final_rel'], '.3g')}"
                    + (f" (clipped {v['clip_fraction']:.0%})" if k == "plain, clip 1" else "")
                    for k, v in runs.items()
                )
            )
    results = {
        "title": "Tensor-ring preconditioning: how far one step on the cores moves the weight",
        "env": {"torch": torch.__version__, "threads": torch.get_num_threads(), "cpu": cpu_model()},
        "notes": [
            "ratio = ||dW|| / ||lr D||, cos = cos(dW, -D): against the dense gradient D; ratio_T, cos_T: against "
            "P_T D, its projection onto the tangent space of fixed-rank rings (the best any core update can do).",
            "'D in tangent' = ||P_T D|| / ||D||: the most of the dense step a rank-constrained step can reproduce.",
            "Training: final loss / initial loss after the given steps at lr = 1 / lambda_max of the dense "
            "Hessian (half the largest stable dense lr); diverged = loss above 1e6 x the initial one or not finite.",
        ],
        "step": step_rows,
        "training": train_rows,
    }
    out = RESULTS / ("tr_precondition_quick.json" if args.quick else "tr_precondition.json")
    write_json(out, results)
    print(f"\nwrote {out}")


if __name__ == "__main__":
    main()
