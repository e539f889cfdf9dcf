"""GPU acceptance: the first command to run on a machine with a GPU.

One command measures what a GPU search relies on and writes a table, with the device's
name, the date and the torch version, into benchmarks/RESULTS.md (its own section,
replaced on the next run on the same kind of device):

a. a CIFAR-shaped ResNet-18 GSAM +B trial (batch b → 2b → 4b over three epochs, a fixed
   number of steps) through samtune's trial loop (``samtune.trial.loop.train``), in fp32
   and in bf16: steps/s and images/s;
b. the trial's augmentation (crop + flip, AutoAugment, RandomErasing 0.25) batched on the
   device (``DeviceLoader`` with a ``DevicePolicy``) against the same recipe image by image
   in CPU loader workers (``WorkerLoader``): images/s;
c. four trials packed on one GPU at ``gpu: 0.25`` through ``samtune search`` (a tiny grid),
   their summed images/s against the same trial alone (on a CPU: two trials at ``cpu: 1``);
d. a data-parallel trial: the trial loop on a process group (NCCL, one worker per GPU, at
   most two; gloo and one worker on a CPU), and the same through ``samtune search``
   (Ray Train workers);
e. the Hessian's λ_max by samtune's Lanczos against PyHessian's power iteration on the device.

The images are synthetic, of CIFAR's shape (10 classes, 3×32×32, written once as an image
folder the trials read as ``imagefolder:<path>``): nothing is downloaded.  Each section
fails soft: its error is reported in its row, the others still run, and the command exits 1
at the end.  Sections (c) and the Ray half of (d) need Ray, MLflow and Optuna and say
"skipped" without them; (a), (b), the process-group half of (d) and (e) need torch,
torchvision, pydantic and PyYAML (samtune's trial loop imports no Ray or MLflow), and (e)
PyHessian.  ``--quick`` runs every section at the smallest sizes, on samtune's small CNN in
place of ResNet-18 and without the Ray Train half of (d): a check that each runs, in about a
minute on two CPU cores, not a measurement.

    python benchmarks/gpu_acceptance.py                     # on cuda; without a GPU, the CPU smoke run
    python benchmarks/gpu_acceptance.py --device cpu --quick  # the CPU smoke run (tests/test_gpu_acceptance.py)
    python benchmarks/gpu_acceptance.py --sections a,e --no-results
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import importlib.util
import json
import math
import os
import platform
import re
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import traceback
import warnings
from collections.abc import Callable
from pathlib import Path

import torch

RESULTS = Path(__file__).resolve().parent / "RESULTS.md"
SECTIONS = {"a": "GSAM +B trial in fp32 and bf16", "b": "augmentation on the device against CPU loader workers",
            "c": "trials packed through `samtune search`", "d": "data-parallel trial",
            "e": "Hessian λ_max against PyHessian"}
HEADINGS = {"cuda": "## GPU acceptance: `benchmarks/gpu_acceptance.py` (GPU)",
            "cpu": "## GPU acceptance: `benchmarks/gpu_acceptance.py`, CPU smoke run (not a GPU figure)"}
LOOPBACK_ENV = {"RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0", "RAY_AUTH_MODE": "disabled",
                "RAY_USAGE_STATS_ENABLED": "0", "MLFLOW_DISABLE_TELEMETRY": "true"}
CLASSES = 10
AGREEMENT = 0.02  # the largest relative difference of the two λ_max accepted


@dataclasses.dataclass(frozen=True)
class Sizes:
    """How large each section's work is."""

    model: str  # of every section: resnet18, or for --quick the small CNN on the same images
    batch: int  # +B's first batch; the trial trains at batch, 2 batch and 4 batch
    last_steps: int  # steps of the last (4 batch) epoch: the trial takes 7 x this many steps
    test_per_class: int
    warmup: bool  # one untimed run of each timed trial first (allocator, cuDNN, autocast caches)
    loader_workers: int
    loader_epochs: int
    packed: int  # trials of the packed search
    search_epochs: int  # their epochs (+B's three stages over them)
    hessian_batch: int
    hessian_batches: int
    hessian_iters: int

    @property
    def train_images(self) -> int:
        return 4 * self.batch * self.last_steps

    @property
    def steps(self) -> int:
        return 7 * self.last_steps


