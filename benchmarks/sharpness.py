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
- trace: samtune's deflated Hutchinson (by default 10 Lanczos vectors + 20
  probes) against PyHessian's Hutchinson (30 probes: the same number of
  Hessian-vector products); both are unbiased, so the
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


def train(model: nn.Module, batches, steps: int, lr: float = 0.05) -> None:
    """Plain SGD on the benchmark batches (train mode, so BatchNorm statistics move)."""
    optimizer = torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9)
    model.train()
    for step in range(steps):
        inputs, targets = batches[step % len(batches)]
        optimizer.zero_grad()
        F.cross_entropy(model(inputs), targets).backward()
        optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    model.eval()


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
        result, seconds = timed(lambda: sharpness.measure_all(
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
    rows = []

    def ours_eig(tol):
        return timed(lambda: sharpness.hessian_max_eigenvalue(
            model, F.cross_entropy, batches, iters=args.iters, tol=tol, seed=args.seed), device)

    def ours_trace(samples):
        return timed(lambda: sharpness.hessian_trace(
            model, F.cross_entropy, batches, samples=samples, deflation=args.deflation,
            seed=args.seed), device)

    # PyHessian first: its accuracy sets the matched runs' targets
    torch.manual_seed(args.seed)  # PyHessian draws from the global RNG
    engine = CountingHessian(model, batches, device)
    (py_eigs, py_vecs), py_eig_seconds = timed(
        lambda: engine.engine.eigenvalues(maxIter=args.iters, tol=args.tol), device)
    py_eig_products, engine.products = engine.products, 0
    py_samples, py_trace_seconds = timed(
        lambda: engine.engine.trace(maxIter=args.trace_probes, tol=-math.inf), device)
    py_trace_products = engine.products
    for p in model.parameters():
        p.grad = None  # PyHessian leaves graph-holding gradients behind
    py_eig = py_eigs[0]
    py_relative_residual = relative_residual(model, batches, py_vecs[0], py_eig)
    py_values = torch.tensor(py_samples, dtype=torch.float64)
    py_trace, py_stderr = py_values.mean().item(), py_values.std().item() / len(py_values) ** 0.5

    eig, seconds = ours_eig(args.tol)
    rows.append(("λ_max", f"samtune, tol={args.tol:g}", eig.value,
                 eig.residual / abs(eig.value), eig.iterations, seconds, py_eig_seconds))
    eig, seconds = ours_eig(py_relative_residual)
    rows.append(("λ_max", f"samtune, tol={py_relative_residual:.1e} (PyHessian's accuracy)",
                 eig.value, eig.residual / abs(eig.value), eig.iterations, seconds, py_eig_seconds))
    rows.append(("λ_max", f"PyHessian, tol={args.tol:g}", py_eig, py_relative_residual,
                 py_eig_products, py_eig_seconds, py_eig_seconds))
    trace, seconds = ours_trace(args.samples)
    rows.append(("trace", f"samtune, {args.deflation} deflation + {args.samples} probes",
                 trace.value, trace.stderr, trace.iterations, seconds,
                 py_trace_seconds * py_stderr ** 2 / trace.stderr ** 2))
    rows.append(("trace", f"PyHessian, {args.trace_probes} probes", py_trace, py_stderr,
                 py_trace_products, py_trace_seconds, py_trace_seconds))

    path = "data= path, graph kept" if len(batches) == 1 else "dataloader= path"
    print(f"\nPyHessian comparison ({path}); accuracy: residual ‖Hv − λv‖/|λ| for λ_max, "
          "standard error for the trace. Speed-up at equal accuracy: for λ_max the time "
          "ratio of the run at PyHessian's accuracy; for the trace (t·stderr²)_PyHessian / "
          "(t·stderr²)_samtune, the time ratio once both reach the same standard error")
    print("| quantity | run | value | accuracy | HVPs | seconds | speed-up |")
    print("| --- | --- | --- | --- | --- | --- | --- |")
    for quantity, run, value, accuracy, products, seconds, reference in rows:
        print(f"| {quantity} | {run} | {value:.6g} | {accuracy:.2e} | {products} "
              f"| {seconds:.1f} | {reference / seconds:.2f}× |")


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
