"""AutoAugment as Harada & Iiduka's ViT runs use it: DeepVoltaire's CIFAR10Policy as their code
copies it (iiduka-researches/GSAM_batch_inc utils/autoaug.py and utils/transforms.py, which
are DeepVoltaire/AutoAugment autoaugment.py and ops.py at commit 9d42ce9). Their ops are
transcribed below, Pillow calls on uint8 images, and samtune's batched ops are held to them
op by op, magnitude by magnitude, sign by sign: exactly, to the pixel level, resampled ops
included, since samtune redoes Pillow's own arithmetic (bicubic weights, 16.16 fixed point,
float32 blends). Then whole sub-policies, the per-image and the device pipelines."""

from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from PIL import Image, ImageEnhance, ImageOps
from torchvision.transforms.v2 import functional as TF

from samtune import schema
from samtune.config import ConfigError, make_trial_config
from samtune.data import device_augment as da
from samtune.data.augment import image_transform, seeded
from samtune.data.loaders import DeviceLoader, crop_flip, draw_passes_plan
from samtune.data.trial_data import Recipe

POLICY = da.DEEPVOLTAIRE_POLICY
SPACES = Path(__file__).resolve().parent.parent / "search_spaces"
MEAN, STD = (0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762)


pytestmark = pytest.mark.usefixtures("one_thread")


# --- their code, transcribed ---------------------------------------------------------------
# utils/transforms.py: the one change is `sign`, an argument where they call
# random.choice([-1, 1]), so that both signs can be compared; Rotate takes none.

FILL = (128, 128, 128)


def their_op(name, x, magnitude, sign=1):
    if name == "shearX":
        return x.transform(x.size, Image.AFFINE, (1, magnitude * sign, 0, 0, 1, 0), Image.BICUBIC, fillcolor=FILL)
    if name == "shearY":
        return x.transform(x.size, Image.AFFINE, (1, 0, 0, magnitude * sign, 1, 0), Image.BICUBIC, fillcolor=FILL)
    if name == "translateX":
        return x.transform(x.size, Image.AFFINE, (1, 0, magnitude * x.size[0] * sign, 0, 1, 0), fillcolor=FILL)
    if name == "translateY":
        return x.transform(x.size, Image.AFFINE, (1, 0, 0, 0, 1, magnitude * x.size[1] * sign), fillcolor=FILL)
    if name == "rotate":
        rot = x.convert("RGBA").rotate(magnitude)
        return Image.composite(rot, Image.new("RGBA", rot.size, (128,) * 4), rot).convert(x.mode)
    enhance = {"color": ImageEnhance.Color, "contrast": ImageEnhance.Contrast,
               "sharpness": ImageEnhance.Sharpness, "brightness": ImageEnhance.Brightness}
    if name in enhance:
        return enhance[name](x).enhance(1 + magnitude * sign)
    if name == "posterize":
        return ImageOps.posterize(x, magnitude)
    if name == "solarize":
        return ImageOps.solarize(x, magnitude)
    return {"autocontrast": ImageOps.autocontrast, "equalize": ImageOps.equalize, "invert": ImageOps.invert}[name](x)


# utils/autoaug.py, SubPolicy.__init__
RANGES = {
    "shearX": np.linspace(0, 0.3, 10),
    "shearY": np.linspace(0, 0.3, 10),
    "translateX": np.linspace(0, 150 / 331, 10),
    "translateY": np.linspace(0, 150 / 331, 10),
    "rotate": np.linspace(0, 30, 10),
    "color": np.linspace(0.0, 0.9, 10),
    "posterize": np.round(np.linspace(8, 4, 10), 0).astype(np.int32),
    "solarize": np.linspace(256, 0, 10),
    "contrast": np.linspace(0.0, 0.9, 10),
    "sharpness": np.linspace(0.0, 0.9, 10),
    "brightness": np.linspace(0.0, 0.9, 10),
    "autocontrast": [0] * 10,
    "equalize": [0] * 10,
    "invert": [0] * 10,
}
SIGNED = {"shearX", "shearY", "translateX", "translateY", "color", "contrast", "sharpness", "brightness"}

