"""Tests for samtune.data: data sets as tensors, the device loader and its augmentation.

References are independent of the code under test: scikit-learn's split for digits,
torchvision.transforms.v2 per-sample pad/crop/flip/normalize for the batched
augmentation, numpy for normalization statistics, files written by the tests for the
CIFAR / ImageFolder / Tiny-ImageNet readers.
"""

import hashlib
import io
import pickle

import numpy as np
import pytest
import torch
from PIL import Image

from samtune.checks import DatasetError
from samtune.data.catalogue import CATALOGUE, check_dataset_name
from samtune.data.loaders import DeviceLoader, crop_flip, draw_epoch_plan, fixed_batches
from samtune.data.tensors import TensorData, load_dataset


def epoch(loader):
    return [(x.clone(), y.clone()) for x, y in loader]


def same_batches(a, b):
    return len(a) == len(b) and all(torch.equal(xa, xb) and torch.equal(ya, yb) for (xa, ya), (xb, yb) in zip(a, b))


def indexed_images(n, channels=3, size=8):
    """Random images with labels 0..n-1, so a batch's labels say which examples it holds."""
    g = torch.Generator().manual_seed(1)
    return torch.randn(n, channels, size, size, generator=g), torch.arange(n)


# --- digits --------------------------------------------------------------------------


def test_digits_matches_an_independent_stratified_standardized_split():
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    data = load_dataset("digits")
    bunch = load_digits()
    train, test, train_y, test_y = train_test_split(
        bunch.data / 16.0, bunch.target, test_size=1000, random_state=0, stratify=bunch.target
    )
    mean, std = train.mean(), train.std()

    assert data.train_x.shape == (797, 1, 8, 8) and data.test_x.shape == (1000, 1, 8, 8)
    assert len(data.train_y) == CATALOGUE["digits"].train_size
    assert (data.num_classes, data.in_channels, data.image_size, data.augment) == (10, 1, 8, "none")
    assert data.train_y.dtype == torch.int64
    np.testing.assert_allclose(data.train_x.reshape(-1, 64).numpy(), (train - mean) / std, atol=1e-5)
    np.testing.assert_allclose(data.test_x.reshape(-1, 64).numpy(), (test - mean) / std, atol=1e-5)
    np.testing.assert_array_equal(data.train_y.numpy(), train_y)
    np.testing.assert_array_equal(data.test_y.numpy(), test_y)
    # standardized with TRAIN statistics: the train split is exactly centred, the test split is not
    assert abs(data.train_x.double().mean().item()) < 1e-6
    assert data.train_x.double().std(correction=0).item() == pytest.approx(1.0, abs=1e-5)
    # stratified: each class is split 75/25 up to rounding
    totals = np.bincount(bunch.target)
    assert np.all(np.abs(np.bincount(test_y) - 1000 / len(bunch.target) * totals) <= 1)


def test_digits_split_does_not_depend_on_global_seeds():
    torch.manual_seed(1), np.random.seed(1)
    first = load_dataset("digits")
    torch.manual_seed(2), np.random.seed(2)
    second = load_dataset("digits")
    assert torch.equal(first.train_y, second.train_y) and torch.equal(first.test_x, second.test_x)


# --- DeviceLoader: order, batch size, coverage ------------------------------------------


def test_same_seed_gives_same_batches_and_a_different_seed_different_ones():
    x, y = indexed_images(64)
    make = lambda seed: DeviceLoader(x, y, batch_size=16, augment="crop_flip", pad=2, seed=seed)  # noqa: E731
    a, b, c = make(0), make(0), make(1)
    a1, a2 = epoch(a), epoch(a)
    assert same_batches(a1, epoch(b)) and same_batches(a2, epoch(b))
    assert not torch.equal(a1[0][1], epoch(c)[0][1])
    assert not torch.equal(a1[0][1], a2[0][1])  # a new permutation every epoch


def test_batch_size_can_change_between_epochs_without_changing_the_epoch_order():
    x, y = indexed_images(100)
    a = DeviceLoader(x, y, batch_size=10, seed=3)
    b = DeviceLoader(x, y, batch_size=25, seed=3)
    epoch(a), epoch(b)
    a.batch_size, b.batch_size = 32, 5
    assert len(a) == 3 and len(b) == 20
    a2, b2 = epoch(a), epoch(b)
    assert [len(yb) for _, yb in a2] == [32, 32, 32]
    assert torch.equal(torch.cat([yb for _, yb in a2]), torch.cat([yb for _, yb in b2])[:96])


