"""AutoAugment (CIFAR-10 policy), RandomErasing and Cutout on whole batches, on the data's device.

The per-image recipe of `samtune.augment.image_transform`, with the randomness separated
from the work: `DevicePolicy.draw` draws every image's choices for a whole epoch from the
loader's CPU generator (which sub-policy, whether each of its two ops applies and with which
sign, which boxes are erased), and `DevicePolicy.apply` transforms a batch by applying each
op once to the sub-batch of images that drew it. Images that drew the same op with the same
magnitude and sign get the same deterministic function, so grouping them changes nothing but
the number of calls.

The 25 sub-policies run with one of two sets of ops (`POLICY_OPS`, trial key
``autoaugment_policy``). torchvision's: its `v2.functional` ops on images in [0, 1] float,
like torchvision's AutoAugment on a float tensor, except Posterize: torchvision posterizes a
float image to bins of 1/2^bits (not the bit mask of a uint8 pixel), so Posterize rounds the
sub-batch to uint8 and back and gives exactly what the uint8 pipeline of `image_transform`
gives. Solarize's threshold is the float bound 1.0 times the magnitude; Equalize is
torchvision's own float kernel (which bins through uint8). DeepVoltaire's (the copy in
Harada & Iiduka's code): Pillow's ops redone on pixel levels, see `apply_pil_op`.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from collections.abc import Callable
from typing import NamedTuple

import numpy as np
import torch
from torch import Tensor
from torchvision.transforms.v2 import InterpolationMode
from torchvision.transforms.v2 import functional as TF

from samtune.checks import check_choice
from samtune.schema import AUTOAUGMENT_POLICIES

TORCHVISION_POLICY, DEEPVOLTAIRE_POLICY = AUTOAUGMENT_POLICIES
# The least erased area of RandomErasing, as a fraction of the image (Zhong et al.'s s_l).
ERASING_MIN_AREA = 0.02

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
# Columns of a per-image box set to 0 (RandomErasing's, Cutout's); h = w = 0 for none.
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
# DeepVoltaire's ops: Pillow's arithmetic on pixel levels
#
# Harada & Iiduka's utils/autoaug.py and utils/transforms.py are DeepVoltaire/AutoAugment's
# autoaugment.py and ops.py at commit 9d42ce9 (March 2021): the same 25 sub-policies, each op
# a Pillow call on a uint8 image. The functions below redo those calls on batches of levels
# 0..255 (float tensors holding integers) with Pillow's own arithmetic, order of operations
# and precision (float32 where its C code uses float, float64 where it uses double), so each
# result is Pillow's to the level (checked op by op against Pillow in the tests).

GRAY = 128.0  # their fillcolor (128, 128, 128): shear and translate, and rotate's composite
# no random sign on Rotate: their Rotate turns counter-clockwise only (upstream added the
# sign later, commit 5ec3b56, "Missing random.choice in rotate")
PIL_SIGNED_OPS = SIGNED_OPS - {"Rotate"}
PIL_STOPS = {"ShearX": 0.3, "ShearY": 0.3, "TranslateX": 150 / 331, "TranslateY": 150 / 331, "Rotate": 30.0}


def pil_magnitude(op: str, magnitude_bin: int | None, height: int, width: int) -> float:
    """Unsigned magnitude of `op` at `magnitude_bin` as their SubPolicy's `ranges` (numpy
    float64) and ops give it: translations in pixels (fraction x the image side), Solarize a
    threshold on levels, Posterize the bits kept."""
    if magnitude_bin is None:
        return 0.0
    if op == "Posterize":
        return float(np.round(np.linspace(8, 4, NUM_BINS), 0).astype(np.int32)[magnitude_bin])
    if op == "Solarize":
        return float(np.linspace(256, 0, NUM_BINS)[magnitude_bin])
    value = float(np.linspace(0, PIL_STOPS.get(op, 0.9), NUM_BINS)[magnitude_bin])
    side = {"TranslateX": width, "TranslateY": height}.get(op)
    return value if side is None else value * side


def _gather(levels: Tensor, rows: Tensor, cols: Tensor, fill: float) -> Tensor:
    """levels[..., rows, cols] for (H, W) index maps, `fill` where an index is -1."""
    inside = (rows >= 0) & (cols >= 0)
    picked = levels[..., rows.clamp(min=0), cols.clamp(min=0)]
    return torch.where(inside.to(levels.device), picked, fill)


def _scale_affine_index(offset: float, size: int) -> list[int]:
    """Pillow's nearest-neighbour index table for a unit-scale affine (Geometry.c
    ImagingScaleAffine): position i reads COORD(offset + 0.5 + i), accumulated in double as
    Pillow does; -1 (the fill) where that is negative or past the image."""
    index, position = [], offset + 1.0 * 0.5
    for _ in range(size):
        i = -1 if position < 0.0 else int(position)
        index.append(i if i < size else -1)
        position += 1.0
    return index


def _pil_translate(levels: Tensor, pixels: float, axis: int) -> Tensor:
    """x.transform(size, AFFINE, (1, 0, t, 0, 1, 0) or (1, 0, 0, 0, 1, t), fillcolor=gray):
    output pixel i reads input floor(i + t + 0.5), so the content moves by -floor(t + 0.5)."""
    height, width = levels.shape[-2:]
    rows = _scale_affine_index(pixels if axis == 0 else 0.0, height)
    cols = _scale_affine_index(pixels if axis == 1 else 0.0, width)
    rows_t = torch.tensor(rows, device=levels.device)[:, None].expand(height, width)
    cols_t = torch.tensor(cols, device=levels.device)[None, :].expand(height, width)
    return _gather(levels, rows_t, cols_t, GRAY)


def _rotate_matrix(angle: float, width: int, height: int) -> list[float]:
    """Image.rotate's inverse affine matrix (centre (w/2, h/2), entries rounded to 15 digits)."""
    theta = -math.radians(angle % 360.0)
    a, b = round(math.cos(theta), 15), round(math.sin(theta), 15)
    d, e = round(-math.sin(theta), 15), round(math.cos(theta), 15)
    cx, cy = width / 2, height / 2
    return [a, b, a * -cx + b * -cy + 0.0 + cx, d, e, d * -cx + e * -cy + 0.0 + cy]