# utils/autoaug.py, CIFAR10Policy: SubPolicy(p1, operation1, magnitude_idx1, p2, operation2, magnitude_idx2)
THEIR_POLICY = [
    (0.1, "invert", 7, 0.2, "contrast", 6), (0.7, "rotate", 2, 0.3, "translateX", 9),
    (0.8, "sharpness", 1, 0.9, "sharpness", 3), (0.5, "shearY", 8, 0.7, "translateY", 9),
    (0.5, "autocontrast", 8, 0.9, "equalize", 2),
    (0.2, "shearY", 7, 0.3, "posterize", 7), (0.4, "color", 3, 0.6, "brightness", 7),
    (0.3, "sharpness", 9, 0.7, "brightness", 9), (0.6, "equalize", 5, 0.5, "equalize", 1),
    (0.6, "contrast", 7, 0.6, "sharpness", 5),
    (0.7, "color", 7, 0.5, "translateX", 8), (0.3, "equalize", 7, 0.4, "autocontrast", 8),
    (0.4, "translateY", 3, 0.2, "sharpness", 6), (0.9, "brightness", 6, 0.2, "color", 8),
    (0.5, "solarize", 2, 0.0, "invert", 3),
    (0.2, "equalize", 0, 0.6, "autocontrast", 0), (0.2, "equalize", 8, 0.6, "equalize", 4),
    (0.9, "color", 9, 0.6, "equalize", 6), (0.8, "autocontrast", 4, 0.2, "solarize", 8),
    (0.1, "brightness", 3, 0.7, "color", 0),
    (0.4, "solarize", 5, 0.9, "autocontrast", 3), (0.9, "translateY", 9, 0.7, "translateY", 9),
    (0.9, "autocontrast", 2, 0.8, "solarize", 3), (0.8, "equalize", 8, 0.1, "invert", 3),
    (0.7, "translateY", 9, 0.9, "autocontrast", 1),
]


def their_name(op):
    """samtune's (torchvision's) op name as theirs: ShearX -> shearX, AutoContrast -> autocontrast."""
    return {"ShearX": "shearX", "ShearY": "shearY", "TranslateX": "translateX", "TranslateY": "translateY"}.get(
        op, op.lower())


# --- helpers -------------------------------------------------------------------------------