@pytest.mark.parametrize("bad", [0, -4, 2.5, True, "8"])
def test_batch_size_rejects_non_positive_or_non_int(bad):
    x, y = indexed_images(8)
    with pytest.raises(ValueError, match="batch_size"):
        DeviceLoader(x, y, batch_size=bad)
    loader = DeviceLoader(x, y, batch_size=4)
    with pytest.raises(ValueError, match="batch_size"):
        loader.batch_size = bad


def test_drop_last_with_a_batch_larger_than_the_data_is_an_error_not_an_empty_epoch():
    x, y = indexed_images(8)
    with pytest.raises(ValueError, match="batch_size 9 exceeds the 8 examples"):
        iter(DeviceLoader(x, y, batch_size=9))


def test_without_drop_last_every_example_appears_once_and_with_it_the_partial_batch_goes():
    x, y = indexed_images(103)
    keep = epoch(DeviceLoader(x, y, batch_size=10, drop_last=False, seed=5))
    assert [len(yb) for _, yb in keep] == [10] * 10 + [3]
    assert torch.equal(torch.cat([yb for _, yb in keep]).sort().values, y)

    drop = epoch(DeviceLoader(x, y, batch_size=10, drop_last=True, seed=5))
    assert [len(yb) for _, yb in drop] == [10] * 10
    assert torch.cat([yb for _, yb in drop]).unique().numel() == 100


def test_eval_loader_yields_every_example_in_order_unaugmented():
    data = load_dataset("digits")
    loader = data.eval_loader("test", batch_size=64)
    batches = epoch(loader)
    assert len(loader) == 16 and len(batches[-1][1]) == 1000 - 15 * 64
    assert torch.equal(torch.cat([xb for xb, _ in batches]), data.test_x)
    assert torch.equal(torch.cat([yb for _, yb in batches]), data.test_y)


def test_augment_none_returns_the_indexed_examples_unchanged():
    x, y = indexed_images(40)
    for xb, yb in DeviceLoader(x, y, batch_size=8, augment="none", seed=2):
        assert torch.equal(xb, x[yb])


# --- augmentation against torchvision, sample by sample -------------------------------


