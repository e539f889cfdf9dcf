"""AutoAugment (CIFAR-10 policy) and RandomErasing on whole batches, on the data's device.

The per-image recipe of `samtune.augment.image_transform`, with the randomness separated
from the work: `DevicePolicy.draw` draws every image's choices for a whole epoch from the
loader's CPU generator (which sub-policy, whether each of its two ops applies and with which
sign, which box is erased), and `DevicePolicy.apply` transforms a batch by applying each
torchvision `v2.functional` op once to the sub-batch of images that drew it. Images that
drew the same op with the same magnitude and sign get the same deterministic function, so
grouping them changes nothing but the number of calls.

AutoAugment runs on images in [0, 1] float, like torchvision's AutoAugment on a float
tensor, except Posterize: torchvision posterizes a float image to bins of 1/2^bits (not the
bit mask of a uint8 pixel), so Posterize rounds the sub-batch to uint8 and back and gives
exactly what the uint8 pipeline of `image_transform` gives. Solarize's threshold is the
float bound 1.0 times the magnitude; Equalize is torchvision's own float kernel (which bins
through uint8).
"""

from __future__ import annotations

import dataclasses
import math
from typing import NamedTuple

import torch
from torch import Tensor
from torchvision.transforms.v2 import InterpolationMode
from torchvision.transforms.v2 import functional as TF

from samtune.data.augment import ERASING_MIN_AREA

# torchvision's AutoAugmentPolicy.CIFAR10 (transforms/v2/_auto_augment.py): 25 sub-policies of
# two (op, probability, magnitude bin) each.
CIFAR10_POLICY: tuple[tuple[tuple[str, float, int | None], tuple[str, float, int | None]], ...] = (
    (("Invert", 0.1, None), ("Contrast", 0.2, 6)),
    (("Rotate", 0.7, 2), ("TranslateX", 0.3, 9)),
    (("Sharpness", 0.8, 1), ("Sharpness", 0.9, 3)),
    (("ShearY", 0.5, 8), ("TranslateY", 0.7, 9)),
    (("AutoContrast", 0.5, None), ("Equalize", 0.9, None)),
    (("ShearY", 0.2, 7), ("Posterize", 0.3, 7)),
    (("Color", 0.4, 3), ("Brightness", 0.6, 7)),
    (("Sharpness", 0.3, 9), ("Brightness", 0.7, 9)),
    (("Equalize", 0.6, None), ("Equalize", 0.5, None)),
    (("Contrast", 0.6, 7), ("Sharpness", 0.6, 5)),
    (("Color", 0.7, 7), ("TranslateX", 0.5, 8)),
    (("Equalize", 0.3, None), ("AutoContrast", 0.4, None)),
    (("TranslateY", 0.4, 3), ("Sharpness", 0.2, 6)),
    (("Brightness", 0.9, 6), ("Color", 0.2, 8)),
    (("Solarize", 0.5, 2), ("Invert", 0.0, None)),
    (("Equalize", 0.2, None), ("AutoContrast", 0.6, None)),
    (("Equalize", 0.2, None), ("Equalize", 0.6, None)),
    (("Color", 0.9, 9), ("Equalize", 0.6, None)),
    (("AutoContrast", 0.8, None), ("Solarize", 0.2, 8)),
    (("Brightness", 0.1, 3), ("Color", 0.7, 0)),
    (("Solarize", 0.4, 5), ("AutoContrast", 0.9, None)),
    (("TranslateY", 0.9, 9), ("TranslateY", 0.7, 9)),
    (("AutoContrast", 0.9, None), ("Solarize", 0.8, 3)),
    (("Equalize", 0.8, None), ("Invert", 0.1, None)),
    (("TranslateY", 0.7, 9), ("AutoContrast", 0.9, None)),
)
NUM_BINS = 10
SIGNED_OPS = frozenset({"ShearX", "ShearY", "TranslateX", "TranslateY", "Rotate",
                        "Brightness", "Color", "Contrast", "Sharpness"})

