"""Batched AutoAugment and RandomErasing on the device against torchvision's own per-image
code: every op, whole sub-policies given the draws, the draw frequencies, RandomErasing's
box distribution and erased pixels; then the device loader with the recipe (full pipeline
per image, batch-size independence, resume) and a digits trial interrupted and resumed."""

import math

import pytest
import torch
from torchvision.transforms import v2
from torchvision.transforms.v2 import functional as TF
from trial_sinks import assert_resume_is_exact

from samtune.config import make_trial_config
from samtune.data import device_augment as da
from samtune.data.loaders import DeviceLoader, crop_flip, draw_passes_plan
from samtune.trial.loop import Trial

TORCHVISION = v2.AutoAugment(v2.AutoAugmentPolicy.CIFAR10)
MEAN, STD = (0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762)


def pixels(n, channels, size, seed=0):
    """uint8 images and the same as [0, 1] floats, the way torchvision converts them."""
    images = torch.randint(0, 256, (n, channels, size, size), generator=torch.Generator().manual_seed(seed),
                           dtype=torch.uint8)
    return images, TF.to_dtype(images, torch.float32, scale=True)


def torchvision_op(image, image_u8, op, value):
    """torchvision AutoAugment's own op on one image; Posterize as it acts on uint8 pixels."""
    if op == "Posterize":
        out = TORCHVISION._apply_image_or_video_transform(image_u8, op, value, interpolation=TORCHVISION.interpolation,
                                                          fill=TORCHVISION._fill)
        return TF.to_dtype(out, torch.float32, scale=True)
    return TORCHVISION._apply_image_or_video_transform(image, op, value, interpolation=TORCHVISION.interpolation,
                                                       fill=TORCHVISION._fill)


def test_policy_table_magnitudes_and_signs_are_torchvisions():
    assert [tuple(sub) for sub in da.CIFAR10_POLICY] == TORCHVISION._policies
    for op, bins in {(op, b) for sub in da.CIFAR10_POLICY for op, _, b in sub}:
        space, signed = TORCHVISION._AUGMENTATION_SPACE[op]
        assert signed == (op in da.SIGNED_OPS)
        for height, width in [(32, 32), (8, 8), (16, 24)]:
            values = space(da.NUM_BINS, height, width)
            expected = 0.0 if values is None else float(values[bins])
            assert da.magnitude(op, bins, height, width) == expected, (op, bins)


@pytest.mark.parametrize("channels, size", [(3, 16), (1, 8)])
def test_every_op_on_a_batch_equals_torchvision_image_by_image(channels, size):
    images_u8, images = pixels(24, channels, size)
    for op, bins, negated in da.VARIANTS:
        value = da.magnitude(op, bins, size, size) * (-1 if negated else 1)
        batched = da.apply_op(images, op, value)
        for i in range(len(images)):
            expected = torchvision_op(images[i], images_u8[i], op, value)
            torch.testing.assert_close(batched[i], expected, rtol=0, atol=1e-6, msg=f"{op} {value}")


@pytest.mark.parametrize("channels, size", [(3, 16), (1, 8)])
def test_grouped_policy_equals_torchvision_ops_in_sequence(channels, size):
    _, images = pixels(300, channels, size, seed=1)
    draws = da.draw_autoaugment(len(images), torch.Generator().manual_seed(2))
    batched = da.autoaugment(images, draws)
    for image, out, (policy, applied0, applied1, negated0, negated1) in zip(images, batched, draws.tolist()):
        for (op, _, bins), applied, negated in zip(da.CIFAR10_POLICY[policy], (applied0, applied1),
                                                   (negated0, negated1)):
            if applied:
                value = da.magnitude(op, bins, size, size)
                value = -value if negated and op in da.SIGNED_OPS else value
                u8 = image.mul(255).round().to(torch.uint8)
                image = torchvision_op(image, u8, op, value)
        torch.testing.assert_close(out, image, rtol=0, atol=1e-6)


