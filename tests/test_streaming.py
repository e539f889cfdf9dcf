"""samtune.data.streaming on small image folders written here: sharding across simulated ranks,
coverage of evaluation shards, independence from the number of loader workers, resume,
the transforms, and the errors for bad inputs.

Images are PNGs whose green channel is a constant 9 * (image number): RandomResizedCrop,
flip and the evaluation resize keep a constant channel constant, so every output image
says which file it came from; red and blue are noise, so crops and flips show.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from samtune.checks import DatasetError
from samtune.data.streaming import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    EvalTotals,
    StreamingData,
    combine_totals,
    decode_torchvision,
    eval_transform,
    open_streaming,
    shard_bounds,
    train_transform,
)
from samtune.data.tensors import load_imagefolder

SIZE = 16
CLASSES = ("bird", "cat", "dog")
TRAIN_PER_CLASS = (7, 7, 7)
VAL_PER_CLASS = (3, 2, 2)  # 7 images: uneven shards for 2 and 3 ranks


def write_folder(root, split, per_class, *, first=0, height=24, width=20, fmt="PNG"):
    """per_class[c] images of class CLASSES[c] under root/split; returns the next image number."""
    rng = np.random.default_rng(first)
    number = first
    for name, count in zip(CLASSES, per_class):
        (root / split / name).mkdir(parents=True, exist_ok=True)
        for k in range(count):
            pixels = rng.integers(0, 256, (height, width, 3), dtype=np.uint8)
            pixels[..., 1] = 9 * number
            Image.fromarray(pixels).save(root / split / name / f"img{k}.{fmt.lower()}", fmt)
            number += 1
    return number


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    """ImageNet layout (train/, val/), 3 classes x 7 train images of 20x24, 7 val images."""
    root = tmp_path_factory.mktemp("imagenet")
    write_folder(root, "val", VAL_PER_CLASS, first=write_folder(root, "train", TRAIN_PER_CLASS))
    return root


@pytest.fixture(scope="module")
def data(folder):
    return StreamingData(folder, size=SIZE)


def image_numbers(x):
    """The file each image came from, read back from its constant green channel."""
    green = x[:, 1] * IMAGENET_STD[1] + IMAGENET_MEAN[1]
    assert torch.allclose(green, green[:, :1, :1].expand_as(green), atol=1e-5)
    return (green[:, 0, 0] * 255 / 9).round().long().tolist()


def epoch_batches(loader, batch_size):
    loader.batch_size = batch_size
    return list(loader)


def test_ranks_shares_make_up_the_global_batch_as_batch_size_changes(data):
    single = data.train_loader(batch_size=6, seed=3)
    ranks = [data.train_loader(batch_size=6, seed=3, rank=r, world=2) for r in range(2)]
    for batch_size in (6, 4, 8):
        glob = epoch_batches(single, batch_size)
        shares = [epoch_batches(loader, batch_size) for loader in ranks]
        assert len(glob) == len(single) == len(ranks[0]) == len(ranks[1]) == 21 // batch_size
        numbers = []
        for (x, y), (x0, y0), (x1, y1) in zip(glob, *shares):
            assert x.shape == (batch_size, 3, SIZE, SIZE) and x0.shape[0] == x1.shape[0] == batch_size // 2
            assert torch.equal(torch.cat([x0, x1]), x) and torch.equal(torch.cat([y0, y1]), y)
            numbers += image_numbers(x)
            assert y.tolist() == [n // 7 for n in image_numbers(x)]
        assert len(numbers) == len(set(numbers)) == 21 // batch_size * batch_size


def test_epochs_are_new_permutations_drawn_from_the_seed(data):
    def orders(seed):
        loader = data.train_loader(batch_size=21, seed=seed)
        return [image_numbers(next(iter(loader))[0]) for _ in range(2)]

    first, second = orders(0)
    assert sorted(first) == sorted(second) == list(range(21)) and first != second
    assert orders(0) == [first, second] and orders(1) != [first, second]


def test_examples_per_epoch_match_the_device_loader(tmp_path):
    write_folder(tmp_path, "test", (2, 1, 1), first=write_folder(tmp_path, "train", (5, 4, 4), height=20, fmt="JPEG"),
                 height=20, fmt="JPEG")
    stream = StreamingData(tmp_path, size=SIZE).train_loader(batch_size=4, seed=1)
    device = load_imagefolder(tmp_path).train_loader(batch_size=4, seed=1)
    twice = StreamingData(tmp_path, size=SIZE).train_loader(batch_size=4, seed=1, passes=2)
    for batch_size in (4, 5, 13, 6):
        stream.batch_size = device.batch_size = twice.batch_size = batch_size
        counts = [sum(len(y) for _, y in loader) for loader in (stream, device)]
        assert counts == [13 // batch_size * batch_size] * 2
        assert sum(len(y) for _, y in twice) == 26 // batch_size * batch_size


@pytest.mark.parametrize("world", [1, 2, 3])
def test_eval_shards_cover_every_image_once(data, world):
    numbers, labels = [], []
    for rank in range(world):
        for x, y in data.eval_loader("test", batch_size=2, rank=rank, world=world):
            assert x.shape[1:] == (3, SIZE, SIZE)
            numbers += image_numbers(x)
            labels += y.tolist()
    assert numbers == list(range(21, 28)) and labels == [0, 0, 0, 1, 1, 2, 2]
    sizes = [shard_bounds(7, rank, world)[1] - shard_bounds(7, rank, world)[0] for rank in range(world)]
    assert sum(sizes) == 7 and max(sizes) - min(sizes) <= 1


def test_combine_totals_weighs_ranks_by_their_counts():
    loss, error = combine_totals([EvalTotals(6.0, 1, 3), EvalTotals(2.0, 3, 4)])
    assert loss == pytest.approx(8 / 7) and error == pytest.approx(4 / 7)
    assert combine_totals([torch.tensor([8.0, 4.0, 7.0])]) == (loss, error)  # one all-reduced triple
    with pytest.raises(ValueError, match="count"):
        combine_totals([EvalTotals(0.0, 0, 0)])


def test_loader_workers_do_not_change_batches(data):
    in_process = data.train_loader(batch_size=6, seed=5, rank=1, world=2)
    in_workers = data.train_loader(batch_size=6, seed=5, rank=1, world=2, workers=2)
    for batch_size in (6, 10):
        for (x, y), (xw, yw) in zip(epoch_batches(in_process, batch_size), epoch_batches(in_workers, batch_size),
                                    strict=True):
            assert torch.equal(x, xw) and torch.equal(y, yw)
    in_workers = data.eval_loader("test", batch_size=4, workers=2)
    for (x, y), (xw, yw) in zip(data.eval_loader("test", batch_size=4), in_workers, strict=True):
        assert torch.equal(x, xw) and torch.equal(y, yw)


def test_state_dict_resumes_at_the_next_epoch(data):
    original = data.train_loader(batch_size=4, seed=2)
    list(original)
    state = original.state_dict()
    expected = [x for x, _ in original]
    resumed = data.train_loader(batch_size=4, seed=99, workers=2)
    list(resumed)  # workers started under the other seed
    resumed.load_state_dict(state)
    assert all(torch.equal(a, b) for a, b in zip(expected, (x for x, _ in resumed), strict=True))
    iter(original)  # state taken during an epoch resumes at the next one
    mid, after = original.state_dict(), [x for x, _ in original]
    resumed.load_state_dict(mid)
    assert all(torch.equal(a, b) for a, b in zip(after, (x for x, _ in resumed), strict=True))
    with pytest.raises(ValueError, match="missing keys"):
        resumed.load_state_dict({"epoch": 1})


def test_train_transform_maps_a_constant_colour_to_its_normalized_value():
    colour = torch.tensor([200, 30, 120], dtype=torch.uint8)
    image = colour.view(3, 1, 1).expand(3, 24, 20).contiguous()
    expected = (colour.float() / 255 - torch.tensor(IMAGENET_MEAN)) / torch.tensor(IMAGENET_STD)
    for seed in range(5):
        torch.manual_seed(seed)
        out = train_transform(SIZE)(image)
        assert out.dtype == torch.float32 and out.shape == (3, SIZE, SIZE)
        assert torch.allclose(out, expected.view(3, 1, 1).expand_as(out), atol=1e-5)


def test_train_transform_is_random_and_eval_transform_is_not():
    image = torch.randint(0, 256, (3, 24, 20), dtype=torch.uint8)
    torch.manual_seed(0)
    train = [train_transform(SIZE)(image) for _ in range(3)]
    assert not torch.equal(train[0], train[1]) or not torch.equal(train[1], train[2])
    evals = [eval_transform(SIZE)(image) for _ in range(2)]
    assert evals[0].shape == (3, SIZE, SIZE) and torch.equal(*evals)
    assert eval_transform(224).transforms[0].size == [256]


def test_fixed_examples_are_the_first_training_images_in_order(data):
    x, y = data.fixed_examples(9, batch_size=4)
    assert x.shape == (9, 3, SIZE, SIZE) and image_numbers(x) == list(range(9)) and y.tolist() == [0] * 7 + [1] * 2
    first, _ = next(iter(data.eval_loader("train", batch_size=9)))
    assert torch.equal(first, x)
    with pytest.raises(ValueError, match=r"n must be an int in \[1, 21\]"):
        data.fixed_examples(22)


def test_normalizing_after_the_transfer_equals_the_full_transform(data):
    x, _ = data.fixed_examples(5)
    per_image = torch.stack([eval_transform(SIZE)(decode_torchvision(data.train.path(i))) for i in range(5)])
    assert torch.equal(x, per_image)


def test_open_streaming_finds_imagenet_under_the_data_root(folder, tmp_path, monkeypatch):
    (tmp_path / "imagenet").symlink_to(folder)
    monkeypatch.setenv("SAMTUNE_DATA", str(tmp_path))
    by_root = open_streaming("imagenet", size=SIZE)
    assert by_root.classes == CLASSES and len(by_root.train) == 21 and len(by_root.test) == 7
    assert len(open_streaming(f"imagefolder:{folder}", size=SIZE).train) == 21
    with pytest.raises(ValueError, match="'imagenet' or 'imagefolder:<path>'"):
        open_streaming("cifar10")


def test_bad_inputs_name_the_key_and_what_is_allowed(data, folder, tmp_path):
    with pytest.raises(ValueError, match="global batch_size 6 is not divisible by world size 4"):
        data.train_loader(batch_size=6, seed=0, rank=0, world=4)
    loader = data.train_loader(batch_size=6, seed=0, world=3)
    with pytest.raises(ValueError, match="global batch_size 7 is not divisible by world size 3"):
        loader.batch_size = 7
    loader.batch_size = 24
    with pytest.raises(ValueError, match="batch_size 24 exceeds the 21 examples"):
        iter(loader)
    with pytest.raises(ValueError, match=r"rank must be an int in \[0, 1\] for world 2, got 2"):
        data.eval_loader("test", batch_size=2, rank=2, world=2)
    with pytest.raises(ValueError, match="split must be one of"):
        data.eval_loader("val", batch_size=2)
    with pytest.raises(DatasetError, match=f"no image folder at {tmp_path / 'nowhere'}"):
        StreamingData(tmp_path / "nowhere")
    write_folder(tmp_path, "train", (1, 0, 1))
    with pytest.raises(DatasetError, match=r"no held-out split .*val.*test"):
        StreamingData(tmp_path)
    write_folder(tmp_path, "val", (1, 1, 1))
    with pytest.raises(DatasetError, match=r"class folders with no images under .*train: \['cat'\].*extension"):
        StreamingData(tmp_path)
    with pytest.raises(ValueError, match="decoder must be one of"):
        StreamingData(folder, decoder="cv2")


def test_pil_and_torchvision_decoders_agree_on_png(folder):
    pil, tv = (StreamingData(folder, size=SIZE, decoder=d).fixed_examples(5) for d in ("pil", "torchvision"))
    assert torch.equal(pil[0], tv[0]) and torch.equal(pil[1], tv[1])
