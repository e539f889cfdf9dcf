"""Hessian-vector products of a :class:`LossSurface` at ``w0``.

``H v = Σ_b (n_b/N) ∇²L_b(w0) v`` by reverse-over-reverse differentiation: the
gradient of each batch is computed once with ``create_graph=True`` and every
product is one more backward pass through that graph (``∂(gᵀv)/∂w``), about half
the cost of rebuilding it (forward + backward + double backward) each time, as
PyHessian's multi-batch path does. Graphs of all batches are kept while memory
allows (``cache_graphs=None``: the first graph's measured size times the number
of batches must fit in half the free memory of the device); otherwise each
batch's graph is rebuilt per product, and callers that take many products per
batch (Hutchinson) use :meth:`HessianProducts.batch_graph` to build it once.

Attention runs on PyTorch's math kernel here: the fused scaled-dot-product
attention kernels have no double backward.
"""

from __future__ import annotations

import os

import torch
from torch.nn.attention import SDPBackend, sdpa_kernel

from samtune.sharpness._surface import LossSurface

Graph = tuple[torch.Tensor, torch.Tensor]  # (leaf w, gradient ∇L_b(w) with its graph)


class HessianProducts:
    """``hvp(v)`` for the whole surface, ``batch_hvp(graph, v)`` for one batch."""

    def __init__(self, surface: LossSurface, *, cache_graphs: bool | None = None):
        if cache_graphs not in (None, True, False):
            raise ValueError(f"cache_graphs must be None (auto), True or False, "
                             f"got {cache_graphs!r}")
        self.surface = surface
        self._policy = cache_graphs
        self._graphs: dict[int, Graph] = {}

    @property
    def keeps_graphs(self) -> bool:
        """Whether every batch's graph is kept (decided at the first graph built)."""
        if self._policy is None:
            self.batch_graph(0)
        return bool(self._policy)

    def mean_gradient(self) -> torch.Tensor:
        """``∇L(w0)``: from the kept graphs, else by one backward pass per batch."""
        if not self.keeps_graphs:
            return self.surface.mean_loss_and_grad(self.surface.w0)[1]
        total = torch.zeros_like(self.surface.w0)
        for b, weight in enumerate(self.surface.weights):
            total.add_(self.batch_graph(b)[1].detach(), alpha=weight)
        return total

    def hvp(self, v: torch.Tensor) -> torch.Tensor:
        total = torch.zeros_like(self.surface.w0)
        for b, weight in enumerate(self.surface.weights):
            total.add_(self.batch_hvp(self.batch_graph(b), v), alpha=weight)
        return total

    @staticmethod
    def batch_hvp(graph: Graph, v: torch.Tensor) -> torch.Tensor:
        leaf, gradient = graph
        with torch.enable_grad(), sdpa_kernel(SDPBackend.MATH):
            (product,) = torch.autograd.grad(gradient, leaf, grad_outputs=v, retain_graph=True)
        return product

    def batch_graph(self, index: int) -> Graph:
        """The gradient graph of batch ``index``: cached, or built (and cached if
        the policy allows)."""
        if index in self._graphs:
            return self._graphs[index]
        before = _memory_in_use(self.surface.device)
        graph = self._build(index)
        if self._policy is None:
            self._policy = self._fits_in_memory(before)
        if self._policy:
            self._graphs[index] = graph
        return graph

    def _build(self, index: int) -> Graph:
        leaf = self.surface.w0.detach().requires_grad_(True)
        with torch.enable_grad(), sdpa_kernel(SDPBackend.MATH):
            loss = self.surface.loss_tensor(leaf, index)
            (gradient,) = torch.autograd.grad(loss, leaf, create_graph=True)
        return leaf, gradient

    def _fits_in_memory(self, before: int | None) -> bool:
        n_batches = len(self.surface.batches)
        if n_batches == 1:
            return True  # keeping the one graph costs no more than building it
        after = _memory_in_use(self.surface.device)
        free = _memory_free(self.surface.device)
        if before is None or after is None or free is None:
            return False
        return max(after - before, 1) * (n_batches - 1) <= free // 2


def _memory_in_use(device: torch.device) -> int | None:
    if device.type == "cuda":
        return torch.cuda.memory_allocated(device)
    if device.type == "cpu":
        try:
            with open("/proc/self/statm") as statm:
                return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
        except (OSError, ValueError, IndexError):
            return None
    return None


def _memory_free(device: torch.device) -> int | None:
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        return free + torch.cuda.memory_reserved(device) - torch.cuda.memory_allocated(device)
    if device.type == "cpu":
        try:
            with open("/proc/meminfo") as meminfo:
                for line in meminfo:
                    if line.startswith("MemAvailable:"):
                        return int(line.split()[1]) * 1024
        except (OSError, ValueError, IndexError):
            return None
    return None