def images_u8(n, height, width, seed=0):
    """Random images plus two smooth ramps (where the resampled ops interpolate, not just copy)."""
    noise = torch.randint(0, 256, (n, 3, height, width), generator=torch.Generator().manual_seed(seed),
                          dtype=torch.uint8)
    rows, cols = torch.meshgrid(torch.arange(height), torch.arange(width), indexing="ij")
    ramp = (cols * 7 + rows * 3) % 256
    ramps = torch.stack([torch.stack([ramp, ramp // 2 + 60, 255 - ramp]), (ramp // 3 + 90).expand(3, -1, -1)])
    return torch.cat([noise, ramps.to(torch.uint8)])


def pil(image):
    return Image.fromarray(image.permute(1, 2, 0).numpy(), "RGB")


def tensor(image):
    return torch.from_numpy(np.asarray(image).copy()).permute(2, 0, 1)


def as_levels(images):
    return images.mul(255).round().to(torch.uint8)


# --- tables --------------------------------------------------------------------------------


def test_both_policies_are_implemented():
    assert tuple(da.POLICY_OPS) == schema.AUTOAUGMENT_POLICIES


def test_their_sub_policies_are_samtunes_table():
    assert len(THEIR_POLICY) == len(da.CIFAR10_POLICY)
    for theirs, ours in zip(THEIR_POLICY, da.CIFAR10_POLICY):
        for (probability, name, magnitude_bin), (op, our_probability, our_bin) in zip((theirs[:3], theirs[3:]), ours):
            assert their_name(op) == name and our_probability == probability
            assert our_bin == (magnitude_bin if name not in ("autocontrast", "equalize", "invert") else None)


@pytest.mark.parametrize("height, width", [(32, 32), (12, 20)])
def test_magnitudes_are_their_ranges(height, width):
    for op in {op for sub in da.CIFAR10_POLICY for op, _, _ in sub}:
        name = their_name(op)
        if name in ("autocontrast", "equalize", "invert"):
            assert da.pil_magnitude(op, None, height, width) == 0.0
            continue
        for magnitude_bin in range(10):
            expected = RANGES[name][magnitude_bin]
            expected *= {"translateX": width, "translateY": height}.get(name, 1)  # their op scales by x.size
            assert da.pil_magnitude(op, magnitude_bin, height, width) == expected, (op, magnitude_bin)
    assert da.PIL_SIGNED_OPS == {op for op in da.SIGNED_OPS if their_name(op) in SIGNED}  # Rotate unsigned


# --- ops -----------------------------------------------------------------------------------

OPS = ["ShearX", "ShearY", "TranslateX", "TranslateY", "Rotate", "Color", "Posterize", "Solarize", "Contrast",
       "Sharpness", "Brightness", "AutoContrast", "Equalize", "Invert"]


@pytest.mark.parametrize("op", OPS)
@pytest.mark.parametrize("height, width", [(32, 32), (12, 20)])
def test_every_op_is_their_pillow_op_to_the_pixel(op, height, width):
    images = images_u8(4, height, width, seed=len(op))
    pixels = TF.to_dtype(images, torch.float32, scale=True)
    name = their_name(op)
    has_magnitude = name not in ("autocontrast", "equalize", "invert")
    for magnitude_bin in range(10) if has_magnitude else [None]:
        for sign in (1, -1) if name in SIGNED else (1,):
            value = da.pil_magnitude(op, magnitude_bin, height, width) * sign
            ours = as_levels(da.apply_pil_op(pixels, op, value))
            magnitude = RANGES[name][magnitude_bin] if has_magnitude else 0
            for image, got in zip(images, ours):
                expected = tensor(their_op(name, pil(image), magnitude, sign))
                assert torch.equal(got, expected), (op, magnitude_bin, sign)


def test_their_geometry_fills_gray_and_rotates_one_way():
    black = torch.zeros(1, 3, 8, 8)
    moved = as_levels(da.apply_pil_op(black, "TranslateY", da.pil_magnitude("TranslateY", 9, 8, 8)))
    assert moved[0, :, :4].eq(0).all() and moved[0, :, 4:].eq(128).all()  # 3.6 px: content up by 4, gray below
    variants, _ = da._variants(da.PIL_SIGNED_OPS)
    assert {negated for op, _, negated in variants if op == "Rotate"} == {False}
    torchvision_variants, _ = da._variants(da.SIGNED_OPS)
    assert {negated for op, _, negated in torchvision_variants if op == "Rotate"} == {False, True}


def their_policy_in_sequence(image, draw):
    """Their SubPolicy.__call__ on one uint8 image for one `draw_autoaugment` row."""
    sub_policy, applied0, applied1, negated0, negated1 = draw
    p1, op1, bin1, p2, op2, bin2 = THEIR_POLICY[sub_policy]
    x = pil(image)
    for name, magnitude_bin, applied, negated in ((op1, bin1, applied0, negated0), (op2, bin2, applied1, negated1)):
        if applied:
            x = their_op(name, x, RANGES[name][magnitude_bin], -1 if negated and name in SIGNED else 1)
    return tensor(x)


def test_grouped_policy_is_their_sub_policies_in_sequence():
    images = images_u8(298, 16, 16, seed=1)
    draws = da.draw_autoaugment(len(images), torch.Generator().manual_seed(2))
    ours = as_levels(da.autoaugment(TF.to_dtype(images, torch.float32, scale=True), draws, POLICY))
    for image, got, draw in zip(images, ours, draws.tolist()):
        assert torch.equal(got, their_policy_in_sequence(image, draw)), draw


def test_per_image_transform_runs_their_policy_on_its_draws():
    transform = image_transform(size=16, pad=2, mean=MEAN, std=STD, crop_flip=False, autoaugment=True,
                                autoaugment_policy=POLICY)
    for seed, image in enumerate(images_u8(40, 16, 16, seed=3)):
        got = seeded(transform, image, seed)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            draw = da.draw_autoaugment(1, None)[0].tolist()
        expected = TF.normalize(TF.to_dtype(their_policy_in_sequence(image, draw), torch.float32, scale=True),
                                list(MEAN), list(STD))
        torch.testing.assert_close(got, expected, rtol=0, atol=1e-6)


def test_device_recipe_is_their_per_image_pipeline_for_the_loaders_draws():
    """Crop + flip, their policy, normalize, erase, image by image with their Pillow ops, for
    the plan and draws of a device loader whose policy runs their ops."""
    n, size = 48, 16
    images = images_u8(n - 2, size, size, seed=4)
    x = TF.normalize(TF.to_dtype(images, torch.float32, scale=True), list(MEAN), list(STD))
    policy = da.DevicePolicy(MEAN, STD, autoaugment=True, autoaugment_policy=POLICY, erasing=0.5)
    fill = tuple(-m / s for m, s in zip(MEAN, STD))
    loader = DeviceLoader(x, torch.arange(n), batch_size=20, augment="crop_flip", pad=2, fill=fill, seed=5,
                          policy=policy)
    batches = torch.cat([xb for xb, _ in loader])
    generator = torch.Generator().manual_seed(5)
    plan = draw_passes_plan(n, passes=1, shuffle=True, augment="crop_flip", pad=2, generator=generator)
    draws = policy.draw(n, height=size, width=size, generator=generator)
    for k in range(len(batches)):
        image = crop_flip(images[plan.order[k]][None], plan.top[k:k + 1], plan.left[k:k + 1], plan.flip[k:k + 1],
                          pad=2)[0]
        image = their_policy_in_sequence(image, draws.autoaugment[k].tolist())
        image = TF.normalize(TF.to_dtype(image, torch.float32, scale=True), list(MEAN), list(STD))
        expected = da.erase(image[None], draws.erasing[k:k + 1])[0]
        torch.testing.assert_close(batches[k], expected, rtol=0, atol=1e-5)


# --- configuration -------------------------------------------------------------------------


def test_autoaugment_policy_is_a_validated_trial_key():
    assert make_trial_config({"dataset": "cifar100", "autoaugment": True,
                              "autoaugment_policy": POLICY}).autoaugment_policy == POLICY
    assert make_trial_config({}).autoaugment_policy == "torchvision"  # the default: as before the key existed
    with pytest.raises(ConfigError, match=r"trial.autoaugment_policy = 'deepvoltaire'.*'deepvoltaire_9d42ce9'"):
        make_trial_config({"autoaugment": True, "autoaugment_policy": "deepvoltaire"})
    with pytest.raises(ConfigError, match=r"autoaugment_policy = 'deepvoltaire_9d42ce9' runs Pillow's RGB ops"):
        make_trial_config({"autoaugment": True, "autoaugment_policy": POLICY})
    with pytest.raises(ValueError, match="autoaugment_policy must be one of"):
        Recipe(autoaugment_policy="pillow")


def test_recipe_options_are_what_both_pipelines_take():
    options = Recipe(autoaugment=True, autoaugment_policy=POLICY, cutout_prob=0.5).policy_options()
    image_transform(size=8, pad=1, mean=MEAN, std=STD, **options)
    assert da.DevicePolicy(MEAN, STD, **options).active


@pytest.mark.parametrize("model", ["vit_tiny", "vit_small"])
def test_harada_vit_spaces_run_their_policy(model):
    space = yaml.safe_load((SPACES / f"harada2024_cifar100_{model}.yaml").read_text())
    trial = space["trial"]
    assert trial["autoaugment"] is True and trial["autoaugment_policy"] == POLICY
    assert make_trial_config(trial).autoaugment_policy == POLICY

