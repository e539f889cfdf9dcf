"""samtune's Hessian measures against PyHessian at equal accuracy, in one run.

The model is the digits small CNN after ``--train-steps`` SGD steps (train mode,
batch 64, lr 0.1), measured in eval mode on the first ``--examples`` digits images
(``--n-batches`` batches). Every repetition (its own seed) runs three blocks in a
shuffled order, λ_max, trace and product costs; a block runs its calls forwards
and then backwards (PyHessian, samtune…, samtune…, PyHessian), so load from other
processes falls on both libraries alike. Ratios are samtune ÷ PyHessian within a
repetition; their median, IQR and range are reported.

λ_max. The reference λ* is samtune's Lanczos in float64 to a relative residual of
1e-10 (untimed); accuracy is the relative error ``|λ − λ*| / λ*``, and the relative
residual ``‖Hv − λv‖ / |λ|`` is shown beside it. PyHessian (PyPI ``pyhessian`` 0.1,
the ``bench`` extra) runs its power iteration with ``tol`` (stop at a relative
change below ``tol``). samtune runs its default call (``tol`` on the residual), the
same ``tol`` on its error estimate (``stop="error"``), and ``stop="error"`` with
``tol`` set to the error PyHessian reached in that repetition (equal accuracy:
samtune's error is then at most PyHessian's).

Trace. Accuracy is the variance of the estimate: samtune's across the repetitions'
seeds (its default call: 10 deflation steps, 10 probes), PyHessian's per-probe
variance from all its probes pooled, divided by its probe count. The figure of merit
is time × variance (an estimator run k times longer has 1/k the variance): the
ratio is the repetition's time ratio times the pooled variance ratio, whose 90 %
interval comes from resampling seeds and probes.

Cost per product: one gradient graph, one product by double backward (with the
affine BatchNorm samtune uses, and through the plain ``native_batch_norm`` graph),
by forward-over-reverse, and PyHessian's product, each timed once per repetition
(the second of two runs).

    python benchmarks/hessian.py                    # 24 repetitions, 2–3 min on 2 idle cores
    python benchmarks/hessian.py --reps 10 --threads 1
"""

from __future__ import annotations

import argparse
import math
import os
import platform
import statistics
import sys
import time
import warnings
from collections.abc import Callable

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from samtune import sharpness
from samtune.models import create_model
from samtune.sharpness._hvp import HessianProducts
from samtune.sharpness._surface import loss_surface

Batches = list[tuple[torch.Tensor, torch.Tensor]]


# -- model and data -----------------------------------------------------------------


def digits_batches(examples: int, n_batches: int) -> tuple[torch.Tensor, torch.Tensor, Batches]:
    """All digits images standardized (pixels / 16, then the mean and std of all
    pixels) and the first ``examples`` of them split into ``n_batches`` batches."""
    from sklearn.datasets import load_digits

    bunch = load_digits()
    x = torch.tensor(bunch.data / 16.0, dtype=torch.float32).view(-1, 1, 8, 8)
    x = (x - x.mean()) / x.std()
    y = torch.tensor(bunch.target)
    chunks = zip(x[:examples].chunk(n_batches), y[:examples].chunk(n_batches))
    return x, y, [(xb, yb) for xb, yb in chunks]


def trained_model(x: torch.Tensor, y: torch.Tensor, steps: int, seed: int) -> nn.Module:
    torch.manual_seed(seed)
    model = create_model("small_cnn", num_classes=10, in_channels=1, image_size=8)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    generator = torch.Generator().manual_seed(seed)
    model.train()
    for _ in range(steps):
        index = torch.randint(0, len(x), (64,), generator=generator)
        optimizer.zero_grad()
        F.cross_entropy(model(x[index]), y[index]).backward()
        optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    return model.eval()


# -- the timed calls ------------------------------------------------------------------


class CountingHessian:
    """PyHessian's ``hessian`` object with its Hessian-vector products counted."""

    def __init__(self, model: nn.Module, batches: Batches):
        from pyhessian import hessian

        module = sys.modules["pyhessian.hessian"]  # the package re-exports the class
        if len(batches) == 1:
            self.engine = hessian(model, F.cross_entropy, data=batches[0], cuda=False)
        else:
            self.engine = hessian(model, F.cross_entropy, dataloader=batches, cuda=False)
        self.products = 0
        module.hessian_vector_product = self._counted(module.hessian_vector_product)
        self.engine.dataloader_hv_product = self._counted(self.engine.dataloader_hv_product)

    def _counted(self, fn: Callable) -> Callable:
        def counted(*args):
            self.products += 1
            return fn(*args)

        counted.original = getattr(fn, "original", fn)  # no wrapper around a wrapper
        return counted

    @staticmethod
    def restore() -> None:
        module = sys.modules["pyhessian.hessian"]
        module.hessian_vector_product = getattr(module.hessian_vector_product, "original",
                                                module.hessian_vector_product)