def sizes_for(device: torch.device, quick: bool) -> Sizes:
    cores = os.cpu_count() or 1
    if quick:  # every code path in seconds on two CPU cores: nothing here measures anything
        return Sizes(model="small_cnn", batch=4, last_steps=1, test_per_class=1, warmup=False, loader_workers=1,
                     loader_epochs=1, packed=2, search_epochs=3, hessian_batch=4, hessian_batches=1, hessian_iters=20)
    if device.type == "cuda":
        return Sizes(model="resnet18", batch=128, last_steps=10, test_per_class=20, warmup=True,
                     loader_workers=max(1, min(8, cores)), loader_epochs=3, packed=4, search_epochs=6,
                     hessian_batch=128, hessian_batches=2, hessian_iters=100)
    return Sizes(model="resnet18", batch=16, last_steps=2, test_per_class=2, warmup=False,
                 loader_workers=max(1, min(2, cores)), loader_epochs=2, packed=2, search_epochs=3,
                 hessian_batch=4, hessian_batches=2, hessian_iters=50)


@dataclasses.dataclass
class Row:
    section: str
    what: str
    status: str = "ok"  # "ok", "skipped: why", "FAILED: error"
    figures: str = ""


class Skip(Exception):
    """A section that cannot run here (a missing package, too few GPUs)."""


# -- the machine ---------------------------------------------------------------------------
def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def memory_gib() -> float | None:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                return int(line.split()[1]) / 2**20
    except OSError:
        pass
    return None


def machine_line(device: torch.device) -> str:
    memory = memory_gib()
    parts = [device_name(device)]
    if device.type == "cuda":
        total = torch.cuda.get_device_properties(device).total_memory / 2**30
        parts.append(f"{total:.0f} GiB, {torch.cuda.device_count()} GPU(s), CUDA {torch.version.cuda}")
        parts.append(f"host {device_name(torch.device('cpu'))}")
    parts.append(f"{os.cpu_count()} cores" + (f", {memory:.0f} GiB RAM" if memory else "")
                 + (f", load average {os.getloadavg()[0]:.1f} at the start" if hasattr(os, "getloadavg") else ""))
    parts.append(f"Python {platform.python_version()}, torch {torch.__version__}")
    return "; ".join(parts)


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def has(*modules: str) -> str | None:
    """The first of ``modules`` that is not installed, else None."""
    for module in modules:
        try:
            if importlib.util.find_spec(module) is None:
                return module
        except (ImportError, ValueError):
            return module
    return None


# -- the synthetic data set ----------------------------------------------------------------
def write_image_folder(folder: Path, train: int, test_per_class: int, seed: int = 0) -> Path:
    """CIFAR's shape as torchvision's ImageFolder layout: ``train`` images and
    ``test_per_class`` per class, 32x32 RGB PNGs; each class has its own tint under noise
    (something to learn)."""
    from PIL import Image

    generator = torch.Generator().manual_seed(seed)
    tints = torch.randint(40, 216, (CLASSES, 3), generator=generator)
    for split, count in (("train", train), ("test", test_per_class * CLASSES)):
        for i in range(count):
            label = i % CLASSES
            noise = torch.randint(-40, 41, (32, 32, 3), generator=generator)
            pixels = (tints[label] + noise).clamp(0, 255).to(torch.uint8).numpy()
            path = folder / split / f"class{label}" / f"{i:06d}.png"
            path.parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray(pixels).save(path)
    return folder


def trial_values(data: Path, sizes: Sizes, **overrides) -> dict:
    """The +B trial on the synthetic folder (ResNet-18 with its CIFAR stem): GSAM, SGD with
    momentum, three batch stages of one epoch each, no end-of-trial measures."""
    return {"dataset": f"imagefolder:{data}", "model": sizes.model, "optimizer": "gsam", "base_optimizer": "sgd",
            "lr": 0.05, "rho": 0.05, "alpha": 0.1, "epochs": 3, "batch_size": sizes.batch,
            "batch_growth_ratio": 2.0, "batch_stages": 3, "train_eval_examples": 0, "sharpness": [],
            "eval_batch_size": 256, "seed": 0} | overrides