def _pil_rotate(levels: Tensor, angle: float) -> Tensor:
    """Their Rotate: x.convert("RGBA").rotate(angle) (nearest) composited on gray. Pillow
    runs a nearest affine in 16.16 fixed point (Geometry.c affine_fixed), redone here in
    integers; pixels rotated in from outside the image are gray."""
    height, width = levels.shape[-2:]
    m = _rotate_matrix(angle, width, height)

    def fix(v: float) -> int:
        return math.floor(v * 65536.0 + 0.5)

    a0, a1, a3, a4 = fix(m[0]), fix(m[1]), fix(m[3]), fix(m[4])
    a2, a5 = fix(m[2] + m[0] * 0.5 + m[1] * 0.5), fix(m[5] + m[3] * 0.5 + m[4] * 0.5)
    y = torch.arange(height, dtype=torch.int64)[:, None]
    x = torch.arange(width, dtype=torch.int64)[None, :]
    cols, rows = (a2 + y * a1 + x * a0) >> 16, (a5 + y * a4 + x * a3) >> 16
    outside = (cols < 0) | (cols >= width) | (rows < 0) | (rows >= height)
    rows, cols = rows.masked_fill(outside, -1), cols.masked_fill(outside, -1)
    return _gather(levels, rows.to(levels.device), cols.to(levels.device), GRAY)


def _pil_cubic(v1: Tensor, v2: Tensor, v3: Tensor, v4: Tensor, d: Tensor) -> Tensor:
    """Geometry.c's BICUBIC: the value at d in [0, 1) between v2 and v3 (Keys' kernel, a = -1),
    in double, in Pillow's order of operations."""
    p2 = -v1 + v3
    p3 = 2 * (v1 - v2) + v3 - v4
    p4 = -v1 + v2 - v3 + v4
    return v2 + d * (p2 + d * (p3 + d * p4))


