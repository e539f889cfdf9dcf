"""Images per second of the ViT recipe's per-image pipeline in 0, 1, 2 ... DataLoader workers,
against the on-device loader with the whole recipe batched (samtune.data.device_augment) and with
crop + flip only, on the same images, and the time of one ViT-T training pass, so the rates
can be compared.

Per-image recipe (samtune.data.augment.image_transform): flip, crop (pad 4), AutoAugment
(CIFAR-10 policy), to float + normalize, RandomErasing (p 0.25), on 32x32x3 uint8 images,
through samtune.data.worker_loader.WorkerLoader; the same recipe batched through DeviceLoader with a
DevicePolicy. Every loader gets one warm-up epoch (worker start-up, allocator); then every
loader is timed over one epoch per round, the loaders interleaved, and the median round is
reported; the ratios are taken in one run.

    python benchmarks/loader_workers.py                       # 8192 synthetic images, batch 512
    python benchmarks/loader_workers.py --workers 0 4 8 16 --images 51200 --device cuda --vit-batch 512 --bf16
"""

import argparse
import time

import torch
from torch.utils._python_dispatch import TorchDispatchMode

from samtune.data.augment import image_transform, seeded
from samtune.data.catalogue import CATALOGUE
from samtune.data.device_augment import APPLIED, NEGATED, POLICY, VARIANT_TABLE
from samtune.data.loaders import DeviceLoader
from samtune.data.tensors import TensorData
from samtune.data.worker_loader import WorkerLoader
from samtune.models import create_model

CIFAR100_MEAN, CIFAR100_STD = CATALOGUE["cifar100"].mean, CATALOGUE["cifar100"].std


def images_per_second(loader, device):
    """Images per second over one epoch, touching every batch."""
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    sync()
    start, seen = time.perf_counter(), 0
    checksum = torch.zeros((), device=device)
    for x, _ in loader:
        checksum += x[:, 0, 0, 0].sum()
        seen += len(x)
    sync()
    return seen / (time.perf_counter() - start)


def images_per_cpu_second(transform, pixels):
    """The recipe applied in this process, per second of its CPU time: what one worker
    delivers on a core of its own, whatever else the machine runs."""
    start = time.process_time()
    for seed, image in enumerate(pixels):
        seeded(transform, image, seed)
    return len(pixels) / (time.process_time() - start)


class CountOps(TorchDispatchMode):
    """Counts ATen operator calls (views included): an upper bound on a GPU's kernel launches."""

    def __init__(self):
        super().__init__()
        self.count = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.count += 1
        return func(*args, **(kwargs or {}))


def device_recipe_costs(loader, batches=4):
    """(ATen calls, v2.functional op calls) per batch of the device recipe, over `batches` batches:
    one op call per distinct (op, magnitude, sign) drawn at each of the two op positions."""
    epoch = iter(loader)
    with CountOps() as counter:
        for _ in range(batches):
            next(epoch)
    draws = loader.policy.draw(loader.batch_size * batches, height=32, width=32,
                               generator=torch.Generator().manual_seed(0)).autoaugment.long()
    groups = 0
    for rows in draws.split(loader.batch_size):
        for position in range(2):
            applied = rows[:, APPLIED][:, position].bool()
            variants = VARIANT_TABLE[position, rows[applied, POLICY], rows[applied][:, NEGATED][:, position]]
            groups += len(variants.unique())
    return counter.count / batches, groups / batches


def images_per_cpu_second_of(loader):
    """Images of one epoch of `loader` per second of this process's CPU time."""
    start, seen = time.process_time(), 0
    for x, _ in loader:
        seen += len(x)
    return seen / (time.process_time() - start)