def timed_trial(values: dict, data=None, replica=None, warmup: bool = False) -> dict:
    """samtune's trial loop on ``values`` (optionally a warm-up run first): the training
    seconds (every epoch's, evaluation left out), steps, images and final training loss."""
    from samtune.config import make_trial_config
    from samtune.trial.loop import train
    from samtune.trial.replica import SINGLE

    config = make_trial_config(values)
    for _ in range(2 if warmup else 1):
        result = train(config, data=data, replica=replica or SINGLE)
    if result.status != "completed":
        raise RuntimeError(f"trial ended {result.status}: {result.error}")
    history = result.history
    seconds = sum(r["epoch_seconds"] for r in history)
    last = history[-1]
    return {"seconds": seconds, "steps": last["steps"], "images": last["samples_seen"],
            "loss": last["train_loss"], "batches": [r["batch_size"] for r in history],
            "records": [{key: r[key] for key in ("epoch", "samples_seen", "epoch_seconds")} for r in history]}


def rates(run: dict) -> str:
    return (f"{run['steps'] / run['seconds']:.2f} steps/s, {run['images'] / run['seconds']:,.0f} images/s "
            f"({run['steps']} steps at batch {' → '.join(str(int(b)) for b in run['batches'])}, "
            f"{run['seconds']:.2f} s; final train loss {run['loss']:.3f})")


# -- (a) -------------------------------------------------------------------------------------
def section_a(ctx) -> list[Row]:
    from samtune.config import make_trial_config
    from samtune.trial.loop import open_data

    rows, found = [], {}
    data = open_data(make_trial_config(ctx.values()))
    for precision in ("fp32", "bf16"):
        row = Row("a", f"{ctx.model_name} GSAM +B, {precision}, samtune.trial.loop.train")
        try:
            if ctx.device.type == "cuda":
                torch.cuda.reset_peak_memory_stats(ctx.device)
            found[precision] = run = timed_trial(ctx.values(precision=precision), data=data, warmup=ctx.sizes.warmup)
            row.figures = rates(run)
            if ctx.device.type == "cuda":
                row.figures += f"; peak {torch.cuda.max_memory_allocated(ctx.device) / 2**30:.2f} GiB"
            if not math.isfinite(run["loss"]):
                raise RuntimeError(f"non-finite training loss {run['loss']}")
        except Exception as err:  # noqa: BLE001 - reported in the row
            row.status = failure(err)
        rows.append(row)
    speed = {precision: run["images"] / run["seconds"] for precision, run in found.items()}
    if len(speed) == 2:
        rows[-1].figures += f"; bf16 / fp32 = {speed['bf16'] / speed['fp32']:.2f}×"
    ctx.single_rate = speed.get("fp32")
    return rows


# -- (b) -------------------------------------------------------------------------------------
def loader_rate(loader, device: torch.device, epochs: int) -> float:
    """Median images/s over ``epochs`` epochs after a warm-up epoch, every batch touched."""
    for _ in loader:
        pass
    per_epoch = []
    for _ in range(epochs):
        synchronize(device)
        start, seen = time.perf_counter(), 0
        checksum = torch.zeros((), device=device)
        for x, _ in loader:
            checksum += x[:, 0, 0, 0].sum()
            seen += len(x)
        synchronize(device)
        per_epoch.append(seen / (time.perf_counter() - start))
    return statistics.median(per_epoch)


def section_b(ctx) -> list[Row]:
    from samtune.config import make_trial_config
    from samtune.data.trial_data import Recipe
    from samtune.trial.loop import open_data

    data = open_data(make_trial_config(ctx.values()))
    batch = min(4 * ctx.sizes.batch, data.train_size)
    policies = {"autoaugment": True, "erasing": 0.25}
    what = f"crop + flip, AutoAugment, RandomErasing 0.25; {data.train_size} images, batch {batch}"
    device_row = Row("b", f"augmentation on {ctx.device.type} (DeviceLoader + DevicePolicy)")
    workers_row = Row("b", f"augmentation in {ctx.sizes.loader_workers} CPU loader worker(s) (WorkerLoader)")
    found = {}
    for row, recipe in ((device_row, Recipe(pipeline="device", **policies)),
                        (workers_row, Recipe(pipeline="workers", workers=ctx.sizes.loader_workers, **policies))):
        try:
            loader = data.train_loader(recipe, batch_size=batch, seed=0, rank=0, world=1, device=ctx.device)
            found[row.what] = rate = loader_rate(loader, ctx.device, ctx.sizes.loader_epochs)
            row.figures = f"{rate:,.0f} images/s ({type(loader).__name__}; {what})"
            del loader  # its worker processes end with it
        except Exception as err:  # noqa: BLE001
            row.status = failure(err)
    if len(found) == 2:
        workers_row.figures += f"; device / workers = {found[device_row.what] / found[workers_row.what]:.1f}×"
    return [device_row, workers_row]