def _pil_bicubic_affine(levels: Tensor, matrix: tuple[float, ...]) -> Tensor:
    """x.transform(size, AFFINE, matrix, BICUBIC, fillcolor=gray) (Geometry.c affine_transform,
    bicubic_filter32RGB): output pixel (x, y) samples the input at matrix . (x + 0.5, y + 0.5);
    gray where that falls outside the image; the 4x4 taps clamped to the border, the result
    clipped to 0..255 and truncated."""
    height, width = levels.shape[-2:]
    a0, a1, a2, a3, a4, a5 = matrix
    y = torch.arange(height, dtype=torch.float64, device=levels.device)[:, None] + 0.5
    x = torch.arange(width, dtype=torch.float64, device=levels.device)[None, :] + 0.5
    x_in, y_in = a0 * x + a1 * y + a2, a3 * x + a4 * y + a5
    outside = (x_in < 0) | (x_in >= width) | (y_in < 0) | (y_in >= height)
    x_in, y_in = x_in - 0.5, y_in - 0.5
    x0, y0 = x_in.floor(), y_in.floor()
    taps = torch.arange(-1, 3, device=levels.device)
    # Pillow clamps columns and, for the rows, repeats the last row read: the same as clamping
    cols = (x0.long()[..., None] + taps).clamp_(0, width - 1)
    rows = (y0.long()[..., None] + taps).clamp_(0, height - 1)
    patch = levels.double()[..., rows[:, :, :, None], cols[:, :, None, :]]  # (..., H, W, 4, 4)
    across = _pil_cubic(*patch.unbind(-1), (x_in - x0)[..., None])
    value = _pil_cubic(*across.unbind(-1), y_in - y0).clamp_(0, 255).floor_()
    return torch.where(outside, GRAY, value).to(levels.dtype)


def _pil_blend(degenerate: Tensor, image: Tensor, factor: float) -> Tensor:
    """Image.blend(degenerate, image, factor), ImageEnhance's last step (Blend.c): degenerate +
    factor * (image - degenerate) in float32 (the factor passed as a C float), clipped and truncated."""
    alpha = torch.tensor(factor, dtype=torch.float32, device=image.device)
    image, degenerate = image.float(), degenerate.float()
    return ((image - degenerate) * alpha + degenerate).clamp_(0, 255).floor_()


def _pil_luma(levels: Tensor) -> Tensor:
    """convert("L") (Convert.c L24): (19595 R + 38470 G + 7471 B + 0x8000) >> 16; a
    one-channel image is its own luma. Shape (N, 1, H, W)."""
    if levels.shape[-3] == 1:
        return levels
    r, g, b = levels.long().unbind(-3)
    return ((r * 19595 + g * 38470 + b * 7471 + 0x8000) >> 16)[..., None, :, :].to(levels.dtype)


def _pil_contrast_degenerate(levels: Tensor) -> Tensor:
    """ImageEnhance.Contrast's gray image: int(mean luma + 0.5), the mean in double."""
    luma = _pil_luma(levels)
    count = luma.shape[-1] * luma.shape[-2]
    total = luma.long().sum(dim=(-3, -2, -1), keepdim=True).double()
    mean = total / torch.full_like(total, count)  # correctly rounded, as Python's int / int
    return (mean + 0.5).floor().to(levels.dtype).expand_as(levels)


def _pil_smooth(levels: Tensor) -> Tensor:
    """image.filter(SMOOTH) (Filter.c ImagingFilter3x3): kernel [1 1 1; 1 5 1; 1 1 1] / 13 in
    float32, summed row below, row, row above, plus 0.5, truncated; border pixels kept."""
    # the kernel divided by 13 in float32, as Pillow's _imaging.c does
    one = torch.tensor(np.float32(1) / np.float32(13), device=levels.device)
    five = torch.tensor(np.float32(5) / np.float32(13), device=levels.device)

    def across(row: Tensor, centre: Tensor) -> Tensor:
        return row[..., :-2] * one + row[..., 1:-1] * centre + row[..., 2:] * one

    x = levels.float()
    total = torch.full_like(x[..., 1:-1, 1:-1], 0.5)
    total = total + across(x[..., 2:, :], one)
    total = total + across(x[..., 1:-1, :], five)
    total = total + across(x[..., :-2, :], one)
    smooth = x.clone()
    smooth[..., 1:-1, 1:-1] = total.clamp_(0, 255).floor_()
    return smooth.to(levels.dtype)