def vit_forward_flops(model, image_size=32, patch=4):
    """Multiply-adds x 2 of one ViT forward per image: every Linear on the tokens it sees
    (patch projection on the patches, blocks on patches + class token, head on the class
    token) plus attention's two T x T x d products per block. LayerNorm, GELU and softmax
    are left out (a few percent)."""
    patches = (image_size // patch) ** 2
    tokens = patches + 1
    flops = 0
    for name, module in model.named_modules():
        if isinstance(module, torch.nn.Linear):
            seen = patches if name.startswith("patch_embed") else 1 if name == "head" else tokens
            flops += 2 * module.in_features * module.out_features * seen
    dim = model.head.in_features
    return flops + len(model.blocks) * 2 * (2 * tokens * tokens * dim)


def vit_pass_seconds(batch, device, repeats, bf16=False):
    """Median seconds of one forward + backward of ViT-T (100 classes, 32x32) at `batch`."""
    model = create_model("vit_tiny", num_classes=100, in_channels=3, image_size=32).to(device)
    x = torch.randn(batch, 3, 32, 32, device=device)
    y = torch.randint(0, 100, (batch,), device=device)
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    times = []
    for _ in range(repeats + 1):  # the first is warm-up
        sync()
        start = time.perf_counter()
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
            outputs = model(x)
        torch.nn.functional.cross_entropy(outputs.float(), y).backward()
        model.zero_grad(set_to_none=True)
        sync()
        times.append(time.perf_counter() - start)
    return sorted(times[1:])[len(times[1:]) // 2], model


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=8192)
    parser.add_argument("--batch-size", type=int, default=512)
    parser.add_argument("--workers", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1, help="torch threads of the main process")
    parser.add_argument("--vit-batch", type=int, default=64, help="ViT-T batch timed (scaled to --batch-size)")
    parser.add_argument("--vit-repeats", type=int, default=3)
    parser.add_argument("--bf16", action="store_true", help="time the ViT pass under bf16 autocast")
    parser.add_argument("--cpu-images", type=int, default=2000, help="images timed in-process for images/CPU-s")
    parser.add_argument("--gpu-tflops", type=float, default=989.0, help="dense bf16 peak of the GPU estimated for "
                        "(H100 SXM: 989)")
    parser.add_argument("--utilization", type=float, default=0.4, help="fraction of that peak assumed")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)

    g = torch.Generator().manual_seed(0)
    pixels = torch.randint(0, 256, (args.images, 3, 32, 32), generator=g, dtype=torch.uint8)
    labels = torch.randint(0, 100, (args.images,), generator=g)
    transform = image_transform(size=32, pad=4, mean=CIFAR100_MEAN, std=CIFAR100_STD, autoaugment=True,
                                erasing=0.25)
    mean = torch.tensor(CIFAR100_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(CIFAR100_STD).view(1, 3, 1, 1)
    x = ((pixels.float() / 255 - mean) / std).to(device)
    data = TensorData("synthetic", x, labels.to(device), x[:1], labels[:1].to(device), 100, 3, 32, "crop_flip", 4,
                      CIFAR100_MEAN, CIFAR100_STD, tuple(map(str, range(100))))
    print(f"{args.images} synthetic 3x32x32 uint8 images, batch {args.batch_size}, device {device}, "
          f"main-process torch threads {args.threads}")

    loaders = {"device": DeviceLoader(data.train_x, data.train_y, batch_size=args.batch_size,
                                      augment="crop_flip", pad=4, fill=data.pad_fill, seed=0),
               "device recipe": data.train_loader(batch_size=args.batch_size, seed=0, autoaugment=True, erasing=0.25)}
    for workers in args.workers:
        loaders[workers] = WorkerLoader(pixels, labels, transform=transform, batch_size=args.batch_size, seed=0,
                                        workers=workers, device=device)
    for loader in loaders.values():  # warm-up: worker start-up, allocator
        for _ in loader:
            pass
    rounds = {key: [] for key in loaders}
    for _ in range(args.rounds):
        for key, loader in loaders.items():
            rounds[key].append(images_per_second(loader, device))
    rates = {key: sorted(values)[len(values) // 2] for key, values in rounds.items()}
    device_rate, recipe_rate = rates.pop("device"), rates.pop("device recipe")
    print(f"DeviceLoader, crop + flip batched      : {device_rate:10,.0f} images/s")
    print(f"DeviceLoader, full recipe batched      : {recipe_rate:10,.0f} images/s (rounds "
          f"{', '.join(f'{r:,.0f}' for r in rounds['device recipe'])})")
    recipe_cpu = images_per_cpu_second_of(loaders["device recipe"])
    calls, groups = device_recipe_costs(loaders["device recipe"])
    print(f"  full recipe batched in-process: {recipe_cpu:,.0f} images per CPU-second = {1e6 / recipe_cpu:.0f} us "
          f"per image; per batch of {args.batch_size}: {groups:.0f} v2.functional op calls, {calls:,.0f} ATen "
          f"operator calls (views included)")
    for workers in args.workers:
        print(f"WorkerLoader, full recipe, {workers:2d} worker(s): {rates[workers]:10,.0f} images/s "
              f"(device loader / this = {device_rate / rates[workers]:.1f}x; rounds "
              f"{', '.join(f'{r:,.0f}' for r in rounds[workers])})")
    per_core = images_per_cpu_second(transform, pixels[:args.cpu_images])
    print(f"full recipe in-process: {per_core:,.0f} images per CPU-second (one worker on a core of its own)")
    for workers in args.workers:
        if workers > 1 and 1 in rates:
            print(f"speed-up {workers} workers / 1 worker: {rates[workers] / rates[1]:.2f}")

    if args.vit_repeats:
        seconds, model = vit_pass_seconds(args.vit_batch, device, args.vit_repeats, args.bf16)
        params = sum(p.numel() for p in model.parameters())
        scale = args.batch_size / args.vit_batch
        print(f"ViT-T ({params:,} parameters), one forward + backward at batch {args.vit_batch}: {seconds:.3f} s; "
              f"a SAM/GSAM step at batch {args.batch_size} (2 passes, x{scale:g}): {2 * seconds * scale:.2f} s "
              f"= {args.batch_size / (2 * seconds * scale):,.0f} images/s consumed")
        forward = vit_forward_flops(model)
        step_per_image = 2 * 3 * forward  # two forward-backward passes, backward = 2 forwards
        print(f"FLOPs per image: forward {forward / 1e6:.1f} M, SAM step {step_per_image / 1e9:.2f} G; measured "
              f"here {3 * forward * args.vit_batch / seconds / 1e9:.0f} GFLOP/s")
        rate = args.gpu_tflops * 1e12 * args.utilization / step_per_image
        print(f"ESTIMATE, not a measurement: a GPU at {args.utilization:.0%} of {args.gpu_tflops:g} TFLOP/s consumes "
              f"{rate:,.0f} images/s ({args.batch_size / rate * 1e3:.1f} ms per "
              f"step at batch {args.batch_size}) = {rate / per_core:.0f} workers at {per_core:,.0f} images/s each; "
              f"with the recipe batched on the device: no workers")


if __name__ == "__main__":
    main()