# -- (c) and the Ray half of (d): samtune search ---------------------------------------------
def run_search(ctx, name: str, spec: dict) -> tuple[list[list[dict]], float]:
    """``samtune search`` on ``spec`` in a child process on 127.0.0.1; every trial's results
    (Ray's result.json lines, in order) and the command's wall seconds."""
    import yaml

    folder = ctx.work / name
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{name}.yaml"
    path.write_text(yaml.safe_dump(spec | {"name": name}, sort_keys=False))
    storage = folder / "ray"
    env = dict(os.environ, **LOOPBACK_ENV)
    env.setdefault("SAMTUNE_LOG_DIR", str(ctx.work / "logs"))
    command = [sys.executable, "-m", "samtune.cli", "search", str(path), "--tracking-uri",
               f"sqlite:///{ctx.work / 'mlflow.db'}", "--storage", str(storage)]
    start = time.perf_counter()
    done = subprocess.run(command, cwd=folder, env=env, capture_output=True, text=True, timeout=ctx.search_timeout)
    wall = time.perf_counter() - start
    if done.returncode != 0:
        tail = " | ".join((done.stdout + done.stderr).strip().splitlines()[-6:])
        raise RuntimeError(f"samtune search exited {done.returncode}: {tail}")
    trials = []
    for result in sorted(storage.glob(f"{name}-*/*/result.json")):  # the Tune trials' folders
        records = [json.loads(line) for line in result.read_text().splitlines() if line.strip()]
        records = [r for r in records if "samples_seen" in r and "epoch_seconds" in r]
        if records:
            trials.append(sorted(records, key=lambda r: r["epoch"]))
    return trials, wall


def trial_rate(records: list[dict], skip_first: bool = True) -> float:
    """A trial's own images per training second, its first epoch (warm-up) left out when it has more."""
    kept = records[1:] if skip_first and len(records) > 1 else records
    before = {r["epoch"]: r["samples_seen"] for r in records}
    images = sum(r["samples_seen"] - before.get(r["epoch"] - 1, 0) for r in kept)
    return images / sum(r["epoch_seconds"] for r in kept)


def overlap(trials: list[list[dict]]) -> float:
    """The fraction of the span from the first trial's start to the last one's end during
    which all of them ran (Ray's timestamp and time_total_s of each trial's last result)."""
    ends = [t[-1]["timestamp"] for t in trials]
    starts = [t[-1]["timestamp"] - t[-1]["time_total_s"] for t in trials]
    span = max(ends) - min(starts)
    return max(0.0, min(ends) - max(starts)) / span if span > 0 else 1.0


def search_trial(ctx, epochs: int) -> dict:
    """The trial the searches run: bf16 on a GPU (as gsam_schedule_search), one thread on a CPU."""
    values = ctx.values(epochs=epochs, batch_stages=3)
    values.pop("device")
    if ctx.device.type == "cuda":
        return values | {"precision": "bf16"}
    return values | {"num_threads": 1}


