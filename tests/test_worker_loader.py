"""Epochs of several passes (both loaders), batch size set per epoch, and the worker
loader's batches independent of its number of workers and resumable from its state."""

import pytest
import torch

from samtune.data.augment import image_transform
from samtune.data.catalogue import CATALOGUE
from samtune.data.loaders import DeviceLoader, draw_epoch_plan, draw_passes_plan
from samtune.data.worker_loader import WorkerLoader

CIFAR100_MEAN, CIFAR100_STD = CATALOGUE["cifar100"].mean, CATALOGUE["cifar100"].std


def labelled_images(n, size=4):
    g = torch.Generator().manual_seed(0)
    return torch.randint(0, 256, (n, 3, size, size), generator=g, dtype=torch.uint8), torch.arange(n)


def worker_loader(n, batch_size, passes, **kwargs):
    x, y = labelled_images(n)
    return WorkerLoader(x, y, transform=lambda image: image.float(), batch_size=batch_size, passes=passes, **kwargs)


def device_loader(n, batch_size, passes):
    x, y = labelled_images(n)
    return DeviceLoader(x.float(), y, batch_size=batch_size, augment="crop_flip", pad=1, passes=passes, seed=0)


LOADERS = {"workers": worker_loader, "device": device_loader}


@pytest.mark.parametrize("make", LOADERS.values(), ids=LOADERS.keys())
def test_three_passes_show_every_example_three_times(make):
    n = 20
    loader = make(n, 10, 3)
    assert len(loader) == 6
    labels = torch.cat([y for _, y in loader])
    assert torch.equal(torch.bincount(labels, minlength=n), torch.full((n,), 3))
    for p in range(3):  # each pass is a permutation of its own
        assert torch.equal(labels[p * n:(p + 1) * n].sort().values, torch.arange(n))
    assert not torch.equal(labels[:n], labels[n:2 * n])


@pytest.mark.parametrize("make", LOADERS.values(), ids=LOADERS.keys())
def test_batches_straddle_passes_and_batch_size_changes_between_epochs(make):
    n = 20
    loader = make(n, 7, 3)
    assert len(loader) == 60 // 7
    batches = [y for _, y in loader]
    assert [len(b) for b in batches] == [7] * 8
    counts = torch.bincount(torch.cat(batches), minlength=n)
    assert counts.max() <= 3 and counts.sum() == 56
    loader.batch_size = 12
    assert len(loader) == 5
    assert [len(y) for _, y in loader] == [12] * 5


def test_one_pass_plan_is_the_single_epoch_plan():
    a = draw_epoch_plan(50, shuffle=True, augment="crop_flip", pad=4, generator=torch.Generator().manual_seed(3))
    b = draw_passes_plan(50, passes=1, shuffle=True, augment="crop_flip", pad=4,
                         generator=torch.Generator().manual_seed(3))
    assert all(torch.equal(u, v) for u, v in zip(a, b))


def recipe_loader(workers, seed=0):
    g = torch.Generator().manual_seed(1)
    x = torch.randint(0, 256, (48, 3, 32, 32), generator=g, dtype=torch.uint8)
    transform = image_transform(size=32, pad=4, mean=CIFAR100_MEAN, std=CIFAR100_STD, autoaugment=True,
                                erasing=0.25)
    return WorkerLoader(x, torch.arange(48), transform=transform, batch_size=16, passes=2, seed=seed,
                        workers=workers)


def epochs(loader, batch_sizes):
    out = []
    for batch_size in batch_sizes:
        loader.batch_size = batch_size
        out.append([(x.clone(), y.clone()) for x, y in loader])
    return out


def test_batches_do_not_depend_on_the_number_of_workers():
    in_process = epochs(recipe_loader(0), [16, 32])
    with_workers = epochs(recipe_loader(2), [16, 32])
    assert [len(e) for e in in_process] == [6, 3]
    for a, b in zip(in_process, with_workers):
        assert all(torch.equal(xa, xb) and torch.equal(ya, yb) for (xa, ya), (xb, yb) in zip(a, b))
    assert not torch.equal(in_process[0][0][0], epochs(recipe_loader(0, seed=1), [16])[0][0][0])


def test_state_dict_resumes_exactly():
    loader = recipe_loader(0)
    epochs(loader, [16])
    state = loader.state_dict()
    expected = epochs(loader, [16, 32])
    resumed = recipe_loader(1, seed=5)
    epochs(resumed, [16])  # its worker is running when the state arrives: seeds travel with the indices
    resumed.load_state_dict(state)
    assert resumed.epoch == 1
    got = epochs(resumed, [16, 32])
    for a, b in zip(expected, got):
        assert all(torch.equal(xa, xb) and torch.equal(ya, yb) for (xa, ya), (xb, yb) in zip(a, b))
    # taken during an epoch (after iter()), a state resumes at the next epoch
    it = iter(loader)
    next(it)
    mid = loader.state_dict()
    rest = epochs(loader, [16])
    again = recipe_loader(0)
    again.load_state_dict(mid)
    assert all(torch.equal(a[0], b[0]) for a, b in zip(rest[0], epochs(again, [16])[0]))


def test_images_must_be_uint8_and_an_epoch_needs_a_batch():
    with pytest.raises(ValueError, match="uint8"):
        WorkerLoader(torch.zeros(4, 3, 2, 2), torch.arange(4), transform=lambda i: i, batch_size=2)
    loader = worker_loader(5, 6, 1)
    with pytest.raises(ValueError, match="exceeds"):
        iter(loader)
    loader.passes = 2
    assert len(list(loader)) == 1
