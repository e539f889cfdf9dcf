"""Typed, validated trial configuration.

Every way a trial can be configured (YAML, ``--set key=value``, a Ray Tune
config dict) goes through :func:`make_trial_config`, which rejects unknown keys
and out-of-range values with a :class:`ConfigError` that names the key, the
value and what is allowed.  Nothing is launched before this succeeds.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from samtune import schema
from samtune.checks import ConfigError
from samtune.data import catalogue
from samtune.schedules import SamTiming, ScheduleParams, TrialSchedule

MeasureKey = Literal[tuple(schema.MEASURES)]
__all__ = ["ConfigError", "HyperParams", "RunSettings", "TrialConfig", "load_trial_config", "make_trial_config"]


class HyperParams(ScheduleParams):
    """What defines a trial's experiment: two trials with equal hyperparameters
    give the same result up to floating-point noise, wherever they run.  Field
    names are the public names used in YAML, MLflow params and reports; the
    schedule fields (lr, batch and ρ schedules) come from :class:`ScheduleParams`.
    The defaults are the embedded default trial: GSAM with a growing batch on digits.

    The measurement protocol (``train_eval_examples``, the measures and the
    examples and batch size they are computed on) is part of it: it decides what
    the reported numbers mean."""

    model_config = ConfigDict(extra="forbid", frozen=True, validate_default=True)

    # what is trained
    dataset: str = Field("digits", description=(
        "the data set: `digits` (bundled, offline; 797 training and 1000 held-out test images, so that test "
        "errors of a few percent are tens of mistakes), `cifar10`, `cifar100` (torchvision format under "
        "`data_dir`), `tiny-imagenet`, `imagenet` (streamed, `data_dir/imagenet/{train,val}/<wnid>/`), "
        "`imagefolder:PATH` (`train/<class>/*`, `test/<class>/*` or `val/<class>/*`)"))
    model: Literal[schema.MODELS] = Field("small_cnn", description=(
        "`small_cnn`, `resnet18` (CIFAR stem), `wrn28_10`, `vit_tiny`, `vit_small` (Harada & Iiduka's ViT-T/S: "
        "patch 4, dim 192/384, depth 9/12, 12/6 heads, MLP ratio 2, Xavier init), `resnet50`"))
    init: Literal[schema.INITS] = Field("default", description=(
        "weight init: `default` (the architecture's own: Kaiming fan-out for torchvision's ResNets and the WRN), "
        "`pytorch` (every layer's default init, as in code with no init code: Harada & Iiduka's ResNets), "
        "`kaiming`"))
    resnet_stem: Literal[schema.RESNET_STEMS] | None = Field(None, description=(
        "ResNets only: `cifar` (3×3 stride 1), `cifar_maxpool` (the same and a 3×3 stride-2 max-pool: Khanh et "
        "al.'s ResNet-18), `imagenet`, `auto` (by image size); unset, each model's own (resnet18: cifar; "
        "resnet50: by image size)"))
    drop_path: float = Field(0.0, ge=0.0, lt=1.0, description="ViT models only: stochastic depth rate (the paper: 0.1)")
    vit_spt: bool = Field(False, description="ViT models only: Shifted Patch Tokenization")
    vit_lsa: bool = Field(False, description="ViT models only: Locality Self-Attention")
    seed: int = Field(0, ge=0, description=(
        "the trial's seed: initialization, data order, augmentation and the stochastic measures"))
    # optimizer
    optimizer: Literal[schema.OPTIMIZERS] = Field("gsam", description=(
        "`sgd`, `sam`, `gsam`, `asam` (SAM with adaptive scaling), `usam` (unnormalized SAM)"))
    base_optimizer: Literal[schema.BASE_OPTIMIZERS] = Field("sgd", description=(
        "the optimizer that takes the step: `sgd` (lr, momentum, weight decay) or `adamw` (lr, weight decay; "
        "torch's betas, momentum unused)"))
    momentum: float = Field(0.9, ge=0.0, lt=1.0, description="base optimizer's momentum (sgd)")
    weight_decay: float = Field(5e-4, ge=0.0, description="base optimizer's weight decay")
    alpha: float = Field(0.1, ge=0.0, description="GSAM gap coefficient (0 = SAM)")
    adaptive: bool = Field(False, description="adaptive (ASAM-style) perturbation, scaled by T = |w| + η")
    eta: float = Field(0.0, ge=0.0, description="η of the adaptive perturbation's scaling T = |w| + η")
    # when the two-pass update applies (SAM family only)
    sam_start: float = Field(0.0, ge=0.0, lt=1.0, description=(
        "fraction of training progress (of the epochs, or of the budget spent) from which a SAM-family trial "
        "takes its two-pass update; earlier steps are base-optimizer steps on the plain gradient (late SAM, "
        "Zhou et al., ICLR 2025)"))
    sam_every: int = Field(1, ge=1, description=(
        "after `sam_start`, steps 0, k, 2k, … take the two-pass update and the rest plain steps (intermittent, "
        "in LookSAM's spirit without its gradient reuse); a plain step is one gradient evaluation, a two-pass "
        "step two; a gradient-evaluation budget is spent exactly (a step that would overrun it by one is plain)"))
    # loss and data: the training recipe (Harada's ViT runs: label smoothing 0.1,
    # AutoAugment, RandomErasing 0.25, CutMix or MixUp on half the batches, 3 passes)
    label_smoothing: float = Field(0.0, ge=0.0, lt=1.0, description="label smoothing of the cross-entropy")
    augment: bool = Field(True, description=(
        "the set's default augmentation: random crop (padding image_size // 8) and horizontal flip for "
        "CIFAR-like sets, none for digits"))
    autoaugment: bool = Field(False, description="AutoAugment, CIFAR-10 policy, per image (after crop and flip)")
    autoaugment_policy: Literal[schema.AUTOAUGMENT_POLICIES] = Field("torchvision", description=(
        "whose ops run AutoAugment: `torchvision` (black fill, nearest resampling, rotation either way) or "
        "`deepvoltaire_9d42ce9`: DeepVoltaire's `CIFAR10Policy` as Harada & Iiduka's code copies it (gray fill, "
        "bicubic shear, rotation counter-clockwise only; RGB sets), equal to Pillow's result pixel for pixel"))
    normalization: Literal[schema.NORMALIZATIONS] = Field("dataset", description=(
        "per-channel statistics images are normalized with: the set's own (`dataset`), or `cifar10_kuangliu` "
        "(mean 0.4914/0.4822/0.4465, std 0.2023/0.1994/0.2010, as Khanh et al.'s code; RGB sets held in memory)"))
    augment_pipeline: Literal[schema.PIPELINES] = Field("device", description=(
        "where per-image policies (AutoAugment, RandomErasing, Cutout) run: `device`, batched on the trial's "
        "device (checked against torchvision's ops; no worker processes to starve the GPU), or `workers`, image "
        "by image in DataLoader worker processes"))
    random_erasing: float = Field(0.0, ge=0.0, le=1.0, description=(
        "probability an image gets one box erased to the mean pixel"))
    random_erasing_max_area: float = Field(0.4, gt=0.02, le=1.0, description=(
        "largest erased box, as a fraction of the image (the least is 0.02)"))
    random_erasing_aspect: float = Field(0.3, gt=0.0, le=1.0, description=(
        "erased box aspect ratio in [a, 1/a]"))
    cutout_prob: float = Field(0.0, ge=0.0, le=1.0, description=(
        "probability an image gets Cutout: a `cutout_size` square, its centre on any pixel, clipped at the "
        "border, set to 0 after normalization (Khanh et al.'s `dataloader/cutout.py`)"))
    cutout_size: int = Field(16, ge=1, description="Cutout's square side in pixels")
    cutmix_prob: float = Field(0.0, ge=0.0, le=1.0, description=(
        "probability a batch is CutMix-ed (`cutmix_prob` + `mixup_prob` ≤ 1); the loss is the λ-weighted "
        "cross-entropy of both labels, label smoothing included; both SAM passes see the same mixed batch"))
    cutmix_alpha: float = Field(1.0, gt=0.0, description="CutMix's area ratio λ ~ Beta(α, α)")
    mixup_prob: float = Field(0.0, ge=0.0, le=1.0, description=(
        "probability a batch not CutMix-ed is MixUp-ed instead"))
    mixup_alpha: float = Field(1.0, gt=0.0, description="MixUp's weight λ ~ Beta(α, α)")
    epoch_passes: int = Field(1, ge=1, description=(
        "passes over the training set per epoch, each with its own permutation and augmentation (Harada's ViT "
        "runs: 3, their `RASampler`)"))
    streaming: bool = Field(False, description=(
        "read an `imagefolder:` set from disk every epoch with ImageNet's transforms instead of holding it in "
        "memory; always on for `imagenet`"))
    image_size: int | None = Field(None, ge=8, description="a streamed set's crop size (none: 224, ImageNet's)")
    precision: Literal[schema.PRECISIONS] = Field("fp32", description="`fp32`, or `bf16` autocast")
    # when training ends besides ``epochs`` (then the most epochs a trial may take):
    # a criterion on the training set, checked after each epoch (every bound given
    # must hold), and a budget spent exactly, over which the lr schedule runs
    stop_train_loss: float | None = Field(None, gt=0.0, description=(
        "training criterion, checked after each epoch on the training examples: stop once the train "
        "cross-entropy is at or below it (Jiang et al. 2020 use 0.01); adds the final metrics "
        "`criterion_reached`, `criterion_epoch`, `criterion_steps`, `criterion_samples`"))
    stop_train_error: float | None = Field(None, ge=0.0, lt=1.0, description=(
        "training criterion on the train error, as `stop_train_loss` (both given: both must hold)"))
    budget: int | None = Field(None, ge=1, description=(
        "stop exactly when `budget` `budget_unit`s are spent; the lr and ρ schedules then run over the budget, "
        "not over the epochs; refused if `epochs` cannot hold it"))
    budget_unit: Literal[schema.BUDGET_UNITS] = Field("steps", description=(
        "what `budget` counts: `steps`, `samples` or `gradient_evaluations` (two per SAM-family step)"))
    # measurement protocol
    probes: bool = Field(False, description=(
        "per-epoch probes of Harada & Iiduka's theory on the first `probe_examples` training examples "
        "(unaugmented, eval-mode BatchNorm): `probe_sam_grad_sq` = ‖d‖² of the trial's full-batch update "
        "direction at the epoch's ρ, and `probe_direction_msd` = the mean over `probe_batches` mini-batches of "
        "‖d_B − d‖²; about 1.5 % of a CIFAR epoch at batch 128"))
    probe_examples: int = Field(256, ge=2, description="the fixed probe set: the first training examples")
    probe_batches: int = Field(4, ge=2, description=(
        "mini-batches of the epoch's batch size (drawn with replacement) that estimate the direction's deviation"))
    train_eval_examples: int = Field(10_000, ge=0, description=(
        "train error and loss are measured in eval mode on the first `train_eval_examples` training examples"))
    sharpness: tuple[MeasureKey, ...] | None = Field(None, description=(
        "end-of-trial measures, by name (see the measures reference); none: the default measures"))
    sharpness_examples: int = Field(1024, ge=1, description=(
        "measures run on the first `sharpness_examples` training examples (all of a smaller set)"))
    sharpness_batch: int = Field(128, ge=1, description=(
        "in batches of this size: m of the per-batch (m-sharpness) measures"))

    @field_validator("dataset")
    @classmethod
    def _known_dataset(cls, value: str) -> str:
        _check_choice("dataset", value, tuple(catalogue.CATALOGUE), prefix=catalogue.IMAGEFOLDER_PREFIX)
        return value

    @model_validator(mode="after")
    def _check_combinations(self) -> HyperParams:
        # The schedules validate their own cross-field constraints (lr_final <= lr,
        # rho_min <= rho, stages <= epochs, ...); build them once here so a bad
        # combination is refused before anything runs.
        schedule = TrialSchedule.from_config(self)
        if self.budget is not None:
            _check_budget(self, schedule)
        _check_recipe(self)
        return self

    @property
    def streams(self) -> bool:
        """Whether training reads the data set from disk each epoch (samtune.data.streaming)."""
        return catalogue.is_streamed(self.dataset, self.streaming)

    @property
    def pipeline(self) -> str:
        """Where training batches are made (``schema.PIPELINES``): per-image policies
        (AutoAugment, RandomErasing, Cutout) where ``augment_pipeline`` says, batched on the
        device or image by image in loader workers; crop and flip alone always batched
        on the trial's device."""
        per_image = self.autoaugment or self.random_erasing > 0 or self.cutout_prob > 0
        return self.augment_pipeline if per_image else "device"

    @property
    def evals_per_step(self) -> int:
        """Gradient evaluations per optimizer step: two for the SAM family."""
        return 1 if self.optimizer in schema.ONE_PASS_OPTIMIZERS else 2

    @property
    def sam_timing(self) -> SamTiming | None:
        """Which steps take the two-pass update; None for a one-pass optimizer."""
        if self.optimizer in schema.ONE_PASS_OPTIMIZERS:
            return None
        return SamTiming(self.sam_start, self.sam_every)

    def epoch_examples(self, n_train: int) -> int:
        """Examples an epoch draws from a training set of ``n_train``: ``epoch_passes``
        fresh passes over it (Harada's ViT runs: three)."""
        return n_train * self.epoch_passes

    @property
    def criterion(self) -> dict[str, float]:
        """The training criterion as {quantity: bound}; empty when none is set."""
        bounds = {"train_loss": self.stop_train_loss, "train_error": self.stop_train_error}
        return {key: value for key, value in bounds.items() if value is not None}

    def digest(self) -> str:
        """A stable 16-hex-digit digest of the hyperparameters (key order and run
        settings do not enter it), logged on every trial run."""
        canonical = json.dumps(self.model_dump(mode="json"), sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(canonical.encode()).hexdigest()[:16]

    @property
    def measures(self) -> tuple[str, ...]:
        """The measures this trial reports (None in the config means the defaults)."""
        return schema.DEFAULT_MEASURES if self.sharpness is None else self.sharpness


class RunSettings(BaseModel):
    """Where and how a trial runs; none of it changes results beyond floating-point noise."""

    model_config = ConfigDict(extra="forbid", frozen=True, validate_default=True)

    data_dir: str | None = Field(None, description="where data sets live (none: `$SAMTUNE_DATA`, else `./data`)")
    download: bool = Field(False, description="`true` lets torchvision fetch CIFAR")
    device: str = Field("auto", description="`auto` (a GPU when there is one), `cpu`, `cuda` or `cuda:N`")
    num_threads: int = Field(0, ge=0, description="torch's CPU threads (0: all)")
    eval_batch_size: int = Field(512, ge=1, description="batch size of evaluation")
    loader_workers: int = Field(0, ge=0, description=(
        "loader processes (0: the trial's own process): for a set held in memory, they run the per-image "
        "policies (`autoaugment`, `random_erasing`, `cutout_prob`) and only under `augment_pipeline: workers`; "
        "for a streamed set (`imagenet`, `imagefolder:` with `streaming: true`) they read and decode the "
        "images of both splits, per data-parallel worker.  Each image is seeded by its position in the epoch, "
        "so their number never changes results; a search needs `resources.cpu` ≥ `loader_workers` + 1"))

    @field_validator("device")
    @classmethod
    def _known_device(cls, value: str) -> str:
        if not (value in ("auto", "cpu") or value.startswith("cuda")):
            raise ValueError("allowed are auto, cpu, cuda, cuda:N")
        return value


def _check_recipe(hparams: HyperParams) -> None:
    """Options of one model family or of two exclusive draws must make sense together."""
    if hparams.model not in schema.VIT_MODELS:
        for key in ("drop_path", "vit_spt", "vit_lsa"):
            if getattr(hparams, key) != HyperParams.model_fields[key].default:
                raise ValueError(f"{key} = {getattr(hparams, key)!r} applies to the ViT models only "
                                 f"({', '.join(schema.VIT_MODELS)}); model = {hparams.model!r}")
    if hparams.streaming and hparams.dataset in catalogue.IN_MEMORY:
        raise ValueError(f"streaming = true reads image folders (imagenet, {catalogue.IMAGEFOLDER_PREFIX}<path>); "
                         f"dataset = {hparams.dataset!r} is held in memory")
    if hparams.image_size is not None and not hparams.streams:
        raise ValueError(f"image_size = {hparams.image_size} sets the crop of a streamed data set; "
                         f"dataset = {hparams.dataset!r} is held in memory at its own size")
    if hparams.streams and (hparams.autoaugment or hparams.random_erasing > 0 or hparams.cutout_prob > 0):
        raise ValueError("autoaugment, random_erasing and cutout_prob run on in-memory data sets; a streaming data "
                         "set gets ImageNet's transforms (random resized crop and flip)")
    _check_reproduction_options(hparams)
    if hparams.optimizer in schema.ONE_PASS_OPTIMIZERS and (hparams.sam_start or hparams.sam_every != 1):
        raise ValueError(f"sam_start and sam_every choose when a SAM-family step takes its two passes; "
                         f"optimizer = {hparams.optimizer!r} always takes one")
    if hparams.cutmix_prob + hparams.mixup_prob > 1:
        raise ValueError(f"cutmix_prob + mixup_prob = {hparams.cutmix_prob} + {hparams.mixup_prob} "
                         "must be <= 1: a batch is CutMix-ed, MixUp-ed or neither")


def _check_reproduction_options(hparams: HyperParams) -> None:
    """A ResNet stem needs a ResNet; named statistics and Pillow's AutoAugment need RGB
    images held in memory (digits has one channel; a streamed set has its own transforms)."""
    if hparams.resnet_stem is not None and hparams.model not in schema.RESNET_MODELS:
        raise ValueError(f"resnet_stem = {hparams.resnet_stem!r} applies to the ResNets only "
                         f"({', '.join(schema.RESNET_MODELS)}); model = {hparams.model!r}")
    rgb_in_memory = not hparams.streams and hparams.dataset != "digits"
    if hparams.normalization != "dataset" and not rgb_in_memory:
        raise ValueError(f"normalization = {hparams.normalization!r} names RGB statistics for a set held in memory; "
                         f"dataset = {hparams.dataset!r} allows only 'dataset' (its own)")
    if hparams.autoaugment and hparams.autoaugment_policy != "torchvision" and hparams.dataset == "digits":
        raise ValueError(f"autoaugment_policy = {hparams.autoaugment_policy!r} runs Pillow's RGB ops (their gray "
                         f"fill is an RGB color); dataset = 'digits' has one channel: use 'torchvision'")


def _check_budget(hparams: HyperParams, schedule: TrialSchedule) -> None:
    """A budget must be spendable exactly within ``epochs`` epochs."""
    budget, unit, timing = hparams.budget, hparams.budget_unit, hparams.sam_timing
    # with late or intermittent SAM the last step is plain when one evaluation is left
    every_step_two_pass = timing is not None and timing.always
    if unit == "gradient_evaluations" and every_step_two_pass and budget % hparams.evals_per_step:
        raise ValueError(f"budget = {budget}: an {hparams.optimizer} step costs {hparams.evals_per_step} "
                         f"gradient evaluations, so the budget must be a multiple of it")
    n_train = catalogue.TRAIN_SIZES.get(hparams.dataset)
    if n_train is None:  # an image folder: checked when its trial loads it
        return
    capacity = schedule.capacity(hparams.epoch_examples(n_train), unit, timing, budget)
    if budget > capacity:
        raise ValueError(f"budget = {budget} {unit} cannot be spent in epochs = {hparams.epochs} "
                         f"({capacity} {unit} at most on {hparams.dataset}'s {n_train} training "
                         f"examples x epoch_passes = {hparams.epoch_passes}); raise epochs, which caps a "
                         f"budgeted trial")


HYPERPARAM_KEYS = tuple(HyperParams.model_fields)
RUN_SETTING_KEYS = tuple(RunSettings.model_fields)


class TrialConfig(HyperParams, RunSettings):
    """One trial as YAML, ``--set`` and Ray Tune give it: hyperparameters and run
    settings in one flat mapping.  :attr:`hparams` and :attr:`run_settings` split it."""

    @property
    def hparams(self) -> HyperParams:
        return HyperParams(**self.model_dump(include=set(HYPERPARAM_KEYS)))

    @property
    def run_settings(self) -> RunSettings:
        return RunSettings(**self.model_dump(include=set(RUN_SETTING_KEYS)))

    def to_yaml(self) -> str:
        """The config as ``config.yaml`` holds it: ``samtune train --config`` runs it again."""
        return yaml.safe_dump(self.model_dump(mode="json"), sort_keys=False)

    def to_params(self) -> dict[str, str]:
        """Flat string parameters, as MLflow stores them."""
        out = {}
        for key, value in self.model_dump().items():
            if isinstance(value, tuple):
                value = ",".join(value)
            out[key] = "" if value is None else str(value)
        return out


def _check_choice(key: str, value: str, allowed: tuple[str, ...], prefix: str | None = None) -> None:
    if value in allowed or (prefix and value.startswith(prefix)):
        return
    extra = f", or {prefix}<path>" if prefix else ""
    raise ValueError(f"not a known {key}; allowed: {', '.join(allowed)}{extra}")


TRIAL_KEYS = tuple(TrialConfig.model_fields)


def make_trial_config(values: dict[str, Any] | None = None, *, where: str = "trial") -> TrialConfig:
    """Validate ``values`` into a :class:`TrialConfig`; errors name ``where.key``."""
    values = dict(values or {})
    unknown = sorted(set(values) - set(TRIAL_KEYS))
    if unknown:
        raise ConfigError(
            f"{where}: unknown key(s) {', '.join(map(repr, unknown))}; "
            f"allowed keys: {', '.join(TRIAL_KEYS)}"
        )
    if isinstance(values.get("sharpness"), list):
        values["sharpness"] = tuple(values["sharpness"])
    try:
        return TrialConfig(**values)
    except ValidationError as err:
        raise ConfigError(explain_validation_error(err, values, where)) from None
    except ValueError as err:  # raised by schedule factories during validation
        raise ConfigError(f"{where}: {err}") from None


def explain_validation_error(err: ValidationError, values: dict[str, Any], where: str) -> str:
    lines = []
    for problem in err.errors():
        loc = ".".join(str(p) for p in problem["loc"])
        message = problem["msg"].removeprefix("Value error, ")
        if len(problem["loc"]) > 1:  # an item of a list-valued key
            lines.append(f"{where}.{loc} = {problem.get('input')!r}: {message}")
        elif loc:
            value = values.get(problem["loc"][0], problem.get("input"))
            lines.append(f"{where}.{loc} = {value!r}: {message}")
        else:
            lines.append(f"{where}: {message}")
    return "; ".join(lines)


def parse_assignment(text: str) -> tuple[str, Any]:
    """``key=value`` from the command line, with the value parsed as YAML."""
    key, sep, raw = text.partition("=")
    if not sep or not key.strip():
        raise ConfigError(f"--set {text!r}: expected key=value")
    try:
        value = yaml.safe_load(raw)
    except yaml.YAMLError:
        value = raw
    return key.strip(), value


def load_yaml(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file {str(path)!r} does not exist")
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as err:
        raise ConfigError(f"{path}: not valid YAML: {err}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping at the top level, got {type(data).__name__}")
    return data


def load_trial_config(path: str | Path | None = None, assignments: list[str] = ()) -> TrialConfig:
    """Trial config from an optional YAML file (either a bare mapping of trial
    keys or a search spec, whose ``trial`` section is used) plus overrides."""
    values: dict[str, Any] = {}
    if path is not None:
        data = load_yaml(path)
        values = dict(data.get("trial", {})) if "trial" in data else data
    for text in assignments:
        key, value = parse_assignment(text)
        values[key] = value
    return make_trial_config(values)
