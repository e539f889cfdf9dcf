"""Training loaders on one contract, and the loader of a set held in device memory.

:class:`EpochLoader` is what the training loop asks of every loader: a ``batch_size``
that may change between epochs (an increasing-batch schedule), ``len()`` the batches of
the coming epoch, and all of an epoch's randomness drawn from the loader's own generator
when the epoch starts, so that ``state_dict()`` (keys ``generator`` and ``epoch``) taken
between epochs makes a restored loader yield exactly the batches the original would have.
Its three kinds: :class:`DeviceLoader` here (a set in device memory, crop and flip as
batched tensor ops), :class:`~samtune.data.worker_loader.WorkerLoader` (per-image
transforms in worker processes) and :class:`~samtune.data.streaming.StreamingLoader`
(images read from disk).

`DeviceLoader` yields slices of a per-epoch permutation, with random crop and horizontal
flip done as batched tensor ops on the data's device, the way airbench's `CifarLoader`
(KellerJordan/airbench, `batch_crop`, `batch_flip_lr`) does it: no worker processes, no
per-sample Python (Harada & Iiduka 2024 rebuild a DataLoader per stage instead).
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from typing import Any, NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor

from samtune import schema
from samtune.checks import check_choice, check_int, check_rank
from samtune.data.device_augment import DevicePolicy, PolicyDraws, policy_channels_check

AUGMENTS = schema.AUGMENTS
PAD_MODES = ("constant", "reflect")
Batch = tuple[Tensor, Tensor]


# ---------------------------------------------------------------------------------------
# Augmentation: random crop with padding + horizontal flip, batched


class EpochPlan(NamedTuple):
    """Everything random about one epoch, indexed by position in the epoch.

    order[k] is the example at position k; top[k], left[k] in [0, 2*pad] are its crop
    offsets in the padded image and flip[k] whether it is mirrored (None without
    augmentation). Drawn for all n positions, so the plan does not depend on batch size.
    """

    order: Tensor | None
    top: Tensor | None
    left: Tensor | None
    flip: Tensor | None


def draw_epoch_plan(
    n: int, *, shuffle: bool, augment: str, pad: int, generator: torch.Generator
) -> EpochPlan:
    """Draw one epoch's permutation, crop offsets and flip flags from a CPU `generator`.

    Drawing on the CPU keeps the batches identical on every device for a given seed.
    """
    check_choice("augment", augment, AUGMENTS)
    order = torch.randperm(n, generator=generator) if shuffle else None
    if augment == "none":
        return EpochPlan(order, None, None, None)
    top = torch.randint(0, 2 * pad + 1, (n,), generator=generator)
    left = torch.randint(0, 2 * pad + 1, (n,), generator=generator)
    flip = torch.randint(0, 2, (n,), generator=generator).bool()
    return EpochPlan(order, top, left, flip)


def draw_passes_plan(
    n: int, *, passes: int, shuffle: bool, augment: str, pad: int, generator: torch.Generator
) -> EpochPlan:
    """`passes` plans drawn one after the other, concatenated: an epoch of passes * n positions.

    Each pass is a fresh permutation with fresh augmentation (Harada's RASampler with
    len_factor = passes and one repetition); passes=1 is exactly `draw_epoch_plan`.
    """
    plans = [draw_epoch_plan(n, shuffle=shuffle, augment=augment, pad=pad, generator=generator)
             for _ in range(passes)]
    if passes == 1:
        return plans[0]
    if not shuffle:
        plans = [plan._replace(order=torch.arange(n)) for plan in plans]
    return EpochPlan(*(None if parts[0] is None else torch.cat(parts) for parts in zip(*plans)))


def crop_flip(
    x: Tensor,
    top: Tensor,
    left: Tensor,
    flip: Tensor,
    *,
    pad: int,
    pad_mode: str = "constant",
    fill: float | Sequence[float] = 0.0,
) -> Tensor:
    """Per-sample crop of the padded batch, then mirror.

    With P = x padded by `pad` on every side (constant `fill`, per channel if a
    sequence, or reflection), out[b, c, i, j] = P[b, c, top[b] + i, left[b] + j'] where
    j' = W - 1 - j if flip[b] else j. This is torchvision's RandomCrop(size, padding=pad)
    followed by RandomHorizontalFlip with the offsets and flags given.
    """
    batch, _, height, width = x.shape
    device = x.device
    # unfold gives a view of every (2*pad+1)^2 window, so picking one per sample is a
    # gather with (B,) indices: ~5x faster on CPU than indexing with (B, C, H, W) grids.
    windows = pad_images(x, pad, pad_mode=pad_mode, fill=fill).unfold(2, height, 1).unfold(3, width, 1)
    crops = windows[torch.arange(batch, device=device), :, top.to(device), left.to(device)]
    return torch.where(flip.to(device)[:, None, None, None], crops.flip(-1), crops)


def pad_images(
    x: Tensor, pad: int, *, pad_mode: str = "constant", fill: float | Sequence[float] = 0.0
) -> Tensor:
    """Pad an NCHW batch by `pad` pixels on each side with `fill` (scalar or per channel) or reflection."""
    if pad == 0:
        return x
    if pad_mode == "reflect":
        return F.pad(x, (pad, pad, pad, pad), mode="reflect")
    if isinstance(fill, (int, float)):
        return F.pad(x, (pad, pad, pad, pad), value=float(fill))
    if len(fill) != x.shape[1]:
        raise ValueError(f"fill must have one value per channel ({x.shape[1]}), got {tuple(fill)!r}")
    batch, channels, height, width = x.shape
    fill_values = torch.tensor(fill, dtype=x.dtype, device=x.device).view(1, channels, 1, 1)
    padded = fill_values.expand(batch, channels, height + 2 * pad, width + 2 * pad).clone()
    padded[:, :, pad : pad + height, pad : pad + width] = x
    return padded


# ---------------------------------------------------------------------------------------
# Loader


class EpochLoader:
    """The contract of a training loader (see the module docstring).

    A subclass gives ``n_examples`` (the examples one pass covers) and, from
    ``__iter__``, calls :meth:`_begin_epoch` right after drawing the epoch from
    ``self._generator``.  With ``drop_last`` the final partial batch of an epoch is
    dropped; ``passes`` passes over the data make one epoch.  ``batch_size`` is the
    global batch of a data-parallel trial: rank r of ``world`` yields the r-th
    contiguous share of each, so the ranks' shares of step k make up global batch k of
    the single-process order.
    """

    drop_last = True

    def __init__(self, *, batch_size: int, seed: int, passes: int = 1, rank: int = 0, world: int = 1) -> None:
        check_rank(rank, world)
        self.rank, self.world = rank, world
        self.passes = check_int("passes", passes, 1)
        self.batch_size = batch_size
        self.epoch = 0
        self._generator = torch.Generator().manual_seed(seed)

    @property
    def n_examples(self) -> int:
        raise NotImplementedError

    @property
    def examples_per_epoch(self) -> int:
        return self.n_examples * self.passes

    @property
    def batch_size(self) -> int:
        return self._batch_size

    @batch_size.setter
    def batch_size(self, value: int) -> None:
        check_int("batch_size", value, 1)
        if value % self.world:
            raise ValueError(
                f"global batch_size {value} is not divisible by world size {self.world}: every rank must get an "
                f"equal share (use a multiple of {self.world})"
            )
        self._batch_size = value

    def _share(self, start: int, stop: int) -> slice:
        """This rank's part of the global batch at positions [start, stop)."""
        size = (stop - start) // self.world
        return slice(start + self.rank * size, start + (self.rank + 1) * size)

    def __len__(self) -> int:
        """Number of batches in an epoch at the current batch size."""
        n = self.examples_per_epoch
        return n // self.batch_size if self.drop_last else math.ceil(n / self.batch_size)

    def _check_epoch(self) -> None:
        if len(self) == 0 and self.n_examples > 0:
            raise ValueError(f"batch_size {self.batch_size} exceeds the {self.examples_per_epoch} examples of an "
                             f"epoch: with drop_last an epoch would have no batches")

    def _begin_epoch(self) -> None:
        """Count the epoch whose randomness was just drawn: a state taken from now on
        resumes at the next one."""
        self.epoch += 1

    def state_dict(self) -> dict[str, Any]:
        return {"generator": self._generator.get_state(), "epoch": self.epoch}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        missing = {"generator", "epoch"} - set(state)
        if missing:
            raise ValueError(f"loader state is missing keys {sorted(missing)}, got keys {sorted(state)}")
        self._generator.set_state(state["generator"].cpu())
        self.epoch = int(state["epoch"])


class DeviceLoader(EpochLoader):
    """Iterate (x, y) batches of tensors that already sit on their device.

    Each `iter()` is one epoch: it draws an `EpochPlan` from the loader's own seeded
    CPU generator and yields consecutive slices of it; the permutation and augmentation
    of an epoch do not depend on the batch size.  drop_last=True (training, as in
    Harada's code) drops the final partial batch; shuffle=False, drop_last=False covers
    every example once, in order.

    With `passes` > 1 an epoch is that many passes over the data, each with its own
    permutation and augmentation, concatenated: batches straddle passes and only the
    final partial batch of the whole epoch is dropped.

    crop_flip pads by `pad` pixels with `fill` (a scalar or one value per channel; see
    TensorData.pad_fill) or, with pad_mode="reflect", by reflection.

    A `policy` (AutoAugment, RandomErasing; `samtune.data.device_augment`) acts after crop
    and flip, on whole batches. Its per-image draws (`PolicyDraws`) are the epoch plan's
    companion: drawn from the same generator right after the plan, for every position of
    the epoch, so they too resume with `state_dict()` and do not depend on batch size.
    """

    def __init__(
        self,
        x: Tensor,
        y: Tensor,
        *,
        batch_size: int,
        shuffle: bool = True,
        drop_last: bool = True,
        augment: str = "none",
        pad: int = 4,
        pad_mode: str = "constant",
        fill: float | Sequence[float] = 0.0,
        seed: int = 0,
        passes: int = 1,
        policy: DevicePolicy | None = None,
        rank: int = 0,
        world: int = 1,
    ) -> None:
        if len(x) != len(y):
            raise ValueError(f"x and y must have the same length, got {len(x)} and {len(y)}")
        if x.device != y.device:
            raise ValueError(f"x and y must be on the same device, got {x.device} and {y.device}")
        check_choice("augment", augment, AUGMENTS)
        if augment == "crop_flip" and x.dim() != 4:
            raise ValueError(f"augment='crop_flip' needs NCHW images, got x of shape {tuple(x.shape)}")
        check_int("pad", pad, 0)
        check_choice("pad_mode", pad_mode, PAD_MODES)
        if pad_mode == "reflect" and augment == "crop_flip" and pad >= min(x.shape[-2:]):
            raise ValueError(f"pad must be smaller than the image for pad_mode='reflect', got {pad!r}")
        if policy is not None:
            policy_channels_check(policy, x)
        self.x, self.y = x, y
        self.policy = policy
        self.shuffle, self.drop_last = shuffle, drop_last
        self.augment, self.pad, self.pad_mode, self.fill = augment, pad, pad_mode, fill
        super().__init__(batch_size=batch_size, seed=seed, passes=passes, rank=rank, world=world)

    @property
    def n_examples(self) -> int:
        return len(self.x)

    def __iter__(self) -> Iterator[Batch]:
        self._check_epoch()
        # Drawn now, not lazily, so that state_dict() after iter() already covers this epoch.
        plan = draw_passes_plan(
            len(self.x), passes=self.passes, shuffle=self.shuffle, augment=self.augment, pad=self.pad,
            generator=self._generator,
        )
        draws = PolicyDraws(None, None)
        if self.policy is not None:
            draws = self.policy.draw(self.examples_per_epoch, height=self.x.shape[-2], width=self.x.shape[-1],
                                     generator=self._generator)
        self._begin_epoch()
        return self._batches(plan, draws, self.batch_size, len(self))

    def _batches(self, plan: EpochPlan, draws: PolicyDraws, batch_size: int, n_batches: int):
        device = self.x.device
        # one host-to-device copy per epoch, not per batch; the AutoAugment draws stay on
        # the CPU, where each batch's groups are planned without waiting on the device
        order, top, left, flip, boxes = (None if t is None else t.to(device) for t in (*plan, draws.erasing))
        for k in range(n_batches):
            start, stop = k * batch_size, min((k + 1) * batch_size, self.examples_per_epoch)
            if order is None:
                xb, yb = self.x[start:stop], self.y[start:stop]
            else:
                index = order[start:stop]
                xb, yb = self.x[index], self.y[index]
            if top is not None:
                xb = crop_flip(
                    xb, top[start:stop], left[start:stop], flip[start:stop],
                    pad=self.pad, pad_mode=self.pad_mode, fill=self.fill,
                )
            if self.policy is not None:
                xb = self.policy.apply(
                    xb, None if draws.autoaugment is None else draws.autoaugment[start:stop],
                    None if boxes is None else boxes[start:stop])
            if self.world > 1:  # augmented whole, as on one worker, then shared
                share = self._share(0, len(yb))
                xb, yb = xb[share], yb[share]
            yield xb, yb


def fixed_batches(x: Tensor, y: Tensor, *, n_examples: int, batch_size: int) -> list[tuple[Tensor, Tensor]]:
    """The first `n_examples` examples in data-set order, unaugmented, in batches of `batch_size`.

    The sharpness evaluation set of tml-epfl/sharpness-vs-generalization (the first
    1024 training examples, batches of 128). A final partial batch is kept.
    """
    if isinstance(n_examples, bool) or not isinstance(n_examples, int) or not 1 <= n_examples <= len(x):
        raise ValueError(f"n_examples must be an int in [1, {len(x)}], got {n_examples!r}")
    check_int("batch_size", batch_size, 1)
    bounds = [(start, min(start + batch_size, n_examples)) for start in range(0, n_examples, batch_size)]
    return [(x[start:stop], y[start:stop]) for start, stop in bounds]