def test_train_loader_crop_flip_equals_torchvision_pad_crop_flip_normalize_per_sample():
    """Stored images are normalized; padding with TensorData.pad_fill must equal torchvision's
    RandomCrop(padding=p) on the raw uint8 image (black padding) followed by Normalize."""
    from torchvision.transforms.v2 import functional as TF

    n, size, seed = 48, 16, 7
    raw = torch.randint(0, 256, (n, 3, size, size), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    mean, std = (0.3, 0.5, 0.6), (0.2, 0.25, 0.3)
    x = TF.normalize(raw.float() / 255, mean, std)
    data = TensorData(
        name="synthetic", train_x=x, train_y=torch.arange(n), test_x=x[:1], test_y=torch.zeros(1, dtype=torch.long),
        num_classes=n, in_channels=3, image_size=size, augment="crop_flip", pad=size // 8, mean=mean, std=std,
        classes=tuple(map(str, range(n))),
    )
    pad = data.pad
    out = torch.cat([xb for xb, _ in data.train_loader(batch_size=16, seed=seed)])

    plan = draw_epoch_plan(n, shuffle=True, augment="crop_flip", pad=pad, generator=torch.Generator().manual_seed(seed))
    assert plan.flip.any() and (~plan.flip).any()
    assert plan.top.min() == 0 and plan.top.max() == 2 * pad  # the whole offset range is exercised
    for k in range(n):
        image = TF.pad(raw[plan.order[k]], [pad], fill=0)
        image = TF.crop(image, int(plan.top[k]), int(plan.left[k]), size, size)
        if plan.flip[k]:
            image = TF.horizontal_flip(image)
        expected = TF.normalize(image.float() / 255, mean, std)
        torch.testing.assert_close(out[k], expected, rtol=0, atol=1e-5)


def test_crop_flip_reflect_padding_matches_torchvision():
    from torchvision.transforms.v2 import functional as TF

    x, _ = indexed_images(6, size=5)
    top, left = torch.tensor([0, 1, 2, 3, 4, 2]), torch.tensor([4, 0, 2, 1, 3, 2])
    flip = torch.tensor([True, False, True, False, True, False])
    out = crop_flip(x, top, left, flip, pad=2, pad_mode="reflect")
    for k in range(6):
        image = TF.crop(TF.pad(x[k], [2], padding_mode="reflect"), int(top[k]), int(left[k]), 5, 5)
        expected = TF.horizontal_flip(image) if flip[k] else image
        torch.testing.assert_close(out[k], expected, rtol=0, atol=0)


def test_crop_flip_centre_offsets_are_identity_or_a_mirror():
    x, _ = indexed_images(4)
    centre = torch.full((4,), 3)
    assert torch.equal(crop_flip(x, centre, centre, torch.zeros(4, dtype=torch.bool), pad=3), x)
    assert torch.equal(crop_flip(x, centre, centre, torch.ones(4, dtype=torch.bool), pad=3), x.flip(-1))
    # offset 0 shifts the image down/right by pad, bringing in fill (here 0) at the top/left
    shifted = crop_flip(x, torch.zeros(4, dtype=torch.long), centre, torch.zeros(4, dtype=torch.bool), pad=3)
    assert torch.equal(shifted[:, :, 3:], x[:, :, :-3]) and torch.all(shifted[:, :, :3] == 0)


def test_loader_rejects_unknown_augmentation():
    x, y = indexed_images(4)
    with pytest.raises(ValueError, match="augment must be one of"):
        DeviceLoader(x, y, batch_size=2, augment="cutout")


# --- checkpointing ----------------------------------------------------------------------


def test_state_dict_round_trip_resumes_with_the_identical_next_epoch():
    x, y = indexed_images(50)
    original = DeviceLoader(x, y, batch_size=8, augment="crop_flip", pad=2, seed=11)
    epoch(original)
    buffer = io.BytesIO()
    torch.save(original.state_dict(), buffer)  # as a trial checkpoint would
    buffer.seek(0)
    state = torch.load(buffer)

    resumed = DeviceLoader(x, y, batch_size=8, augment="crop_flip", pad=2, seed=999)
    resumed.load_state_dict(state)
    assert resumed.epoch == 1
    assert same_batches(epoch(original), epoch(resumed))
    assert same_batches(epoch(original), epoch(resumed))


# --- sharpness batches ------------------------------------------------------------------


def test_fixed_batches_are_the_first_examples_in_order():
    data = load_dataset("digits")
    batches = fixed_batches(data.train_x, data.train_y, n_examples=300, batch_size=128)
    assert [len(yb) for _, yb in batches] == [128, 128, 44]
    assert torch.equal(torch.cat([xb for xb, _ in batches]), data.train_x[:300])
    assert torch.equal(torch.cat([yb for _, yb in batches]), data.train_y[:300])
    with pytest.raises(ValueError, match="n_examples"):
        fixed_batches(data.train_x, data.train_y, n_examples=5000, batch_size=128)


# --- readers of on-disk formats -----------------------------------------------------------


CIFAR_FORMATS = {
    # name: (torchvision class, folder, train files, test file, meta file, label key, meta key)
    "cifar10": ("CIFAR10", "cifar-10-batches-py", [f"data_batch_{i}" for i in range(1, 6)], "test_batch",
                "batches.meta", "labels", "label_names"),
    "cifar100": ("CIFAR100", "cifar-100-python", ["train"], "test", "meta", "fine_labels", "fine_label_names"),
}


def write_cifar(root, name, per_file=3):
    """Write torchvision's CIFAR pickles (rows of 3072 uint8: R plane, G plane, B plane)."""
    _, folder, train_files, test_file, meta_file, label_key, meta_key = CIFAR_FORMATS[name]
    directory = root / folder
    directory.mkdir(parents=True)
    rng = np.random.default_rng(0)
    written = {}
    for file_name in [*train_files, test_file]:
        rows = rng.integers(0, 256, (per_file, 3072), dtype=np.uint8)
        labels = rng.integers(0, 10, per_file).tolist()
        with open(directory / file_name, "wb") as f:
            pickle.dump({"data": rows, label_key: labels, "batch_label": file_name}, f)
        written[file_name] = (rows, labels)
    with open(directory / meta_file, "wb") as f:
        pickle.dump({meta_key: [f"class{i}" for i in range(10)]}, f)
    return directory, written


def md5(path):
    return hashlib.md5(path.read_bytes()).hexdigest()


def point_torchvision_md5s_at(monkeypatch, name, directory):
    """torchvision checks each file's md5 against the real release; expect ours instead."""
    from torchvision import datasets

    class_name, _, train_files, test_file, meta_file, _, meta_key = CIFAR_FORMATS[name]
    cls = getattr(datasets, class_name)
    monkeypatch.setattr(cls, "train_list", [[f, md5(directory / f)] for f in train_files])
    monkeypatch.setattr(cls, "test_list", [[test_file, md5(directory / test_file)]])
    monkeypatch.setattr(cls, "meta", {"filename": meta_file, "key": meta_key, "md5": md5(directory / meta_file)})


@pytest.mark.parametrize("name", ["cifar10", "cifar100"])
def test_cifar_is_read_through_torchvision_and_normalized(tmp_path, monkeypatch, name):
    directory, written = write_cifar(tmp_path, name)
    point_torchvision_md5s_at(monkeypatch, name, directory)
    data = load_dataset(name, root=tmp_path)

    _, _, train_files, test_file, *_ = CIFAR_FORMATS[name]
    mean = np.array(data.mean).reshape(1, 3, 1, 1)
    std = np.array(data.std).reshape(1, 3, 1, 1)
    train_rows = np.concatenate([written[f][0] for f in train_files])
    expected_train = (train_rows.reshape(-1, 3, 32, 32) / 255.0 - mean) / std
    np.testing.assert_allclose(data.train_x.numpy(), expected_train, atol=1e-5)
    np.testing.assert_array_equal(data.train_y.numpy(), sum((written[f][1] for f in train_files), []))
    expected_test = (written[test_file][0].reshape(-1, 3, 32, 32) / 255.0 - mean) / std
    np.testing.assert_allclose(data.test_x.numpy(), expected_test, atol=1e-5)
    assert data.classes == tuple(f"class{i}" for i in range(10))
    assert (data.augment, data.pad, data.image_size, data.in_channels) == ("crop_flip", 4, 32, 3)
    assert data.mean == ((0.4914, 0.4822, 0.4465) if name == "cifar10" else (0.5071, 0.4865, 0.4409))


def test_cifar_failing_torchvision_integrity_check_is_reported_as_corrupted(tmp_path):
    directory, _ = write_cifar(tmp_path, "cifar10")  # md5s differ from the real release
    with pytest.raises(DatasetError, match="corrupted") as info:
        load_dataset("cifar10", root=tmp_path)
    assert str(directory) in str(info.value)


def write_image(path, array):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path)


