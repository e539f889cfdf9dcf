"""Khanh et al. 2024 as their code runs it (lhchau/fundamental-sam at commit f32a06e): their
ResNet-18 with the max-pool stem, their Cutout and their normalization statistics, each
against a transcription of their code written out below (not samtune's)."""

import math
from pathlib import Path

import pytest
import torch
import torch.nn as nn
import yaml
from test_data import point_torchvision_md5s_at, write_cifar
from torchvision import datasets, transforms

from samtune import schema
from samtune.config import ConfigError, make_trial_config
from samtune.data import catalogue
from samtune.data import device_augment as da
from samtune.data.augment import Cutout, image_transform, seeded
from samtune.data.tensors import load_dataset
from samtune.data.trial_data import Recipe, open_trial_data
from samtune.models import create_model
from samtune.trial.loop import build_model

SPACE = Path(__file__).resolve().parent.parent / "search_spaces" / "khanh2024_cifar10_resnet18.yaml"
# fundamental_sam/dataloader/cifar10.py lines 18 and 24 (and cifar100.py, the same values)
THEIR_MEAN, THEIR_STD = (0.4914, 0.4822, 0.4465), (0.2023, 0.1994, 0.2010)


pytestmark = pytest.mark.usefixtures("one_thread")


# --- their code, transcribed ---------------------------------------------------------------
# fundamental_sam/models/resnet.py (BasicBlock, ResNet, ResNet18; the max-pool added in 3011e3c)


