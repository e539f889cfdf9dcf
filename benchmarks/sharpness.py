"""Cost of every sharpness measure, and the Hessian measures against PyHessian.

Times each registered measure (its default settings) on ResNet-18 with CIFAR-shape
random data, then computes the top Hessian eigenvalue and the Hessian trace with
samtune and with PyHessian (Yao et al. 2020; PyPI ``pyhessian`` 0.1, the
project's ``bench`` extra) on the same model and batches, in the same run:

- top eigenvalue: samtune's Lanczos (stop at ``‖Hy − θy‖ ≤ tol·|θ|``) against
  PyHessian's power iteration (stop at a relative change below ``tol``); the
  accuracy of each is its residual ``‖Hv − λv‖ / |λ|``, computed for PyHessian's
  eigenvector with one extra (untimed) Hessian-vector product. samtune runs twice:
  with the same ``tol``, and with ``tol`` set to PyHessian's achieved residual
  (the same accuracy);
- trace: samtune's Hutchinson with a Lanczos-deflation control variate (by
  default 10 Lanczos vectors + 20 probes) against PyHessian's Hutchinson (30
  probes: the same number of Hessian-vector products); both estimate the trace
  with a standard error, so the
  accuracy of each is its standard error, and the speed-up at equal accuracy
  is ``(t · stderr²)_PyHessian / (t · stderr²)_samtune`` (an estimator's
  variance falls as 1/probes). PyHessian runs a fixed number of probes: its
  stopping rule divides by the signed running mean and so stops at the first
  negative one.

PyHessian gets one batch through its ``data=`` path (it keeps the gradient graph
between products) and several through its ``dataloader=`` path (it recomputes
it), as its README shows. Its code needs no change on torch 2.x for these two
calls (only ``density()`` uses the removed ``torch.eig``).

    python benchmarks/sharpness.py                      # CPU: resnet18, 2 batches of 4
    python benchmarks/sharpness.py --compare-only       # just the PyHessian comparison
    python benchmarks/sharpness.py --model small_cnn --image-size 8 --in-channels 1
    python benchmarks/sharpness.py --device cuda --batch 128 --n-batches 8 --iters 100
"""

from __future__ import annotations

import argparse
import math
import os
import platform
import sys
import time
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

from samtune import sharpness
from samtune.sharpness._hvp import HessianProducts
from samtune.sharpness._surface import loss_surface


def build_model(name: str, in_channels: int, image_size: int) -> nn.Module:
    try:
        from samtune.models import create_model
    except ImportError:  # a tree without samtune.models: torchvision with a CIFAR stem
        import torchvision

        model = torchvision.models.resnet18(num_classes=10)
        model.conv1 = nn.Conv2d(in_channels, 64, 3, 1, 1, bias=False)
        model.maxpool = nn.Identity()
        return model
    return create_model(name, num_classes=10, in_channels=in_channels, image_size=image_size)


