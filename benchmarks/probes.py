"""Cost of the theory probes (trial key ``probes``) per epoch, as a fraction of the epoch's
training time, at the default probe settings (256 examples, 4 batches).

A probe computes the direction twice (gradient, then at the ascent point) on the probe
set and on each of ``probe_batches`` batches of the epoch's batch size: about
2 (n + k b) forward-backward examples, against 2 N a two-pass epoch of N examples.

- digits: the default trial (GSAM, small CNN, batch 16 -> 128 in 4 stages), probes on;
  each stage's first epoch is trained (``Trial.run_epoch``) and its probes timed
  (``Trial.probe``), as ``train`` runs them.
- resnet18 on random 32x32 images, batch 128, GSAM: the median of a few training steps
  (``step_overhead.make_steps``: the step samtune.trial takes) times the steps of a
  CIFAR-size epoch (50,000 // 128 = 390), against the probes on 256 random examples,
  the two timed in turns.

The last column, "examples", is the ratio by examples through forward-backward passes.

    python benchmarks/probes.py                   # both, CPU
    python benchmarks/probes.py --skip-resnet --threads 2
    python benchmarks/probes.py --device cuda --steps 20
"""

from __future__ import annotations

import argparse
import statistics

import torch
import torch.nn.functional as F
from step_overhead import machine_description, make_steps, timed

from samtune.config import make_trial_config
from samtune.models import create_model
from samtune.trial.loop import Trial
from samtune.trial.probes import Direction, draw_batches, probe_metrics

CIFAR_TRAIN = 50_000


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    parser.add_argument("--steps", type=int, default=3, help="timed resnet18 steps (after one warm-up)")
    parser.add_argument("--repeats", type=int, default=5, help="timed probes per measurement")
    parser.add_argument("--skip-resnet", action="store_true")
    parser.add_argument("--skip-digits", action="store_true")
    return parser.parse_args()


def median_seconds(function, repeats: int, device: torch.device) -> float:
    return statistics.median(timed(function, device) for _ in range(repeats))


def digits(device: torch.device, repeats: int) -> None:
    config = make_trial_config({"probes": True, "sharpness": [], "device": device.type})
    trial = Trial(config)
    print(f"\ndigits, default trial ({config.optimizer}, {config.model}), probes on "
          f"{config.probe_examples} examples, {config.probe_batches} batches")
    print(f"{'epoch':>5}{'batch':>7}{'epoch s':>10}{'probe s':>10}{'ratio':>8}{'examples':>10}")
    stage = trial.schedule.stage
    stage_starts = {e for e in range(config.epochs) if e == 0 or stage(e) != stage(e - 1)}
    for epoch in range(config.epochs):
        stats = trial.run_epoch(epoch)
        if epoch in stage_starts:
            batch = int(stats["batch_size"])
            trial.probe(epoch, batch)  # warm-up
            seconds = median_seconds(lambda: trial.probe(epoch, batch), repeats, device)  # noqa: B023
            examples = 2 * (config.probe_examples + config.probe_batches * batch)
            print(f"{epoch + 1:>5}{batch:>7}{stats['epoch_seconds']:>10.3f}{seconds:>10.3f}"
                  f"{seconds / stats['epoch_seconds']:>8.1%}{examples / (2 * len(trial.data.train_y)):>10.1%}")


def resnet(device: torch.device, steps: int, repeats: int) -> None:
    batch, examples, batches = 128, 256, 4
    torch.manual_seed(0)
    model = create_model("resnet18", num_classes=10, in_channels=3, image_size=32).to(device).train()
    x = torch.randn(batch, 3, 32, 32, device=device)
    y = torch.randint(0, 10, (batch,), device=device)
    step, _ = make_steps("gsam", model, x, y)
    px = torch.randn(examples, 3, 32, 32, device=device)
    py = torch.randint(0, 10, (examples,), device=device)
    direction = Direction.of_optimizer("gsam", rho=0.05, alpha=0.1)
    drawn = draw_batches(examples, batch, batches, seed=0)

    def probe() -> None:
        probe_metrics(model, F.cross_entropy, px, py, direction, drawn, chunk=batch)

    step()  # warm-up
    # interleaved, so that load from other processes hits both alike
    step_times, probe_times = [], []
    for round_ in range(max(steps, repeats)):
        if round_ < steps:
            step_times.append(timed(step, device))
        if round_ < repeats:
            probe_times.append(timed(probe, device))
    step_seconds, probe_seconds = statistics.median(step_times), statistics.median(probe_times)
    epoch_seconds = step_seconds * (CIFAR_TRAIN // batch)
    print(f"\nresnet18, 32x32, batch {batch}, GSAM: step {step_seconds:.3f} s (median of {steps}; "
          f"{', '.join(f'{t:.2f}' for t in step_times)}) x {CIFAR_TRAIN // batch} steps = CIFAR-size epoch "
          f"{epoch_seconds:.1f} s; probes ({examples} examples, {batches} batches of {batch}) {probe_seconds:.2f} s "
          f"(median of {repeats}; {', '.join(f'{t:.2f}' for t in probe_times)}): "
          f"{probe_seconds / epoch_seconds:.1%} of the epoch; by examples through forward-backward "
          f"{2 * (examples + batches * batch) / (2 * CIFAR_TRAIN):.1%}")


def main() -> None:
    args = parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    print(f"machine: {machine_description(device)}")
    if not args.skip_digits:
        digits(device, args.repeats)
    if not args.skip_resnet:
        resnet(device, args.steps, args.repeats)


if __name__ == "__main__":
    main()
