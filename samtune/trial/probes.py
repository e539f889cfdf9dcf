"""Per-epoch probes of Harada & Iiduka's theory (arXiv 2409.09984) on a fixed probe set.

With f the training loss on the probe set and d(w) the optimizer's update direction,

    g   = ∇f(w)                          on the whole probe set (full batch)
    g_s = ∇f(w + e),  e = ρ g/‖g‖        SAM's ascent (ASAM / USAM: their own e)
    d   = g_s − α (g − ⟨g, g_s⟩/‖g_s‖² · g_s)   GSAM; α = 0 gives SAM, ρ = 0 plain SGD

``probe_sam_grad_sq`` is ‖d‖², the quantity of the paper's ε-criterion (the method
approaches a stationary point when it falls below ε²).  ``probe_direction_msd`` is
the mean over mini-batches B of ‖d_B − d‖², with d_B the same direction computed on
B alone (its own ascent, on B): the variance term of the bound, which shrinks as the
batch grows or ρ decays.  The batches have the trial's current batch size and are
drawn with replacement from the probe set, so the estimate is of the i.i.d.-sampling
variance σ²/b the theory assumes, for any batch size (also above the set's size).

The model is evaluated in eval mode, through ``torch.func.functional_call``: BatchNorm
normalizes with its running statistics and dropout is off, so a probe is a
deterministic function of the weights (and of the batch draw), the same whether the
set is taken whole or in chunks, and the model, its buffers, gradients, train/eval
flags and the global RNG are left exactly as found.  f is the loss alone: weight
decay, which the base optimizer adds, is not in it.  The ε of the norms is the
optimizer's (``samtune.optim.sam.PERTURB_EPS``).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import torch
from torch import Tensor, nn
from torch.func import functional_call

from samtune.optim.sam import PERTURB_EPS

LossFn = Callable[[Tensor, Tensor], Tensor]
Weights = dict[str, Tensor]


@dataclass(frozen=True)
class Direction:
    """Which update direction to probe: ρ = 0 is the plain gradient, α the GSAM
    correction, ``adaptive``/``eta`` ASAM's scaling T = |w| + η, ``normalize`` False USAM."""

    rho: float = 0.0
    alpha: float = 0.0
    adaptive: bool = False
    eta: float = 0.0
    normalize: bool = True

    @classmethod
    def of_optimizer(cls, name: str, *, rho: float, alpha: float = 0.0, adaptive: bool = False,
                     eta: float = 0.0) -> Direction:
        """The direction a trial's ``optimizer`` (samtune.optim.create_optimizer) steps along."""
        if name == "sgd":
            return cls()
        return cls(rho=rho, alpha=alpha if name == "gsam" else 0.0, adaptive=adaptive or name == "asam",
                   eta=eta, normalize=name != "usam")


def probe_metrics(model: nn.Module, loss_fn: LossFn, x: Tensor, y: Tensor, direction: Direction,
                  batches: list[Tensor], chunk: int | None = None) -> dict[str, float]:
    """``probe_sam_grad_sq`` on (x, y) and ``probe_direction_msd`` over the index sets
    ``batches``; ``chunk`` bounds the examples per forward-backward."""
    with _probing(model):
        full = update_direction(model, loss_fn, x, y, direction, chunk)
        deviations = []
        for batch in batches:
            batch = batch.to(x.device)
            d_batch = update_direction(model, loss_fn, x[batch], y[batch], direction, chunk)
            deviations.append(_sq_norm(torch._foreach_sub(d_batch, full)))
    return {"probe_sam_grad_sq": _sq_norm(full), "probe_direction_msd": sum(deviations) / len(deviations)}


def draw_batches(n: int, batch_size: int, count: int, seed: int) -> list[Tensor]:
    """``count`` index sets of ``batch_size`` drawn with replacement from range(n), from
    their own generator (the training RNG is not touched)."""
    generator = torch.Generator().manual_seed(seed)
    return [torch.randint(n, (batch_size,), generator=generator) for _ in range(count)]


def update_direction(model: nn.Module, loss_fn: LossFn, x: Tensor, y: Tensor, direction: Direction,
                     chunk: int | None = None) -> list[Tensor]:
    """d on the examples (x, y), one tensor per trainable parameter of ``model``."""
    with _probing(model):
        w = {name: p.detach() for name, p in model.named_parameters() if p.requires_grad}
        g = _gradient(model, loss_fn, w, x, y, chunk)
        if direction.rho == 0:
            return g  # no ascent: g_s = g, and GSAM's correction vanishes
        e = _ascent(list(w.values()), g, direction)
        g_s = _gradient(model, loss_fn, dict(zip(w, torch._foreach_add(list(w.values()), e))), x, y, chunk)
        return g_s if direction.alpha == 0 else _decompose(g, g_s, direction.alpha)


def _gradient(model: nn.Module, loss_fn: LossFn, weights: Weights, x: Tensor, y: Tensor,
              chunk: int | None) -> list[Tensor]:
    """∇ of the mean loss over (x, y) at ``weights``: chunks weighted by their size."""
    leaves = {name: w.detach().requires_grad_() for name, w in weights.items()}
    state = {**dict(model.named_buffers()), **leaves}
    chunk = chunk or len(y)
    total = None
    for start in range(0, len(y), chunk):
        xb, yb = x[start:start + chunk], y[start:start + chunk]
        grads = torch.autograd.grad(loss_fn(functional_call(model, state, (xb,)), yb), list(leaves.values()))
        grads = torch._foreach_mul(grads, len(yb) / len(y))
        total = grads if total is None else torch._foreach_add(total, grads)
    return total


def _ascent(w: list[Tensor], g: list[Tensor], direction: Direction) -> list[Tensor]:
    """SAM's e = ρ T² g/‖T g‖ (T = 1 unless adaptive; no division for USAM)."""
    if direction.adaptive:
        scales = [p.abs() + direction.eta for p in w]
        scaled = torch._foreach_mul(g, scales)
        step = torch._foreach_mul(scaled, scales)
    else:
        scaled = step = g
    if not direction.normalize:
        return torch._foreach_mul(step, direction.rho)
    return torch._foreach_mul(step, direction.rho / (_norm(scaled) + PERTURB_EPS))


def _decompose(g: list[Tensor], g_s: list[Tensor], alpha: float) -> list[Tensor]:
    """GSAM's d = g_s − α g_⊥, in the optimizer's form (samtune.optim.gsam)."""
    inner = sum(torch.dot(a.reshape(-1), b.reshape(-1)) for a, b in zip(g, g_s))
    norm_g, norm_gs = _norm(g), _norm(g_s)
    coefficient = inner / (norm_gs * norm_g + PERTURB_EPS) * norm_g / (norm_gs + PERTURB_EPS)
    return [gs * (1 + alpha * coefficient) - alpha * gi for gi, gs in zip(g, g_s)]


def _norm(tensors: list[Tensor]) -> Tensor:
    return torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(t) for t in tensors]))


def _sq_norm(tensors: list[Tensor]) -> float:
    return float(sum(t.double().pow(2).sum() for t in tensors))


@contextlib.contextmanager
def _probing(model: nn.Module) -> Iterator[None]:
    """Eval mode with gradients enabled; every module's train flag restored after."""
    modes = [(module, module.training) for module in model.modules()]
    model.eval()
    try:
        with torch.enable_grad():
            yield
    finally:
        for module, training in modes:
            module.training = training
