"""Cost of every sharpness measure.

Times each registered measure (its default settings) on ResNet-18 with CIFAR-shape
random data. The Hessian measures against PyHessian, at equal accuracy and with
the spread over repetitions, are in ``benchmarks/hessian.py``.

    python benchmarks/sharpness.py                      # CPU: resnet18, 2 batches of 4
    python benchmarks/sharpness.py --model small_cnn --image-size 8 --in-channels 1
    python benchmarks/sharpness.py --device cuda --batch 128 --n-batches 8
"""

from __future__ import annotations

import argparse
import os
import platform
import time
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

from samtune import sharpness


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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--model", default="resnet18")
    parser.add_argument("--in-channels", type=int, default=3)
    parser.add_argument("--image-size", type=int, default=32)
    parser.add_argument("--batch", type=int, default=4, help="examples per batch (m)")
    parser.add_argument("--n-batches", type=int, default=2)
    parser.add_argument("--train-steps", type=int, default=0,
                        help="SGD steps on the batches first, to leave the initialization")
    parser.add_argument("--measures", nargs="*", default=list(sharpness.MEASURES))
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
    time_measures(model, batches, args.measures, device)


if __name__ == "__main__":
    main()
