"""samtune.data.augment against formulas: the per-image recipe's draws (flip, crop offsets,
RandomErasing frequency, area and aspect) recovered from its outputs; CutMix and MixUp
recovered from the mixed images and checked against their soft labels; the soft-label
loss against Harada's mixed label-smoothing loss written out."""

import math

import pytest
import torch
import torch.nn.functional as F

from samtune.config import make_trial_config
from samtune.data import tensors
from samtune.data.augment import ERASING_MIN_AREA, BatchMixer, image_transform, seeded, to_uint8
from samtune.data.catalogue import CATALOGUE
from samtune.trial.loop import loss_function

# mean * 255 is not an integer: no pixel normalizes to exactly 0
MEAN, STD = CATALOGUE["cifar100"].mean, CATALOGUE["cifar100"].std


pytestmark = pytest.mark.usefixtures("one_thread")


def images(n, size=32, channels=3, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (n, channels, size, size), generator=g, dtype=torch.uint8)


def normalized(x):
    shape = (1, -1, 1, 1)
    return (x.float() / 255 - torch.tensor(MEAN).view(shape)) / torch.tensor(STD).view(shape)


def within_binomial(count, n, p, sigmas=4.5):
    return abs(count - n * p) <= sigmas * math.sqrt(n * p * (1 - p))


@pytest.mark.parametrize("stats", ["cifar10", "cifar100", "tiny-imagenet", "imagenet"])
def test_to_uint8_inverts_normalization_exactly(stats):
    """Every pixel level, normalized the way the data sets are loaded, comes back."""
    mean, std = CATALOGUE[stats].mean, CATALOGUE[stats].std
    levels = torch.arange(256, dtype=torch.uint8).view(1, 1, 16, 16).expand(1, 3, 16, 16)
    x = tensors._normalize_(tensors._to_unit_float(levels.permute(0, 2, 3, 1)), mean, std)
    assert torch.equal(to_uint8(x, mean, std), levels)


def test_seeded_transform_depends_on_seed_only_and_leaves_global_rng():
    transform = image_transform(size=32, pad=4, mean=MEAN, std=STD, autoaugment=True, erasing=0.5)
    image = images(1)[0]
    state = torch.get_rng_state()
    a, b = seeded(transform, image, 7), seeded(transform, image, 7)
    assert torch.equal(torch.get_rng_state(), state)
    assert torch.equal(a, b) and a.dtype == torch.float32 and a.shape == (3, 32, 32)
    assert any(not torch.equal(a, seeded(transform, image, s)) for s in range(8, 12))
    digit = seeded(image_transform(size=8, pad=1, mean=(0.3,), std=(0.4,), autoaugment=True), images(1, 8, 1)[0], 1)
    assert digit.shape == (1, 8, 8)


def erased_boxes(outputs, originals):
    """(top, left, h, w) of the box of exact zeros in each output, or None; checks it is one
    full rectangle and everything outside it is the untouched image."""
    boxes = []
    for out, image in zip(outputs, originals):
        mask = (out == 0).all(dim=0)
        if not mask.any():
            torch.testing.assert_close(out, image, rtol=0, atol=1e-5)
            boxes.append(None)
            continue
        rows, cols = mask.any(1).nonzero().flatten(), mask.any(0).nonzero().flatten()
        top, left, h, w = rows[0].item(), cols[0].item(), len(rows), len(cols)
        assert rows[-1] - top + 1 == h and cols[-1] - left + 1 == w and mask.sum() == h * w
        outside = ~mask
        torch.testing.assert_close(out[:, outside], image[:, outside], rtol=0, atol=1e-5)
        boxes.append((top, left, h, w))
    return boxes


def erase(n, p, max_area, aspect):
    transform = image_transform(size=32, pad=4, mean=MEAN, std=STD, crop_flip=False, erasing=p,
                                erasing_max_area=max_area, erasing_aspect=aspect)
    x = images(n, seed=3)
    outputs = torch.stack([seeded(transform, image, seed) for seed, image in enumerate(x)])
    return erased_boxes(outputs, normalized(x))


