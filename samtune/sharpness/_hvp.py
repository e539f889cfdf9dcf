"""Hessian-vector products of a :class:`LossSurface` at ``w0``.

``H v = Σ_b (n_b/N) ∇²L_b(w0) v``, each batch's product by one of two routes
(``hvp=``):

- ``double_backward`` (reverse-over-reverse): the gradient of each batch is computed
  once with ``create_graph=True`` and every product is one more backward pass through
  that graph (``∂(gᵀv)/∂w``), about half the cost of rebuilding it (forward + backward
  + double backward) each time, as PyHessian's multi-batch path does. Graphs of all
  batches are kept while memory allows (``cache_graphs=None``: the first graph's
  measured size times the number of batches must fit in half the free memory of the
  device); otherwise each batch's graph is rebuilt per product, and callers that take
  many products per batch (Hutchinson) use :meth:`HessianProducts.batch_operator`,
  which builds it once.
- ``forward_over_reverse``: ``jvp(grad(L_b), w0, v)`` with :mod:`torch.func`, through
  the same ``functional_call`` of the model as the loss; no graph is stored.
- ``auto`` (default): both routes do the same tangent arithmetic, and
  forward-over-reverse adds a primal forward and backward to every product, so where a
  stored graph serves many products (kept graphs, or many probes per batch) double
  backward is the cheaper by one gradient per product (digits CNN, 128 images, 2 CPU
  cores, fastest of 24: 24 ms against 50 ms, the graph 15 ms). Where every product would rebuild its graph the two
  cost about the same and which wins depends on the kernels: ``auto`` then times both
  once per architecture, batch shape, device and dtype in the process and keeps the
  faster (:func:`product_costs`).

Both routes give the same product up to float rounding. The products run with every
eval-mode BatchNorm as its affine map (:mod:`samtune.sharpness._hessian_bn`), whose
second derivatives are far cheaper to form than ``native_batch_norm``'s, and with
attention on PyTorch's math kernel: the fused scaled-dot-product attention kernels
have neither a double backward nor forward-mode derivatives.
"""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import torch
from torch.func import grad, jvp
from torch.nn.attention import SDPBackend, sdpa_kernel

from samtune.checks import check_choice
from samtune.sharpness._hessian_bn import affine_batchnorm
from samtune.sharpness._surface import LossSurface

Graph = tuple[torch.Tensor, torch.Tensor]  # (leaf w, gradient ∇L_b(w) with its graph)
MatVec = Callable[[torch.Tensor], torch.Tensor]
HVP_MODES = ("auto", "double_backward", "forward_over_reverse")


