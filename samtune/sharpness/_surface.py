"""The loss of a model on fixed batches, as a function of one flat parameter vector.

Every measure in this package looks at ``L_S(w + δ)`` for perturbations δ. Instead
of writing ``w + δ`` into the model and restoring it afterwards, the model is
evaluated with :func:`torch.func.functional_call` on separate tensors, so its
parameters, buffers and ``.grad`` are never written to. The only state a measure
changes is the train/eval flag of each module (evaluation runs in ``eval()`` mode,
as in tml-epfl/sharpness-vs-generalization), and :func:`loss_surface` restores
every module's flag on exit, error or not.

Parameters are handled as one flat vector in the compute dtype: the whole model's
``w`` is a single tensor, so perturbations, projections, norms and dot products are
one kernel each, and the gradient with respect to the flat leaf arrives already
flat. The parameter set is ``model.named_parameters()`` (every tensor, frozen or
not, as in the reference implementation); buffers (BatchNorm running statistics)
are read, never perturbed.
"""

from __future__ import annotations

import contextlib
import numbers
from collections.abc import Callable, Iterable, Iterator

import torch
from torch import nn
from torch.func import functional_call

LossFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
Batch = tuple[torch.Tensor, torch.Tensor]


def compute_dtype(model: nn.Module, dtype: torch.dtype | None) -> torch.dtype:
    """The dtype measures compute in: ``dtype`` if given, else the model's
    floating dtype promoted to at least float32 (bf16/fp16 models are measured
    in float32, since loss differences at small radii vanish in 16-bit)."""
    if dtype is not None:
        if not dtype.is_floating_point:
            raise ValueError(f"dtype must be a floating dtype, got {dtype!r}")
        return dtype
    floating = [p.dtype for p in model.parameters() if p.dtype.is_floating_point]
    if not floating:
        raise ValueError("model has no floating-point parameters to measure")
    return torch.promote_types(floating[0], torch.float32)


def model_device(model: nn.Module) -> torch.device:
    for p in model.parameters():
        return p.device
    raise ValueError("model has no parameters: sharpness is undefined")


def flat_parameters(model: nn.Module, dtype: torch.dtype) -> torch.Tensor:
    """All parameters concatenated in ``named_parameters()`` order (a copy)."""
    return torch.cat([p.detach().reshape(-1).to(dtype) for p in model.parameters()])