def test_random_erasing_frequency_is_p():
    # max area 0.2 with aspect >= 0.3: every drawn box fits in 32x32, so nothing falls back
    n, p = 3000, 0.25
    boxes = erase(n, p, max_area=0.2, aspect=0.3)
    assert within_binomial(sum(b is not None for b in boxes), n, p)


def test_random_erasing_box_area_and_aspect_within_bounds():
    max_area, aspect, area = 0.4, 0.3, 32 * 32
    boxes = [b for b in erase(1500, 0.5, max_area=max_area, aspect=aspect) if b is not None]
    assert len(boxes) > 500
    for _, _, h, w in boxes:
        # h, w are round(sqrt(A r)), round(sqrt(A / r)) for A in [0.02, max] * area, r in [a, 1/a]
        assert (h + 0.5) * (w + 0.5) >= ERASING_MIN_AREA * area and (h - 0.5) * (w - 0.5) <= max_area * area
        assert (h + 0.5) / (w - 0.5) >= aspect and (h - 0.5) / (w + 0.5) <= 1 / aspect
    fractions = [h * w / area for _, _, h, w in boxes]
    assert min(fractions) < 0.05 and max(fractions) > 0.3  # the range is used, not one size


def test_flip_frequency_and_crop_offsets():
    pad, n = 4, 1000
    transform = image_transform(size=32, pad=pad, mean=MEAN, std=STD)
    x = images(n, seed=5)
    flips, offsets = 0, set()
    for seed, image in enumerate(x):
        out = to_uint8(seeded(transform, image, seed)[None], MEAN, STD)[0]  # exact, as tested above
        padded = F.pad(image, (pad,) * 4)  # black: torchvision's RandomCrop pads a PIL image with 0
        windows = padded.unfold(1, 32, 1).unfold(2, 32, 1)  # (C, top, left, 32, 32)
        candidates = torch.stack([windows, windows.flip(-1)])  # (flip, C, top, left, 32, 32)
        matches = (candidates == out[None, :, None, None]).all(-1).all(-1).all(1).nonzero().tolist()
        assert len(matches) == 1, seed
        flip, top, left = matches[0]
        flips += flip
        offsets.add((top - pad, left - pad))
    assert within_binomial(flips, n, 0.5)
    assert offsets == {(i, j) for i in range(-pad, pad + 1) for j in range(-pad, pad + 1)}


# --- CutMix and MixUp -------------------------------------------------------------------


def batch(n=8, size=16, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, 3, size, size, generator=g), torch.arange(n)


def test_cutmix_pastes_one_box_of_the_paired_image_with_its_area_as_label_weight():
    x, y = batch()
    mixer = BatchMixer(num_classes=len(y), cutmix_prob=1.0, mixup_prob=0.0, seed=1)
    paired, area, boxes_seen = x.roll(1, 0), x.shape[-1] * x.shape[-2], 0
    for _ in range(40):
        mixed, targets = mixer(x, y)
        changed = (mixed != x).any(dim=1)
        assert torch.equal(changed, changed[:1].expand_as(changed))  # one box for the whole batch
        mask = changed[0]
        rows, cols = mask.any(1).nonzero().flatten(), mask.any(0).nonzero().flatten()
        box = len(rows) * len(cols)
        assert mask.sum() == box  # a full rectangle
        if box:
            boxes_seen += 1
            assert rows[-1] - rows[0] + 1 == len(rows) and cols[-1] - cols[0] + 1 == len(cols)
        assert torch.equal(mixed[:, :, mask], paired[:, :, mask])
        lam = 1 - box / area
        assert targets[torch.arange(8), y] == pytest.approx([lam] * 8)
        if box:
            assert targets[torch.arange(8), y.roll(1)] == pytest.approx([1 - lam] * 8)
        assert targets.sum(1) == pytest.approx([1.0] * 8)
    assert boxes_seen > 30


