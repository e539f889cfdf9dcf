"""Cost of one SAM / GSAM step relative to one plain SGD step, same model and batch.

A SAM-family step runs two forward/backward passes, so about 2.0x is the floor;
whatever exceeds it is the optimizer's own work (saving w and g, norms, the GSAM
decomposition, restoring w). The optimizers take turns within every repeat, so
load from other processes hits all of them alike; the table reports medians.

    python benchmarks/step_overhead.py                       # resnet18, batch 32, 32x32, CPU
    python benchmarks/step_overhead.py --model small_cnn --repeats 30
    python benchmarks/step_overhead.py --device cuda --batch 128 --repeats 50
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import time
from collections.abc import Callable

import torch
import torch.nn.functional as F

from samtune.models import create_model
from samtune.optim import create_optimizer, frozen_bn_stats, is_two_pass

OPTIMIZERS = ("sgd", "sam", "gsam")


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="resnet18", help="a samtune.models name (resnet18, small_cnn, ...)")
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--image-size", type=int, default=32)
    parser.add_argument("--classes", type=int, default=10)
    parser.add_argument("--repeats", type=int, default=20, help="timed steps per optimizer")
    parser.add_argument("--warmup", type=int, default=2, help="untimed steps per optimizer first")
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    args = parser.parse_args()
    for name in ("batch", "image_size", "classes", "repeats"):
        if getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')} must be >= 1, got {getattr(args, name)}")
    if args.device == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda: torch.cuda.is_available() is False on this machine")
    return args


def machine_description(device: torch.device) -> str:
    if device.type == "cuda":
        hardware = torch.cuda.get_device_name(device)
    else:
        hardware = f"{cpu_model()}, {os.cpu_count()} logical cores, {torch.get_num_threads()} torch threads"
    return f"{hardware}; torch {torch.__version__}; python {platform.python_version()}"


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as cpuinfo:
            for line in cpuinfo:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


Step = Callable[[], None]


def make_steps(name: str, model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor) -> tuple[Step, Step]:
    """(full training step as samtune.trial runs it, optimizer update alone on the gradients in p.grad)."""
    # A small lr keeps the shared model well-behaved over many steps; it does not change the cost.
    optimizer = create_optimizer(
        model.parameters(), optimizer=name, lr=1e-3, momentum=0.9, weight_decay=5e-4, rho=0.05, alpha=0.1
    )

    def loss() -> torch.Tensor:
        return F.cross_entropy(model(x), y)

    def one_pass() -> None:
        loss().backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    def two_pass() -> None:
        loss().backward()
        optimizer.first_step(zero_grad=True)
        with frozen_bn_stats(model):
            loss().backward()
        optimizer.second_step(zero_grad=True)

    def two_pass_update() -> None:
        optimizer.first_step(zero_grad=False)
        optimizer.second_step(zero_grad=False)

    if is_two_pass(optimizer):
        return two_pass, two_pass_update
    return one_pass, optimizer.step


def timed(step: Step, device: torch.device) -> float:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    start = time.perf_counter()
    step()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return time.perf_counter() - start


def main() -> None:
    args = parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    torch.manual_seed(0)
    model = create_model(args.model, num_classes=args.classes, in_channels=3, image_size=args.image_size)
    model = model.to(device).train()
    x = torch.randn(args.batch, 3, args.image_size, args.image_size, device=device)
    y = torch.randint(0, args.classes, (args.batch,), device=device)
    steps, updates = {}, {}
    for name in OPTIMIZERS:
        steps[name], updates[name] = make_steps(name, model, x, y)

    print(f"machine: {machine_description(device)}")
    n_params = sum(p.numel() for p in model.parameters())
    print(f"model {args.model} ({n_params / 1e6:.2f} M params), batch {args.batch} x 3 x {args.image_size}^2, "
          f"device {device}, {args.repeats} interleaved repeats after {args.warmup} warm-up")
    print("\nfull training step (forward/backward passes + optimizer):")
    print(summary_table(interleaved_times(steps, args.repeats, args.warmup, device)))
    print("ratio of medians = median time / median sgd time; paired = median over repeats of\n"
          "(time / sgd time in the same repeat). 2.0 is the floor for a two-pass step.")

    F.cross_entropy(model(x), y).backward()  # gradients for the update-only timing, kept in p.grad
    print("\noptimizer update alone (sgd: step(); sam/gsam: first_step() + second_step(), same gradients):")
    print(summary_table(interleaved_times(updates, args.repeats, args.warmup, device)))


def interleaved_times(
    functions: dict[str, Step], repeats: int, warmup: int, device: torch.device
) -> dict[str, list[float]]:
    for _ in range(warmup):
        for function in functions.values():
            function()
    names = list(functions)
    times: dict[str, list[float]] = {name: [] for name in names}
    for repeat in range(repeats):
        order = names if repeat % 2 == 0 else names[::-1]  # alternate who goes first
        for name in order:
            times[name].append(timed(functions[name], device))
    return times


def summary_table(times: dict[str, list[float]]) -> str:
    baseline = statistics.median(times["sgd"])
    header = ("optimizer", "median ms", "q1 ms", "q3 ms", "ratio of medians", "paired ratio")
    rows = ["{:<10}{:>11}{:>9}{:>9}{:>18}{:>14}".format(*header)]
    for name, samples in times.items():
        q1, median, q3 = statistics.quantiles(samples, n=4, method="inclusive")
        paired = statistics.median(t / t_sgd for t, t_sgd in zip(samples, times["sgd"]))
        milliseconds = f"{median * 1e3:>11.1f}{q1 * 1e3:>9.1f}{q3 * 1e3:>9.1f}"
        rows.append(f"{name:<10}{milliseconds}{median / baseline:>18.3f}{paired:>14.3f}")
    return "\n".join(rows)


if __name__ == "__main__":
    main()