def pyhessian_eig(model, batches, tol: float, seed: int):
    torch.manual_seed(seed)  # PyHessian draws from the global RNG
    engine = CountingHessian(model, batches)
    values, vectors = engine.engine.eigenvalues(maxIter=100, tol=tol)
    CountingHessian.restore()
    return values[0], vectors[0], engine.products


def pyhessian_trace(model, batches, probes: int, seed: int) -> list[float]:
    torch.manual_seed(seed)
    engine = CountingHessian(model, batches)
    # tol=-inf: its rule divides by the signed running mean and stops at the first
    # negative one, so a fixed probe count is the comparable call
    values = engine.engine.trace(maxIter=probes, tol=-math.inf)
    CountingHessian.restore()
    return values


def timed(fn: Callable[[], object]) -> tuple[object, float]:
    start = time.perf_counter()
    result = fn()
    return result, time.perf_counter() - start


def clear_grads(model: nn.Module) -> None:
    for p in model.parameters():
        p.grad = None  # PyHessian leaves graph-holding gradients behind


def relative_residual(model, batches, vector, eigenvalue) -> float:
    """‖Hv − λv‖ / |λ| for a v given as a list of per-parameter tensors."""
    with loss_surface(model, F.cross_entropy, batches) as surface:
        v = torch.cat([t.reshape(-1) for t in vector]).to(surface.dtype)
        v = v / torch.linalg.vector_norm(v)
        hv = HessianProducts(surface).hvp(v)
        return torch.linalg.vector_norm(hv - eigenvalue * v).item() / abs(eigenvalue)


def reference_eigenvalue(model, batches) -> float:
    return sharpness.hessian_max_eigenvalue(model, F.cross_entropy, batches, iters=300,
                                            tol=1e-10, dtype=torch.float64).value


# -- one repetition -------------------------------------------------------------------


def repetition(model, batches, args, seed: int, reference: float, order_rng) -> dict:
    """Three blocks in a shuffled order: λ_max, trace, product costs. Within a block
    the calls run forwards then backwards (PyHessian, samtune…, samtune…, PyHessian),
    so a load that rises or falls during the block weighs on both libraries alike;
    a call's time is the mean of its two runs (same seed, same work)."""
    out: dict = {"seed": seed}
    blocks = [lambda: eig_block(model, batches, args, seed, reference, out),
              lambda: trace_block(model, batches, args, seed, out),
              lambda: product_costs(model, batches, out)]
    for index in order_rng.permutation(len(blocks)):
        blocks[index]()
    return out


def forwards_backwards(calls: dict[str, Callable[[], dict]], out: dict) -> None:
    """Each call twice, in the order given and then reversed; ``out[name]`` is the
    first run's record with ``seconds`` the mean of both runs."""
    names = list(calls)
    for name in names + names[::-1]:
        record = calls[name]()
        if name in out:
            out[name]["seconds"] = (out[name]["seconds"] + record["seconds"]) / 2
        else:
            out[name] = record


def eig_block(model, batches, args, seed: int, reference: float, out: dict) -> None:
    def ours(**kwargs):
        def call():
            result, seconds = timed(lambda: sharpness.hessian_max_eigenvalue(
                model, F.cross_entropy, batches, seed=seed, **kwargs))
            return {"value": result.value, "hvps": result.iterations, "seconds": seconds,
                    "error": abs(result.value - reference) / reference,
                    "residual": result.residual / abs(result.value)}
        return call

    def theirs():
        (value, vector, hvps), seconds = timed(lambda: pyhessian_eig(model, batches,
                                                                     args.tol, seed))
        clear_grads(model)
        return {"value": value, "hvps": hvps, "seconds": seconds,
                "error": abs(value - reference) / reference,
                "residual": relative_residual(model, batches, vector, value)}

    # a first PyHessian run (its time not used) gives the error samtune is matched to
    matched_tol = max(theirs()["error"], 1e-12)
    calls = {"pyhessian_eig": theirs,
             "samtune_eig_default": ours(tol=args.tol),
             "samtune_eig_error": ours(tol=args.tol, stop="error"),
             "samtune_eig_matched": ours(tol=matched_tol, stop="error")}
    forwards_backwards(calls, out)


