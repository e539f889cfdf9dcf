"""Typed, validated trial configuration.

Every way a trial can be configured (YAML, ``--set key=value``, a Ray Tune
config dict) goes through :func:`make_trial_config`, which rejects unknown keys
and out-of-range values with a :class:`ConfigError` that names the key, the
value and what is allowed.  Nothing is launched before this succeeds.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

OptimizerName = Literal["sgd", "sam", "gsam", "asam", "usam"]
LRShape = Literal["constant", "cosine", "linear", "polynomial", "exponential", "step", "diminishing"]

DATASET_NAMES = ("digits", "cifar10", "cifar100", "tiny-imagenet")
MODEL_NAMES = ("small_cnn", "resnet18", "wrn28_10", "vit_tiny", "resnet50")


class ConfigError(ValueError):
    """A configuration mistake, phrased for the person who made it."""


class TrialConfig(BaseModel):
    """Everything that defines one trial.  Field names are the public names
    used in YAML, MLflow params and reports (DESIGN.md, "Names that cross
    boundaries").  The defaults are the embedded default trial: GSAM with a
    growing batch on the bundled digits set."""

    model_config = ConfigDict(extra="forbid", frozen=True, validate_default=True)

    # what is trained
    dataset: str = "digits"
    data_dir: str | None = None
    download: bool = False
    model: str = "small_cnn"
    epochs: int = Field(12, ge=1)
    seed: int = Field(0, ge=0)
    # optimizer
    optimizer: OptimizerName = "gsam"
    base_optimizer: Literal["sgd", "adamw"] = "sgd"
    momentum: float = Field(0.9, ge=0.0, lt=1.0)
    weight_decay: float = Field(5e-4, ge=0.0)
    rho: float = Field(0.05, ge=0.0)
    rho_min: float = Field(0.0, ge=0.0)
    rho_schedule: Literal["constant", "lr_proportional", "diminishing"] = "constant"
    alpha: float = Field(0.1, ge=0.0)
    adaptive: bool = False
    eta: float = Field(0.0, ge=0.0)
    # learning-rate schedule
    lr: float = Field(0.05, gt=0.0)
    lr_shape: LRShape = "constant"
    lr_final: float = Field(0.0, ge=0.0)
    lr_power: float = Field(1.0, gt=0.0)
    warmup_epochs: float = Field(0.0, ge=0.0)
    # batch schedule
    batch_size: int = Field(16, ge=1)
    batch_growth_ratio: float = Field(2.0, ge=1.0)
    batch_stages: int = Field(4, ge=1)
    batch_max: int | None = Field(None, ge=1)
    lr_batch_scaling: Literal["none", "linear", "sqrt"] = "none"
    # loss and data
    label_smoothing: float = Field(0.0, ge=0.0, lt=1.0)
    augment: bool = True
    # execution
    device: str = "auto"
    precision: Literal["fp32", "bf16"] = "fp32"
    num_threads: int = Field(0, ge=0)
    eval_batch_size: int = Field(512, ge=1)
    train_eval_examples: int = Field(10_000, ge=0)
    # end-of-trial measures (names from samtune.sharpness)
    sharpness: tuple[str, ...] | None = None
    sharpness_examples: int = Field(1024, ge=1)
    sharpness_batch: int = Field(128, ge=1)

    @model_validator(mode="after")
    def _check_combinations(self) -> "TrialConfig":
        _check_choice("dataset", self.dataset, DATASET_NAMES, prefix="imagefolder:")
        _check_choice("model", self.model, MODEL_NAMES)
        if not (self.device == "auto" or self.device == "cpu" or self.device.startswith("cuda")):
            raise ValueError(f"device = {self.device!r}: allowed are auto, cpu, cuda, cuda:N")
        if self.sharpness:
            from samtune.sharpness import MEASURES

            for name in self.sharpness:
                _check_choice("sharpness", name, tuple(MEASURES))
        # The schedules validate their own cross-field constraints (lr_final <= lr,
        # rho_min <= rho, stages <= epochs, ...); build them once here so a bad
        # combination is refused before anything runs.
        from samtune.schedules import TrialSchedule

        TrialSchedule.from_config(self)
        return self

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
    raise ValueError(f"{key} = {value!r} is not known; allowed: {', '.join(allowed)}{extra}")


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
        if loc:
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