def binomial_ok(count, n, p, sigmas=5.0):
    return abs(count - n * p) <= sigmas * math.sqrt(n * p * (1 - p)) + 1


def test_autoaugment_draw_frequencies_follow_the_table():
    n = 25_000
    draws = da.draw_autoaugment(n, torch.Generator().manual_seed(0)).long()
    policy = draws[:, da.POLICY]
    for index, sub_policy in enumerate(da.CIFAR10_POLICY):
        chosen = draws[policy == index]
        assert binomial_ok(len(chosen), n, 1 / 25)
        for position, (_, probability, _) in enumerate(sub_policy):
            assert binomial_ok(int(chosen[:, da.APPLIED][:, position].sum()), len(chosen), probability)
            assert binomial_ok(int(chosen[:, da.NEGATED][:, position].sum()), len(chosen), 0.5)


def torchvision_boxes(n, *, height, width, p, scale, ratio):
    """(n, 4) boxes from torchvision's RandomErasing: its own coin (forward's rand < p), then
    make_params; h = w = 0 where it erases nothing."""
    transform = v2.RandomErasing(p=p, scale=scale, ratio=ratio, value=0)
    image = torch.zeros(1, height, width)
    boxes = []
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        for _ in range(n):
            params = transform.make_params([image]) if torch.rand(1) < p else {"v": None}
            boxes.append([params["i"], params["j"], params["h"], params["w"]] if params["v"] is not None else [0] * 4)
    return torch.tensor(boxes)


@pytest.mark.parametrize("height, width, p, scale", [(32, 32, 0.25, (0.02, 0.4)), (8, 32, 1.0, (0.3, 0.9))])
def test_erasing_boxes_follow_torchvisions_distribution(height, width, p, scale):
    n, ratio = 4000, (0.3, 1 / 0.3)
    ours = da.draw_erasing(20 * n, height=height, width=width, p=p, scale=scale, ratio=ratio,
                           generator=torch.Generator().manual_seed(1)).double()
    theirs = torchvision_boxes(n, height=height, width=width, p=p, scale=scale, ratio=ratio).double()
    top, left, h, w = ours.unbind(1)
    erased = h > 0
    assert (top >= 0).all() and (left >= 0).all() and (top + h <= height).all() and (left + w <= width).all()
    assert (h[erased] < height).all() and (w[erased] < width).all() and (h[~erased] == 0).all()
    # frequency of an erased box (p times the chance that one of 10 tries fits)
    assert binomial_ok(int((theirs[:, 2] > 0).sum()), n, float(erased.double().mean()))
    their_erased = theirs[theirs[:, 2] > 0]
    for name, ours_stat, theirs_stat in [
        ("area", h[erased] * w[erased] / (height * width), their_erased[:, 2] * their_erased[:, 3] / (height * width)),
        ("log aspect", (h[erased] / w[erased]).log(), (their_erased[:, 2] / their_erased[:, 3]).log()),
        ("top", top[erased] / height, their_erased[:, 0] / height),
        ("left", left[erased] / width, their_erased[:, 1] / width),
    ]:
        bound = 5 * ours_stat.std() / math.sqrt(len(theirs_stat))
        assert abs(ours_stat.mean() - theirs_stat.mean()) <= bound, name
        assert abs(ours_stat.std() - theirs_stat.std()) <= 0.1 * ours_stat.std(), name


def test_erase_equals_torchvisions_erase_for_the_drawn_boxes():
    _, images = pixels(200, 3, 16, seed=3)
    boxes = da.draw_erasing(200, height=16, width=16, p=0.5, scale=(0.02, 0.4), ratio=(0.3, 1 / 0.3),
                            generator=torch.Generator().manual_seed(4))
    out = da.erase(images, boxes)
    for image, result, (i, j, h, w) in zip(images, out, boxes.tolist()):
        expected = TF.erase(image, i, j, h, w, v=torch.tensor([0.0])[:, None, None]) if h else image
        assert torch.equal(result, expected)