def section_c(ctx) -> list[Row]:
    n = ctx.sizes.packed
    gpu = ctx.device.type == "cuda"
    share = {"gpu": 1 / n, "cpu": min(1, (os.cpu_count() or 1) / n)} if gpu else {"cpu": 1}
    row = Row("c", f"{n} trials packed at {'gpu: ' + format(1 / n, 'g') if gpu else 'cpu: 1'} through samtune search "
                   "(grid over seed), against one alone")
    missing = has("ray", "mlflow", "optuna")
    if missing:
        row.status = f"skipped: {missing} not installed"
        return [row]
    if gpu and torch.cuda.device_count() > 1:
        row.figures = (f"({torch.cuda.device_count()} GPUs: Ray may spread the trials; CUDA_VISIBLE_DEVICES=0 "
                       "packs them)")
    try:
        trial = search_trial(ctx, ctx.sizes.search_epochs)
        trial.pop("seed")  # the grid's axis
        spec = {"trial": trial, "grid": {"seed": list(range(n))}, "samples": 1, "concurrency": n,
                "resources": share, "objective": {"metric": "final_test_error", "mode": "min"}, "seed": 0}
        trials, wall = run_search(ctx, "gpu-acceptance-packed", spec)
        if len(trials) != n or any(len(t) != trial["epochs"] for t in trials):
            raise RuntimeError(f"expected {n} trials of {trial['epochs']} epochs, found "
                               f"{[len(t) for t in trials]} epochs")
        packed = [trial_rate(t) for t in trials]
        alone = trial_rate(timed_trial(trial | {"device": str(ctx.device), "seed": 0},
                                       warmup=ctx.sizes.warmup)["records"])
        total = sum(packed)
        span = max(t[-1]["timestamp"] for t in trials) - min(t[-1]["timestamp"] - t[-1]["time_total_s"] for t in trials)
        row.figures = (f"summed {total:,.0f} images/s (each {', '.join(f'{r:,.0f}' for r in packed)}), one alone "
                       f"{alone:,.0f} images/s: packed / alone = {total / alone:.2f}×; the trials overlapped "
                       f"{overlap(trials):.0%} of their span; {sum(t[-1]['samples_seen'] for t in trials):,} images "
                       f"in {span:.0f} s of trials, {wall:.0f} s whole search (epochs after the first; "
                       f"{trial.get('precision', 'fp32')}) " + row.figures).rstrip()
    except Exception as err:  # noqa: BLE001
        row.status = failure(err)
    return [row]


# -- (d) -------------------------------------------------------------------------------------
def parallel_worker(rank: int, world: int, port: int, values: dict, backend: str, out: str, first: int = 0) -> None:
    """One worker of the process-group trial: its device (GPU ``first + rank`` on NCCL), the
    group, a collective, the trial."""
    import torch.distributed as dist

    from samtune.trial.replica import Replica

    device = torch.device(f"cuda:{first + rank}") if backend == "nccl" else torch.device("cpu")
    if device.type == "cuda":
        torch.cuda.set_device(device)
    dist.init_process_group(backend, init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world)
    try:
        probe = torch.ones(1, device=device)
        dist.all_reduce(probe)
        if probe.item() != world:
            raise RuntimeError(f"all_reduce gave {probe.item()}, not {world}")
        run = timed_trial(values | {"device": str(device)}, replica=Replica(rank, world))
        if rank == 0:
            Path(out).write_text(json.dumps(run))
    finally:
        dist.destroy_process_group()