def _pil_autocontrast(levels: Tensor) -> Tensor:
    """ImageOps.autocontrast per channel: lut[v] = int(v * scale + offset), scale = 255 / (hi - lo)
    and offset = -lo * scale in double; a constant channel is left as it is."""
    x = levels.double()
    lo, hi = x.amin(dim=(-2, -1), keepdim=True), x.amax(dim=(-2, -1), keepdim=True)
    # tensor by tensor: torch divides a scalar by a tensor through the reciprocal, off by an ulp
    scale = torch.full_like(hi, 255.0) / (hi - lo).clamp(min=1)
    stretched = (x * scale + -lo * scale).trunc().clamp_(0, 255)
    return torch.where(hi > lo, stretched, x).to(levels.dtype)


def _pil_enhance(op: str, levels: Tensor, factor: float) -> Tensor:
    degenerate = {"Brightness": lambda: torch.zeros_like(levels),
                  "Color": lambda: _pil_luma(levels).expand_as(levels),
                  "Contrast": lambda: _pil_contrast_degenerate(levels),
                  "Sharpness": lambda: _pil_smooth(levels)}[op]()
    return _pil_blend(degenerate, levels, factor)


def _pil_on_levels(levels: Tensor, op: str, value: float) -> Tensor:
    if op in ("ShearX", "ShearY"):
        matrix = (1.0, value, 0.0, 0.0, 1.0, 0.0) if op == "ShearX" else (1.0, 0.0, 0.0, value, 1.0, 0.0)
        return _pil_bicubic_affine(levels, matrix)
    if op in ("TranslateX", "TranslateY"):
        return _pil_translate(levels, value, axis=1 if op == "TranslateX" else 0)
    if op == "Rotate":
        return _pil_rotate(levels, value)
    if op in ("Brightness", "Color", "Contrast", "Sharpness"):
        return _pil_enhance(op, levels, 1 + value)
    if op == "Solarize":  # lut: i if i < threshold else 255 - i
        return torch.where(levels < value, levels, 255 - levels)
    if op == "Posterize":
        mask = ~(2 ** (8 - int(value)) - 1) & 0xFF
        return (levels.to(torch.uint8) & mask).to(levels.dtype)
    if op == "Equalize":  # torchvision's uint8 equalize is Pillow's algorithm
        return TF.equalize(levels.to(torch.uint8)).to(levels.dtype)
    if op == "AutoContrast":
        return _pil_autocontrast(levels)
    return 255 - levels  # Invert


def apply_pil_op(images: Tensor, op: str, value: float) -> Tensor:
    """Their op on a batch of [0, 1] float images (N, C, H, W) of 8-bit levels at signed
    magnitude `value`, as Pillow computes it on the uint8 images: affine ops in Pillow's
    geometry (bicubic shear, nearest translate and rotate, gray fill), the enhance ops'
    float32 blend, luma in fixed point, lookup-table ops on the levels."""
    levels = _pil_on_levels(images.mul(255).round_(), op, value)
    return TF.to_dtype(levels.to(torch.uint8), images.dtype, scale=True)


@dataclasses.dataclass(frozen=True)
class PolicyOps:
    """One implementation of the CIFAR-10 sub-policies' ops: which take a random sign, each
    op's magnitude at a bin (op, bin, height, width), and the op on [0, 1] float batches."""

    signed: frozenset[str]
    magnitude: Callable[[str, int | None, int, int], float]
    apply: Callable[[Tensor, str, float], Tensor]


POLICY_OPS = {TORCHVISION_POLICY: PolicyOps(SIGNED_OPS, magnitude, apply_op),
              DEEPVOLTAIRE_POLICY: PolicyOps(PIL_SIGNED_OPS, pil_magnitude, apply_pil_op)}


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


@functools.cache
def _variants(signed: frozenset[str] = SIGNED_OPS) -> tuple[list[tuple[str, int | None, bool]], Tensor]:
    """The distinct (op, magnitude bin, sign) of each op position, and a (2, 25, 2) table
    from (position, sub-policy, negated) to the variant's index: images that drew one
    variant get the same function, whatever their sub-policy. A sign drawn for an op
    not in `signed` is ignored."""
    keys: list[tuple[str, int | None, bool]] = []
    table = torch.empty(2, len(CIFAR10_POLICY), 2, dtype=torch.long)
    for position in range(2):
        for index, sub_policy in enumerate(CIFAR10_POLICY):
            op, _, magnitude_bin = sub_policy[position]
            for negated in (False, True):
                key = (op, magnitude_bin, negated and op in signed)
                if key not in keys:
                    keys.append(key)
                table[position, index, int(negated)] = keys.index(key)
    return keys, table


