"""Every name that crosses a boundary: YAML keys' allowed values, metric names,
MLflow tags, statuses and artifact names.

This module imports nothing heavy (no torch, Ray or MLflow), so the search spec,
the CLI's validation and the ``analysis`` package can all use it.  The registries
that hold the implementations (``samtune.optim``, ``samtune.models``,
``samtune.data``, ``samtune.sharpness``) are keyed by these names, and a test holds
each registry against its catalogue.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType

# -- catalogues of trial-parameter values -------------------------------------------
OPTIMIZERS = ("sgd", "sam", "gsam", "asam", "usam")
ONE_PASS_OPTIMIZERS = ("sgd",)  # the others take two forward-backward passes per step
BASE_OPTIMIZERS = ("sgd", "adamw")
LR_SHAPES = ("constant", "cosine", "linear", "polynomial", "exponential", "step", "diminishing",
             "diminishing_from1", "diminishing_klogk")
LR_BATCH_SCALINGS = ("none", "linear", "sqrt")
RHO_SCHEDULES = ("constant", "lr_proportional", "diminishing")
MODELS = ("small_cnn", "resnet18", "wrn28_10", "vit_tiny", "vit_small", "resnet50")
VIT_MODELS = ("vit_tiny", "vit_small")  # the paper's ViTs: the only models with drop_path, vit_spt, vit_lsa
INITS = ("default", "pytorch", "kaiming")  # model weight init (samtune.models.reinitialize_)
AUGMENTS = ("none", "crop_flip")  # the on-device (batched) augmentations
# Where a trial's training batches are made: "device" (the whole set in device memory,
# crop and flip as batched tensor ops) or "workers" (per-sample transforms in
# DataLoader worker processes, for AutoAugment and RandomErasing).
PIPELINES = ("device", "workers")
PRECISIONS = ("fp32", "bf16")
OBJECTIVE_MODES = ("min", "max")
# a search spec's `objective` when it gives none: (metric, mode)
DEFAULT_OBJECTIVE = ("final_test_error", "min")
# the distributions a spec's `search` section gives a key, spelled {KIND: ...} in YAML
SEARCH_DISTRIBUTIONS = ("uniform", "loguniform", "int", "choice")
# keys population-based training may change during a trial: read anew from the trial's
# config at every restore, with no state of their own in a checkpoint
PBT_KEYS = ("rho", "alpha", "lr", "batch_size", "weight_decay", "momentum")
# what a trial budget counts: optimizer updates, training examples, or gradient
# evaluations (two per SAM-family step, one per base-optimizer step)
BUDGET_UNITS = ("steps", "samples", "gradient_evaluations")

# Trial keys that say where and how a trial runs, not what it is: they never enter
# the hyperparameter digest, nor what "all other hyperparameters equal" means in a
# report.  ``samtune.config.RunSettings`` declares exactly these fields.
RUN_SETTINGS = ("data_dir", "download", "device", "num_threads", "eval_batch_size", "loader_workers")
# Hyperparameters that fix how a trial is measured, not how it is trained: a report
# never takes them for searched axes (the measures' own definitions cover them).
MEASUREMENT_KEYS = ("sharpness", "sharpness_examples", "sharpness_batch", "train_eval_examples",
                    "probes", "probe_examples", "probe_batches")


@dataclass(frozen=True)
class MeasureName:
    """A sharpness measure as the outside world sees it: its metric name, the error
    estimate logged beside it (``<metric>_<uncertainty>``), and whether it depends on
    the batch size m it is computed with (m-sharpness)."""

    name: str
    metric: str
    uncertainty: str | None = None
    per_batch: bool = False

    @property
    def metric_names(self) -> tuple[str, ...]:
        extra = (f"{self.metric}_{self.uncertainty}",) if self.uncertainty else ()
        return (self.metric, *extra)

    @property
    def has_settings(self) -> bool:
        """Sharpness measures carry settings; the ``norm_*`` baselines do not."""
        return self.metric.startswith(SHARPNESS_PREFIX)


SHARPNESS_PREFIX = "sharpness_"
NORM_PREFIX = "norm_"
MEASURE_PREFIXES = (SHARPNESS_PREFIX, NORM_PREFIX)
ESTIMATE_SUFFIXES = ("_stderr", "_residual")


def _sharp(name: str, uncertainty: str | None = None, per_batch: bool = False) -> MeasureName:
    return MeasureName(name, SHARPNESS_PREFIX + name, uncertainty, per_batch)


MEASURES: Mapping[str, MeasureName] = MappingProxyType({m.name: m for m in (
    _sharp("harada", per_batch=True),
    _sharp("worst_linf", per_batch=True),
    _sharp("worst_linf_adaptive", per_batch=True),
    _sharp("worst_l2", per_batch=True),
    _sharp("worst_l2_adaptive", per_batch=True),
    _sharp("avg_l2", "stderr", per_batch=True),
    _sharp("avg_l2_adaptive", "stderr", per_batch=True),
    _sharp("keskar"),
    _sharp("ascent", per_batch=True),
    _sharp("ascent_full"),  # SAM's ascent along the gradient of all the measure's examples at once
    _sharp("avg_sphere", "stderr", per_batch=True),  # E f(w + ρ u/‖u‖) − f(w), u ~ N(0, I)
    _sharp("hessian_max_eig", "residual"),
    _sharp("hessian_trace", "stderr"),
    MeasureName("norm_param_l2", "norm_param_l2"),
    MeasureName("norm_dist_from_init", "norm_dist_from_init"),
    # Andriushchenko et al. 2023: average case in the linf box, and the adaptive measures
    # on logit-normalized losses (their --normalize_logits), each a definition of its own
    _sharp("avg_linf", "stderr", per_batch=True),
    _sharp("avg_linf_adaptive", "stderr", per_batch=True),
    _sharp("worst_linf_adaptive_lognorm", per_batch=True),
    _sharp("worst_l2_adaptive_lognorm", per_batch=True),
    _sharp("avg_l2_adaptive_lognorm", "stderr", per_batch=True),
    _sharp("avg_linf_adaptive_lognorm", "stderr", per_batch=True),
)})

# What every trial measures unless its config names others.
DEFAULT_MEASURES = ("harada", "worst_linf_adaptive", "avg_l2", "ascent",
                    "hessian_max_eig", "hessian_trace", "norm_param_l2", "norm_dist_from_init")

# A measure's identity beyond its registered settings: the data it is computed on
# and the arithmetic.  Logged as params ``sharpness.<name>.<setting>``.
MEASURE_DATA_SETTINGS = ("n_examples", "m", "precision")
MEASURE_PARAM_PREFIX = "sharpness."


def measure_param(name: str, setting: str) -> str:
    """The MLflow param that holds one setting of a measure's definition."""
    return f"{MEASURE_PARAM_PREFIX}{name}.{setting}"


