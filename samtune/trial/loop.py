"""One trial: the training loop.

``train(config, sink, data=...)`` sets batch size, learning rate and ρ from the
schedules, trains, evaluates and hands one record per epoch to ``sink``.  The
last record carries the trial's final result (final metrics and sharpness), so
a sink that never regains control after its last report (a Ray Tune function
trainable) can still close its MLflow run first.

The trial's data (:class:`~samtune.data.trial_data.TrialData`) is opened by
whoever runs the trial (:func:`open_data`) and handed in; its training loader
yields this worker's share of every global batch, whether the set is held in
memory or streamed, and an epoch is ``epoch_passes`` passes over the training set.  With ``cutmix_prob`` or
``mixup_prob`` a batch may be mixed; its soft labels enter the loss of both
passes of a SAM step, while the training error counts against the hard labels.

A checkpoint is a plain dict of tensors and numbers (readable with
``torch.load(weights_only=True)``): model, optimizer, loader, mixer and RNG state
and the loop position, so that a resumed trial is identical to an uninterrupted one.
"""

from __future__ import annotations

import contextlib
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

import torch
import torch.nn.functional as F

from samtune import schema, sharpness
from samtune.config import TrialConfig
from samtune.data.loaders import fixed_batches
from samtune.data.trial_data import EvalSplit, Recipe, TrialData, open_trial_data, whole_split
from samtune.models import create_model
from samtune.optim import create_optimizer, frozen_bn_stats, is_two_pass, set_rho
from samtune.optim.distributed import average_directions
from samtune.optim.sync_bn import synchronize_batchnorm
from samtune.schedules import TrialSchedule, training_progress
from samtune.trial import probes
from samtune.trial.replica import SINGLE, Replica

# 3: the batch mixer's generator state ("mixer"); 4: every worker's RNG state; 5: steps since sam_start;
# 6: every worker's mixer state
CHECKPOINT_VERSION = 6


@dataclass
class TrialResult:
    status: str  # schema.COMPLETED | schema.DIVERGED
    final: dict[str, float] = field(default_factory=dict)
    history: list[dict[str, float]] = field(default_factory=list)
    error: str | None = None
    # each measure's definition (``sharpness.<name>.<setting>``): what its value means
    measure_params: dict[str, str] = field(default_factory=dict)


class Sink(Protocol):
    def on_epoch(self, record: dict[str, float], checkpoint: Callable[[], dict],
                 final: TrialResult | None) -> None: ...


class NullSink:
    def on_epoch(self, record, checkpoint, final) -> None:
        pass


@dataclass
class LoopState:
    epoch: int = 0  # epochs completed (the last one may be partial when a budget ran out)
    steps: int = 0
    samples_seen: int = 0
    gradient_evaluations: int = 0
    history: list[dict[str, float]] = field(default_factory=list)
    sam_steps: int = 0  # steps taken since sam_start: sam_every counts from the first

    def spent(self, unit: str) -> int:
        return {"steps": self.steps, "samples": self.samples_seen,
                "gradient_evaluations": self.gradient_evaluations}[unit]


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise RuntimeError(f"device = {name!r} but CUDA is not available on this machine")
    return torch.device(name)


def open_data(config: TrialConfig) -> TrialData:
    """The data a trial with ``config`` trains on, on the device it runs on."""
    device = resolve_device(config.device)
    return open_trial_data(config.dataset, device=device, root=config.data_dir, download=config.download,
                           streaming=config.streaming, image_size=config.image_size,
                           normalization=config.normalization)


def recipe(config: TrialConfig) -> Recipe:
    """How the trial's training batches are made (crop and flip, per-image policies, passes)."""
    return Recipe(augment=config.augment, autoaugment=config.autoaugment,
                  autoaugment_policy=config.autoaugment_policy, erasing=config.random_erasing,
                  erasing_max_area=config.random_erasing_max_area, erasing_aspect=config.random_erasing_aspect,
                  cutout_prob=config.cutout_prob, cutout_size=config.cutout_size, normalization=config.normalization,
                  pipeline=config.pipeline, passes=config.epoch_passes, workers=config.loader_workers,
                  cutmix_prob=config.cutmix_prob, cutmix_alpha=config.cutmix_alpha, mixup_prob=config.mixup_prob,
                  mixup_alpha=config.mixup_alpha)


