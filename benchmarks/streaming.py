"""Images per second per CPU core for decoding + the ImageNet training transform (samtune.data.streaming).

Real ImageNet is not needed: the script writes ImageNet-like JPEGs into a temporary
folder (500x375, the most common ImageNet size, quality 90; smooth random colour fields
plus pixel noise, tuned to ~110 KB a file, ImageNet's average train file size) and times

- one process, one thread: decode only, and decode + RandomResizedCrop(224) + flip +
  normalize, with torchvision.io.decode_image and with PIL (PIL image converted to a
  tensor before the v2 transforms, and the v2 transforms on the PIL image itself);
- samtune.data.streaming.StreamingLoader with 1 and 2 loader workers and both decoders: the
  images/s the training loop receives (wall clock), and images per CPU-second of the
  workers and the main process together (what a core can feed). "uint8 out" is a GPU
  trial's CPU work: the workers' uint8 crops are batched and normalization is left to the
  GPU; "normalized on CPU" adds the normalization a CPU trial does in its main process.

CPU-seconds, not wall time, give the per-core rates, so other processes on the machine
slow the wall-clock numbers but barely these. Files are read from the page cache, so
disk or network reads are not counted.

    python benchmarks/streaming.py                # 200 images
    python benchmarks/streaming.py --images 400 --size 224 --batch-size 32
"""

from __future__ import annotations

import argparse
import gc
import os
import resource
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torchvision.transforms import v2

from samtune.data.streaming import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    StreamingData,
    StreamingLoader,
    decode_pil,
    decode_torchvision,
    train_transform,
)

CLASSES = 10
NOISE = 22  # pixel noise std: puts the mean file size near ImageNet's ~110 KB


def write_jpegs(root: Path, n: int, *, width: int = 500, height: int = 375, seed: int = 0) -> list[str]:
    """n JPEGs under root/train/<class>/ plus one per class under root/val/; returns the train paths."""
    rng = np.random.default_rng(seed)
    paths = []
    for i in range(n + CLASSES):
        split = "train" if i < n else "val"
        folder = root / split / f"n{i % CLASSES:08d}"
        folder.mkdir(parents=True, exist_ok=True)
        coarse = Image.fromarray(rng.integers(0, 256, (height // 15, width // 15, 3), dtype=np.uint8))
        smooth = np.asarray(coarse.resize((width, height), Image.BICUBIC), dtype=np.float32)
        pixels = np.clip(smooth + rng.normal(0, NOISE, smooth.shape), 0, 255).astype(np.uint8)
        path = folder / f"img{i:05d}.JPEG"
        Image.fromarray(pixels).save(path, quality=90)
        if split == "train":
            paths.append(str(path))
    return paths


def per_image_rate(paths: list[str], work, repeats: int) -> float:
    """Images per CPU-second of `work(path)` in this process (one thread), best of `repeats` passes."""
    best = float("inf")
    for _ in range(repeats):
        start = time.process_time()
        for path in paths:
            work(path)
        best = min(best, time.process_time() - start)
    return len(paths) / best


def children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def loader_rate(
    data: StreamingData, *, workers: int, batch_size: int, epochs: int, normalize: bool
) -> tuple[float, float]:
    """(images/s wall clock after a warm-up epoch, images per CPU-second over the loader's whole life).

    The CPU time of the workers is known once they have exited, so it covers the warm-up
    epoch and the workers' start too; the main process's share is its own CPU time.
    """
    cpu_start, own_start = children_cpu(), time.process_time()
    loader = StreamingLoader(
        data.train, transform=train_transform(data.image_size, normalize=False), batch_size=batch_size,
        stats=(data.mean, data.std) if normalize else None, workers=workers, decoder=data.decoder,
    )
    seen = sum(len(x) for x, _ in loader)
    start, timed = time.perf_counter(), 0
    for _ in range(epochs):
        for x, _ in loader:
            timed += len(x)
    wall = time.perf_counter() - start
    del loader
    gc.collect()  # shuts the persistent workers down, so that their CPU time is counted
    cpu = children_cpu() - cpu_start + time.process_time() - own_start
    return timed / wall, (seen + timed) / cpu


def cpu_model() -> str:
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return "unknown"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=200)
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--epochs", type=int, default=3, help="timed loader epochs after the warm-up one")
    parser.add_argument("--repeats", type=int, default=3, help="passes of the single-process timings (best kept)")
    args = parser.parse_args()
    # one core for the in-process timings; DataLoader workers run with one thread each anyway
    torch.set_num_threads(1)
    transform, crop_flip = train_transform(args.size), train_transform(args.size, normalize=False)
    on_pil = v2.Compose([v2.RandomResizedCrop(args.size), v2.RandomHorizontalFlip(), v2.PILToTensor(),
                         v2.ToDtype(torch.float32, scale=True), v2.Normalize(IMAGENET_MEAN, IMAGENET_STD)])

    def pil_image(path):
        with Image.open(path) as image:
            return image.convert("RGB")

    with tempfile.TemporaryDirectory() as tmp:
        paths = write_jpegs(Path(tmp), args.images)
        kb = np.mean([os.path.getsize(p) for p in paths]) / 1024
        print(f"{cpu_model()}, {os.cpu_count()} CPUs; {len(paths)} JPEGs 500x375 q90, mean {kb:.0f} KB; "
              f"training transform at {args.size}")
        single = {
            "decode torchvision.io": lambda p: decode_torchvision(p),
            "decode PIL": lambda p: decode_pil(p),
            "decode torchvision.io + crop/flip (uint8)": lambda p: crop_flip(decode_torchvision(p)),
            "decode torchvision.io + transform": lambda p: transform(decode_torchvision(p)),
            "decode PIL + transform (tensor)": lambda p: transform(decode_pil(p)),
            "decode PIL + transform (on PIL image)": lambda p: on_pil(pil_image(p)),
        }
        print(f"load average at start {os.getloadavg()[0]:.2f} (other processes share the CPUs when > 0)")
        print("\none process, one thread (images per CPU-second):")
        rates = {name: per_image_rate(paths, work, args.repeats) for name, work in single.items()}
        for name, rate in rates.items():
            print(f"  {name:42s} {rate:7.1f}   ({1000 / rate:5.2f} ms/image)")
        tv, pil = rates["decode torchvision.io + transform"], rates["decode PIL + transform (tensor)"]
        print(f"  torchvision.io / PIL, decode only: {rates['decode torchvision.io'] / rates['decode PIL']:.2f}x; "
              f"decode + transform: {tv / pil:.2f}x")
        print(f"\nStreamingLoader, batch {args.batch_size}, {args.epochs} timed epochs after a warm-up one:")
        results = {}
        for decoder in ("torchvision", "pil"):
            data = StreamingData(tmp, size=args.size, decoder=decoder)
            for normalize in (False, True):
                for workers in (1, 2):
                    wall, per_cpu = loader_rate(data, workers=workers, batch_size=args.batch_size,
                                                epochs=args.epochs, normalize=normalize)
                    results[decoder, normalize, workers] = per_cpu
                    mode = "normalized on CPU" if normalize else "uint8 out"
                    print(f"  {decoder:11s} {mode:17s} workers {workers}: {wall:7.1f} images/s wall clock, "
                          f"{per_cpu:7.1f} images per CPU-second")
        for workers in (1, 2):
            ratio = results["torchvision", False, workers] / results["pil", False, workers]
            print(f"  torchvision.io / PIL per CPU-second, uint8 out, {workers} worker(s): {ratio:.2f}x")
        print(f"load average at end {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