class LossSurface:
    """``L_b(w)`` for each fixed batch b and the size-weighted mean
    ``L(w) = Σ_b (n_b / N) L_b(w)``, with gradients.

    Use through :func:`loss_surface`, which puts the model in eval mode first.
    """

    def __init__(self, model: nn.Module, loss_fn: LossFn, batches: Iterable[Batch],
                 *, dtype: torch.dtype | None = None):
        self.model = model
        self.loss_fn = loss_fn
        self.dtype = compute_dtype(model, dtype)
        self.device = model_device(model)
        named = list(model.named_parameters())
        self._names = [name for name, _ in named]
        self._shapes = [p.shape for _, p in named]
        self._numels = [p.numel() for _, p in named]
        self.w0 = flat_parameters(model, self.dtype)
        self._buffers = self._cast_buffers(model)
        self.batches = self._prepare_batches(batches)
        sizes = torch.tensor([float(len(y)) for _, y in self.batches], dtype=torch.float64)
        self.weights = (sizes / sizes.sum()).tolist()

    @property
    def dim(self) -> int:
        return self.w0.numel()

    def split(self, flat: torch.Tensor) -> list[torch.Tensor]:
        """Views of ``flat`` shaped like each parameter tensor."""
        return [t.view(shape) for t, shape in zip(flat.split(self._numels), self._shapes)]

    def _cast_buffers(self, model: nn.Module) -> dict[str, torch.Tensor]:
        # Buffers are only passed explicitly when their dtype must change; otherwise
        # functional_call reads the module's own (eval mode never writes them).
        needs_cast = {name: b for name, b in model.named_buffers()
                      if b.dtype.is_floating_point and b.dtype != self.dtype}
        return {name: b.detach().to(self.dtype) for name, b in needs_cast.items()}

    def _prepare_batches(self, batches: Iterable[Batch]) -> list[Batch]:
        prepared = []
        for index, batch in enumerate(batches):
            try:
                inputs, targets = batch
            except (TypeError, ValueError):
                raise ValueError(f"batches[{index}] must be an (inputs, targets) pair, "
                                 f"got {type(batch).__name__}") from None
            if not isinstance(inputs, torch.Tensor) or not isinstance(targets, torch.Tensor):
                raise ValueError(f"batches[{index}] must hold tensors, got "
                                 f"({type(inputs).__name__}, {type(targets).__name__})")
            if len(targets) == 0:
                raise ValueError(f"batches[{index}] is empty")
            if inputs.is_floating_point():
                inputs = inputs.to(self.device, self.dtype)
            else:
                inputs = inputs.to(self.device)
            if targets.is_floating_point():
                targets = targets.to(self.device, self.dtype)
            else:
                targets = targets.to(self.device)
            prepared.append((inputs, targets))
        if not prepared:
            raise ValueError("batches is empty: pass at least one (inputs, targets) pair")
        return prepared

    # -- losses -------------------------------------------------------------

    def loss_tensor(self, w: torch.Tensor, index: int) -> torch.Tensor:
        """``L_b(w)`` as a tensor (differentiable in ``w``)."""
        inputs, targets = self.batches[index]
        tensors = dict(zip(self._names, self.split(w)))
        tensors.update(self._buffers)
        loss = self.loss_fn(functional_call(self.model, tensors, (inputs,)), targets)
        if loss.dim() != 0:
            raise ValueError(f"loss_fn must return a scalar (the mean loss), "
                             f"got shape {tuple(loss.shape)}")
        return loss

    def loss(self, w: torch.Tensor, index: int) -> float:
        """``L_b(w)`` for batch ``index``."""
        with torch.no_grad():
            return self.loss_tensor(w, index).item()

    def loss_and_grad(self, w: torch.Tensor, index: int) -> tuple[float, torch.Tensor]:
        """``L_b(w)`` and its gradient (flat), for batch ``index``."""
        leaf = w.detach().requires_grad_(True)
        with torch.enable_grad():
            loss = self.loss_tensor(leaf, index)
            (gradient,) = torch.autograd.grad(loss, leaf)
        return loss.item(), gradient

    def mean_loss(self, w: torch.Tensor) -> float:
        return sum(weight * self.loss(w, b) for b, weight in enumerate(self.weights))

    def mean_loss_and_grad(self, w: torch.Tensor) -> tuple[float, torch.Tensor]:
        total_loss, total_grad = 0.0, torch.zeros_like(w)
        for b, weight in enumerate(self.weights):
            loss, gradient = self.loss_and_grad(w, b)
            total_loss += weight * loss
            total_grad.add_(gradient, alpha=weight)
        return total_loss, total_grad


@contextlib.contextmanager
def evaluation_mode(model: nn.Module) -> Iterator[None]:
    """Put every module in eval mode; restore each module's own flag on exit."""
    flags = [(module, module.training) for module in model.modules()]
    model.eval()
    try:
        yield
    finally:
        for module, training in flags:
            module.training = training


@contextlib.contextmanager
def loss_surface(model: nn.Module, loss_fn: LossFn, batches: Iterable[Batch],
                 *, dtype: torch.dtype | None = None) -> Iterator[LossSurface]:
    """A :class:`LossSurface` of ``model`` in eval mode, with autocast disabled
    so the compute dtype is the one chosen by :func:`compute_dtype`."""
    device = model_device(model)
    with evaluation_mode(model), torch.autocast(device.type, enabled=False):
        yield LossSurface(model, loss_fn, batches, dtype=dtype)


def generator_for(device: torch.device, seed: int) -> torch.Generator:
    """A local generator on ``device`` (the global RNG is never touched)."""
    if not isinstance(seed, numbers.Integral) or isinstance(seed, bool):
        raise ValueError(f"seed must be an integer, got {seed!r}")
    generator = torch.Generator(device=device)
    generator.manual_seed(int(seed))
    return generator