def test_mixup_is_the_label_weighted_average_with_the_paired_image():
    x, y = batch()
    mixer = BatchMixer(num_classes=len(y), cutmix_prob=0.0, mixup_prob=1.0, seed=2)
    paired = x.roll(1, 0)
    lams = []
    for _ in range(20):
        mixed, targets = mixer(x, y)
        d = (x - paired).flatten()
        lam = float(((mixed - paired).flatten() @ d) / (d @ d))  # least squares from the images alone
        torch.testing.assert_close(mixed, lam * x + (1 - lam) * paired, rtol=1e-5, atol=1e-5)
        assert targets[torch.arange(8), y] == pytest.approx([lam] * 8, abs=1e-5)
        assert targets[torch.arange(8), y.roll(1)] == pytest.approx([1 - lam] * 8, abs=1e-5)
        lams.append(lam)
    assert min(lams) < 0.3 and max(lams) > 0.7  # Beta(1, 1): uniform


def test_mix_choice_frequencies_match_the_probabilities():
    x, y = batch(4, 4)
    mixer = BatchMixer(num_classes=4, cutmix_prob=0.25, mixup_prob=0.25, seed=3)
    counts, n = {"none": 0, "cutmix": 0, "mixup": 0}, 2000
    for _ in range(n):
        mixed, targets = mixer(x, y)
        if targets.dim() == 1:
            assert mixed is x
            counts["none"] += 1
        elif ((mixed == x) | (mixed == x.roll(1, 0))).all():
            counts["cutmix"] += 1  # every pixel from one of the two images
        else:
            counts["mixup"] += 1
    assert within_binomial(counts["none"], n, 0.5)
    assert within_binomial(counts["cutmix"], n, 0.25) and within_binomial(counts["mixup"], n, 0.25)


def test_mixer_resumes_from_its_state():
    x, y = batch()
    a = BatchMixer(num_classes=8, cutmix_prob=0.3, mixup_prob=0.3, seed=4)
    for _ in range(5):
        a(x, y)
    b = BatchMixer(num_classes=8, cutmix_prob=0.3, mixup_prob=0.3, seed=99)
    b.load_state_dict(a.state_dict())
    for _ in range(10):
        (xa, ta), (xb, tb) = a(x, y), b(x, y)
        assert torch.equal(xa, xb) and torch.equal(ta, tb)


def paper_label_smoothing_ce(pred, target, smoothing):
    """utils/loss_function.py LabelSmoothingCrossEntropy (train mode), written out."""
    log_prob = F.log_softmax(pred, dim=-1)
    nll = -log_prob.gather(dim=-1, index=target.unsqueeze(1)).squeeze(1)
    smooth = -log_prob.mean(dim=-1)
    return ((1 - smoothing) * nll + smoothing * smooth).mean()


def test_soft_label_loss_equals_the_papers_mixed_criterion():
    g = torch.Generator().manual_seed(5)
    pred = torch.randn(32, 10, generator=g, dtype=torch.float64)
    y_a, y_b = torch.randint(0, 10, (32,), generator=g), torch.randint(0, 10, (32,), generator=g)
    loss_fn = loss_function(make_trial_config({"label_smoothing": 0.1}))
    for lam in (0.0, 0.37, 1.0):
        paper = lam * paper_label_smoothing_ce(pred, y_a, 0.1) + (1 - lam) * paper_label_smoothing_ce(pred, y_b, 0.1)
        soft = lam * F.one_hot(y_a, 10).double() + (1 - lam) * F.one_hot(y_b, 10).double()
        assert loss_fn(pred, soft).item() == pytest.approx(paper.item(), rel=1e-6)
    # and with the mixer's own labels: weight lam on y, 1 - lam on the rolled batch's y
    x, _ = batch(32)
    y = torch.arange(32) % 10  # neighbours differ, so lam can be read off the labels
    for kind in ({"cutmix_prob": 1.0, "mixup_prob": 0.0}, {"cutmix_prob": 0.0, "mixup_prob": 1.0}):
        _, soft = BatchMixer(num_classes=10, seed=6, **kind)(x, y)
        lam = soft[0, y[0]].item()
        paper = lam * paper_label_smoothing_ce(pred, y, 0.1) + (1 - lam) * paper_label_smoothing_ce(
            pred, y.roll(1), 0.1)
        assert loss_fn(pred, soft.double()).item() == pytest.approx(paper.item(), rel=1e-5)