class TheirBasicBlock(nn.Module):
    expansion = 1

    def __init__(self, in_planes, planes, stride=1):
        super().__init__()
        self.conv1 = nn.Conv2d(in_planes, planes, kernel_size=3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, kernel_size=3, stride=1, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.shortcut = nn.Sequential()
        if stride != 1 or in_planes != self.expansion * planes:
            self.shortcut = nn.Sequential(
                nn.Conv2d(in_planes, self.expansion * planes, kernel_size=1, stride=stride, bias=False),
                nn.BatchNorm2d(self.expansion * planes))
        self.activate = nn.ReLU(inplace=True)

    def forward(self, x):
        out = self.activate(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        out += self.shortcut(x)
        return self.activate(out)


class TheirResNet(nn.Module):
    def __init__(self, block, num_blocks, num_classes=10):
        super().__init__()
        self.in_planes = 64
        self.conv1 = nn.Conv2d(3, 64, kernel_size=3, stride=1, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        self.maxpool = nn.MaxPool2d(kernel_size=3, stride=2, padding=1)
        self.layer1 = self._make_layer(block, 64, num_blocks[0], stride=1)
        self.layer2 = self._make_layer(block, 128, num_blocks[1], stride=2)
        self.layer3 = self._make_layer(block, 256, num_blocks[2], stride=2)
        self.layer4 = self._make_layer(block, 512, num_blocks[3], stride=2)
        self.linear = nn.Linear(512 * block.expansion, num_classes)
        self.activate = nn.ReLU(inplace=True)
        self.avgpool2d = nn.AdaptiveAvgPool2d(1)

    def _make_layer(self, block, planes, num_blocks, stride):
        strides = [stride] + [1] * (num_blocks - 1)
        layers = []
        for stride in strides:  # noqa: B020 (as theirs)
            layers.append(block(self.in_planes, planes, stride))
            self.in_planes = planes * block.expansion
        return nn.Sequential(*layers)

    def forward(self, x):
        out = self.activate(self.bn1(self.conv1(x)))
        out = self.maxpool(out)
        out = self.layer4(self.layer3(self.layer2(self.layer1(out))))
        out = torch.flatten(self.avgpool2d(out), 1)
        return self.linear(out)


def their_resnet18(num_classes=10):
    return TheirResNet(TheirBasicBlock, [2, 2, 2, 2], num_classes)


class TheirCutout:
    """fundamental_sam/dataloader/cutout.py, as written."""

    def __init__(self, size=16, p=0.5):
        self.size = size
        self.half_size = size // 2
        self.p = p

    def __call__(self, image):
        if torch.rand([1]).item() > self.p:
            return image
        left = torch.randint(-self.half_size, image.size(1) - self.half_size, [1]).item()
        top = torch.randint(-self.half_size, image.size(2) - self.half_size, [1]).item()
        right = min(image.size(1), left + self.size)
        bottom = min(image.size(2), top + self.size)
        image[:, max(0, left): right, max(0, top): bottom] = 0
        return image


# --- the network ---------------------------------------------------------------------------


def n_params(model):
    return sum(p.numel() for p in model.parameters())


@pytest.mark.parametrize("num_classes, expected", [(10, 11_173_962), (100, 11_220_132)])
def test_maxpool_resnet18_has_their_parameter_count(num_classes, expected):
    ours = create_model("resnet18", num_classes=num_classes, stem="cifar_maxpool")
    assert n_params(ours) == n_params(their_resnet18(num_classes)) == expected


def their_state_as_ours(state):
    """Their parameter names on torchvision's: shortcut -> downsample, linear -> fc."""
    return {key.replace("shortcut", "downsample").replace("linear.", "fc."): value for key, value in state.items()}


def test_maxpool_resnet18_computes_their_network_for_the_same_weights():
    torch.manual_seed(0)
    theirs = their_resnet18()
    for module in theirs.modules():  # BN away from identity, so that every BN is tested
        if isinstance(module, nn.BatchNorm2d):
            for tensor in (module.weight, module.bias, module.running_mean):
                nn.init.normal_(tensor, 0.1, 0.5)
            nn.init.uniform_(module.running_var, 0.5, 2.0)
    ours = create_model("resnet18", num_classes=10, stem="cifar_maxpool")
    ours.load_state_dict(their_state_as_ours(theirs.state_dict()))
    x = torch.randn(4, 3, 32, 32)
    for mode in ("eval", "train"):  # running statistics, then batch statistics
        getattr(theirs, mode)(), getattr(ours, mode)()
        torch.testing.assert_close(ours(x), theirs(x), rtol=1e-5, atol=1e-5)
    without_pool = create_model("resnet18", num_classes=10)
    without_pool.load_state_dict(ours.state_dict())
    assert not torch.allclose(without_pool.eval()(x), theirs.eval()(x), atol=1e-3)


def test_resnet_stem_is_a_validated_trial_key_that_reaches_the_model():
    config = make_trial_config({"model": "resnet18", "dataset": "cifar10", "resnet_stem": "cifar_maxpool"})
    model, _ = build_model(config, {"num_classes": 10, "in_channels": 3, "image_size": 32}, torch.device("cpu"))
    assert isinstance(model.maxpool, nn.MaxPool2d) and model.conv1.kernel_size == (3, 3)
    with pytest.raises(ConfigError, match=r"trial.resnet_stem = 'maxpool'.*'cifar_maxpool'"):
        make_trial_config({"model": "resnet18", "resnet_stem": "maxpool"})
    with pytest.raises(ConfigError, match=r"resnet_stem = 'cifar_maxpool' applies to the ResNets only.*'small_cnn'"):
        make_trial_config({"resnet_stem": "cifar_maxpool"})


# --- Cutout --------------------------------------------------------------------------------


def under_seed(seed, function, *args):
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return function(*args)


@pytest.mark.parametrize("shape, size", [((3, 32, 32), 16), ((3, 10, 12), 5)])
def test_cutout_cuts_their_square_for_the_same_draws(shape, size):
    for seed in range(200):
        x = torch.randn(shape, generator=torch.Generator().manual_seed(seed))
        theirs = under_seed(seed, TheirCutout(size=size, p=0.5), x.clone())
        ours = under_seed(seed, Cutout(0.5, size), x.clone())
        assert torch.equal(ours, theirs), seed


def test_per_image_pipeline_cuts_after_normalization_as_theirs():
    """ToTensor, Normalize, Cutout on the same image and seed: their transform_train without
    the crop and flip, and samtune's image_transform with Cutout."""
    ours = image_transform(size=32, pad=4, mean=THEIR_MEAN, std=THEIR_STD, crop_flip=False, cutout_prob=0.5)
    theirs = transforms.Compose([transforms.ToTensor(), transforms.Normalize(THEIR_MEAN, THEIR_STD), TheirCutout()])
    images = torch.randint(0, 256, (60, 3, 32, 32), generator=torch.Generator().manual_seed(1), dtype=torch.uint8)
    cut = 0
    for seed, image in enumerate(images):
        expected = under_seed(seed, theirs, transforms.functional.to_pil_image(image))
        got = seeded(ours, image, seed)
        torch.testing.assert_close(got, expected, rtol=0, atol=1e-6)
        assert torch.equal(got == 0, expected == 0)  # the cut pixels, exactly
        cut += bool((expected == 0).any())
    assert 15 < cut < 45


@pytest.mark.parametrize("height, width, size", [(32, 32, 16), (10, 12, 5)])
def test_device_cutout_box_is_their_slice_for_every_corner(height, width, size):
    half = size // 2
    rows, cols = torch.meshgrid(torch.arange(-half, height - half), torch.arange(-half, width - half), indexing="ij")
    rows, cols = rows.flatten(), cols.flatten()
    boxes = da.cutout_boxes(rows, cols, torch.ones(len(rows), dtype=torch.bool), size=size, height=height,
                            width=width)
    ours = da.erase(torch.ones(len(rows), 2, height, width), boxes)
    for image, left, top in zip(ours, rows.tolist(), cols.tolist()):  # their names: left is the row
        theirs = torch.ones(2, height, width)
        theirs[:, max(0, left):min(height, left + size), max(0, top):min(width, top + size)] = 0
        assert torch.equal(image, theirs)


def exact_mean_area(height, width, size):
    """The mean cut area over their uniform corners, enumerated."""
    half = size // 2

    def spans(side):
        return [min(side, start + size) - max(0, start) for start in range(-half, side - half)]

    return sum(spans(height)) / height * sum(spans(width)) / width


def test_device_cutout_draws_follow_their_distribution():
    n, height, width, size = 40_000, 32, 32, 16
    boxes = da.draw_cutout(n, height=height, width=width, p=0.5, size=size, generator=torch.Generator().manual_seed(3))
    area = (boxes[:, da.HEIGHT] * boxes[:, da.WIDTH]).double()
    cut = area > 0
    assert abs(cut.double().mean() - 0.5) < 5 * math.sqrt(0.25 / n)
    expected = exact_mean_area(height, width, size)  # 12.25 x 12.25 at 32 px, size 16
    assert abs(area[cut].mean() - expected) < 5 * area[cut].std() / math.sqrt(int(cut.sum()))
    # their transform, run 4000 times: the same frequency and mean area
    theirs = [int((TheirCutout()(torch.ones(1, height, width)) == 0).sum()) for _ in range(4000)]
    their_cut = torch.tensor([a for a in theirs if a], dtype=torch.float64)
    assert abs(len(their_cut) / 4000 - 0.5) < 5 * math.sqrt(0.25 / 4000)
    assert abs(their_cut.mean() - expected) < 5 * their_cut.std() / math.sqrt(len(their_cut))


DIGITS_TRIAL = {"batch_size": 32, "batch_stages": 1, "num_threads": 1, "sharpness": [], "train_eval_examples": 64,
                "device": "cpu", "epochs": 1}


@pytest.mark.parametrize("pipeline", ["device", "workers"])
def test_cutout_trial_keys_reach_both_pipelines(pipeline):
    from samtune.trial.loop import Trial

    config = make_trial_config(DIGITS_TRIAL | {"cutout_prob": 1.0, "cutout_size": 4, "augment_pipeline": pipeline})
    assert config.pipeline == pipeline
    x, _ = next(iter(Trial(config).loader))
    zeros = (x == 0).flatten(1).sum(1)  # one 4x4 square at most, clipped; digits pixels are never 0 after normalizing
    assert (zeros > 0).all() and (zeros <= 16).all()


# --- normalization -------------------------------------------------------------------------


def test_named_statistics_are_theirs():
    assert schema.NORMALIZATIONS == (catalogue.DATASET_STATS, *catalogue.NORMALIZATION_STATS)
    assert catalogue.NORMALIZATION_STATS["cifar10_kuangliu"] == (THEIR_MEAN, THEIR_STD)
    assert catalogue.CATALOGUE["cifar10"].mean == THEIR_MEAN  # their mean is CIFAR-10's, only the std differs


def test_cifar_normalized_with_their_statistics_is_their_transform(tmp_path, monkeypatch):
    directory, _ = write_cifar(tmp_path, "cifar10")
    point_torchvision_md5s_at(monkeypatch, "cifar10", directory)
    data = load_dataset("cifar10", root=tmp_path, normalization="cifar10_kuangliu")
    transform_test = transforms.Compose([transforms.ToTensor(), transforms.Normalize(THEIR_MEAN, THEIR_STD)])
    for train, x in ((True, data.train_x), (False, data.test_x)):
        theirs = datasets.CIFAR10(str(tmp_path), train=train, transform=transform_test)
        expected = torch.stack([theirs[i][0] for i in range(len(theirs))])
        torch.testing.assert_close(x, expected, rtol=0, atol=1e-6)
    assert (data.mean, data.std) == (THEIR_MEAN, THEIR_STD)

    opened = open_trial_data("cifar10", device=torch.device("cpu"), root=str(tmp_path),
                             normalization="cifar10_kuangliu")
    assert opened.normalization == "cifar10_kuangliu"
    with pytest.raises(ValueError, match="normalization = 'dataset', but cifar10 was opened normalized with"):
        opened.train_loader(Recipe(), batch_size=4, seed=0, rank=0, world=1, device=torch.device("cpu"))


def test_normalization_is_a_validated_trial_key():
    assert make_trial_config({"dataset": "cifar10", "normalization": "cifar10_kuangliu"}).normalization
    with pytest.raises(ConfigError, match=r"trial.normalization = 'kuangliu'.*'cifar10_kuangliu'"):
        make_trial_config({"dataset": "cifar10", "normalization": "kuangliu"})
    with pytest.raises(ConfigError, match=r"normalization = 'cifar10_kuangliu' names RGB statistics.*'digits'"):
        make_trial_config({"normalization": "cifar10_kuangliu"})


# --- the bundled space ---------------------------------------------------------------------


def test_khanh_space_runs_their_network_cutout_and_normalization():
    trial = yaml.safe_load(SPACE.read_text())["trial"]
    assert trial["resnet_stem"] == "cifar_maxpool" and trial["normalization"] == "cifar10_kuangliu"
    assert (trial["cutout_prob"], trial["cutout_size"]) == (0.5, 16)  # their Cutout() defaults: size=16, p=0.5
    config = make_trial_config(trial)
    assert config.pipeline == "device" and config.init == "pytorch"