def section_d(ctx) -> list[Row]:
    gpus = torch.cuda.device_count() if ctx.device.type == "cuda" else 0
    world = ctx.dp_workers or (min(2, gpus) if gpus else 1)
    backend = "nccl" if gpus else "gloo"
    rows = []
    # the trial loop on a process group, as Ray Train sets one up (its backend for the device)
    row = Row("d", f"data-parallel trial, {world} worker(s) on {backend} (process group, samtune.trial.loop.train)")
    try:
        if gpus and world > gpus:
            raise Skip(f"{world} workers need as many GPUs; {gpus} here")
        if world > 1 and ctx.sizes.batch % world:
            raise Skip(f"batch {ctx.sizes.batch} does not split across {world} workers")
        values = ctx.values(precision="fp32")
        values.pop("device")
        out = ctx.work / "parallel.json"
        if world == 1:
            parallel_worker(0, 1, free_port(), values, backend, str(out), ctx.device.index or 0)
        else:
            import torch.multiprocessing as mp

            mp.spawn(parallel_worker, args=(world, free_port(), values, backend, str(out)), nprocs=world, join=True)
        run = json.loads(out.read_text())
        row.figures = f"all_reduce checked; {rates(run)}"
        if ctx.single_rate:
            row.figures += f"; against (a) fp32 on one device: {run['images'] / run['seconds'] / ctx.single_rate:.2f}×"
        if world == 1:
            row.figures += " (one worker: DistributedDataParallel not engaged)"
    except Skip as why:
        row.status = f"skipped: {why}"
    except Exception as err:  # noqa: BLE001
        row.status = failure(err)
    rows.append(row)
    # the same through samtune search: Ray Train workers (its gloo on a CPU, NCCL on GPUs)
    ray_workers = world
    row = Row("d", f"data-parallel trial, {ray_workers} Ray Train worker(s) through samtune search")
    missing = has("ray", "mlflow", "optuna")
    if missing:
        row.status = f"skipped: {missing} not installed"
        return rows + [row]
    if ctx.quick:
        row.status = ("skipped: --quick (Ray Train's start-up alone is a minute or more on two busy CPU cores; "
                      "(c) runs the search path)")
        return rows + [row]
    try:
        trial = search_trial(ctx, 3)
        # each worker's CPUs leave room for the trial that drives them (Ray Train waits forever
        # for workers that cannot all be placed)
        cpus = min(1.0, round(((os.cpu_count() or 1) - 0.5) / ray_workers, 2))
        per_worker = {"cpu": cpus} | ({"gpu": 1} if gpus else {})
        # one worker needs a layout that still goes through Ray Train: workers that grow with the
        # batch, capped at one
        layout = {"workers": ray_workers} if ray_workers > 1 else {"per_worker_batch": 4 * ctx.sizes.batch,
                                                                   "max_workers": 1}
        spec = {"trial": trial, "samples": 1, "concurrency": 1, "resources": per_worker | layout,
                "objective": {"metric": "final_test_error", "mode": "min"}, "seed": 0}
        trials, wall = run_search(ctx, "gpu-acceptance-parallel", spec)
        if len(trials) != 1 or len(trials[0]) != trial["epochs"]:
            raise RuntimeError(f"expected one trial of {trial['epochs']} epochs, found {[len(t) for t in trials]}")
        records = trials[0]
        row.figures = (f"{trial_rate(records, skip_first=False):,.0f} images/s over {records[-1]['steps']} steps "
                       f"(workers {', '.join(str(int(r['workers'])) for r in records)} per epoch); "
                       f"{wall:.0f} s whole search")
    except Exception as err:  # noqa: BLE001
        row.status = failure(err)
    return rows + [row]


# -- (e) -------------------------------------------------------------------------------------
def section_e(ctx) -> list[Row]:
    row = Row("e", f"Hessian λ_max, {ctx.model_name} (init, eval mode), {ctx.sizes.hessian_batches} batch(es) of "
                   f"{ctx.sizes.hessian_batch}: samtune Lanczos against PyHessian power iteration, tol 1e-3")
    if has("pyhessian"):
        row.status = "skipped: pyhessian not installed (pip install pyhessian: the bench extra)"
        return [row]
    try:
        import torch.nn.functional as F
        from pyhessian import hessian

        from samtune import sharpness
        from samtune.models import create_model

        generator = torch.Generator().manual_seed(0)
        torch.manual_seed(0)
        model = create_model(ctx.sizes.model, num_classes=CLASSES, in_channels=3, image_size=32).to(ctx.device).eval()
        shape = (ctx.sizes.hessian_batch, 3, 32, 32)
        batches = [(torch.randn(shape, generator=generator).to(ctx.device),
                    torch.randint(0, CLASSES, (ctx.sizes.hessian_batch,), generator=generator).to(ctx.device))
                   for _ in range(ctx.sizes.hessian_batches)]
        iters = ctx.sizes.hessian_iters

        def ours():
            return sharpness.hessian_max_eigenvalue(model, F.cross_entropy, batches, iters=iters, tol=1e-3, seed=0)

        def theirs():
            torch.manual_seed(0)  # PyHessian draws its start vector from the global generator
            kwargs = {"data": batches[0]} if len(batches) == 1 else {"dataloader": batches}
            engine = hessian(model, F.cross_entropy, cuda=ctx.device.type == "cuda", **kwargs)
            values, _ = engine.eigenvalues(maxIter=iters, tol=1e-3)
            return values[0]

        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="Using backward\\(\\) with create_graph")
            result, ours_s = timed(ours, ctx.device)
            value, theirs_s = timed(theirs, ctx.device)
        for p in model.parameters():
            p.grad = None  # PyHessian leaves graph-holding gradients behind
        difference = abs(result.value - value) / abs(result.value)
        row.figures = (f"samtune {result.value:.5g} ({result.iterations} products, {ours_s:.2f} s), PyHessian "
                       f"{value:.5g} ({theirs_s:.2f} s): relative difference {difference:.1e}, time ratio "
                       f"PyHessian / samtune {theirs_s / ours_s:.2f}×")
        if not difference <= AGREEMENT:
            raise RuntimeError(f"the two λ_max differ by {difference:.1%} (> {AGREEMENT:.0%}): {row.figures}")
    except Exception as err:  # noqa: BLE001
        row.status = failure(err)
    return [row]