def test_imagefolder_decodes_png_and_grayscale_and_standardizes_with_train_stats(tmp_path):
    rng = np.random.default_rng(0)
    train = {("cat", 0): rng.integers(0, 256, (6, 6, 3), dtype=np.uint8),
             ("cat", 1): rng.integers(0, 256, (6, 6, 3), dtype=np.uint8),
             ("dog", 0): rng.integers(0, 256, (6, 6, 3), dtype=np.uint8)}
    for (cls, i), array in train.items():
        write_image(tmp_path / "train" / cls / f"{i}.png", array)
    gray = rng.integers(0, 256, (6, 6), dtype=np.uint8)
    write_image(tmp_path / "test" / "dog" / "0.png", gray)
    (tmp_path / "train" / "cat" / "notes.txt").write_text("not an image")

    data = load_dataset(f"imagefolder:{tmp_path}")
    pixels = np.stack(list(train.values())).transpose(0, 3, 1, 2) / 255.0
    mean, std = pixels.mean(axis=(0, 2, 3)), pixels.std(axis=(0, 2, 3))
    np.testing.assert_allclose(data.mean, mean, rtol=1e-5)
    np.testing.assert_allclose(data.std, std, rtol=1e-5)
    np.testing.assert_allclose(data.train_x.numpy(), (pixels - mean[:, None, None]) / std[:, None, None], atol=1e-5)
    assert data.classes == ("cat", "dog") and data.train_y.tolist() == [0, 0, 1] and data.test_y.tolist() == [1]
    expected_gray = (gray / 255.0 - mean[:, None, None]) / std[:, None, None]  # L -> RGB copies the plane
    np.testing.assert_allclose(data.test_x[0].numpy(), expected_gray, atol=1e-5)
    assert (data.image_size, data.in_channels, data.num_classes, data.augment) == (6, 3, 2, "crop_flip")


