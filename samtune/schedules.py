"""Learning-rate shapes, batch-size growth and ρ schedules as pure functions of progress.

Every schedule is built by a factory that validates its arguments once and
returns a closure (the optax pattern): ``lr_schedule`` maps elapsed epochs
``e`` (a float; the training loop passes ``epoch + i / steps_per_epoch``) to a
learning rate, ``batch_size_schedule`` maps an epoch index to a batch size and
``rho_schedule`` maps ``(e, lr)`` to the SAM radius ρ.  :class:`TrialSchedule`
bundles the three for one trial, built from the trial parameters ``lr``,
``lr_shape``, ``lr_final``, ``lr_power``, ``warmup_epochs``, ``epochs``,
``batch_size``, ``batch_growth_ratio``, ``batch_stages``, ``batch_max``,
``lr_batch_scaling``, ``rho``, ``rho_min`` and ``rho_schedule``.

Sources:

- GSAM scheduler family, warmup rule and ``ProportionScheduler``:
  ``juntang-zhuang/GSAM gsam/scheduler.py``; ρ ∝ lr is Algorithm 1 of
  Zhuang et al., ICLR 2022.
- Harada & Iiduka (arXiv 2409.09984), ``iiduka-researches/GSAM_batch_inc``
  ``main_CNN.py`` / ``main_ViT.py``: "+C" cosine 0.1 → 0.001, "+B" batch
  16 → 32 → 64 → 128 → 256 with 40 epochs per stage, ViT warmup 1e-5 → 1e-3.
- Step decay ×0.2 at 30/60/80 % of training:
  ``juntang-zhuang/GSAM example/utility/step_lr.py``.
- Diminishing per-epoch rules of Khanh et al. (arXiv 2401.08060),
  ``lhchau/fundamental-sam fundamental_sam/scheduler/__init__.py``.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from collections.abc import Callable, Mapping
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from samtune import schema
from samtune.checks import check_choice, check_integral, check_number

LR_SHAPES, LR_BATCH_SCALINGS, RHO_SCHEDULES = schema.LR_SHAPES, schema.LR_BATCH_SCALINGS, schema.RHO_SCHEDULES

STEP_MILESTONES = (0.3, 0.6, 0.8)
STEP_FACTOR = 0.2
# Milestones are compared against t = (e - w) / (epochs - w); rounding in that
# division must not move a milestone by one optimizer step.
_MILESTONE_TOL = 1e-9


# ---------------------------------------------------------------------------
# argument checks


def _progress(e: float) -> float:
    e = float(e)
    if not e >= 0.0:  # also refuses NaN
        raise ValueError(f"elapsed epochs must be >= 0, got {e!r}")
    return e


# ---------------------------------------------------------------------------
# learning rate


def lr_schedule(
    shape: str,
    *,
    lr: float,
    epochs: float,
    lr_final: float = 0.0,
    lr_power: float = 1.0,
    warmup_epochs: float = 0.0,
) -> Callable[[float], float]:
    r"""Learning rate as a function of elapsed epochs ``e`` in ``[0, epochs]``.

    Warmup (GSAM ``SchedulerBase``, Harada's ViT script): for ``e < w`` with
    ``w = warmup_epochs``, ``lr(e) = lr_final + (lr - lr_final) e / w``, a linear
    ramp from ``lr_final`` to ``lr`` (``lr=1e-3, lr_final=1e-5, w=10`` is
    Harada's ViT warmup 1e-5 → 1e-3).  Afterwards, with
    ``t = clip((e - w) / (epochs - w), 0, 1)``:

    - ``constant``:    ``lr``
    - ``cosine``:      ``lr_final + (lr - lr_final) (1 + cos(pi t)) / 2``
      (Harada "+C": 0.1 → 0.001; GSAM ``CosineScheduler``)
    - ``linear``:      ``lr + (lr_final - lr) t`` (GSAM ``LinearScheduler``)
    - ``polynomial``:  ``lr_final + (lr - lr_final) (1 - t)^lr_power``
    - ``exponential``: ``lr (lr_final / lr)^t`` (needs ``lr_final > 0``)
    - ``step``:        ``lr * 0.2^k``, ``k`` = number of milestones
      ``{0.3, 0.6, 0.8}`` with ``t >= milestone`` (GSAM ``example/utility/step_lr.py``)
    - ``diminishing``: ``lr / (k + 1)^lr_power`` with ``k = floor(e - w)``, constant
      within an epoch (Khanh et al.'s "Diminish 1" is ``lr_power=1``: ``η0/(k+1)``)
    - ``diminishing_from1``: ``lr / max(k, 1)^lr_power`` (Khanh et al.'s "Diminish 2"
      is ``lr_power=0.5001``: their scheduler steps after each epoch, so epochs 0
      and 1 both train at ``η0``)
    - ``diminishing_klogk``: ``lr`` in epoch 0, then ``lr / (j ln j)`` with
      ``j = 3 + floor((k - 1) / 5)`` (Khanh et al.'s "Diminish 3": ``j`` grows by
      one every five epochs; ``lr_power`` is not used)

    Every shape equals ``lr`` at ``e = w``, so the curve is continuous at the
    end of warmup.  ``e > epochs`` is treated as ``e = epochs``.
    """
    shape = check_choice("lr_shape", shape, LR_SHAPES)
    lr = check_number("lr", lr)
    epochs = check_number("epochs", epochs)
    lr_final = check_number("lr_final", lr_final)
    lr_power = check_number("lr_power", lr_power)
    warmup = check_number("warmup_epochs", warmup_epochs)
    if lr <= 0:
        raise ValueError(f"lr must be > 0, got {lr!r}")
    if epochs <= 0:
        raise ValueError(f"epochs must be > 0, got {epochs!r}")
    if not 0 <= lr_final <= lr:
        raise ValueError(f"lr_final must be in [0, lr={lr!r}], got {lr_final!r}")
    if shape == "exponential" and lr_final <= 0:
        raise ValueError(f"lr_final must be > 0 for lr_shape 'exponential', got {lr_final!r}")
    if lr_power <= 0:
        raise ValueError(f"lr_power must be > 0, got {lr_power!r}")
    if warmup < 0:
        raise ValueError(f"warmup_epochs must be >= 0, got {warmup!r}")
    # A decaying shape needs a decay phase; a constant one may be all warmup.
    if shape == "constant" and warmup > epochs:
        raise ValueError(f"warmup_epochs must be <= epochs={epochs!r}, got {warmup!r}")
    if shape != "constant" and warmup >= epochs:
        raise ValueError(
            f"warmup_epochs must be < epochs={epochs!r} for lr_shape {shape!r}, got {warmup!r}"
        )

    decay = _decay(shape, lr, lr_final, lr_power)
    span = epochs - warmup

    def schedule(e: float) -> float:
        e = min(_progress(e), epochs)
        if e < warmup:
            return lr_final + (lr - lr_final) * e / warmup
        since_warmup = e - warmup
        t = min(since_warmup / span, 1.0) if span > 0 else 1.0
        return decay(t, since_warmup)

    return schedule


def _decay(shape: str, lr: float, lr_final: float, power: float) -> Callable[[float, float], float]:
    """Post-warmup curve as a function of (t in [0, 1], epochs since warmup)."""
    if shape == "constant":
        return lambda t, since: lr
    if shape == "cosine":
        return lambda t, since: lr_final + (lr - lr_final) * (1.0 + math.cos(math.pi * t)) / 2.0
    if shape == "linear":
        return lambda t, since: lr + (lr_final - lr) * t
    if shape == "polynomial":
        return lambda t, since: lr_final + (lr - lr_final) * (1.0 - t) ** power
    if shape == "exponential":
        return lambda t, since: lr * (lr_final / lr) ** t
    if shape == "step":
        return lambda t, since: lr * STEP_FACTOR ** sum(
            t >= m - _MILESTONE_TOL for m in STEP_MILESTONES
        )
    if shape == "diminishing":
        return lambda t, since: lr / (math.floor(since) + 1) ** power
    if shape == "diminishing_from1":
        return lambda t, since: lr / max(math.floor(since), 1) ** power
    return lambda t, since: lr if since < 1 else lr / _klogk(3 + (math.floor(since) - 1) // 5)


def _klogk(k: int) -> float:
    return k * math.log(k)


# ---------------------------------------------------------------------------
# batch size


def batch_size_schedule(
    *,
    batch_size: int,
    epochs: int,
    batch_growth_ratio: float = 1.0,
    batch_stages: int = 1,
    batch_max: int | None = None,
) -> Callable[[int], int]:
    """Batch size as a function of the 0-based epoch index.

    The ``epochs`` are split evenly into ``batch_stages`` stages; epoch ``i``
    is in stage ``k = min(floor(i * stages / epochs), stages - 1)`` and uses
    ``min(batch_max, round(batch_size * batch_growth_ratio^k))`` (Python's
    ``round``: half to even).  Harada & Iiduka's "+B" (``main_CNN.py``) is
    ``batch_size=16, ratio=2, stages=5, epochs=200``: 16 → 32 → 64 → 128 → 256,
    40 epochs each.  ``ratio == 1`` or ``stages == 1`` is a constant batch.
    Epoch indices past the end stay in the last stage.
    """
    batch_size = check_integral("batch_size", batch_size, 1)
    epochs = check_integral("epochs", epochs, 1)
    ratio = check_number("batch_growth_ratio", batch_growth_ratio)
    stages = check_integral("batch_stages", batch_stages, 1)
    if ratio < 1:
        raise ValueError(f"batch_growth_ratio must be >= 1, got {ratio!r}")
    if stages > epochs:
        raise ValueError(f"batch_stages must be <= epochs={epochs!r}, got {stages!r}")
    if batch_max is not None:
        batch_max = check_integral("batch_max", batch_max, 1)
        if batch_max < batch_size:
            raise ValueError(f"batch_max must be >= batch_size={batch_size!r}, got {batch_max!r}")
    sizes = [round(batch_size * ratio**k) for k in range(stages)]
    if batch_max is not None:
        sizes = [min(size, batch_max) for size in sizes]
    stage = stage_schedule(epochs=epochs, batch_stages=stages)

    def schedule(epoch: int) -> int:
        return sizes[stage(epoch)]

    return schedule


def stage_schedule(*, epochs: int, batch_stages: int) -> Callable[[int], int]:
    """Stage index ``min(floor(epoch * stages / epochs), stages - 1)`` of a 0-based epoch."""
    epochs = check_integral("epochs", epochs, 1)
    stages = check_integral("batch_stages", batch_stages, 1)

    def stage(epoch: int) -> int:
        epoch = check_integral("epoch", epoch, 0)
        return min(epoch * stages // epochs, stages - 1)

    return stage


def lr_batch_factor(mode: str, batch: int, base_batch: int) -> float:
    """Learning-rate multiplier for a batch grown from ``base_batch`` to ``batch``.

    ``none`` → 1, ``linear`` → ``batch / base_batch`` (Goyal et al. 2017,
    arXiv 1706.02677), ``sqrt`` → ``sqrt(batch / base_batch)`` (Krizhevsky
    2014, arXiv 1404.5997).
    """
    mode = check_choice("lr_batch_scaling", mode, LR_BATCH_SCALINGS)
    ratio = check_integral("batch", batch, 1) / check_integral("base_batch", base_batch, 1)
    if mode == "linear":
        return ratio
    if mode == "sqrt":
        return math.sqrt(ratio)
    return 1.0


# ---------------------------------------------------------------------------
# rho


def rho_schedule(
    kind: str,
    *,
    rho: float,
    rho_min: float = 0.0,
    lr_max: float,
    lr_min: float,
    epochs: float,
) -> Callable[[float, float], float]:
    """SAM radius ρ as a function of ``(e, lr)``: elapsed epochs and the current
    (unscaled) learning rate.

    - ``constant``: ``rho`` (Harada & Iiduka and Khanh et al. in every run).
    - ``lr_proportional`` (GSAM ``ProportionScheduler``; Zhuang et al.,
      Algorithm 1): ``rho_min + (rho - rho_min) (lr - lr_min) / (lr_max - lr_min)``,
      and ``rho`` when ``lr_max == lr_min``.  Unlike the GSAM code the result is
      clipped to ``[rho_min, rho]``, so a warmup that starts below ``lr_min``
      never gives a radius below ``rho_min`` (or a negative one).
    - ``diminishing``: ``rho_min + (rho - rho_min) / (floor(e) + 1)``, constant
      within an epoch (the ρ_k = C/k^p family of Khanh et al. with p = 1,
      floored at ``rho_min``).  ``e > epochs`` is treated as ``e = epochs``.
    """
    kind = check_choice("rho_schedule", kind, RHO_SCHEDULES)
    rho = check_number("rho", rho)
    rho_min = check_number("rho_min", rho_min)
    lr_max = check_number("lr_max", lr_max)
    lr_min = check_number("lr_min", lr_min)
    epochs = check_number("epochs", epochs)
    if rho < 0:
        raise ValueError(f"rho must be >= 0, got {rho!r}")
    if not 0 <= rho_min <= rho:
        raise ValueError(f"rho_min must be in [0, rho={rho!r}], got {rho_min!r}")
    if not 0 <= lr_min <= lr_max:
        raise ValueError(f"lr_min must be in [0, lr_max={lr_max!r}], got {lr_min!r}")
    if epochs <= 0:
        raise ValueError(f"epochs must be > 0, got {epochs!r}")

    if kind == "constant":
        return lambda e, lr: rho
    if kind == "diminishing":
        return lambda e, lr: rho_min + (rho - rho_min) / (math.floor(min(_progress(e), epochs)) + 1)
    if lr_max == lr_min:
        return lambda e, lr: rho
    span = lr_max - lr_min

    def proportional(e: float, lr: float) -> float:
        value = rho_min + (rho - rho_min) * (lr - lr_min) / span
        return min(max(value, rho_min), rho)

    return proportional


# ---------------------------------------------------------------------------
# one trial


class ScheduleParams(BaseModel):
    """The schedule-related trial parameters, under the names used in YAML and MLflow.
    Their defaults are the trial defaults: :class:`samtune.config.HyperParams`
    inherits these fields rather than declaring them again."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    lr: float = Field(0.05, gt=0.0, description="peak learning rate")
    lr_shape: Literal[schema.LR_SHAPES] = Field("constant", description=(
        "`constant`, `cosine`, `linear`, `polynomial` (`(1−t)^lr_power`), `exponential`, `step` (×0.2 at "
        "30/60/80 %), `diminishing` (`lr/(k+1)^lr_power` in epoch k: Khanh et al.'s Diminish 1 with power 1), "
        "`diminishing_from1` (`lr/max(k,1)^lr_power`: Diminish 2 with power 0.5001), `diminishing_klogk` "
        "(`lr/(j ln j)`, j = 3 + ⌊(k−1)/5⌋, `lr` in epoch 0: Diminish 3)"))
    lr_final: float = Field(0.0, ge=0.0, description="end value of the lr shape, and where warmup starts")
    lr_power: float = Field(1.0, gt=0.0, description="shape power (`polynomial`, `diminishing`, `diminishing_from1`)")
    warmup_epochs: float = Field(0.0, ge=0.0, description="linear warmup from `lr_final` to `lr` over these epochs")
    epochs: int = Field(12, ge=1, description=(
        "training epochs; with a criterion or a budget, the most a trial may take"))
    batch_size: int = Field(16, ge=1, description="initial batch size")
    batch_growth_ratio: float = Field(2.0, ge=1.0, description=(
        "the epochs are split into `batch_stages` equal stages, the batch multiplied by this ratio per stage"))
    batch_stages: int = Field(4, ge=1, description="number of equal stages of the growing batch")
    batch_max: int | None = Field(None, ge=1, description="cap of the growing batch (none: no cap)")
    lr_batch_scaling: Literal[schema.LR_BATCH_SCALINGS] = Field("none", description=(
        "`none`, `linear`, `sqrt`: scale lr with batch / initial batch"))
    rho: float = Field(0.05, ge=0.0, description="SAM's perturbation radius ρ (the largest, under a ρ schedule)")
    rho_min: float = Field(0.0, ge=0.0, description="the smallest ρ of `lr_proportional` and `diminishing`")
    rho_schedule: Literal[schema.RHO_SCHEDULES] = Field("constant", description=(
        "`constant`, `lr_proportional` (GSAM: ρ follows lr between `rho` and `rho_min`), `diminishing` "
        "(`rho_min + (rho − rho_min)/(k+1)` in epoch k)"))


SCHEDULE_KEYS = tuple(ScheduleParams.model_fields)


@dataclasses.dataclass(frozen=True)
class TrialSchedule:
    """The learning rate, batch size and ρ of one trial at any point of training.

    Build it with :meth:`from_params` (trial parameter names as keywords) or
    :meth:`from_config` (any object or mapping carrying those names); the
    constructor validates every combination (the factories above raise).

    ``lr(e, batch)`` is the shape of :func:`lr_schedule` times
    :func:`lr_batch_factor` relative to the initial ``batch_size``; ``rho(e)``
    uses the unscaled lr, with ``lr_max = lr`` and ``lr_min`` = the unscaled lr
    at ``e = epochs`` (equal to ``lr`` for a constant shape, which makes a
    proportional ρ constant, as in Harada's "fix" runs).
    """

    params: ScheduleParams
    _lr_fn: Callable[[float], float] = dataclasses.field(init=False, repr=False, compare=False)
    _batch_fn: Callable[[int], int] = dataclasses.field(init=False, repr=False, compare=False)
    _stage_fn: Callable[[int], int] = dataclasses.field(init=False, repr=False, compare=False)
    _rho_fn: Callable[[float, float], float] = dataclasses.field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        p = self.params
        lr_fn = lr_schedule(
            p.lr_shape,
            lr=p.lr,
            epochs=p.epochs,
            lr_final=p.lr_final,
            lr_power=p.lr_power,
            warmup_epochs=p.warmup_epochs,
        )
        batch_fn = batch_size_schedule(
            batch_size=p.batch_size,
            epochs=p.epochs,
            batch_growth_ratio=p.batch_growth_ratio,
            batch_stages=p.batch_stages,
            batch_max=p.batch_max,
        )
        check_choice("lr_batch_scaling", p.lr_batch_scaling, LR_BATCH_SCALINGS)
        rho_fn = rho_schedule(
            p.rho_schedule,
            rho=p.rho,
            rho_min=p.rho_min,
            lr_max=p.lr,
            lr_min=lr_fn(p.epochs),
            epochs=p.epochs,
        )
        object.__setattr__(self, "_lr_fn", lr_fn)
        object.__setattr__(self, "_batch_fn", batch_fn)
        object.__setattr__(self, "_stage_fn", stage_schedule(epochs=p.epochs, batch_stages=p.batch_stages))
        object.__setattr__(self, "_rho_fn", rho_fn)

    @classmethod
    def from_params(cls, **params: Any) -> TrialSchedule:
        """From trial parameters by name; unknown names are refused, and absent or
        ``None`` ones take the trial defaults (``batch_max`` None: no cap)."""
        unknown = sorted(set(params) - set(SCHEDULE_KEYS))
        if unknown:
            raise ValueError(
                f"unknown schedule parameter(s) {', '.join(unknown)}; allowed: {', '.join(SCHEDULE_KEYS)}"
            )
        return cls(ScheduleParams(**{key: value for key, value in params.items() if value is not None}))

    @classmethod
    def from_config(cls, cfg: Any) -> TrialSchedule:
        """From any object with the trial parameter names as attributes (e.g. a
        pydantic model) or a mapping; other attributes are ignored and absent
        or ``None`` ones take their defaults."""
        get = cfg.get if isinstance(cfg, Mapping) else lambda key: getattr(cfg, key, None)
        return cls.from_params(**{key: get(key) for key in SCHEDULE_KEYS})

    def stage(self, epoch: int) -> int:
        """Batch stage (0-based) of a 0-based epoch index."""
        return self._stage_fn(epoch)

    def batch_size(self, epoch: int) -> int:
        """Training batch size of a 0-based epoch index."""
        return self._batch_fn(epoch)

    def base_lr(self, e: float) -> float:
        """Learning rate of the shape at elapsed epochs ``e``, before batch scaling."""
        return self._lr_fn(e)

    def lr(self, e: float, batch: int) -> float:
        """Learning rate at elapsed epochs ``e`` for a step with batch size ``batch``."""
        return self._lr_fn(e) * lr_batch_factor(self.params.lr_batch_scaling, batch, self.params.batch_size)

    def rho(self, e: float) -> float:
        """Perturbation radius at elapsed epochs ``e``."""
        return self._rho_fn(e, self._lr_fn(e))

    def steps_in_epoch(self, epoch: int, n_train: int) -> int:
        """Optimizer steps of a 0-based epoch over ``n_train`` examples (the training
        loader drops the last partial batch, as Harada's code does)."""
        return n_train // self.batch_size(epoch)

    def capacity(self, n_train: int, unit: str, timing: SamTiming | None = None,
                 budget: int | None = None) -> int:
        """The most a trial of ``params.epochs`` epochs can spend, in budget ``unit``.

        ``timing`` is a SAM-family trial's step pattern (None: a one-pass optimizer).
        In gradient evaluations under a partial timing the cost of a step depends on
        the trial's progress, and with a budget progress is the budget's fraction
        spent: pass ``budget`` to get what a trial with it spends (at most ``budget``;
        less when ``epochs`` cannot hold it)."""
        steps = [self.steps_in_epoch(epoch, n_train) for epoch in range(self.params.epochs)]
        if unit == "samples":
            return sum(s * self.batch_size(epoch) for epoch, s in enumerate(steps))
        if unit == "steps" or timing is None:
            return sum(steps)
        if timing.always:
            return 2 * sum(steps)
        if budget is None:
            return _evaluations(steps, timing)
        spent = _budget_evaluations(timing, budget)
        return spent[min(sum(steps), len(spent)) - 1] if sum(steps) else 0


def training_progress(epochs: int, epoch: int, i: int, steps_per_epoch: int,
                      spent: int = 0, budget: int | None = None) -> float:
    """The fraction of training done before step ``i`` of 0-based ``epoch``: of the
    epochs, or with a budget the fraction of it ``spent`` (whatever ``epochs``)."""
    if budget is None:
        return (epoch + i / steps_per_epoch) / epochs
    return spent / budget


@dataclasses.dataclass(frozen=True)
class SamTiming:
    """Which steps of a SAM-family trial take the two-pass update (trial keys
    ``sam_start``, ``sam_every``); the others are base-optimizer steps on the plain
    gradient (one forward-backward).

    From the fraction ``start`` of training progress on (late SAM, Zhou et al., ICLR
    2025), counting the steps taken since then: steps 0, ``every``, 2 ``every``, ...
    (intermittent SAM as in LookSAM, Liu et al., CVPR 2022, but without LookSAM's
    reuse of the last SAM gradient's orthogonal component on the steps between).
    A step that would overrun a gradient-evaluation budget by one is plain, so the
    budget is spent exactly."""

    start: float = 0.0
    every: int = 1

    @property
    def always(self) -> bool:
        return self.start == 0 and self.every == 1

    def begun(self, progress: float) -> bool:
        """Whether a step at ``progress`` (:func:`training_progress`) counts as after ``start``."""
        return progress >= self.start

    def two_pass_at(self, steps_since_start: int, progress: float, evals_left: int | None = None) -> bool:
        return (self.begun(progress) and steps_since_start % self.every == 0
                and (evals_left is None or evals_left >= 2))


def _evaluations(steps: list[int], timing: SamTiming) -> int:
    """Gradient evaluations of an unbudgeted trial's steps (``steps`` per epoch)."""
    evals, since = 0, 0
    for epoch, n in enumerate(steps):
        for i in range(n):
            progress = training_progress(len(steps), epoch, i, n)
            evals += 1 + timing.two_pass_at(since, progress)
            since += timing.begun(progress)
    return evals


@functools.lru_cache(maxsize=16)
def _budget_evaluations(timing: SamTiming, budget: int) -> tuple[int, ...]:
    """Gradient evaluations after each step of a trial with a budget of them, until it
    is spent: its progress is the fraction spent, so the pattern holds for any epochs."""
    spent, evals, since = [], 0, 0
    while evals < budget:
        progress = training_progress(1, 0, 0, 1, evals, budget)
        evals += 1 + timing.two_pass_at(since, progress, budget - evals)
        since += timing.begun(progress)
        spent.append(evals)
    return tuple(spent)
