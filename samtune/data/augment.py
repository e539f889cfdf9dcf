"""The recipes' augmentations: a per-image transform and per-batch CutMix / MixUp.

`image_transform` is Harada & Iiduka's (2024) ViT pipeline (iiduka-researches/GSAM_batch_inc,
utils/dataset.py) in torchvision.transforms.v2: RandomHorizontalFlip, RandomCrop(padding),
AutoAugment (CIFAR-10 policy, torchvision's ops or DeepVoltaire's), to float, Normalize,
RandomErasing; and Khanh et al.'s (2024) Cutout after Normalize (lhchau/fundamental-sam,
dataloader/cifar10.py). It runs on one uint8 CHW image; `seeded` makes every draw come from
a seed given with the image, so the result does not depend on which process applies it.

`BatchMixer` CutMix-es or MixUp-s a whole batch on the trial's device (their utils/mix.py and
main_ViT.py), returning soft labels; cross-entropy with soft labels is their mixed loss.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from torch import Tensor
from torchvision.transforms import v2
from torchvision.transforms.v2 import functional as TF

from samtune.data.device_augment import (
    DEEPVOLTAIRE_POLICY,
    ERASING_MIN_AREA,
    TORCHVISION_POLICY,
    autoaugment,
    draw_autoaugment,
)


def image_transform(
    *,
    size: int,
    pad: int,
    mean: Sequence[float],
    std: Sequence[float],
    crop_flip: bool = True,
    autoaugment: bool = False,
    autoaugment_policy: str = TORCHVISION_POLICY,
    erasing: float = 0.0,
    erasing_max_area: float = 0.4,
    erasing_aspect: float = 0.3,
    cutout_prob: float = 0.0,
    cutout_size: int = 16,
) -> v2.Compose:
    """uint8 (C, H, W) image -> normalized float32 image, the papers' order of operations.

    Crop padding is black (fill 0 before normalization), as torchvision's RandomCrop pads a
    PIL image. Two departures from Harada's own RandomErasing (utils/random_erasing.py): the
    erased box is set to 0 *after* normalization, i.e. to the data set's mean pixel (about
    RGB(129, 124, 112) on CIFAR-100), where theirs writes the mean values themselves into
    the normalized image (lines 35-37: 0.507, 0.487, 0.441 in every erased pixel), which is
    a light box of about RGB(164, 156, 143) once de-normalized; and torchvision draws the
    aspect ratio log-uniformly in [a, 1/a] with 10 tries for a box that fits, theirs
    uniformly with 100 tries (lines 19-23). A box that does not fit in 10 tries leaves the
    image unerased, so with max area 0.4 on 32x32 images slightly fewer than `erasing` of
    the images are erased. Cutout comes last (after RandomErasing when both are on; both
    set their boxes to 0, so the order does not matter).
    """
    steps: list[Any] = []
    if crop_flip:
        steps += [v2.RandomHorizontalFlip(), v2.RandomCrop(size, padding=pad, fill=0)]
    if autoaugment and autoaugment_policy == DEEPVOLTAIRE_POLICY:
        steps.append(DeepVoltaireAutoAugment())
    elif autoaugment:
        steps.append(v2.AutoAugment(v2.AutoAugmentPolicy.CIFAR10))
    steps += [v2.ToDtype(torch.float32, scale=True), v2.Normalize(mean=list(mean), std=list(std))]
    if erasing > 0:
        steps.append(v2.RandomErasing(
            p=erasing, scale=(ERASING_MIN_AREA, erasing_max_area),
            ratio=(erasing_aspect, 1 / erasing_aspect), value=0,
        ))
    if cutout_prob > 0:
        steps.append(Cutout(cutout_prob, cutout_size))
    return v2.Compose(steps)


class DeepVoltaireAutoAugment:
    """DeepVoltaire's CIFAR10Policy as Harada & Iiduka's code runs it (utils/autoaug.py) on one
    uint8 (C, H, W) RGB image: the ops of `samtune.data.device_augment.apply_pil_op`, which
    give Pillow's result to the level. The sub-policy, the two coins and the signs come from
    torch's global generator, so `seeded` fixes them."""

    def __call__(self, image: Tensor) -> Tensor:
        draws = draw_autoaugment(1, None)
        pixels = TF.to_dtype(image[None], torch.float32, scale=True)
        out = autoaugment(pixels, draws, DEEPVOLTAIRE_POLICY)[0]
        return out.mul(255).round_().to(torch.uint8)


class Cutout:
    """Khanh et al.'s Cutout (lhchau/fundamental-sam, fundamental_sam/dataloader/cutout.py) on
    one normalized (C, H, W) image: with probability p, a size x size square whose first row
    and column are uniform in [-size // 2, side - size // 2), clipped at the border, set to 0.
    Their three draws (torch.rand, then torch.randint for the row and the column) in their
    order, from torch's global generator."""

    def __init__(self, p: float, size: int) -> None:
        self.p, self.size = p, size

    def __call__(self, image: Tensor) -> Tensor:
        if torch.rand([1]).item() > self.p:
            return image
        half = self.size // 2
        top = int(torch.randint(-half, image.shape[-2] - half, [1]))
        left = int(torch.randint(-half, image.shape[-1] - half, [1]))
        image = image.clone()
        image[..., max(0, top):top + self.size, max(0, left):left + self.size] = 0
        return image