def measure_metric_names(names: tuple[str, ...] | None) -> tuple[str, ...]:
    """Every metric a trial measuring ``names`` reports (None: the defaults)."""
    chosen = DEFAULT_MEASURES if names is None else names
    return tuple(key for name in chosen for key in MEASURES[name].metric_names)


# -- metrics -------------------------------------------------------------------------
EPOCH_METRICS = ("train_loss", "train_error", "test_loss", "test_error", "gen_gap", "lr",
                 "batch_size", "rho", "steps", "samples_seen", "gradient_evaluations",
                 "epoch_seconds", "samples_per_second", "workers")
# per-epoch probes of Harada & Iiduka's theory (trial key ``probes``), on a fixed probe
# set: ‖∇f_SAM(x)‖², the squared norm of the full-batch SAM/GSAM direction, and the mean
# squared deviation of the mini-batch direction from it at the epoch's batch size
PROBE_METRICS = ("probe_sam_grad_sq", "probe_direction_msd")
FINAL_PREFIX = "final_"
# the per-epoch metrics whose last value is a trial's final result
FINAL_OF = ("test_error", "train_error", "gen_gap", "test_loss", "train_loss",
            "steps", "samples_seen", "gradient_evaluations")
FINAL_METRICS = tuple(FINAL_PREFIX + key for key in FINAL_OF)
# the training criterion (trial keys stop_train_loss / stop_train_error): whether a
# trial reached it, and after how many epochs, steps and samples (NaN if never)
CRITERION_REACHED = "criterion_reached"
CRITERION_METRICS = (CRITERION_REACHED, "criterion_epoch", "criterion_steps", "criterion_samples")
# the quantities a criterion may bound: per-epoch metrics measured on the training set
CRITERION_QUANTITIES = ("train_loss", "train_error")
EPOCH = "epoch"  # the record's epoch counter: MLflow's ``step``, not a metric

# -- trial status (tag samtune.status) ------------------------------------------------
COMPLETED, DIVERGED, PRUNED, FAILED, RUNNING = "completed", "diverged", "pruned", "failed", "running"
TRIAL_STATUSES = (COMPLETED, DIVERGED, PRUNED, FAILED)
# the MLflow run state each status ends a run in
STATUS_RESULT_KEY = "samtune_status"  # the trial's status, in its last Ray Tune result
RUN_END_STATE = MappingProxyType({COMPLETED: "FINISHED", DIVERGED: "FINISHED",
                                  PRUNED: "KILLED", FAILED: "FAILED"})