def trace_block(model, batches, args, seed: int, out: dict) -> None:
    def theirs():
        values, seconds = timed(lambda: pyhessian_trace(model, batches, args.trace_probes,
                                                        seed))
        clear_grads(model)
        return {"values": values, "seconds": seconds}

    def ours():
        result, seconds = timed(lambda: sharpness.hessian_trace(model, F.cross_entropy,
                                                                batches, seed=seed))
        return {"value": result.value, "hvps": result.iterations, "seconds": seconds}

    forwards_backwards({"pyhessian_trace": theirs, "samtune_trace": ours}, out)


def product_costs(model, batches, out: dict) -> None:
    """Seconds of one graph, and of one product by each route on the first batch (the
    second of two: the first of a kind pays for allocations the rest reuse)."""
    with loss_surface(model, F.cross_entropy, batches) as surface:
        products = HessianProducts(surface)
        v = torch.randn(surface.dim, generator=torch.Generator().manual_seed(0))
        graph, build = timed(lambda: products.build_graph(0))
        plain = plain_graph(surface)  # native_batch_norm left in the graph
        costs = {"build": build,
                 "double_backward": warm_time(lambda: products.double_backward(graph, v)),
                 "double_backward_native_bn": warm_time(
                     lambda: products.double_backward(plain, v)),
                 "forward_over_reverse": warm_time(
                     lambda: products.forward_over_reverse(0, v))}
    out["costs"] = costs | {"pyhessian": pyhessian_product(model, batches)}


def warm_time(fn: Callable[[], object]) -> float:
    fn()
    return timed(fn)[1]


def plain_graph(surface):
    leaf = surface.w0.detach().requires_grad_(True)
    with torch.enable_grad():
        (gradient,) = torch.autograd.grad(surface.loss_tensor(leaf, 0), leaf, create_graph=True)
    return leaf, gradient


def pyhessian_product(model, batches) -> float:
    from pyhessian.utils import get_params_grad, hessian_vector_product

    inputs, targets = batches[0]
    F.cross_entropy(model(inputs), targets).backward(create_graph=True)
    params, grads = get_params_grad(model)
    v = [torch.randn_like(p) for p in params]
    seconds = warm_time(lambda: hessian_vector_product(grads, params, v))
    clear_grads(model)
    return seconds


# -- summaries ------------------------------------------------------------------------


def spread(values) -> str:
    q1, median, q3 = np.percentile(values, [25, 50, 75])
    return (f"{median:.2f} (IQR {q1:.2f}–{q3:.2f}, range {min(values):.2f}–"
            f"{max(values):.2f})")


def eig_table(reps: list[dict], tol: float) -> None:
    rows = [("PyHessian, power iteration, tol on the change", "pyhessian_eig"),
            (f"samtune default (tol {tol:g} on the residual)", "samtune_eig_default"),
            (f"samtune, stop=\"error\", tol {tol:g}", "samtune_eig_error"),
            ("samtune, stop=\"error\", tol = PyHessian's error", "samtune_eig_matched")]
    print("\n| λ_max run | HVPs (median, range) | rel. error median (max) | "
          "error ≤ PyHessian's | rel. residual median | s median | time ÷ PyHessian's |")
    print("| --- | --- | --- | --- | --- | --- | --- |")
    py_runs = [r["pyhessian_eig"] for r in reps]
    for label, key in rows:
        runs = [r[key] for r in reps]
        hvps = [run["hvps"] for run in runs]
        errors = [run["error"] for run in runs]
        as_good = sum(run["error"] <= py["error"] for run, py in zip(runs, py_runs))
        ratio = [run["seconds"] / py["seconds"] for run, py in zip(runs, py_runs)]
        print(f"| {label} | {statistics.median(hvps):g} ({min(hvps)}–{max(hvps)}) | "
              f"{statistics.median(errors):.1e} ({max(errors):.1e}) | "
              f"{'—' if key == 'pyhessian_eig' else f'{as_good}/{len(runs)}'} | "
              f"{statistics.median(run['residual'] for run in runs):.1e} | "
              f"{statistics.median(run['seconds'] for run in runs):.3f} | "
              f"{'—' if key == 'pyhessian_eig' else spread(ratio)} |")