VARIANTS, VARIANT_TABLE = _variants()  # torchvision's


def autoaugment(images: Tensor, draws: Tensor, policy: str = TORCHVISION_POLICY) -> Tensor:
    """The CIFAR-10 policy with `policy`'s ops (`POLICY_OPS`) on [0, 1] float images
    (N, C, H, W) with per-image `draws` (CPU, from `draw_autoaugment`): first op of each
    image's sub-policy, then the second.

    Each op position sorts the batch by the variant its images drew, applies every variant
    once to its contiguous run, and unsorts. The sort is planned on the CPU, so the device
    never has to report group sizes back.
    """
    ops = POLICY_OPS[policy]
    variants, table = _variants(ops.signed)
    height, width = images.shape[-2:]
    for position in range(2):
        applied = draws[:, APPLIED][:, position].bool()
        if not applied.any():
            continue
        variant = table[position, draws[:, POLICY].long(), draws[:, NEGATED][:, position].long()]
        variant = torch.where(applied, variant, len(variants))  # sorts last: left as is
        order = torch.argsort(variant, stable=True)
        counts = torch.bincount(variant, minlength=len(variants) + 1).tolist()
        pieces, start, ordered = [], 0, images[order.to(images.device)]
        for index, count in enumerate(counts):
            group = ordered[start:start + count]
            if index < len(variants) and count:
                op, magnitude_bin, negated = variants[index]
                value = ops.magnitude(op, magnitude_bin, height, width)
                group = ops.apply(group, op, -value if negated else value)
            pieces.append(group)
            start += count
        images = torch.cat(pieces)[torch.argsort(order).to(images.device)]
    return images


def draw_cutout(n: int, *, height: int, width: int, p: float, size: int, generator: torch.Generator | None) -> Tensor:
    """(n, 4) int64 boxes (top, left, h, w) of Khanh et al.'s Cutout (lhchau/fundamental-sam,
    fundamental_sam/dataloader/cutout.py): with probability p a size x size square whose first
    row and column are uniform in [-size // 2, side - size // 2) (its centre on any pixel),
    clipped at the border; h = w = 0 where nothing is cut."""
    cut = torch.rand(n, generator=generator) <= p  # theirs skips an image when rand > p
    half = size // 2
    first_row = torch.randint(-half, height - half, (n,), generator=generator)
    first_col = torch.randint(-half, width - half, (n,), generator=generator)
    return cutout_boxes(first_row, first_col, cut, size=size, height=height, width=width)


def cutout_boxes(first_row: Tensor, first_col: Tensor, cut: Tensor, *, size: int, height: int, width: int) -> Tensor:
    """The squares starting at (first_row, first_col) clipped to the image, as (top, left, h, w);
    h = w = 0 where not `cut`."""
    top, left = first_row.clamp(min=0), first_col.clamp(min=0)
    h = torch.where(cut, (first_row + size).clamp(max=height) - top, 0)
    w = torch.where(cut, (first_col + size).clamp(max=width) - left, 0)
    return torch.stack([top, left, h, w], dim=1)


def erase(x: Tensor, boxes: Tensor, value: float = 0.0) -> Tensor:
    """x with each image's boxes (top, left, h, w, then the next box's four columns) set to
    `value` in every channel, through masks built by broadcasting row and column ranges
    against the boxes."""
    boxes = boxes.to(x.device)
    rows = torch.arange(x.shape[-2], device=x.device)
    cols = torch.arange(x.shape[-1], device=x.device)
    for box in boxes.split(4, dim=1):
        top, left, h, w = box.unbind(1)
        in_rows = (rows >= top[:, None]) & (rows < (top + h)[:, None])
        in_cols = (cols >= left[:, None]) & (cols < (left + w)[:, None])
        x = x.masked_fill(in_rows[:, None, :, None] & in_cols[:, None, None, :], value)
    return x