# Columns of the per-image AutoAugment draws: sub-policy, op applied (x2), op negated (x2).
POLICY, APPLIED, NEGATED = 0, slice(1, 3), slice(3, 5)
# Columns of the per-image erasing boxes; h = w = 0 for an image left unerased.
TOP, LEFT, HEIGHT, WIDTH = range(4)
ERASING_ATTEMPTS = 10  # torchvision's RandomErasing tries this many boxes before giving up


def magnitude(op: str, magnitude_bin: int | None, height: int, width: int) -> float:
    """Unsigned magnitude of `op` at `magnitude_bin`, as torchvision's AutoAugment computes it
    (_AUGMENTATION_SPACE at num_bins = 10, float32 linspace read back as a Python float)."""
    if magnitude_bin is None:
        return 0.0
    if op == "Posterize":
        bits = (8 - (torch.arange(NUM_BINS) / ((NUM_BINS - 1) / 4))).round().int()
        return float(bits[magnitude_bin])
    stop = {"ShearX": 0.3, "ShearY": 0.3, "TranslateX": 150.0 / 331.0 * width,
            "TranslateY": 150.0 / 331.0 * height, "Rotate": 30.0, "Solarize": 0.0}.get(op, 0.9)
    start = 1.0 if op == "Solarize" else 0.0
    return float(torch.linspace(start, stop, NUM_BINS)[magnitude_bin])


def apply_op(images: Tensor, op: str, value: float) -> Tensor:
    """torchvision's AutoAugment op on a batch of [0, 1] float images (N, C, H, W) at signed
    magnitude `value`: the same v2.functional call, NEAREST interpolation and fill None
    (zeros, black), except Posterize, which works on the uint8 pixels."""
    nearest = InterpolationMode.NEAREST
    if op in ("ShearX", "ShearY"):
        angle = math.degrees(math.atan(value))
        shear = [angle, 0.0] if op == "ShearX" else [0.0, angle]
        return TF.affine(images, angle=0.0, translate=[0, 0], scale=1.0, shear=shear,
                         interpolation=nearest, fill=None, center=[0, 0])
    if op in ("TranslateX", "TranslateY"):
        translate = [int(value), 0] if op == "TranslateX" else [0, int(value)]
        return TF.affine(images, angle=0.0, translate=translate, scale=1.0, shear=[0.0, 0.0],
                         interpolation=nearest, fill=None)
    if op == "Rotate":
        return TF.rotate(images, angle=value, interpolation=nearest, fill=None)
    if op == "Posterize":
        pixels = images.mul(255).round_().clamp_(0, 255).to(torch.uint8)
        return TF.to_dtype(TF.posterize(pixels, bits=int(value)), images.dtype, scale=True)
    if op == "Solarize":
        return TF.solarize(images, threshold=1.0 * value)
    factor_ops = {"Brightness": TF.adjust_brightness, "Color": TF.adjust_saturation,
                  "Contrast": TF.adjust_contrast, "Sharpness": TF.adjust_sharpness}
    if op in factor_ops:
        return factor_ops[op](images, 1.0 + value)
    plain_ops = {"AutoContrast": TF.autocontrast, "Equalize": TF.equalize, "Invert": TF.invert}
    return plain_ops[op](images)


# ---------------------------------------------------------------------------------------
# Draws


def draw_autoaugment(n: int, generator: torch.Generator) -> Tensor:
    """(n, 5) uint8: per image its sub-policy, whether each op applies, whether each is negated.

    torchvision applies op k when rand <= its probability and negates a signed magnitude when
    rand <= 0.5; a sign drawn for an unsigned op is ignored.
    """
    policy = torch.randint(0, len(CIFAR10_POLICY), (n,), generator=generator)
    probabilities = torch.tensor([[op[1] for op in sub] for sub in CIFAR10_POLICY])
    applied = torch.rand(n, 2, generator=generator) <= probabilities[policy]
    negated = torch.rand(n, 2, generator=generator) <= 0.5
    return torch.cat([policy[:, None], applied, negated], dim=1).to(torch.uint8)