def test_imagefolder_rejects_mixed_image_sizes_naming_the_file(tmp_path):
    write_image(tmp_path / "train" / "a" / "0.png", np.zeros((8, 8, 3), np.uint8))
    write_image(tmp_path / "train" / "a" / "1.png", np.zeros((8, 9, 3), np.uint8))
    write_image(tmp_path / "test" / "a" / "0.png", np.zeros((8, 8, 3), np.uint8))
    with pytest.raises(ValueError, match="1.png is 9x8"):
        load_dataset(f"imagefolder:{tmp_path}")


def test_tiny_imagenet_labels_val_images_from_the_annotations_file(tmp_path):
    colours = {"n01": (250, 0, 0), "n02": (0, 0, 250)}  # one flat colour per class survives JPEG
    folder = tmp_path / "tiny-imagenet-200"
    for wnid, colour in colours.items():
        for i in range(2):
            write_image(folder / "train" / wnid / "images" / f"{wnid}_{i}.JPEG", np.full((8, 8, 3), colour, np.uint8))
    (folder / "train" / "n01" / "n01_boxes.txt").write_text("n01_0.JPEG\t0\t0\t8\t8\n")
    val_labels = ["n02", "n01", "n02"]
    for i, wnid in enumerate(val_labels):
        write_image(folder / "val" / "images" / f"val_{i}.JPEG", np.full((8, 8, 3), colours[wnid], np.uint8))
    (folder / "val" / "val_annotations.txt").write_text(
        "".join(f"val_{i}.JPEG\t{wnid}\t0\t0\t8\t8\n" for i, wnid in enumerate(val_labels))
    )

    data = load_dataset("tiny-imagenet", root=tmp_path)
    assert data.classes == ("n01", "n02") and data.train_y.tolist() == [0, 0, 1, 1]
    assert data.test_y.tolist() == [1, 0, 1]
    std = torch.tensor(data.std).view(3, 1, 1)
    mean = torch.tensor(data.mean).view(3, 1, 1)
    red = (data.test_x * std + mean)[:, 0].mean(dim=(1, 2))  # back to [0, 1]: red is high only for n01
    assert (red > 0.9).tolist() == [False, True, False]
    assert (data.image_size, data.pad, data.augment) == (8, 1, "crop_flip")


# --- missing data and bad names ---------------------------------------------------------


def test_missing_sets_raise_file_not_found_naming_the_path_and_how_to_get_it(tmp_path, monkeypatch):
    monkeypatch.setenv("SAMTUNE_DATA", str(tmp_path))
    with pytest.raises(FileNotFoundError) as info:
        load_dataset("cifar10")
    assert str(tmp_path / "cifar-10-batches-py") in str(info.value) and "download=True" in str(info.value)

    with pytest.raises(DatasetError) as info:
        load_dataset("tiny-imagenet", root=tmp_path / "elsewhere")
    assert str(tmp_path / "elsewhere" / "tiny-imagenet-200" / "train") in str(info.value)
    assert "tiny-imagenet-200.zip" in str(info.value)

    with pytest.raises(DatasetError, match="no image folder at"):
        load_dataset(f"imagefolder:{tmp_path / 'nothing'}")


def test_unknown_dataset_name_lists_the_choices():
    choices = r"\['cifar10', 'cifar100', 'digits', 'imagenet', 'tiny-imagenet'\]"
    with pytest.raises(ValueError, match=f"dataset must be one of {choices}"):
        load_dataset("mnist")


@pytest.mark.parametrize("bad", ["imagefolder:", None, "CIFAR10"])
def test_dataset_names_are_checked_without_loading(bad):
    assert check_dataset_name("imagefolder:/anywhere") == "imagefolder:/anywhere"
    with pytest.raises(ValueError, match="imagefolder:<path>"):
        check_dataset_name(bad)
