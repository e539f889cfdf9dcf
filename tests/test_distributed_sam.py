"""A data-parallel SAM/GSAM step equals its single-process definition.

Two gloo workers on 127.0.0.1 each take half of a batch through DistributedDataParallel
with both passes under ``no_sync()`` and the direction averaged before the base step
(``samtune.optim.distributed``).  The reference is computed here, in one process and
independently of samtune's optimizers: for each half its own gradient g, perturbation
ρ g/‖g‖, perturbed gradient g_s (BatchNorm on the half's own batch statistics) and GSAM
direction d = g_s − α (g − (⟨g, g_s⟩/‖g_s‖²) g_s); the mean of the two d; one SGD step
with momentum and weight decay.
"""

from __future__ import annotations

import socket

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn.functional as F
from torch.func import functional_call
from torch.nn.parallel import DistributedDataParallel

from samtune.models import create_model
from samtune.optim import create_optimizer, frozen_bn_stats
from samtune.optim.distributed import average_directions

LR, MOMENTUM, WEIGHT_DECAY, RHO = 0.1, 0.9, 5e-4, 0.05


def batch() -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(7)
    return torch.randn(16, 1, 8, 8, generator=generator), torch.randint(0, 10, (16,), generator=generator)


def fresh_model() -> torch.nn.Module:
    torch.manual_seed(3)
    return create_model("small_cnn", num_classes=10, in_channels=1, image_size=8).double()


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def worker(rank: int, world: int, port: int, optimizer: str, alpha: float, out: str) -> None:
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world)
    try:
        model = DistributedDataParallel(fresh_model())
        opt = average_directions(create_optimizer(
            model.parameters(), optimizer=optimizer, lr=LR, momentum=MOMENTUM, weight_decay=WEIGHT_DECAY,
            rho=RHO, alpha=alpha))
        x, y = (t.chunk(world)[rank] for t in batch())
        with model.no_sync():
            F.cross_entropy(model(x.double()), y).backward()
            opt.first_step(zero_grad=True)
            with frozen_bn_stats(model):
                F.cross_entropy(model(x.double()), y).backward()
        opt.second_step(zero_grad=True)
        torch.save({k: v.detach().clone() for k, v in model.module.named_parameters()}, f"{out}/rank{rank}.pt")
    finally:
        dist.destroy_process_group()


def reference_step(alpha: float, world: int = 2) -> dict[str, torch.Tensor]:
    model = fresh_model().train()
    names = [name for name, _ in model.named_parameters()]
    w = {name: p.detach().clone() for name, p in model.named_parameters()}
    buffers = {name: b.clone() for name, b in model.named_buffers()}

    def grad_at(params, x, y):
        leaves = {k: v.clone().requires_grad_(True) for k, v in params.items()}
        loss = F.cross_entropy(functional_call(model, (leaves, dict(buffers)), (x.double(),)), y)
        return dict(zip(names, torch.autograd.grad(loss, [leaves[k] for k in names]), strict=True))

    def flat(tensors):
        return torch.cat([tensors[k].reshape(-1) for k in names])

    directions = []
    for x, y in zip(*(t.chunk(world) for t in batch()), strict=True):
        g = grad_at(w, x, y)
        scale = RHO / (flat(g).norm() + 1e-12)
        g_s = grad_at({k: w[k] + scale * g[k] for k in names}, x, y)
        coefficient = flat(g).dot(flat(g_s)) / flat(g_s).dot(flat(g_s))
        directions.append({k: g_s[k] - alpha * (g[k] - coefficient * g_s[k]) for k in names})
    mean = {k: sum(d[k] for d in directions) / world for k in names}
    # torch.optim.SGD's first step: the momentum buffer is the (decayed) gradient itself
    return {k: w[k] - LR * (mean[k] + WEIGHT_DECAY * w[k]) for k in names}


@pytest.mark.slow  # two gloo processes
@pytest.mark.parametrize(("optimizer", "alpha"), [("sam", 0.0), ("gsam", 0.3)])
def test_two_worker_step_equals_the_split_batch_reference(tmp_path, optimizer, alpha):
    mp.spawn(worker, args=(2, free_port(), optimizer, alpha, str(tmp_path)), nprocs=2, join=True)
    ranks = [torch.load(tmp_path / f"rank{r}.pt") for r in range(2)]
    expected = reference_step(alpha)
    for name, value in expected.items():
        assert torch.equal(ranks[0][name], ranks[1][name]), name  # every worker took the same step
        torch.testing.assert_close(ranks[0][name], value, rtol=1e-10, atol=1e-12, msg=name)


def test_the_averaged_step_is_not_the_full_batch_step():
    """m-sharpness: averaging per-half directions differs from one SAM step on the whole
    batch (the perturbation of each half is its own), so the test above can fail."""
    halves, whole = reference_step(0.3, world=2), reference_step(0.3, world=1)
    assert any(not torch.allclose(halves[k], whole[k], rtol=1e-6, atol=1e-9) for k in halves)


def test_average_directions_refuses_a_one_pass_optimizer():
    sgd = create_optimizer(fresh_model().parameters(), optimizer="sgd", lr=0.1)
    with pytest.raises(ValueError, match="SAM-family optimizer, got SGD"):
        average_directions(sgd)