# -- MLflow tags and artifacts --------------------------------------------------------
TAG_KIND = "samtune.kind"
KIND_SEARCH, KIND_TRIAL, KIND_REPORT = "search", "trial", "report"
TAG_STATUS = "samtune.status"
TAG_ERROR = "samtune.error"
TAG_TRIAL_ID = "samtune.trial_id"
TAG_SEARCH_KEYS = "samtune.search_keys"
TAG_RAY_NAME = "samtune.ray_name"
TAG_STORAGE = "samtune.storage"
TAG_HPARAMS_DIGEST = "samtune.hparams_digest"
TAG_VERSION = "samtune.version"
TAG_GIT_COMMIT = "samtune.git_commit"
TAG_PARENT = "mlflow.parentRunId"
TAG_REPORTED_SEARCH = "samtune.search_run_id"  # on a report run: the search it reports
TAG_SETTLED = "samtune.settled"  # on a search's parent run: its `until:` answer, once settled
TAG_CHECKPOINT = "samtune.checkpoint"  # on a search's trial run: its last Ray checkpoint (folder or URI)
TAG_WORKERS = "samtune.workers"  # on a data-parallel trial run: its worker count, stage by stage
TAG_STAGES_DONE = "samtune.stages_done"  # ... and how many stages it has trained (then samtune.checkpoint)
# the Optuna study of an Optuna search (on its parent run): the storage optuna-dashboard opens, and the study
TAG_OPTUNA_STORAGE = "samtune.optuna_storage"
TAG_OPTUNA_STUDY = "samtune.optuna_study"
# MLflow's own tags: the run's description, and the experiment's kind (which view the UI opens it in)
TAG_NOTE = "mlflow.note.content"
TAG_EXPERIMENT_KIND = "mlflow.experimentKind"
EXPERIMENT_KIND = "custom_model_development"  # the UI's model-training view
SYSTEM_METRICS_INTERVAL_S = 2  # how often a trial samples CPU, memory and GPU use for its run

ARTIFACT_SEARCH_SPEC = "search.yaml"
ARTIFACT_CONFIG = "config.yaml"
ARTIFACT_HISTORY = "history.csv"
ARTIFACT_MODEL = "model.pt"  # {"config": ..., "model": state dict}: loaded with weights_only, runs no code
# Each trial's final model is an MLflow logged model of this name (model.pt and config.yaml,
# linked to the trial's run, params, final metrics and evaluation data set).
LOGGED_MODEL_NAME = "model"
LOGGED_MODEL_TYPE = "samtune-state-dict"
# a search spec's `keep_models`: every trial's model (the default), none, or an integer k (the best k)
KEEP_ALL_MODELS, KEEP_NO_MODELS = "all", "none"
ARTIFACT_CONTEXT = "trial_context.json"
RAY_CHECKPOINT_FILE = "trial.pt"  # in each of a search trial's Ray checkpoints: its state, config and weights
# population-based training: a trial's ancestry (which trial it was cloned from at which
# epoch, and the values each segment trained with) and the schedule it trained on
ARTIFACT_LINEAGE = "lineage.json"
ARTIFACT_SCHEDULE = "schedule.csv"
TAG_CLONED_FROM = "samtune.cloned_from"  # "<trial id> at epoch <n>", the latest clone
TAG_REPLAY_OF = "samtune.replay_of"  # on a samtune replay run: the run whose schedule it replays
ARTIFACT_INTERPOLATION_CSV = "interpolation.csv"  # samtune interpolate: loss and error along θ(a)
ARTIFACT_INTERPOLATION_PNG = "interpolation.png"
KIND_INTERPOLATION = "interpolation"  # a run of samtune interpolate (tag samtune.kind)
TAG_INTERPOLATED_RUNS = "samtune.interpolated_runs"  # "<run θ₁>,<run θ₂>"

DEFAULT_EXPERIMENT_TRAIN = "samtune-train"
DEFAULT_SPACE = "default"
UI_HOST, UI_PORT = "127.0.0.1", 5000  # where `samtune ui` serves a local store unless told otherwise
# the experiment of the default search: the `name` of the bundled space DEFAULT_SPACE
DEFAULT_EXPERIMENT_SEARCH = "samtune-default"

# -- reproduction options (trial keys autoaugment_policy, resnet_stem, normalization) --------
# Whose ops run AutoAugment's CIFAR-10 sub-policies: torchvision's v2.AutoAugment (black fill,
# nearest resampling, rotation either way), or DeepVoltaire/AutoAugment at commit 9d42ce9, the
# copy Harada & Iiduka's code runs (Pillow: gray fill, bicubic shear, rotation one way)
AUTOAUGMENT_POLICIES = ("torchvision", "deepvoltaire_9d42ce9")
RESNET_MODELS = ("resnet18", "resnet50")  # the models a resnet_stem applies to
# the ResNet stems (samtune.models): by image size, 3x3 stride 1 without or with the 3x3
# stride-2 max-pool (Khanh et al.'s ResNet-18), ImageNet's 7x7 stride 2 and max-pool
RESNET_STEMS = ("auto", "cifar", "cifar_maxpool", "imagenet")
# the per-channel statistics images are normalized with: the data set's own (its catalogue
# entry), or a named set of samtune.data.catalogue.NORMALIZATION_STATS
NORMALIZATIONS = ("dataset", "cifar10_kuangliu")