class PolicyDraws(NamedTuple):
    """Per-position draws of an epoch: `draw_autoaugment` rows, and the boxes set to 0
    (`draw_erasing`'s, then `draw_cutout`'s, four columns each); None when off."""

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
    """The per-image policies of the ViT and Cutout recipes for images normalized with `mean`/`std`.

    AutoAugment (CIFAR-10 policy, with `autoaugment_policy`'s ops) when `autoaugment`, then
    RandomErasing with probability `erasing` (area in [0.02, erasing_max_area] of the image,
    aspect in [a, 1/a]) and Cutout with probability `cutout_prob` (a `cutout_size` square),
    both setting their box to 0 in normalized space, i.e. to the mean pixel (as
    `image_transform` does).
    """

    mean: tuple[float, ...]
    std: tuple[float, ...]
    autoaugment: bool = False
    autoaugment_policy: str = TORCHVISION_POLICY
    erasing: float = 0.0
    erasing_max_area: float = 0.4
    erasing_aspect: float = 0.3
    cutout_prob: float = 0.0
    cutout_size: int = 16

    def __post_init__(self) -> None:
        if len(self.mean) != len(self.std) or len(self.mean) not in (1, 3):
            raise ValueError(f"mean and std need 1 or 3 values each, got {self.mean!r} and {self.std!r}")
        check_choice("autoaugment_policy", self.autoaugment_policy, AUTOAUGMENT_POLICIES)
        if self.autoaugment and self.autoaugment_policy == DEEPVOLTAIRE_POLICY and len(self.mean) != 3:
            raise ValueError(f"autoaugment_policy {DEEPVOLTAIRE_POLICY!r} runs Pillow's RGB ops; "
                             f"got {len(self.mean)}-channel statistics")
        for key in ("erasing", "cutout_prob"):
            if not 0 <= getattr(self, key) <= 1:
                raise ValueError(f"{key} must be a probability, got {getattr(self, key)!r}")
        if self.cutout_size < 1:
            raise ValueError(f"cutout_size must be >= 1 pixel, got {self.cutout_size!r}")

    @property
    def active(self) -> bool:
        return self.autoaugment or self.erasing > 0 or self.cutout_prob > 0

    def draw(self, n: int, *, height: int, width: int, generator: torch.Generator) -> PolicyDraws:
        """Draws for n images of height x width: AutoAugment's, then erasing's, then Cutout's
        (a recipe without Cutout draws what it drew before Cutout existed)."""
        draws = draw_autoaugment(n, generator) if self.autoaugment else None
        boxes = []
        if self.erasing > 0:
            boxes.append(draw_erasing(
                n, height=height, width=width, p=self.erasing,
                scale=(ERASING_MIN_AREA, self.erasing_max_area),
                ratio=(self.erasing_aspect, 1 / self.erasing_aspect), generator=generator))
        if self.cutout_prob > 0:
            boxes.append(draw_cutout(n, height=height, width=width, p=self.cutout_prob, size=self.cutout_size,
                                     generator=generator))
        return PolicyDraws(draws, torch.cat(boxes, dim=1) if boxes else None)

    def apply(self, x: Tensor, draws: Tensor | None, boxes: Tensor | None) -> Tensor:
        """Normalized images x with their draws: AutoAugment on the [0, 1] pixels, then the boxes."""
        if draws is not None:
            shape = (1, len(self.mean), 1, 1)
            mean = torch.tensor(self.mean, dtype=x.dtype, device=x.device).view(shape)
            std = torch.tensor(self.std, dtype=x.dtype, device=x.device).view(shape)
            pixels = snap_to_8bit((x * std + mean).clamp_(0, 1))
            x = (autoaugment(pixels, draws, self.autoaugment_policy) - mean) / std
        if boxes is not None:
            x = erase(x, boxes)
        return x


def policy_channels_check(policy: DevicePolicy, x: Tensor) -> None:
    """Refuse images the policy cannot act on, before an epoch starts."""
    if x.dim() != 4 or x.shape[1] != len(policy.mean):
        raise ValueError(f"per-image policies need NCHW images with {len(policy.mean)} channel(s) "
                         f"(one per mean value), got x of shape {tuple(x.shape)}")