def draw_erasing(
    n: int, *, height: int, width: int, p: float, scale: tuple[float, float], ratio: tuple[float, float],
    generator: torch.Generator,
) -> Tensor:
    """(n, 4) int64 boxes (top, left, h, w), h = w = 0 where nothing is erased.

    torchvision's RandomErasing.make_params for every image at once: erase with probability
    p; area uniform in scale * H * W, aspect log-uniform in ratio, h = round(sqrt(area *
    aspect)), w = round(sqrt(area / aspect)); the first of 10 candidates with h < H and
    w < W is taken, none fitting leaves the image as it is; top-left uniform where it fits.
    """
    erase = torch.rand(n, generator=generator, dtype=torch.float64) < p
    shape = (n, ERASING_ATTEMPTS)
    area = height * width * (scale[0] + (scale[1] - scale[0]) * torch.rand(shape, generator=generator,
                                                                            dtype=torch.float64))
    log_low, log_high = math.log(ratio[0]), math.log(ratio[1])
    aspect = torch.exp(log_low + (log_high - log_low) * torch.rand(shape, generator=generator, dtype=torch.float64))
    # torch.round, like Python's round, rounds halves to even
    h, w = (area * aspect).sqrt().round().long(), (area / aspect).sqrt().round().long()
    fits = (h < height) & (w < width)
    first = fits.long().argmax(dim=1, keepdim=True)
    h, w = h.gather(1, first).squeeze(1), w.gather(1, first).squeeze(1)
    keep = erase & fits.any(dim=1)
    h, w = torch.where(keep, h, 0), torch.where(keep, w, 0)
    corner = torch.rand(n, 2, generator=generator, dtype=torch.float64)
    top = (corner[:, 0] * (height - h + 1)).floor().long()
    left = (corner[:, 1] * (width - w + 1)).floor().long()
    return torch.stack([top, left, h, w], dim=1)


# ---------------------------------------------------------------------------------------
# Batched application


def _variants() -> tuple[list[tuple[str, float]], Tensor]:
    """The distinct (op, magnitude bin, sign) of each op position, and a (2, 25, 2) table
    from (position, sub-policy, negated) to the variant's index: images that drew one
    variant get the same function, whatever their sub-policy."""
    keys: list[tuple[str, int | None, bool]] = []
    table = torch.empty(2, len(CIFAR10_POLICY), 2, dtype=torch.long)
    for position in range(2):
        for index, sub_policy in enumerate(CIFAR10_POLICY):
            op, _, magnitude_bin = sub_policy[position]
            for negated in (False, True):
                key = (op, magnitude_bin, negated and op in SIGNED_OPS)
                if key not in keys:
                    keys.append(key)
                table[position, index, int(negated)] = keys.index(key)
    return keys, table


VARIANTS, VARIANT_TABLE = _variants()


def autoaugment(images: Tensor, draws: Tensor) -> Tensor:
    """The CIFAR-10 policy on [0, 1] float images (N, C, H, W) with per-image `draws` (CPU,
    from `draw_autoaugment`): first op of each image's sub-policy, then the second.

    Each op position sorts the batch by the variant its images drew, applies every variant
    once to its contiguous run, and unsorts. The sort is planned on the CPU, so the device
    never has to report group sizes back.
    """
    height, width = images.shape[-2:]
    for position in range(2):
        applied = draws[:, APPLIED][:, position].bool()
        if not applied.any():
            continue
        variant = VARIANT_TABLE[position, draws[:, POLICY].long(), draws[:, NEGATED][:, position].long()]
        variant = torch.where(applied, variant, len(VARIANTS))  # sorts last: left as is
        order = torch.argsort(variant, stable=True)
        counts = torch.bincount(variant, minlength=len(VARIANTS) + 1).tolist()
        pieces, start, ordered = [], 0, images[order.to(images.device)]
        for index, count in enumerate(counts):
            group = ordered[start:start + count]
            if index < len(VARIANTS) and count:
                op, magnitude_bin, negated = VARIANTS[index]
                value = magnitude(op, magnitude_bin, height, width)
                group = apply_op(group, op, -value if negated else value)
            pieces.append(group)
            start += count
        images = torch.cat(pieces)[torch.argsort(order).to(images.device)]
    return images


