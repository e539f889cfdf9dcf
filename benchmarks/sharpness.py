"""Cost of every sharpness measure, and the Hessian measures against PyHessian.

Times each registered measure (its default settings) on ResNet-18 with CIFAR-shape
random data, then computes the top Hessian eigenvalue and the Hessian trace with
samtune and with PyHessian (Yao et al. 2020; PyPI ``pyhessian`` 0.1, the
project's ``bench`` extra) on the same model and batches, in the same run:

- top eigenvalue: samtune's Lanczos (stop at ``‖Hy − θy‖ ≤ tol·|θ|``) against
  PyHessian's power iteration (stop at a relative change below ``tol``); the
  accuracy of each is its residual ``‖Hv − λv‖ / |λ|``, computed for PyHessian's
  eigenvector with one extra (untimed) Hessian-vector product;
- trace: samtune's deflated Hutchinson against PyHessian's Hutchinson (stop at a
  relative change of the running mean below ``tol``); both are unbiased, so the
  accuracy of each is its standard error.

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
import os
import platform
import sys
import time
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

from samtune import sharpness
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
    return [(torch.randn(batch, in_channels, image_size, image_size, generator=generator).to(device),
             torch.randint(0, 10, (batch,), generator=generator).to(device))
            for _ in range(n_batches)]


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
    # ours
    ours_eig, t_ours_eig = timed(lambda: sharpness.hessian_max_eigenvalue(
        model, F.cross_entropy, batches, iters=args.iters, tol=args.tol, seed=args.seed), device)
    ours_tr, t_ours_tr = timed(lambda: sharpness.hessian_trace(
        model, F.cross_entropy, batches, samples=args.samples, deflation=args.deflation,
        seed=args.seed), device)
    # PyHessian (it draws from the global RNG)
    torch.manual_seed(args.seed)
    engine = CountingHessian(model, batches, device)
    (py_eigs, py_vecs), t_py_eig = timed(
        lambda: engine.engine.eigenvalues(maxIter=args.iters, tol=args.tol), device)
    py_eig_products = engine.products
    engine.products = 0
    py_trace_samples, t_py_tr = timed(
        lambda: engine.engine.trace(maxIter=args.trace_max_iter, tol=args.tol), device)
    py_tr_products = engine.products
    for p in model.parameters():
        p.grad = None  # PyHessian leaves graph-holding gradients behind
    # accuracy of PyHessian's eigenpair: ‖Hv − λv‖ with one more product (untimed)
    py_eig = py_eigs[0]
    with loss_surface(model, F.cross_entropy, batches) as surface:
        v = torch.cat([t.reshape(-1) for t in py_vecs[0]]).to(surface.dtype)
        v = v / torch.linalg.vector_norm(v)
        py_residual = torch.linalg.vector_norm(surface.hvp(v) - py_eig * v).item()
    samples = torch.tensor(py_trace_samples, dtype=torch.float64)
    py_tr = samples.mean().item()
    py_tr_stderr = samples.std().item() / len(samples) ** 0.5 if len(samples) > 1 else float("nan")

    print(f"\nPyHessian comparison ({'data= path, graph kept' if len(batches) == 1 else 'dataloader= path'})")
    print("| quantity | samtune | PyHessian | rel. difference | samtune accuracy | PyHessian accuracy "
          "| samtune HVPs | PyHessian HVPs | samtune s | PyHessian s | speed-up |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    print(f"| λ_max | {ours_eig.value:.6g} | {py_eig:.6g} "
          f"| {abs(ours_eig.value - py_eig) / abs(py_eig):.2e} "
          f"| residual/|λ| {ours_eig.residual / abs(ours_eig.value):.1e} "
          f"| residual/|λ| {py_residual / abs(py_eig):.1e} "
          f"| {ours_eig.iterations} | {py_eig_products} | {t_ours_eig:.1f} | {t_py_eig:.1f} "
          f"| **{t_py_eig / t_ours_eig:.2f}×** |")
    print(f"| trace | {ours_tr.value:.6g} | {py_tr:.6g} | {abs(ours_tr.value - py_tr) / abs(py_tr):.2e} "
          f"| stderr {ours_tr.stderr:.3g} | stderr {py_tr_stderr:.3g} "
          f"| {ours_tr.iterations} | {py_tr_products} | {t_ours_tr:.1f} | {t_py_tr:.1f} "
          f"| **{t_py_tr / t_ours_tr:.2f}×** |")
    combined = (ours_tr.stderr ** 2 + py_tr_stderr ** 2) ** 0.5
    print(f"\ntrace difference / combined stderr: {abs(ours_tr.value - py_tr) / combined:.2f}")


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
    parser.add_argument("--trace-max-iter", type=int, default=100,
                        help="PyHessian's most trace probes (its default)")
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
    n_params = sum(p.numel() for p in model.parameters())
    cpu = platform.processor() or platform.machine()
    print(f"# {args.model} ({n_params:,} parameters), {args.n_batches} batches of {args.batch}, "
          f"{args.device}, {torch.get_num_threads()} threads, {os.cpu_count()} cores ({cpu}), "
          f"torch {torch.__version__}\n")
    if not args.compare_only:
        time_measures(model, batches, args.measures, device)
    compare_with_pyhessian(model, batches, device, args)


if __name__ == "__main__":
    main()