def loss_function(config: TrialConfig) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
    smoothing = config.label_smoothing

    def loss_fn(outputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        return F.cross_entropy(outputs.float(), targets, label_smoothing=smoothing)

    return loss_fn


def plain_cross_entropy(outputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    return F.cross_entropy(outputs.float(), targets)


class Trial:
    """Model, optimizer, data and schedules of one trial, built from its config and its
    data (opened from the config when not given)."""

    def __init__(self, config: TrialConfig, data: TrialData | None = None, replica: Replica = SINGLE,
                 sync_batchnorm: bool = False):
        self.config, self.replica, self.sync_batchnorm = config, replica, sync_batchnorm
        self.device = resolve_device(config.device)
        if config.num_threads:
            torch.set_num_threads(config.num_threads)
        self.data = open_data(config) if data is None else data
        self.model, self.init_params = build_model(config, self.data.image_shape(), self.device)
        self.optimizer = create_optimizer(
            self.model.parameters(), optimizer=config.optimizer,
            base_optimizer=config.base_optimizer, lr=config.lr, momentum=config.momentum,
            weight_decay=config.weight_decay, rho=config.rho, alpha=config.alpha,
            adaptive=config.adaptive, eta=config.eta)
        self.two_pass = is_two_pass(self.optimizer)
        self.forward_model = self._data_parallel()
        self.schedule = TrialSchedule.from_config(config)
        self.recipe = recipe(config)
        self.loader = self._train_loader()
        self.mixer = self.recipe.batch_mixer(self.data.num_classes, seed=config.seed + replica.rank)
        self.loss_fn = loss_function(config)
        self.state = LoopState()

    def _data_parallel(self) -> torch.nn.Module:
        """The module training runs through: the model itself, or on several workers its
        DistributedDataParallel wrapper with SAM's directions averaged (each worker
        perturbs with its own gradient; samtune.optim.distributed)."""
        if not self.replica.distributed:
            return self.model
        from torch.nn.parallel import DistributedDataParallel

        if self.two_pass:
            average_directions(self.optimizer)
        if self.sync_batchnorm:
            self.model = synchronize_batchnorm(self.model)
        # dropout, drop_path and mixing draws differ per worker, as on separate machines
        torch.manual_seed(self.config.seed * 1_000_003 + self.replica.rank)
        ids = [self.device.index] if self.device.type == "cuda" else None
        return DistributedDataParallel(self.model, device_ids=ids)

    def _train_loader(self):
        return self.data.train_loader(self.recipe, batch_size=self.schedule.batch_size(0),
                                      seed=self.config.seed, rank=self.replica.rank, world=self.replica.world,
                                      device=self.device)

    # -- checkpoints ---------------------------------------------------------
    def checkpoint(self) -> dict[str, Any]:
        state = {
            "version": CHECKPOINT_VERSION,
            "config": self.config.model_dump(mode="json"),
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "loader": self.loader.state_dict(),
            "mixer": self.replica.gather({} if self.mixer is None else self.mixer.state_dict()),
            "torch_rng": self.replica.gather(torch.get_rng_state()),
            "epoch": self.state.epoch,
            "steps": self.state.steps,
            "samples_seen": self.state.samples_seen,
            "gradient_evaluations": self.state.gradient_evaluations,
            "history": list(self.state.history),
            "sam_steps": self.state.sam_steps,
        }
        if self.device.type == "cuda":
            state["cuda_rng"] = self.replica.gather(torch.cuda.get_rng_state(self.device))
        return state

    def restore(self, state: dict[str, Any], regroup: bool = False) -> None:
        """Continue from ``state``.  On as many workers as took it, exactly; with ``regroup``
        also on another count (a trial whose workers grow with the batch, at a stage
        boundary): then only the workers' own random streams start afresh."""
        if state.get("version") != CHECKPOINT_VERSION:
            raise ValueError(f"checkpoint version {state.get('version')!r} is not {CHECKPOINT_VERSION}")
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self._apply_group_values()
        self.loader.load_state_dict(state["loader"])
        self.state = LoopState(state["epoch"], state["steps"], state["samples_seen"],
                               state["gradient_evaluations"], list(state["history"]), state["sam_steps"])
        taken_on = len(state["torch_rng"])
        if taken_on == self.replica.world:
            self._restore_random_streams(state)
        elif regroup:
            self._seed_random_streams(self.state.epoch)
        else:
            raise ValueError(f"the checkpoint was taken on {taken_on} worker(s); a trial resumes exactly only on "
                             f"as many, not on {self.replica.world} (a trial whose workers grow with the batch "
                             f"changes their count at its stage boundaries)")

    def _restore_random_streams(self, state: dict[str, Any]) -> None:
        rank = self.replica.rank
        if self.mixer is not None:
            self.mixer.load_state_dict(state["mixer"][rank])
        torch.set_rng_state(state["torch_rng"][rank])
        if "cuda_rng" in state and self.device.type == "cuda":
            torch.cuda.set_rng_state(state["cuda_rng"][rank], self.device)

    def _seed_random_streams(self, epoch: int) -> None:
        """Each worker's dropout and mixing draws from ``epoch`` on, on a new worker count:
        a function of (seed, epoch, rank) only, so a regrouped trial resumes the same way
        however often it is interrupted.  The data order and augmentation are drawn by the
        loader, whole, on every worker, and do not change."""
        seed = (self.config.seed * 1_000_003 + epoch) * 1_009 + self.replica.rank
        torch.manual_seed(seed)
        self.mixer = self.recipe.batch_mixer(self.data.num_classes, seed=seed)

    def _apply_group_values(self) -> None:
        """This config's optimizer values over those a loaded state brought: population-based
        training restores a donor's checkpoint into a trial with perturbed values (lr and ρ
        are set before every step anyway)."""
        values = {"alpha": self.config.alpha, "weight_decay": self.config.weight_decay,
                  "momentum": self.config.momentum}
        for group in self.optimizer.param_groups:
            group.update({key: value for key, value in values.items() if key in group})

    # -- the loop ------------------------------------------------------------
    def autocast(self):
        if self.config.precision == "bf16":
            return torch.autocast(device_type=self.device.type, dtype=torch.bfloat16)
        return contextlib.nullcontext()

    def train_step(self, x: torch.Tensor, y: torch.Tensor, targets: torch.Tensor | None = None,
                   two_pass: bool | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """One update on batch x; the loss is taken against ``targets`` (soft labels of a
        mixed batch; default y) in both passes, the error count against y.  ``two_pass``
        False makes a SAM-family trial take a plain step (default: the optimizer's kind)."""
        targets = y if targets is None else targets
        if not (self.two_pass if two_pass is None else two_pass):
            return self.plain_step(x, y, targets)
        # a SAM step's two passes stay local to each worker: only the final
        # direction is averaged (in second_step)
        with self._no_sync():
            with self.autocast():
                outputs = self.forward_model(x)
                loss = self.loss_fn(outputs, targets)
            loss.backward()
            self.optimizer.first_step(zero_grad=True)
            with frozen_bn_stats(self.model), self.autocast():
                self.loss_fn(self.forward_model(x), targets).backward()
        self.optimizer.second_step(zero_grad=True)
        return loss.detach(), (outputs.detach().argmax(1) != y).sum()

    def plain_step(self, x: torch.Tensor, y: torch.Tensor,
                   targets: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """One forward-backward and a base-optimizer step on the plain gradient, which
        DDP averages in backward.  A SAM wrapper's base optimizer shares its param
        groups (lr, momentum buffers), and no first_step leaves it mid-update."""
        with self.autocast():
            outputs = self.forward_model(x)
            loss = self.loss_fn(outputs, targets)
        loss.backward()
        getattr(self.optimizer, "base_optimizer", self.optimizer).step()
        self.optimizer.zero_grad(set_to_none=True)
        return loss.detach(), (outputs.detach().argmax(1) != y).sum()

    def two_pass_now(self, epoch: int, i: int, steps_per_epoch: int) -> bool:
        """Whether step i of the epoch takes the two-pass update (the trial's
        ``sam_timing``); counts it among the steps since sam_start."""
        timing, config = self.config.sam_timing, self.config
        if timing is None:
            return False
        spent = 0 if config.budget is None else self.state.spent(config.budget_unit)
        progress = training_progress(config.epochs, epoch, i, steps_per_epoch, spent, config.budget)
        evals_left = self.budget_left() if self.config.budget_unit == "gradient_evaluations" else None
        two_pass = timing.two_pass_at(self.state.sam_steps, progress, evals_left)
        self.state.sam_steps += timing.begun(progress)
        return two_pass

    def _no_sync(self):
        return self.forward_model.no_sync() if self.replica.distributed else contextlib.nullcontext()

    # -- when training ends ----------------------------------------------------
    def budget_left(self) -> int | None:
        if self.config.budget is None:
            return None
        return self.config.budget - self.state.spent(self.config.budget_unit)

    def elapsed(self, epoch: int, i: int, steps_per_epoch: int) -> float:
        """Training progress in epochs, as the schedules read it: with a budget, the
        fraction of the budget spent, stretched over ``epochs``."""
        if self.config.budget is None:
            return epoch + i / steps_per_epoch
        return self.config.epochs * self.state.spent(self.config.budget_unit) / self.config.budget

    def criterion_record(self) -> dict[str, float] | None:
        """The first epoch's record that met the training criterion, if any."""
        bounds = self.config.criterion
        if not bounds:
            return None
        return next((r for r in self.state.history if all(r[k] <= v for k, v in bounds.items())), None)

    def done(self) -> bool:
        return (self.state.epoch >= self.config.epochs or self.budget_left() == 0
                or self.criterion_record() is not None)

    # -- one epoch -------------------------------------------------------------
    def run_epoch(self, epoch: int) -> dict[str, float]:
        batch = self.schedule.batch_size(epoch)
        self.loader.batch_size = batch
        steps_per_epoch = len(self.loader)
        first_lr = self.schedule.lr(self.elapsed(epoch, 0, steps_per_epoch), batch)
        first_rho = self.schedule.rho(self.elapsed(epoch, 0, steps_per_epoch))
        self.model.train()
        loss_sum = torch.zeros((), device=self.device)
        wrong = torch.zeros((), device=self.device, dtype=torch.long)
        seen = 0
        started = time.perf_counter()
        for i, (x, y) in enumerate(self.loader):
            left = self.budget_left()
            if left == 0:
                break
            if self.config.budget_unit == "samples" and left is not None and left < len(y):
                x, y = x[:left], y[:left]  # the budget ends inside this batch (single-worker trials only)
            global_batch = len(y) * self.replica.world
            progress = self.elapsed(epoch, i, steps_per_epoch)
            for group in self.optimizer.param_groups:
                group["lr"] = self.schedule.lr(progress, batch)
            set_rho(self.optimizer, self.schedule.rho(progress))
            x, targets = (x, y) if self.mixer is None else self.mixer(x, y)
            two_pass = self.two_pass_now(epoch, i, steps_per_epoch)
            loss, errors = self.train_step(x, y, targets, two_pass)
            loss_sum += loss * y.numel()
            wrong += errors
            seen += y.numel()
            self.state.steps += 1
            self.state.samples_seen += global_batch
            self.state.gradient_evaluations += 2 if two_pass else 1
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        seconds = time.perf_counter() - started
        loss_total, wrong_total, seen = self.replica.sum([loss_sum.item(), float(wrong.item()), float(seen)])
        return {"running_loss": loss_total / max(seen, 1), "running_error": wrong_total / max(seen, 1),
                "lr": first_lr, "rho": first_rho, "batch_size": batch,
                "epoch_seconds": seconds, "samples_per_second": seen / max(seconds, 1e-9)}

    @torch.no_grad()
    def evaluate(self, split: EvalSplit) -> tuple[float, float]:
        """Mean plain cross-entropy and error over a split, in eval mode (summed over
        the workers when each holds a shard of it)."""
        was_training = self.model.training
        self.model.eval()
        loss_sum = torch.zeros((), device=self.device)
        wrong = torch.zeros((), device=self.device, dtype=torch.long)
        count = 0
        for xb, yb in split.batches:
            with self.autocast():
                outputs = self.model(xb)
            loss_sum += F.cross_entropy(outputs.float(), yb, reduction="sum")
            wrong += (outputs.argmax(1) != yb).sum()
            count += len(yb)
        self.model.train(was_training)
        totals = [loss_sum.item(), float(wrong.item()), float(count)]
        loss_total, wrong_total, count = self.replica.sum(totals) if split.sharded else totals
        return loss_total / count, wrong_total / count

    def epoch_record(self, epoch: int, stats: dict[str, float]) -> dict[str, float]:
        self.replica.align_buffers(self.model)  # every worker evaluates (and saves) rank 0's model
        batch = self.config.eval_batch_size
        test_loss, test_error = self.evaluate(self.data.test_split(
            batch_size=batch, rank=self.replica.rank, world=self.replica.world, device=self.device,
            workers=self.config.loader_workers))
        n = self.config.train_eval_examples
        if n:
            train_loss, train_error = self.evaluate(whole_split(*self.data.first_examples(n), batch))
        else:
            train_loss, train_error = stats["running_loss"], stats["running_error"]
        return {
            "epoch": epoch + 1, "train_loss": train_loss, "train_error": train_error,
            "test_loss": test_loss, "test_error": test_error, "gen_gap": test_error - train_error,
            "lr": stats["lr"], "batch_size": stats["batch_size"], "rho": stats["rho"],
            "steps": self.state.steps, "samples_seen": self.state.samples_seen,
            "gradient_evaluations": self.state.gradient_evaluations,
            "epoch_seconds": stats["epoch_seconds"], "samples_per_second": stats["samples_per_second"],
            "workers": self.replica.world,
        } | (self.probe(epoch, int(stats["batch_size"])) if self.config.probes else {})

    def probe(self, epoch: int, batch: int) -> dict[str, float]:
        """The theory probes (samtune.trial.probes) of the weights after ``epoch``: the trial's
        direction at the ρ the schedule gives there, mini-batches of the epoch's (global)
        batch size, drawn the same on every worker."""
        config = self.config
        x, y = self.data.first_examples(config.probe_examples)
        rho = self.schedule.rho(self.elapsed(epoch + 1, 0, 1))
        direction = probes.Direction.of_optimizer(config.optimizer, rho=rho, alpha=config.alpha,
                                                  adaptive=config.adaptive, eta=config.eta)
        batches = probes.draw_batches(len(y), batch, config.probe_batches, seed=config.seed * 1_000_003 + epoch)
        return probes.probe_metrics(self.model, self.loss_fn, x, y, direction, batches, chunk=batch)

    def measure_sharpness(self, names: tuple[str, ...] | None = None) -> tuple[dict[str, float], dict[str, str]]:
        """The configured measures (or ``names``) of the model as it is now, on the
        fixed sharpness examples; returns (values, the measures' definitions)."""
        names = self.config.measures if names is None else names
        if not names or not self.replica.is_main:  # measured once, on rank 0's model
            return {}, {}
        # a set smaller than sharpness_examples is measured whole; the measures'
        # definitions record the number actually used
        x, y = self.data.first_examples(self.config.sharpness_examples)
        batches = fixed_batches(x, y, n_examples=len(y), batch_size=self.config.sharpness_batch)
        values = sharpness.measure_all(self.model, plain_cross_entropy, batches, names=names,
                                       init_params=self.init_params, seed=self.config.seed)
        return values, sharpness.measure_settings(names, batches=batches)

    def finish(self) -> TrialResult:
        """The completed trial's result: final metrics of the last epoch, whether it
        met its training criterion, and sharpness."""
        values, definitions = self.measure_sharpness()
        final = final_metrics(self.state.history[-1]) | self.criterion_metrics() | values
        return TrialResult(schema.COMPLETED, final, self.state.history, measure_params=definitions)

    def criterion_metrics(self) -> dict[str, float]:
        if not self.config.criterion:
            return {}
        record = self.criterion_record()
        if record is None:
            return dict.fromkeys(schema.CRITERION_METRICS, math.nan) | {schema.CRITERION_REACHED: 0.0}
        return {schema.CRITERION_REACHED: 1.0, "criterion_epoch": record["epoch"],
                "criterion_steps": record["steps"], "criterion_samples": record["samples_seen"]}


def build_model(config: TrialConfig, shape: dict[str, int], device: torch.device):
    """The model for images of ``shape`` (classes, channels, size) and a copy of its
    initial parameters (seeded, so re-creating a trial gives the same initialization:
    a checkpoint need not store it; every worker of a data-parallel trial starts alike)."""
    torch.manual_seed(config.seed)
    options = {}
    if config.model in schema.VIT_MODELS:
        options = {"drop_path": config.drop_path, "spt": config.vit_spt, "lsa": config.vit_lsa}
    if config.resnet_stem is not None:  # config allows it on the ResNets only
        options = {"stem": config.resnet_stem}
    model = create_model(config.model, **shape, init=config.init, **options).to(device)
    init_params = [p.detach().clone() for p in model.parameters()]
    return model, init_params


def final_metrics(record: dict[str, float]) -> dict[str, float]:
    return {schema.FINAL_PREFIX + key: record[key] for key in schema.FINAL_OF}


def _is_finite(record: dict[str, float]) -> bool:
    return all(math.isfinite(record[k]) for k in ("train_loss", "test_loss"))


def train(config: TrialConfig, sink: Sink | None = None, resume: dict[str, Any] | None = None,
          replica: Replica = SINGLE, *, data: TrialData | None = None, until_epoch: int | None = None,
          regroup: bool = False, sync_batchnorm: bool = False) -> TrialResult | None:
    """Run one trial (optionally from a checkpoint dict) on ``data`` (default: opened
    here from the config) and return its result; on several workers, this worker's
    part of it (``replica``).

    Training ends after ``epochs`` epochs, when the budget is spent (possibly
    inside an epoch, which is then recorded as the last one), or after the first
    epoch that meets the training criterion.  With ``until_epoch`` this call trains one
    stage of the trial: it returns None once that many epochs are done (and checkpointed),
    unless the trial ended first.  ``regroup`` lets ``resume`` come from another worker
    count; ``sync_batchnorm`` computes BatchNorm's batch statistics over all workers."""
    sink = sink or NullSink()
    trial = Trial(config, data, replica, sync_batchnorm=sync_batchnorm)
    if resume is not None:
        trial.restore(resume, regroup=regroup)
    while not trial.done():
        if until_epoch is not None and trial.state.epoch >= until_epoch:
            return None  # this stage is done; the next continues from its last checkpoint
        epoch = trial.state.epoch
        record = trial.epoch_record(epoch, trial.run_epoch(epoch))
        trial.state.epoch = epoch + 1
        trial.state.history.append(record)
        result = None
        if not _is_finite(record):
            result = TrialResult(schema.DIVERGED, {}, trial.state.history,
                                 f"non-finite loss at epoch {epoch + 1}")
        elif trial.done():
            result = trial.finish()
        sink.on_epoch(record, trial.checkpoint, result)
        if result is not None:
            return result
    # resumed from a checkpoint taken after the last epoch
    result = trial.finish()
    sink.on_epoch(trial.state.history[-1], trial.checkpoint, result)
    return result
