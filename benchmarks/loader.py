"""One training epoch (random crop + horizontal flip, batch 128, drop_last) two ways, same tensors:

- samtune.data.loaders.DeviceLoader: batched crop/flip on the data's device;
- torch.utils.data.DataLoader (num_workers=0) with torchvision.transforms.v2
  RandomCrop(size, padding=4) + RandomHorizontalFlip applied per sample.

Prints seconds per epoch for each and the ratio (DataLoader / DeviceLoader).

    python benchmarks/loader.py                                   # synthetic CIFAR-shaped tensors
    python benchmarks/loader.py --data imagefolder:/path/to/cifar10-jpg --device cuda
"""

import argparse
import time

import torch
from torch.utils.data import DataLoader, Dataset
from torchvision.transforms import v2

from samtune.data.loaders import DeviceLoader
from samtune.data.tensors import load_dataset


class TransformedTensors(Dataset):
    """(transform(x[i]), y[i]): the per-sample pipeline a torchvision user would write."""

    def __init__(self, x, y, transform):
        self.x, self.y, self.transform = x, y, transform

    def __len__(self):
        return len(self.x)

    def __getitem__(self, i):
        return self.transform(self.x[i]), self.y[i]


def time_epoch(loader, device, max_batches):
    """Seconds to draw up to `max_batches` batches (touching each), scaled to the full epoch."""
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    checksum = torch.zeros((), device=device)
    sync()
    start = time.perf_counter()
    seen = 0
    for seen, (xb, _) in enumerate(loader, 1):
        checksum += xb[:, 0, 0, 0].sum()
        if seen == max_batches:
            break
    sync()
    return (time.perf_counter() - start) * len(loader) / seen


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default=None, help="data set name for load_dataset; default synthetic 50k x 3x32x32")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--max-batches", type=int, default=None, help="time this many batches, scale to an epoch")
    parser.add_argument("--threads", type=int, default=1,
                        help="torch CPU threads (default 1: per-item transforms are single-threaded anyway, "
                             "and intra-op threads thrash on a shared machine)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)

    if args.data is None:
        x = torch.randn(50_000, 3, 32, 32, device=device)
        y = torch.randint(0, 10, (50_000,), device=device)
        pad, fill = 4, 0.0
        print(f"data: synthetic {tuple(x.shape)} on {device}")
    else:
        start = time.perf_counter()
        data = load_dataset(args.data, device=device)
        seconds = time.perf_counter() - start
        print(f"data: {args.data} {tuple(data.train_x.shape)} on {device}, loaded in {seconds:.1f} s")
        x, y, pad, fill = data.train_x, data.train_y, data.pad, list(data.pad_fill)

    size = x.shape[-1]
    max_batches = args.max_batches or len(x) // args.batch_size
    ours = DeviceLoader(x, y, batch_size=args.batch_size, augment="crop_flip", pad=pad, fill=fill, seed=0)
    transform = v2.Compose([v2.RandomCrop(size, padding=pad, fill=fill), v2.RandomHorizontalFlip()])
    theirs = DataLoader(TransformedTensors(x, y, transform), batch_size=args.batch_size, shuffle=True,
                        drop_last=True, num_workers=0)

    time_epoch(ours, device, 5), time_epoch(theirs, device, 5)  # warm-up (kernels, allocator)
    ours_s = time_epoch(ours, device, max_batches)
    theirs_s = time_epoch(theirs, device, max_batches)
    print(f"DeviceLoader            : {ours_s:8.3f} s/epoch ({len(x) / ours_s:,.0f} samples/s)")
    print(f"DataLoader + v2 per item: {theirs_s:8.3f} s/epoch ({len(x) / theirs_s:,.0f} samples/s)")
    print(f"ratio DataLoader / DeviceLoader: {theirs_s / ours_s:.1f}x")


if __name__ == "__main__":
    main()