class HessianProducts:
    """``hvp(v)`` for the whole surface, ``batch_operator(b)`` for one batch."""

    def __init__(self, surface: LossSurface, *, cache_graphs: bool | None = None,
                 hvp: str = "auto"):
        if cache_graphs not in (None, True, False):
            raise ValueError(f"cache_graphs must be None (auto), True or False, "
                             f"got {cache_graphs!r}")
        self.surface = surface
        self.requested = check_choice("hvp", hvp, HVP_MODES)
        self._policy = cache_graphs
        self._graphs: dict[int, Graph] = {}

    @property
    def keeps_graphs(self) -> bool:
        """Whether every batch's graph is kept (decided at the first graph built;
        never, when every product is forward-over-reverse)."""
        if self.requested == "forward_over_reverse":
            return False
        if self._policy is None:
            self.batch_graph(0)
        return bool(self._policy)

    def mode(self, *, reused: bool) -> str:
        """The route of a product whose batch graph serves many products (``reused``)
        or is rebuilt for this one."""
        if self.requested != "auto":
            return self.requested
        if reused:
            return "double_backward"
        costs = product_costs(self)
        if costs.build + costs.double_backward <= costs.forward_over_reverse:
            return "double_backward"
        return "forward_over_reverse"

    def mean_gradient(self) -> torch.Tensor:
        """``∇L(w0)``: from the kept graphs, else by one backward pass per batch."""
        if not self.keeps_graphs:
            return self.surface.mean_loss_and_grad(self.surface.w0)[1]
        total = torch.zeros_like(self.surface.w0)
        for b, weight in enumerate(self.surface.weights):
            total.add_(self.batch_graph(b)[1].detach(), alpha=weight)
        return total

    def hvp(self, v: torch.Tensor) -> torch.Tensor:
        kept = self.keeps_graphs
        forward = self.mode(reused=kept) == "forward_over_reverse"
        total = torch.zeros_like(self.surface.w0)
        for b, weight in enumerate(self.surface.weights):
            product = (self.forward_over_reverse(b, v) if forward
                       else self.double_backward(self.batch_graph(b), v))
            total.add_(product, alpha=weight)
        return total

    def batch_operator(self, index: int) -> MatVec:
        """``v ↦ ∇²L_b(w0) v`` for batch ``index``, for many ``v``: the returned
        function holds the batch's graph (double backward) while it lives."""
        if self.mode(reused=True) == "forward_over_reverse":
            return lambda v: self.forward_over_reverse(index, v)
        graph = self.batch_graph(index)
        return lambda v: self.double_backward(graph, v)

    @staticmethod
    def double_backward(graph: Graph, v: torch.Tensor) -> torch.Tensor:
        leaf, gradient = graph
        with torch.enable_grad(), sdpa_kernel(SDPBackend.MATH):
            (product,) = torch.autograd.grad(gradient, leaf, grad_outputs=v, retain_graph=True)
        return product

    def forward_over_reverse(self, index: int, v: torch.Tensor) -> torch.Tensor:
        def loss(w: torch.Tensor) -> torch.Tensor:
            return self.surface.loss_tensor(w, index)

        with self._second_order_context():
            _, product = jvp(grad(loss), (self.surface.w0,), (v,))
        return product

    def batch_graph(self, index: int) -> Graph:
        """The gradient graph of batch ``index``: cached, or built (and cached if
        the policy allows)."""
        if index in self._graphs:
            return self._graphs[index]
        before = _memory_in_use(self.surface.device)
        graph = self.build_graph(index)
        if self._policy is None:
            self._policy = self._fits_in_memory(before)
        if self._policy:
            self._graphs[index] = graph
        return graph

    def build_graph(self, index: int) -> Graph:
        """A fresh gradient graph of batch ``index`` (not cached)."""
        leaf = self.surface.w0.detach().requires_grad_(True)
        with self._second_order_context():
            loss = self.surface.loss_tensor(leaf, index)
            (gradient,) = torch.autograd.grad(loss, leaf, create_graph=True)
        return leaf, gradient

    @contextlib.contextmanager
    def _second_order_context(self) -> Iterator[None]:
        with (torch.enable_grad(), sdpa_kernel(SDPBackend.MATH),
              affine_batchnorm(self.surface.model)):
            yield

    def _fits_in_memory(self, before: int | None) -> bool:
        n_batches = len(self.surface.batches)
        if n_batches == 1:
            return True  # keeping the one graph costs no more than building it
        after = _memory_in_use(self.surface.device)
        free = _memory_free(self.surface.device)
        if before is None or after is None or free is None:
            return False
        return max(after - before, 1) * (n_batches - 1) <= free // 2


# -- timing the two routes -------------------------------------------------------


@dataclass(frozen=True)
class ProductCosts:
    """Seconds on one batch: ``build`` a gradient graph, one product through it
    (``double_backward``), one ``forward_over_reverse`` product."""

    build: float
    double_backward: float
    forward_over_reverse: float


_COSTS: dict[tuple, ProductCosts] = {}


def product_costs(products: HessianProducts) -> ProductCosts:
    """The costs on ``products``' first batch, measured once per process for each
    architecture (parameter names and shapes), batch shape, device and dtype.

    Each route runs once untimed first: the first ``torch.func`` transform of a
    process spends a few hundred ms on set-up that is no part of a product's cost.
    """
    surface = products.surface
    key = (type(surface.model).__qualname__,
           tuple((name, tuple(p.shape)) for name, p in surface.model.named_parameters()),
           tuple(surface.batches[0][0].shape), surface.device, surface.dtype)
    if key not in _COSTS:
        _time_routes(products)  # warm-up
        _COSTS[key] = _time_routes(products)
    return _COSTS[key]


def _time_routes(products: HessianProducts) -> ProductCosts:
    device = products.surface.device
    v = torch.ones_like(products.surface.w0)  # any vector: the costs do not depend on it
    build, graph = _timed(device, lambda: products.build_graph(0))
    double, _ = _timed(device, lambda: products.double_backward(graph, v))
    forward, _ = _timed(device, lambda: products.forward_over_reverse(0, v))
    return ProductCosts(build, double, forward)


def _timed(device: torch.device, fn: Callable[[], object]) -> tuple[float, object]:
    _synchronize(device)
    start = time.perf_counter()
    result = fn()
    _synchronize(device)
    return time.perf_counter() - start, result


def _synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


# -- memory ------------------------------------------------------------------


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