def erase(x: Tensor, boxes: Tensor, value: float = 0.0) -> Tensor:
    """x with each image's box (top, left, h, w) set to `value` in every channel, through one
    mask built by broadcasting row and column ranges against the boxes."""
    boxes = boxes.to(x.device)
    rows = torch.arange(x.shape[-2], device=x.device)
    cols = torch.arange(x.shape[-1], device=x.device)
    top, left, h, w = boxes.unbind(1)
    in_rows = (rows >= top[:, None]) & (rows < (top + h)[:, None])
    in_cols = (cols >= left[:, None]) & (cols < (left + w)[:, None])
    mask = in_rows[:, None, :, None] & in_cols[:, None, None, :]
    return x.masked_fill(mask, value)


class PolicyDraws(NamedTuple):
    """Per-position draws of an epoch: `draw_autoaugment` rows and `draw_erasing` boxes
    (each None when its policy is off)."""

    autoaugment: Tensor | None
    erasing: Tensor | None


def snap_to_8bit(pixels: Tensor) -> Tensor:
    """Pixels within 1e-3 of a level k/255 set to exactly k/255 (as torchvision converts uint8).

    Undoing normalization leaves 8-bit pixels a few ulps off their level, and a threshold that
    sits on a level (Solarize at 170/255) would then cut through them at random. Pixels of
    other data (digits: k/16) are never that close to a level unless on one, and stay.
    """
    levels = pixels * 255
    nearest = levels.round()
    return torch.where((levels - nearest).abs() < 1e-3, nearest.mul_(1.0 / 255), pixels)


@dataclasses.dataclass(frozen=True)
class DevicePolicy:
    """The per-image policies of the ViT recipe for images normalized with `mean`/`std`.

    AutoAugment (CIFAR-10 policy) when `autoaugment`, then RandomErasing with probability
    `erasing` (area in [0.02, erasing_max_area] of the image, aspect in [a, 1/a]), erasing
    to 0 in normalized space, i.e. to the mean pixel (as `image_transform` does).
    """

    mean: tuple[float, ...]
    std: tuple[float, ...]
    autoaugment: bool = False
    erasing: float = 0.0
    erasing_max_area: float = 0.4
    erasing_aspect: float = 0.3

    def __post_init__(self) -> None:
        if len(self.mean) != len(self.std) or len(self.mean) not in (1, 3):
            raise ValueError(f"mean and std need 1 or 3 values each, got {self.mean!r} and {self.std!r}")
        if not 0 <= self.erasing <= 1:
            raise ValueError(f"erasing must be a probability, got {self.erasing!r}")

    @property
    def active(self) -> bool:
        return self.autoaugment or self.erasing > 0

    def draw(self, n: int, *, height: int, width: int, generator: torch.Generator) -> PolicyDraws:
        """Draws for n images of height x width: AutoAugment's first, then erasing's."""
        draws = draw_autoaugment(n, generator) if self.autoaugment else None
        boxes = None
        if self.erasing > 0:
            boxes = draw_erasing(
                n, height=height, width=width, p=self.erasing,
                scale=(ERASING_MIN_AREA, self.erasing_max_area),
                ratio=(self.erasing_aspect, 1 / self.erasing_aspect), generator=generator)
        return PolicyDraws(draws, boxes)

    def apply(self, x: Tensor, draws: Tensor | None, boxes: Tensor | None) -> Tensor:
        """Normalized images x with their draws: AutoAugment on the [0, 1] pixels, then erasing."""
        if draws is not None:
            shape = (1, len(self.mean), 1, 1)
            mean = torch.tensor(self.mean, dtype=x.dtype, device=x.device).view(shape)
            std = torch.tensor(self.std, dtype=x.dtype, device=x.device).view(shape)
            pixels = snap_to_8bit((x * std + mean).clamp_(0, 1))
            x = (autoaugment(pixels, draws) - mean) / std
        if boxes is not None:
            x = erase(x, boxes)
        return x


def policy_channels_check(policy: DevicePolicy, x: Tensor) -> None:
    """Refuse images the policy cannot act on, before an epoch starts."""
    if x.dim() != 4 or x.shape[1] != len(policy.mean):
        raise ValueError(f"per-image policies need NCHW images with {len(policy.mean)} channel(s) "
                         f"(one per mean value), got x of shape {tuple(x.shape)}")