def random_batches(n_batches: int, batch: int, in_channels: int, image_size: int,
                   device: torch.device, seed: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
    generator = torch.Generator().manual_seed(seed)
    shape = (batch, in_channels, image_size, image_size)
    return [(torch.randn(shape, generator=generator).to(device),
             torch.randint(0, 10, (batch,), generator=generator).to(device))
            for _ in range(n_batches)]


def train(model: nn.Module, batches, steps: int, lr: float = 0.01) -> None:
    """Plain SGD on the benchmark batches, in eval mode: BatchNorm stays at the
    running statistics the measures use (a few train-mode steps would leave
    them far from the batch statistics the weights were fitted to)."""
    optimizer = torch.optim.SGD(model.parameters(), lr=lr)
    model.eval()
    for step in range(steps):
        inputs, targets = batches[step % len(batches)]
        optimizer.zero_grad()
        loss = F.cross_entropy(model(inputs), targets)
        loss.backward()
        optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    with torch.no_grad():
        final = sum(F.cross_entropy(model(x), y).item() for x, y in batches) / len(batches)
    print(f"after {steps} SGD steps (lr {lr}): loss {final:.4f}")


def timed(fn: Callable[[], object], device: torch.device) -> tuple[object, float]:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    start = time.perf_counter()
    result = fn()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return result, time.perf_counter() - start


def time_measures(model, batches, names, device) -> None:
    print("| measure | value | seconds | settings |")
    print("| --- | --- | --- | --- |")
    init = [p.detach().clone() * 0.9 for p in model.parameters()]
    for name in names:
        result, seconds = timed(lambda name=name: sharpness.measure_all(
            model, F.cross_entropy, batches, names=[name], init_params=init), device)
        spec = sharpness.get_measure(name)
        settings = ", ".join(f"{k}={v}" for k, v in spec.settings.items())
        print(f"| {name} | {result[spec.metric]:.6g} | {seconds:.2f} | {settings} |", flush=True)


class CountingHessian:
    """PyHessian's ``hessian`` object with its Hessian-vector products counted."""

    def __init__(self, model, batches, device):
        from pyhessian import hessian

        module = sys.modules["pyhessian.hessian"]  # the package re-exports the class
        cuda = device.type == "cuda"
        if len(batches) == 1:
            self.engine = hessian(model, F.cross_entropy, data=batches[0], cuda=cuda)
        else:
            self.engine = hessian(model, F.cross_entropy, dataloader=batches, cuda=cuda)
        self.products = 0
        single_batch_hvp = module.hessian_vector_product
        dataloader_hvp = self.engine.dataloader_hv_product

        def counted_single_batch_hvp(*args):
            self.products += 1
            return single_batch_hvp(*args)

        def counted_dataloader_hvp(*args):
            self.products += 1
            return dataloader_hvp(*args)

        module.hessian_vector_product = counted_single_batch_hvp
        self.engine.dataloader_hv_product = counted_dataloader_hvp


def compare_with_pyhessian(model, batches, device, args) -> None:
    try:
        import pyhessian  # noqa: F401
    except ImportError:
        print("\npyhessian is not installed (pip install pyhessian): comparison skipped")
        return
    model.eval()
    found: dict[str, object] = {}  # first result of each run
    seconds: dict[str, float] = {}  # best time of each run over the repeats
    products: dict[str, int] = {}

    def pyhessian_eig():
        torch.manual_seed(args.seed)  # PyHessian draws from the global RNG
        engine = CountingHessian(model, batches, device)
        result = engine.engine.eigenvalues(maxIter=args.iters, tol=args.tol)
        products["pyhessian_eig"] = engine.products
        return result

    def pyhessian_trace():
        torch.manual_seed(args.seed)
        engine = CountingHessian(model, batches, device)
        result = engine.engine.trace(maxIter=args.trace_probes, tol=-math.inf)
        products["pyhessian_trace"] = engine.products
        return result

    def ours_eig(tol):
        return lambda: sharpness.hessian_max_eigenvalue(
            model, F.cross_entropy, batches, iters=args.iters, tol=tol, seed=args.seed)

    def ours_trace():
        return sharpness.hessian_trace(model, F.cross_entropy, batches, samples=args.samples,
                                       deflation=args.deflation, seed=args.seed)

    def matched_eig():
        return ours_eig(found["pyhessian_residual"])()

    runs = {"pyhessian_eig": pyhessian_eig, "ours_eig": ours_eig(args.tol),
            "ours_eig_matched": matched_eig, "pyhessian_trace": pyhessian_trace,
            "ours_trace": ours_trace}
    # Runs take turns within each repeat, so load from other processes hits all
    # of them alike; the best time of each is kept.
    for _ in range(args.repeats):
        for name, run in runs.items():
            result, elapsed = timed(run, device)
            seconds[name] = min(seconds.get(name, math.inf), elapsed)
            found.setdefault(name, result)
            for p in model.parameters():
                p.grad = None  # PyHessian leaves graph-holding gradients behind
            if name == "pyhessian_eig" and "pyhessian_residual" not in found:
                eigenvalues, vectors = result
                found["pyhessian_residual"] = relative_residual(model, batches, vectors[0],
                                                                eigenvalues[0])
    print_comparison(found, seconds, products, batches, args)


def print_comparison(found, seconds, products, batches, args) -> None:
    py_eig, py_residual = found["pyhessian_eig"][0][0], found["pyhessian_residual"]
    py_values = torch.tensor(found["pyhessian_trace"], dtype=torch.float64)
    py_trace, py_stderr = py_values.mean().item(), py_values.std().item() / len(py_values) ** 0.5
    eig, matched, trace = found["ours_eig"], found["ours_eig_matched"], found["ours_trace"]
    efficiency_ratio = (seconds["pyhessian_trace"] * py_stderr ** 2
                        / (seconds["ours_trace"] * trace.stderr ** 2))
    rows = [
        ("λ_max", f"samtune, tol={args.tol:g}", eig.value, eig.residual / abs(eig.value),
         eig.iterations, seconds["ours_eig"], seconds["pyhessian_eig"] / seconds["ours_eig"]),
        ("λ_max", f"samtune, tol={py_residual:.1e} (PyHessian's accuracy)", matched.value,
         matched.residual / abs(matched.value), matched.iterations,
         seconds["ours_eig_matched"], seconds["pyhessian_eig"] / seconds["ours_eig_matched"]),
        ("λ_max", f"PyHessian, tol={args.tol:g}", py_eig, py_residual,
         products["pyhessian_eig"], seconds["pyhessian_eig"], 1.0),
        ("trace", f"samtune, {args.deflation} deflation + {args.samples} probes", trace.value,
         trace.stderr, trace.iterations, seconds["ours_trace"], efficiency_ratio),
        ("trace", f"PyHessian, {args.trace_probes} probes", py_trace, py_stderr,
         products["pyhessian_trace"], seconds["pyhessian_trace"], 1.0),
    ]
    path = "data= path, graph kept" if len(batches) == 1 else "dataloader= path"
    print(f"\nPyHessian comparison ({path}), best of {args.repeats} interleaved repeats")
    print("| quantity | run | value | accuracy | HVPs | seconds | speed-up at equal accuracy |")
    print("| --- | --- | --- | --- | --- | --- | --- |")
    for quantity, run, value, accuracy, count, elapsed, speedup in rows:
        print(f"| {quantity} | {run} | {value:.6g} | {accuracy:.2e} | {count} | {elapsed:.1f} "
              f"| {speedup:.2f}× |")
    print("\naccuracy: ‖Hv − λv‖/|λ| for λ_max, the standard error for the trace. "
          "Speed-up: λ_max, the time ratio (the second row matches PyHessian's accuracy); "
          "trace, (t·stderr²)_PyHessian / (t·stderr²)_samtune, the time ratio at equal "
          "standard error.")


def relative_residual(model, batches, vector, eigenvalue) -> float:
    """‖Hv − λv‖ / |λ| for a unit v given as a list of per-parameter tensors."""
    with loss_surface(model, F.cross_entropy, batches) as surface:
        v = torch.cat([t.reshape(-1) for t in vector]).to(surface.dtype)
        v = v / torch.linalg.vector_norm(v)
        hv = HessianProducts(surface).hvp(v)
        return torch.linalg.vector_norm(hv - eigenvalue * v).item() / abs(eigenvalue)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--model", default="resnet18")
    parser.add_argument("--in-channels", type=int, default=3)
    parser.add_argument("--image-size", type=int, default=32)
    parser.add_argument("--batch", type=int, default=4, help="examples per batch (m)")
    parser.add_argument("--n-batches", type=int, default=2)
    parser.add_argument("--iters", type=int, default=50,
                        help="most Hessian-vector products for λ_max (both libraries)")
    parser.add_argument("--tol", type=float, default=1e-3)
    parser.add_argument("--samples", type=int, default=20, help="samtune's trace probes")
    parser.add_argument("--deflation", type=int, default=10, help="samtune's Lanczos deflation")
    parser.add_argument("--trace-probes", type=int, default=30,
                        help="PyHessian's trace probes (its tol rule is switched off: it "
                             "stops at the first negative running mean)")
    parser.add_argument("--repeats", type=int, default=2,
                        help="interleaved repeats of the comparison; the best time is kept")
    parser.add_argument("--train-steps", type=int, default=0,
                        help="SGD steps on the batches first, to leave the initialization")
    parser.add_argument("--measures", nargs="*", default=list(sharpness.MEASURES))
    parser.add_argument("--compare-only", action="store_true")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's choice)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    device = torch.device(args.device)
    torch.manual_seed(args.seed)
    model = build_model(args.model, args.in_channels, args.image_size).to(device).eval()
    batches = random_batches(args.n_batches, args.batch, args.in_channels, args.image_size,
                             device, args.seed)
    if args.train_steps:
        train(model, batches, args.train_steps)
    n_params = sum(p.numel() for p in model.parameters())
    cpu = platform.processor() or platform.machine()
    print(f"# {args.model} ({n_params:,} parameters, {args.train_steps} SGD steps), "
          f"{args.n_batches} batches of {args.batch}, "
          f"{args.device}, {torch.get_num_threads()} threads, {os.cpu_count()} cores ({cpu}), "
          f"torch {torch.__version__}\n")
    if not args.compare_only:
        time_measures(model, batches, args.measures, device)
    compare_with_pyhessian(model, batches, device, args)


if __name__ == "__main__":
    main()