def timed(fn: Callable[[], object], device: torch.device) -> tuple[object, float]:
    synchronize(device)
    start = time.perf_counter()
    result = fn()
    synchronize(device)
    return result, time.perf_counter() - start


# -- running and reporting -------------------------------------------------------------------
def failure(err: BaseException) -> str:
    where = traceback.extract_tb(err.__traceback__)
    at = f" (at {Path(where[-1].filename).name}:{where[-1].lineno})" if where else ""
    text = str(err)
    if "Traceback" in text:  # a worker's error (torch.multiprocessing): its last line says what
        text = [line for line in text.splitlines() if line.strip()][-1]
    message = " ".join(text.split())[:400]
    return f"FAILED: {type(err).__name__}: {message}{at}"


@dataclasses.dataclass
class Context:
    device: torch.device
    sizes: Sizes
    work: Path
    data: Path | None = None
    single_rate: float | None = None  # (a)'s fp32 images/s, for (d)
    dp_workers: int = 0  # (d)'s workers (0: one per GPU, at most two; one on a CPU)
    search_timeout: int = 900
    quick: bool = False

    @property
    def model_name(self) -> str:
        return {"resnet18": "ResNet-18", "small_cnn": "small CNN (--quick)"}.get(self.sizes.model, self.sizes.model)

    def values(self, **overrides) -> dict:
        return trial_values(self.data, self.sizes, device=str(self.device)) | overrides


def run_sections(ctx: Context, wanted: str) -> list[Row]:
    runners = {"a": section_a, "b": section_b, "c": section_c, "d": section_d, "e": section_e}
    rows = []
    for key in wanted:
        started = time.perf_counter()
        print(f"[{key}] {SECTIONS[key]} ...", file=sys.stderr, flush=True)
        try:
            found = runners[key](ctx)
        except Exception as err:  # noqa: BLE001 - a section that failed before making its rows
            found = [Row(key, SECTIONS[key], failure(err))]
        for row in found:
            print(f"    {row.status}: {row.what} {row.figures}", file=sys.stderr, flush=True)
        print(f"[{key}] {time.perf_counter() - started:.1f} s", file=sys.stderr, flush=True)
        rows += found
        if ctx.device.type == "cuda":
            torch.cuda.empty_cache()  # (c)'s trials share the GPU with this process
    return rows


def table(rows: list[Row]) -> str:
    lines = ["| section | what | status | figures |", "| --- | --- | --- | --- |"]
    for row in rows:
        cells = [row.section, row.what, row.status, row.figures]
        lines.append("| " + " | ".join(c.replace("|", "\\|").replace("\n", " ") for c in cells) + " |")
    return "\n".join(lines)


def section_text(ctx: Context, rows: list[Row], command: str, seconds: float, gpu_section: bool) -> str:
    today = datetime.date.today().isoformat()
    lines = [HEADINGS[ctx.device.type], ""]
    if ctx.device.type == "cpu":
        lines += ["This is the CPU smoke run, **not a GPU figure**: it shows that every section runs, at sizes "
                  "too small to measure anything.  " + ("A GPU run has its own section in this file."
                                                        if gpu_section else
                                                        "**The GPU acceptance run has not run on a GPU yet** (no "
                                                        "GPU was available); run `python "
                                                        "benchmarks/gpu_acceptance.py` on one."), ""]
    lines += [f"Run {today} on {machine_line(ctx.device)}; `{command}`, {seconds:.0f} s in all.  Sizes: "
              f"{ctx.sizes.train_images} synthetic 3×32×32 training images (10 classes), +B batch "
              f"{ctx.sizes.batch} → {2 * ctx.sizes.batch} → {4 * ctx.sizes.batch}, {ctx.sizes.steps} steps per "
              f"trial{', each timed run after a warm-up run' if ctx.sizes.warmup else ', no warm-up run'}.", "",
              table(rows), ""]
    return "\n".join(lines)


