"""The EpochLoader contract, held by each of the three training loaders (on the device,
in worker processes, streamed from disk): the batch size may change between epochs,
``len()`` is the coming epoch's batches, and a state taken between epochs (the same
keys for all three) makes a restored loader yield exactly the batches the original
would have; a state taken during an epoch resumes at the next one."""

import numpy as np
import pytest
import torch
from PIL import Image

from samtune.data.augment import image_transform, to_uint8
from samtune.data.loaders import EpochLoader
from samtune.data.streaming import StreamingData
from samtune.data.tensors import load_imagefolder
from samtune.data.worker_loader import WorkerLoader

N_TRAIN = 13


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    """13 training and 3 test images of 8x8 in two classes."""
    root = tmp_path_factory.mktemp("images")
    rng = np.random.default_rng(0)
    for split, count in (("train", N_TRAIN), ("test", 3)):
        for i in range(count):
            path = root / split / f"c{i % 2}" / f"{i}.png"
            path.parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray(rng.integers(0, 256, (8, 8, 3), dtype=np.uint8)).save(path)
    return root


def device_loader(folder, seed, rank=0, world=1):
    return load_imagefolder(folder).train_loader(batch_size=4, seed=seed, autoaugment=True, erasing=0.5,
                                                 rank=rank, world=world)


def worker_loader(folder, seed, rank=0, world=1):
    data = load_imagefolder(folder)
    transform = image_transform(size=8, pad=1, mean=data.mean, std=data.std, autoaugment=True)
    return WorkerLoader(to_uint8(data.train_x, data.mean, data.std), data.train_y, transform=transform,
                        batch_size=4, seed=seed, passes=2, rank=rank, world=world)


def streaming_loader(folder, seed, rank=0, world=1):
    return StreamingData(folder, size=8).train_loader(batch_size=4, seed=seed, rank=rank, world=world)


LOADERS = [device_loader, worker_loader, streaming_loader]


def epoch(loader, batch_size):
    loader.batch_size = batch_size
    return [(x.clone(), y.clone()) for x, y in loader]


def same(a, b):
    return len(a) == len(b) and all(torch.equal(x, u) and torch.equal(y, v) for (x, y), (u, v) in zip(a, b))


@pytest.mark.parametrize("make", LOADERS, ids=lambda make: make.__name__)
def test_state_between_epochs_restores_the_same_batches(folder, make):
    original = make(folder, seed=3)
    assert isinstance(original, EpochLoader)
    epoch(original, 4)
    state = original.state_dict()
    assert set(state) == {"generator", "epoch"}
    expected = [epoch(original, size) for size in (2, 6)]  # the batch size changes between epochs
    restored = make(folder, seed=99)
    restored.load_state_dict(state)
    assert all(same(epoch(restored, size), batches) for size, batches in zip((2, 6), expected))
    assert not same(expected[0], epoch(make(folder, seed=3), 2))  # epochs are not repeated


@pytest.mark.parametrize("make", LOADERS, ids=lambda make: make.__name__)
def test_state_during_an_epoch_resumes_at_the_next(folder, make):
    original = make(folder, seed=5)
    iter(original)  # the epoch's randomness is drawn when it starts
    state = original.state_dict()
    following = epoch(original, 4)
    restored = make(folder, seed=5)
    restored.load_state_dict(state)
    assert same(epoch(restored, 4), following)


@pytest.mark.parametrize("make", LOADERS, ids=lambda make: make.__name__)
def test_len_is_the_coming_epochs_batches(folder, make):
    loader = make(folder, seed=0)
    for size in (1, 4, 5):
        assert len(epoch(loader, size)) == len(loader) == loader.examples_per_epoch // size
    with pytest.raises(ValueError, match="exceeds the"):
        epoch(loader, loader.examples_per_epoch + 1)
    with pytest.raises(ValueError, match="missing keys"):
        loader.load_state_dict({"epoch": 1})


@pytest.mark.parametrize("make", LOADERS, ids=lambda make: make.__name__)
def test_ranks_shares_make_up_the_global_batches(folder, make):
    """Rank r of a data-parallel trial gets the r-th share of every global batch of the
    single-process order, whatever the batch size; a batch that does not split is refused."""
    single = make(folder, seed=7)
    ranks = [make(folder, seed=7, rank=rank, world=2) for rank in range(2)]
    for size in (4, 6):
        glob, *shares = (epoch(loader, size) for loader in (single, *ranks))
        assert len(glob) == len(shares[0]) == len(shares[1])
        for (x, y), (x0, y0), (x1, y1) in zip(glob, *shares):
            assert len(y0) == len(y1) == size // 2
            assert torch.equal(torch.cat([x0, x1]), x) and torch.equal(torch.cat([y0, y1]), y)
    with pytest.raises(ValueError, match="not divisible by world size 2"):
        ranks[0].batch_size = 5
