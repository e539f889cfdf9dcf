"""Sharpness-aware minimization (SAM) and its ASAM / USAM variants.

One SAM step on a mini-batch loss L (Foret et al., ICLR 2021, arXiv 2010.01412):

    g   = ∇L(w)
    e   = ρ · g / (‖g‖ + 1e-12)                      SAM
    e   = ρ · T² ⊙ g / (‖T ⊙ g‖ + 1e-12), T = |w| + η  adaptive (ASAM, Kwon et al. 2021)
    e   = ρ · g                                        normalize=False (USAM, Andriushchenko
                                                       & Flammarion 2022)
    g_s = ∇L(w + e)                                    same mini-batch
    w   ← base_optimizer.step(w, g_s)                  momentum / weight decay live here only

‖·‖ is the global L2 norm over every parameter that has a gradient. The adaptive
scaling covers all parameters, biases and norm layers included, as in davda54/sam and
juntang-zhuang/GSAM (gsam/gsam.py); pass a param group with ``adaptive=False`` to
leave some tensors unscaled as SamsungLabs/ASAM does for biases.

The two-step interface and the sharing of ``param_groups`` with a base optimizer
built inside the wrapper follow davda54/sam (sam.py). Unlike that code, w is
restored from a saved copy rather than by subtracting e, so the parameters after
``second_step`` are bit-identical to "restore, then base step".
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

import torch

from samtune.checks import check_nonnegative

PERTURB_EPS = 1e-12


def _global_norm(tensors: list[torch.Tensor]) -> torch.Tensor:
    """L2 norm of the concatenation of ``tensors`` (per-tensor norms stacked on one device)."""
    return torch.nn.utils.get_total_norm(tensors, norm_type=2.0)


class SAM(torch.optim.Optimizer):
    """Two-pass sharpness-aware wrapper around a torch optimizer class.

    Usage::

        opt = SAM(model.parameters(), torch.optim.SGD, rho=0.05, lr=0.1, momentum=0.9)
        loss_fn(model(x), y).backward()
        opt.first_step(zero_grad=True)      # w <- w + e(w)
        loss_fn(model(x), y).backward()     # g_s at w + e(w)
        opt.second_step(zero_grad=True)     # w <- saved w, then base step with g_s

    ``rho``, ``adaptive``, ``eta`` and ``normalize`` live in every param group, so a
    schedule may change ``group["rho"]`` between steps. ``state_dict()`` is the base
    optimizer's (momentum buffers plus the shared groups); the saved copies of w are
    scratch and are not serialized.
    """

    # GSAM needs the first-pass gradient g after the perturbed backward pass.
    _keeps_first_gradient = False

    def __init__(
        self,
        params: Iterable[torch.Tensor] | Iterable[dict],
        base_optimizer: type[torch.optim.Optimizer],
        rho: float = 0.05,
        adaptive: bool = False,
        normalize: bool = True,
        eta: float = 0.0,
        **base_kwargs,
    ) -> None:
        group_defaults = dict(rho=rho, adaptive=adaptive, normalize=normalize, eta=eta)
        self._setup(params, base_optimizer, group_defaults, base_kwargs)

    def _setup(self, params, base_optimizer, group_defaults: dict, base_kwargs: dict) -> None:
        """Build the wrapper over ``params`` and the base optimizer over the same groups."""
        if not (isinstance(base_optimizer, type) and issubclass(base_optimizer, torch.optim.Optimizer)):
            raise ValueError(
                "base_optimizer must be a torch.optim.Optimizer subclass (e.g. torch.optim.SGD), "
                f"got {base_optimizer!r}"
            )
        super().__init__(params, {**base_kwargs, **group_defaults})
        self._check_groups()
        self.base_optimizer = base_optimizer(self.param_groups, **base_kwargs)
        self.param_groups = self.base_optimizer.param_groups
        self._perturbed: list[torch.Tensor] | None = None  # set by first_step, consumed by second_step
        # data-parallel training: averages the final directions across workers
        # (samtune.optim.distributed.average_directions); None on one worker
        self.direction_sync: Callable[[list[torch.Tensor]], None] | None = None

    def _check_groups(self) -> None:
        for group in self.param_groups:
            check_nonnegative("rho", group["rho"])
            check_nonnegative("eta", group["eta"])

    def add_param_group(self, param_group: dict) -> None:
        """Add a group to the wrapper and the base optimizer (they share ``param_groups``)."""
        if not hasattr(self, "base_optimizer"):  # called by Optimizer.__init__
            super().add_param_group(param_group)
            return
        for key, value in self.defaults.items():
            param_group.setdefault(key, value)
        self.base_optimizer.add_param_group(param_group)

    @torch.no_grad()
    def first_step(self, zero_grad: bool = False) -> None:
        """Ascent: save w (and g if needed), then w <- w + e(w) for every parameter with a gradient."""
        self._check_groups()
        groups = [(group, [p for p in group["params"] if p.grad is not None]) for group in self.param_groups]
        directions = {id(group): self._ascent_directions(group, params) for group, params in groups}
        needs_norm = any(group["normalize"] for group, params in groups if params)
        norm = _global_norm([d for dirs in directions.values() for d, _ in dirs]) if needs_norm else None

        self._perturbed = []
        for group, params in groups:
            if not params:
                continue
            self._save("old_p", params, params)
            if self._keeps_first_gradient:
                self._save("old_g", params, [p.grad for p in params])
            # e = rho * T^2 g / ||T g||: the direction list holds (T g, T); multiply by T once more.
            steps = [tg if scale is None else tg * scale for tg, scale in directions[id(group)]]
            factor = group["rho"] / (norm + PERTURB_EPS) if group["normalize"] else group["rho"]
            torch._foreach_add_(params, torch._foreach_mul(steps, factor))
            self._perturbed.extend(params)
        if zero_grad:
            self.zero_grad()

    @staticmethod
    def _ascent_directions(
        group: dict, params: list[torch.Tensor]
    ) -> list[tuple[torch.Tensor, torch.Tensor | None]]:
        """Per parameter (T ⊙ g, T) with T = |w| + eta if adaptive, else (g, None)."""
        if not group["adaptive"]:
            return [(p.grad, None) for p in params]
        scales = [p.abs().add_(group["eta"]) for p in params]
        return [(p.grad * t, t) for p, t in zip(params, scales)]

    def _save(self, key: str, params: list[torch.Tensor], sources: list[torch.Tensor]) -> None:
        """Copy ``sources`` into per-parameter scratch buffers, reused across steps."""
        for p, source in zip(params, sources):
            buffer = self.state[p].get(key)
            if buffer is None or buffer.shape != source.shape or buffer.dtype != source.dtype:
                self.state[p][key] = source.detach().clone()
            else:
                buffer.copy_(source)

    @torch.no_grad()
    def second_step(self, zero_grad: bool = False) -> None:
        """Descent: restore the saved w exactly, then let the base optimizer step with p.grad = g_s."""
        if self._perturbed is None:
            raise RuntimeError("second_step() called without a preceding first_step()")
        self._form_direction()
        if self.direction_sync is not None:
            self.direction_sync([p.grad for group in self.param_groups for p in group["params"]
                                 if p.grad is not None])
        if self._perturbed:
            torch._foreach_copy_(self._perturbed, [self.state[p]["old_p"] for p in self._perturbed])
        self._perturbed = None
        self.base_optimizer.step()
        if zero_grad:
            self.zero_grad()

    def _form_direction(self) -> None:
        """Hook for variants that change the update direction; SAM uses g_s unchanged."""

    @torch.no_grad()
    def step(self, closure: Callable[[], torch.Tensor] | None = None) -> torch.Tensor:
        """Full step after the caller's first backward pass (davda54/sam style).

        ``closure`` must recompute the loss on the same batch and call ``backward()``;
        it runs at the perturbed point under ``torch.enable_grad``. Returns its loss.
        """
        if closure is None:
            raise ValueError(
                "closure must be a callable that recomputes the loss and calls backward(), got None; "
                "or call first_step() and second_step() yourself"
            )
        self.first_step(zero_grad=True)
        with torch.enable_grad():
            loss = closure()
        self.second_step()
        return loss

    def state_dict(self) -> dict:
        """The base optimizer's state and the shared groups (with rho, lr, ...); no scratch copies."""
        return self.base_optimizer.state_dict()

    def load_state_dict(self, state_dict: dict) -> None:
        self.base_optimizer.load_state_dict(state_dict)
        # torch rebuilds the group dicts on load; share the new ones again.
        self.param_groups = self.base_optimizer.param_groups
        self._perturbed = None