def seeded(transform, image: Tensor, seed: int) -> Tensor:
    """transform(image) with torch's global CPU generator seeded by `seed` and then restored.

    torchvision's v2 transforms draw only from that generator (torch.rand / randint /
    uniform_), so the result is a function of (image, seed) alone, in any process.
    """
    with torch.random.fork_rng(devices=[]):
        # not torch.manual_seed: it also queues a seed for every CUDA device, ~2 ms a call
        torch.default_generator.manual_seed(seed)
        return transform(image)


def to_uint8(x: Tensor, mean: Sequence[float], std: Sequence[float]) -> Tensor:
    """Pixels back from normalized float images: round(255 * (x * std + mean)), as uint8.

    Exact for images that were uint8 pixels / 255 before normalization (the float32
    round trip errs by ~1e-5 of a level); digits (pixel / 16) move by under half a level.
    """
    shape = (1, len(mean), 1, 1)
    mean_t = torch.tensor(mean, dtype=torch.float32).view(shape)
    std_t = torch.tensor(std, dtype=torch.float32).view(shape)
    pixels = (x.detach().cpu().float() * std_t + mean_t).mul_(255).round_().clamp_(0, 255)
    return pixels.to(torch.uint8)


# ---------------------------------------------------------------------------------------
# Batch mixing

NONE, CUTMIX, MIXUP = "none", "cutmix", "mixup"


class BatchMixer:
    """CutMix with probability `cutmix_prob`, else MixUp with `mixup_prob`, else nothing.

    One uniform draw u per batch decides: u < cutmix_prob -> CutMix, u < cutmix_prob +
    mixup_prob -> MixUp. The paper draws "mix at all" (0.5) and then "which" (0.5), the
    same distribution as 0.25 / 0.25 here. torchvision's v2.CutMix / v2.MixUp do the work
    with Beta(alpha, alpha) weights; they pair image i with image i - 1 (the batch rolled by
    one), where the paper pairs it with a random permutation of the batch. Batches are
    already shuffled, so both pair each image with an unrelated one; with the roll no image
    is paired with itself.

    Every draw comes from the mixer's own CPU generator (u, then a seed for torchvision's
    draws), whose state `state_dict()` holds, so a resumed trial mixes the same batches.
    """

    def __init__(self, *, num_classes: int, cutmix_prob: float, cutmix_alpha: float = 1.0,
                 mixup_prob: float, mixup_alpha: float = 1.0, seed: int = 0) -> None:
        if not (0 <= cutmix_prob and 0 <= mixup_prob and cutmix_prob + mixup_prob <= 1):
            raise ValueError(f"need cutmix_prob, mixup_prob >= 0 with a sum <= 1, got {cutmix_prob}, {mixup_prob}")
        self.cutmix_prob, self.mixup_prob = cutmix_prob, mixup_prob
        self._cutmix = v2.CutMix(alpha=cutmix_alpha, num_classes=num_classes)
        self._mixup = v2.MixUp(alpha=mixup_alpha, num_classes=num_classes)
        self._generator = torch.Generator().manual_seed(mixer_seed(seed))

    def choose(self) -> tuple[str, int]:
        """The next batch's treatment and the seed of its own draws."""
        u = float(torch.rand((), generator=self._generator))
        seed = int(torch.randint(0, 2**62, (), generator=self._generator))
        if u < self.cutmix_prob:
            return CUTMIX, seed
        if u < self.cutmix_prob + self.mixup_prob:
            return MIXUP, seed
        return NONE, seed

    def __call__(self, x: Tensor, y: Tensor) -> tuple[Tensor, Tensor]:
        """(images, targets): targets are y itself for an unmixed batch, else soft labels
        (batch, num_classes) with weight lam on y and 1 - lam on the paired image's label."""
        kind, seed = self.choose()
        if kind == NONE:
            return x, y
        mix = self._cutmix if kind == CUTMIX else self._mixup
        with torch.random.fork_rng(devices=[]):
            # torchvision's Beta and box draws use the global CPU generator, whatever x's device
            torch.default_generator.manual_seed(seed)
            return mix(x, y)

    def state_dict(self) -> dict[str, Any]:
        return {"generator": self._generator.get_state()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self._generator.set_state(state["generator"].cpu())


def mixer_seed(seed: int) -> int:
    """A seed for the mixer's generator unrelated to the loader's (seeded with `seed` itself)."""
    return int(np.random.SeedSequence([seed, 0x6D6978]).generate_state(1, np.uint64)[0] >> 1)
