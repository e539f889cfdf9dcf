"""``resources.sync_batchnorm`` on CPUs: two gloo workers (127.0.0.1), each holding half
of a batch, normalize with the whole batch's statistics: outputs, gradients and running
statistics equal plain BatchNorm over the whole batch in one process."""

from __future__ import annotations

import socket

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import nn

from samtune.optim.bn import frozen_bn_stats
from samtune.optim.sync_bn import AllReduceBatchNorm, synchronize_batchnorm


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def batch() -> torch.Tensor:
    return torch.randn(8, 3, 5, 5, generator=torch.Generator().manual_seed(0), dtype=torch.float64) * 2 + 1


def layer() -> nn.Module:
    torch.manual_seed(1)
    bn = nn.BatchNorm2d(3, momentum=0.3).double()
    nn.init.uniform_(bn.weight, 0.5, 1.5)
    nn.init.uniform_(bn.bias, -0.5, 0.5)
    return bn


def weighted_sum(out: torch.Tensor) -> torch.Tensor:
    """A loss that is not symmetric in the examples, so that each gets its own gradient."""
    weights = torch.arange(1, out.numel() + 1, dtype=out.dtype).view(out.shape) / out.numel()
    return (out * weights).sum()


def worker(rank: int, world: int, port: int, out: str) -> None:
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world)
    try:
        model = synchronize_batchnorm(nn.Sequential(layer()))
        x = batch().chunk(world)[rank].clone().requires_grad_(True)
        y = model(x)
        # the reference loss, summed over workers: the part of it this worker's examples feed
        full = torch.zeros(8, 3, 5, 5, dtype=torch.float64)
        full[rank * 4:(rank + 1) * 4] = y
        weighted_sum(full).backward()
        with frozen_bn_stats(model):
            model(x)  # SAM's second pass: statistics untouched
        grads = [model[0].weight.grad.clone(), model[0].bias.grad.clone()]
        for g in grads:
            dist.all_reduce(g)  # what DDP does with parameter gradients
        torch.save({"y": y.detach(), "x_grad": x.grad, "grads": grads,
                    "running": (model[0].running_mean, model[0].running_var, model[0].num_batches_tracked)},
                   f"{out}/sync{rank}.pt")
    finally:
        dist.destroy_process_group()


def test_all_reduce_batchnorm_equals_batchnorm_over_the_whole_batch(tmp_path):
    mp.spawn(worker, args=(2, free_port(), str(tmp_path)), nprocs=2, join=True)
    parts = [torch.load(tmp_path / f"sync{rank}.pt", weights_only=True) for rank in range(2)]
    reference = layer()
    x = batch().requires_grad_(True)
    y = reference(x)
    weighted_sum(y).backward()
    torch.testing.assert_close(torch.cat([p["y"] for p in parts]), y.detach(), rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(torch.cat([p["x_grad"] for p in parts]), x.grad, rtol=1e-10, atol=1e-10)
    for part in parts:
        torch.testing.assert_close(part["grads"], [reference.weight.grad, reference.bias.grad])
        mean, var, tracked = part["running"]
        torch.testing.assert_close(mean, reference.running_mean)
        torch.testing.assert_close(var, reference.running_var)  # unbiased, over all 8 x 25 values
        assert int(tracked) == 1


def test_conversion_keeps_the_tensors_and_their_names():
    model = nn.Sequential(nn.Conv2d(3, 3, 1), nn.BatchNorm2d(3), nn.Sequential(nn.BatchNorm1d(4)))
    before = dict(model.state_dict(keep_vars=True))
    converted = synchronize_batchnorm(model)
    assert isinstance(converted[1], AllReduceBatchNorm) and isinstance(converted[2][0], AllReduceBatchNorm)
    after = converted.state_dict(keep_vars=True)
    assert after.keys() == before.keys() and all(after[k] is before[k] for k in before)


def test_without_a_process_group_it_is_plain_batchnorm():
    x = batch()
    converted = synchronize_batchnorm(nn.Sequential(layer()))
    torch.testing.assert_close(converted(x), layer()(x), rtol=0, atol=0)
    with pytest.raises(ValueError, match="expected at least 2D input"):
        converted(torch.ones(3))