def normalized(images):
    shape = (1, 3, 1, 1)
    return (images - torch.tensor(MEAN).view(shape)) / torch.tensor(STD).view(shape)


def recipe_loader(x, batch_size, seed=5):
    policy = da.DevicePolicy(MEAN, STD, autoaugment=True, erasing=0.5)
    fill = tuple(-m / s for m, s in zip(MEAN, STD))
    return DeviceLoader(x, torch.arange(len(x)), batch_size=batch_size, augment="crop_flip", pad=2, fill=fill,
                        seed=seed, passes=2, policy=policy)


def test_device_recipe_is_torchvisions_per_image_pipeline_for_the_loaders_draws():
    """Crop + flip, AutoAugment, normalize, erase, image by image with torchvision's ops,
    for the plan and draws the loader's generator makes."""
    n, size = 60, 16
    _, images = pixels(n, 3, size, seed=6)
    x = normalized(images)
    batches = torch.cat([xb for xb, _ in recipe_loader(x, batch_size=40)])
    generator = torch.Generator().manual_seed(5)
    plan = draw_passes_plan(n, passes=2, shuffle=True, augment="crop_flip", pad=2, generator=generator)
    draws = da.DevicePolicy(MEAN, STD, autoaugment=True, erasing=0.5).draw(2 * n, height=size, width=size,
                                                                          generator=generator)
    for k in range(len(batches)):
        image = images[plan.order[k]][None]
        image = crop_flip(image, plan.top[k:k + 1], plan.left[k:k + 1], plan.flip[k:k + 1], pad=2)[0]
        policy, applied0, applied1, negated0, negated1 = draws.autoaugment[k].tolist()
        for (op, _, bins), applied, negated in zip(da.CIFAR10_POLICY[policy], (applied0, applied1),
                                                   (negated0, negated1)):
            if applied:
                value = da.magnitude(op, bins, size, size) * (-1 if negated and op in da.SIGNED_OPS else 1)
                image = torchvision_op(image, image.mul(255).round().to(torch.uint8), op, value)
        image = TF.normalize(image, list(MEAN), list(STD))
        i, j, h, w = draws.erasing[k].tolist()
        expected = TF.erase(image, i, j, h, w, v=torch.tensor([0.0])[:, None, None]) if h else image
        torch.testing.assert_close(batches[k], expected, rtol=0, atol=1e-5)


def test_device_recipe_does_not_depend_on_batch_size_and_resumes_exactly():
    _, images = pixels(150, 3, 16, seed=7)
    x = normalized(images)
    small = torch.cat([xb for xb, _ in recipe_loader(x, batch_size=32)])
    large = torch.cat([xb for xb, _ in recipe_loader(x, batch_size=100)])
    torch.testing.assert_close(small[:len(large)], large[:len(small)], rtol=0, atol=1e-6)
    original = recipe_loader(x, batch_size=50)
    next(iter(original))
    resumed = recipe_loader(x, batch_size=50, seed=99)
    resumed.load_state_dict(original.state_dict())
    for (a, ya), (b, yb) in zip(original, resumed, strict=True):
        assert torch.equal(a, b) and torch.equal(ya, yb)


RECIPE = {"autoaugment": True, "random_erasing": 0.5, "cutmix_prob": 0.25, "mixup_prob": 0.25,
          "label_smoothing": 0.1, "augment_pipeline": "device", "batch_size": 32, "batch_stages": 1,
          "num_threads": 1, "sharpness": [], "train_eval_examples": 128, "device": "cpu", "epochs": 2}


def test_digits_trial_with_the_device_recipe_resumes_exactly():
    config = make_trial_config(RECIPE)
    assert config.pipeline == "device"
    loader = Trial(config).loader
    assert isinstance(loader, DeviceLoader) and loader.policy.autoaugment and loader.policy.erasing == 0.5
    assert_resume_is_exact(config)