def write_results(path: Path, heading: str, text: str) -> None:
    """Put ``text`` in place of the section under ``heading`` (up to the next ``## `` heading),
    or after the last section when there is none."""
    old = path.read_text() if path.exists() else "# Benchmark results\n"
    pattern = re.compile(rf"^{re.escape(heading)}\n.*?(?=^## |\Z)", re.M | re.S)
    if pattern.search(old):
        new = pattern.sub(lambda _: text.rstrip("\n") + "\n\n", old, count=1).rstrip("\n") + "\n"
    else:
        new = old.rstrip("\n") + "\n\n" + text.rstrip("\n") + "\n"
    path.write_text(new)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--device", default=None, help="cuda, cuda:N or cpu (default: cuda when there is one, "
                        "else cpu with --quick)")
    parser.add_argument("--quick", action="store_true", help="the smallest sizes: a check that every section runs")
    parser.add_argument("--results", type=Path, default=RESULTS, help=f"where the table goes (default {RESULTS})")
    parser.add_argument("--no-results", action="store_true", help="print the table only")
    parser.add_argument("--sections", default="abcde", help="which sections to run, e.g. a,e (default all)")
    parser.add_argument("--threads", type=int, default=None, help="torch threads of this process (default: "
                        "torch's; one with --quick on a CPU, where a busy machine stalls two threads' barriers)")
    parser.add_argument("--dp-workers", type=int, default=0, help="(d)'s workers (default: one per GPU, at most "
                        "two; one on a CPU)")
    parser.add_argument("--work", type=Path, default=None, help="folder for the data and searches (default: a "
                        "temporary folder, removed at the end)")
    args = parser.parse_args(argv)
    wanted = [s for s in args.sections.replace(",", "") if s in SECTIONS]
    if args.device is None and not torch.cuda.is_available():
        print("no GPU here: the CPU smoke run (--device cpu --quick)", file=sys.stderr)
        args.quick = True
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    if device.type == "cuda":
        if not torch.cuda.is_available():
            parser.error(f"--device {args.device}: CUDA is not available here; use --device cpu")
        if device.index is None:
            device = torch.device("cuda", torch.cuda.current_device())
        torch.cuda.set_device(device)
    threads = args.threads if args.threads is not None else (1 if args.quick and device.type == "cpu" else 0)
    if threads:
        torch.set_num_threads(threads)
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="gpu-acceptance-") as temporary:
        work = (args.work or Path(temporary)).resolve()
        os.environ.setdefault("SAMTUNE_LOG_DIR", str(work / "logs"))
        ctx = Context(device, sizes_for(device, args.quick), work, search_timeout=300 if args.quick else 900,
                      dp_workers=args.dp_workers, quick=args.quick)
        print(f"# GPU acceptance on {machine_line(device)}", file=sys.stderr, flush=True)
        ctx.data = write_image_folder(work / "cifar-shaped", ctx.sizes.train_images, ctx.sizes.test_per_class)
        rows = run_sections(ctx, wanted)
    seconds = time.perf_counter() - started
    print(table(rows))
    given = argv if argv is not None else sys.argv[1:]
    if args.device is None:
        given = ["--device", device.type, *(["--quick"] if args.quick and "--quick" not in given else []), *given]
    command = " ".join(["python benchmarks/gpu_acceptance.py", *given])
    if not args.no_results:
        previous = args.results.read_text() if args.results.exists() else ""
        text = section_text(ctx, rows, command, seconds, gpu_section=HEADINGS["cuda"] in previous)
        write_results(args.results, HEADINGS[device.type], text)
        print(f"written to {args.results}", file=sys.stderr)
    failed = [row for row in rows if row.status.startswith("FAILED")]
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