def trace_table(reps: list[dict], probes: int, resamples: int = 2000) -> None:
    ours = np.array([r["samtune_trace"]["value"] for r in reps])
    theirs = np.array([r["pyhessian_trace"]["values"] for r in reps])  # reps × probes
    ours_seconds = [r["samtune_trace"]["seconds"] for r in reps]
    theirs_seconds = [r["pyhessian_trace"]["seconds"] for r in reps]
    time_ratio = [t / py for t, py in zip(ours_seconds, theirs_seconds)]
    best_ratio = min(ours_seconds) / min(theirs_seconds)
    variance_ratio = ours.var(ddof=1) / (theirs.var(ddof=1) / probes)
    rng = np.random.default_rng(0)
    boot = [ours[rng.integers(0, len(ours), len(ours))].var(ddof=1)
            / (theirs.ravel()[rng.integers(0, theirs.size, theirs.size)].var(ddof=1) / probes)
            for _ in range(resamples)]
    low, high = np.percentile(boot, [5, 95])
    products = [t * variance_ratio for t in time_ratio]
    print("\n| trace run | HVPs | mean ± s.e. | variance of one call | s median |")
    print("| --- | --- | --- | --- | --- |")
    print(f"| samtune default (10 deflation + 10 probes), {len(ours)} seeds | "
          f"{reps[0]['samtune_trace']['hvps']} | {ours.mean():.3f} ± "
          f"{ours.std(ddof=1) / math.sqrt(len(ours)):.3f} | {ours.var(ddof=1):.3g} | "
          f"{statistics.median(r['samtune_trace']['seconds'] for r in reps):.3f} |")
    print(f"| PyHessian, {probes} probes, {theirs.size} probes pooled | {probes} | "
          f"{theirs.mean():.3f} ± {theirs.std(ddof=1) / math.sqrt(theirs.size):.3f} | "
          f"{theirs.var(ddof=1) / probes:.3g} | "
          f"{statistics.median(r['pyhessian_trace']['seconds'] for r in reps):.3f} |")
    print(f"\ntime ratio {spread(time_ratio)}, best ÷ best {best_ratio:.2f}; variance ratio "
          f"{variance_ratio:.3f} (90 % interval {low:.3f}–{high:.3f}); time × variance ratio "
          f"{spread(products)}, best ÷ best {best_ratio * variance_ratio:.2f}")


def cost_table(reps: list[dict]) -> None:
    print("\n| one product (first batch) | ms, median (min) |")
    print("| --- | --- |")
    labels = {"build": "gradient graph (forward + backward, create_graph)",
              "double_backward": "samtune double backward (affine BN)",
              "double_backward_native_bn": "double backward through native_batch_norm",
              "forward_over_reverse": "forward-over-reverse (jvp of grad)",
              "pyhessian": "PyHessian's product"}
    for key, label in labels.items():
        values = [1e3 * r["costs"][key] for r in reps]
        print(f"| {label} | {statistics.median(values):.1f} ({min(values):.1f}) |")


# -- main -----------------------------------------------------------------------------


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--examples", type=int, default=128)
    parser.add_argument("--n-batches", type=int, default=1)
    parser.add_argument("--train-steps", type=int, default=300)
    parser.add_argument("--tol", type=float, default=1e-3)
    parser.add_argument("--trace-probes", type=int, default=20,
                        help="PyHessian's probes per call (samtune's default call: 20 HVPs)")
    parser.add_argument("--reps", type=int, default=24)
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    warnings.filterwarnings("ignore", message="Using backward\\(\\) with create_graph")

    x, y, batches = digits_batches(args.examples, args.n_batches)
    model = trained_model(x, y, args.train_steps, args.seed)
    with torch.no_grad():
        loss = sum(F.cross_entropy(model(xb), yb).item() * len(yb) for xb, yb in batches)
    reference = reference_eigenvalue(model, batches)
    print(f"# small_cnn on digits, {args.train_steps} SGD steps, {args.examples} examples in "
          f"{args.n_batches} batch(es), loss {loss / args.examples:.4f}, λ* = {reference:.6f}; "
          f"{torch.get_num_threads()} threads, {os.cpu_count()} cores "
          f"({platform.machine()}), torch {torch.__version__}, Python "
          f"{platform.python_version()}; {args.reps} repetitions (+1 warm-up)")
    order_rng = np.random.default_rng(args.seed)
    repetition(model, batches, args, args.seed + 10_000, reference, order_rng)  # warm-up
    reps = []
    for rep in range(args.reps):
        reps.append(repetition(model, batches, args, args.seed + rep, reference, order_rng))
        print(f"repetition {rep + 1}/{args.reps}", file=sys.stderr, flush=True)
    eig_table(reps, args.tol)
    trace_table(reps, args.trace_probes)
    cost_table(reps)


if __name__ == "__main__":
    main()
