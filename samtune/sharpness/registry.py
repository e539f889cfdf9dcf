"""Named measures with the settings that define them, and ``measure_all``.

A name fixes a definition: e.g. ``harada`` is worst-case linf, non-adaptive,
ρ = 2e-4, 20 APGD steps, as ``eval_sharpness.py`` of iiduka-researches/
GSAM_batch_inc defaults to (on the first 1024 training examples, batches of 128).
Metrics are named ``sharpness_<name>`` (``norm_*`` baselines keep their name);
:func:`measure_settings` gives the flat parameters
(``sharpness.<name>.<setting>=<value>``) to log next to them, so two numbers are
never compared across definitions.

Data: every measure runs on the batches it is given; ``m`` (the batch size,
which per-batch measures depend on) and ``n_examples`` are theirs. Pass
``batches`` to :func:`measure_settings` to record them.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from types import MappingProxyType

import torch
from torch import nn

from samtune import schema
from samtune.sharpness._result import Measurement
from samtune.sharpness._surface import Batch, LossFn
from samtune.sharpness.ascent import ascent, ascent_full
from samtune.sharpness.average_case import average_box, average_case, average_sphere
from samtune.sharpness.hessian import hessian_max_eigenvalue, hessian_trace
from samtune.sharpness.keskar import keskar
from samtune.sharpness.norms import distance_from_init, param_norm
from samtune.sharpness.worst_case import worst_case


@dataclass(frozen=True)
class MeasureSpec:
    """name: a measure of :data:`samtune.schema.MEASURES`, which also fixes its
    metric name, the error estimate logged beside it and whether it depends on the
    batch size m. function: called as ``function(model, loss_fn, batches,
    **settings, [seed=], [dtype=])``. settings: the defaults that define the
    measure. stochastic: takes ``seed``. data: the data the definition was
    published with (n_examples, m), checked with a warning."""

    name: str
    function: Callable[..., Measurement]
    settings: Mapping[str, object]
    description: str
    stochastic: bool = False
    data: Mapping[str, int] = field(default_factory=dict)

    def __post_init__(self) -> None:
        # read-only views: the registry is shared, a definition must not drift
        object.__setattr__(self, "settings", MappingProxyType(dict(self.settings)))
        object.__setattr__(self, "data", MappingProxyType(dict(self.data)))

    @property
    def metric(self) -> str:
        return schema.MEASURES[self.name].metric

    @property
    def uncertainty(self) -> str | None:
        return schema.MEASURES[self.name].uncertainty

    @property
    def per_batch(self) -> bool:
        return schema.MEASURES[self.name].per_batch


def _norm_param_l2(model, loss_fn, batches, *, init_params=None, dtype=None):
    return param_norm(model)


def _norm_dist_from_init(model, loss_fn, batches, *, init_params=None, dtype=None):
    if init_params is None:
        raise ValueError("norm_dist_from_init needs init_params= (the initial parameters)")
    return distance_from_init(model, init_params)


# Only the logit-normalized measures carry this setting: the plain ones keep the
# definition their earlier trials were logged with (a setting missing from some
# trials' params would split a measure in two in the reports).
_LOGNORM = {"normalize_logits": True}
_LOGNORM_NOTE = ", logit-normalized loss"


def _specs() -> list[MeasureSpec]:
    def worst(name, rho, norm, adaptive, lognorm=False, **extra):
        return MeasureSpec(
            name, worst_case,
            {"rho": rho, "norm": norm, "adaptive": adaptive, "steps": 20,
             "step_size_mult": 1.0, "rand_init": False, **(_LOGNORM if lognorm else {})},
            f"worst-case m-sharpness, {norm}{', adaptive' if adaptive else ''}, APGD"
            f"{_LOGNORM_NOTE if lognorm else ''}",
            stochastic=True, **extra)

    def box(name, adaptive, lognorm=False):
        return MeasureSpec(
            name, average_box,
            {"rho": 0.1, "adaptive": adaptive, "samples": 20, **(_LOGNORM if lognorm else {})},
            f"average-case sharpness, noise uniform in the box |δ| ≤ ρ{'|w|' if adaptive else ''}"
            f"{_LOGNORM_NOTE if lognorm else ''}", stochastic=True)

    # Radii: the smallest of each sweep in tml-epfl's sh/eval_sharpness_final.sh
    # (ResNet-18, CIFAR-10), except harada (iiduka-researches/GSAM_batch_inc).
    # Logit normalization: that script runs it only with --adaptive, so only
    # adaptive variants are registered (the same radii as without it there).
    return [
        worst("harada", 2e-4, "linf", False, data={"n_examples": 1024, "m": 128}),
        worst("worst_linf", 5e-4, "linf", False),
        worst("worst_linf_adaptive", 1e-3, "linf", True),
        worst("worst_linf_adaptive_lognorm", 1e-3, "linf", True, lognorm=True),
        worst("worst_l2", 0.25, "l2", False),
        worst("worst_l2_adaptive", 0.25, "l2", True),
        worst("worst_l2_adaptive_lognorm", 0.25, "l2", True, lognorm=True),
        MeasureSpec("avg_l2", average_case, {"sigma": 0.05, "adaptive": False, "samples": 20},
                    "average-case sharpness, Gaussian noise N(0, σ²I)", stochastic=True),
        MeasureSpec("avg_l2_adaptive", average_case, {"sigma": 0.05, "adaptive": True, "samples": 20},
                    "average-case sharpness, noise σ|w|⊙z", stochastic=True),
        MeasureSpec("avg_l2_adaptive_lognorm", average_case,
                    {"sigma": 0.05, "adaptive": True, "samples": 20, **_LOGNORM},
                    "average-case sharpness, noise σ|w|⊙z" + _LOGNORM_NOTE, stochastic=True),
        box("avg_linf", adaptive=False),
        box("avg_linf_adaptive", adaptive=True),
        box("avg_linf_adaptive_lognorm", adaptive=True, lognorm=True),
        # ρ as ascent's, so the two compare a random direction with the gradient's
        MeasureSpec("avg_sphere", average_sphere, {"rho": 0.05, "adaptive": False, "samples": 20, "antithetic": True},
                    "average-case sharpness on the sphere ‖δ‖ = ρ, δ = ρ z/‖z‖", stochastic=True),
        MeasureSpec("keskar", keskar,
                    {"epsilon": 1e-3, "method": "apgd", "steps": 20},
                    "Keskar ε-sharpness, box ε(|w|+1), percent of 1 + L"),
        MeasureSpec("ascent", ascent, {"rho": 0.05, "adaptive": False},
                    "loss increase along the normalized batch gradient (SAM's step)"),
        MeasureSpec("ascent_full", ascent_full, {"rho": 0.05, "adaptive": False},
                    "loss increase of all examples along their normalized full-batch gradient"),
        MeasureSpec("hessian_max_eig", hessian_max_eigenvalue, {"iters": 50, "tol": 1e-3},
                    "top Hessian eigenvalue, Lanczos", stochastic=True),
        MeasureSpec("hessian_trace", hessian_trace, {"samples": 10, "deflation": 10},
                    "Hessian trace, Hutchinson (Rademacher), Lanczos-deflation control variate",
                    stochastic=True),
        MeasureSpec("norm_param_l2", _norm_param_l2, {}, "parameter L2 norm ‖w‖₂"),
        MeasureSpec("norm_dist_from_init", _norm_dist_from_init, {},
                    "distance from initialization ‖w − w₀‖₂"),
    ]


MEASURES: Mapping[str, MeasureSpec] = MappingProxyType({s.name: s for s in _specs()})

# What every trial reports unless its config says otherwise. On the digits small
# CNN (1024 examples in 8 batches of 128, 2 CPU cores) they take about 15 s in
# all — about 100 forward-backward passes over the 1024 examples: harada and
# worst_linf_adaptive 20 each, avg_l2 20 forward passes, the Hessian measures
# 15–20 products each (a cached product costs about one and a half passes).
DEFAULT_MEASURES: tuple[str, ...] = schema.DEFAULT_MEASURES


def get_measure(name: str) -> MeasureSpec:
    try:
        return MEASURES[name]
    except (KeyError, TypeError):
        raise ValueError(f"unknown sharpness measure {name!r}; known: "
                         f"{', '.join(MEASURES)}") from None


def resolve_settings(name: str, overrides: Mapping[str, Mapping[str, object]] | None = None
                     ) -> dict[str, object]:
    """The settings of measure ``name``: its defaults updated by
    ``overrides[name]`` (unknown setting names are refused)."""
    spec = get_measure(name)
    extra = dict((overrides or {}).get(name, {}))
    unknown = sorted(set(extra) - set(spec.settings))
    if unknown:
        allowed = ", ".join(spec.settings) or "none"
        raise ValueError(f"overrides[{name!r}] has unknown settings {unknown}; "
                         f"allowed: {allowed}")
    return {**spec.settings, **extra}


def _check_overrides(overrides: Mapping[str, Mapping[str, object]] | None) -> None:
    for name, values in (overrides or {}).items():
        get_measure(name)
        if not isinstance(values, Mapping):
            raise ValueError(f"overrides[{name!r}] must be a mapping of settings, got {values!r}")


def _data_shape(batches: Sequence[Batch]) -> tuple[int, int]:
    """(number of examples, batch size m = the first batch's size)."""
    sizes = [len(targets) for _, targets in batches]
    return sum(sizes), (sizes[0] if sizes else 0)


def precision_name(dtype: torch.dtype | None) -> str:
    """How ``measure_all(dtype=...)`` computes: None is float32 (see the package doc)."""
    return _PRECISION_NAMES.get(dtype, str(dtype).removeprefix("torch."))


_PRECISION_NAMES = {None: "fp32", torch.float32: "fp32", torch.bfloat16: "bf16",
                    torch.float16: "fp16", torch.float64: "fp64"}


def measure_settings(names: Iterable[str] | None = None,
                     overrides: Mapping[str, Mapping[str, object]] | None = None, *,
                     batches: Sequence[Batch] | None = None,
                     dtype: torch.dtype | None = None) -> dict[str, str]:
    """Flat string parameters ``sharpness.<name>.<setting>`` for each measure
    (the ``norm_*`` baselines have none): its settings and ``.precision``; with
    ``batches``, also ``.n_examples`` and, for per-batch measures, ``.m``.
    Together they are the measure's identity: two values are the same quantity
    only when all of these match."""
    names = DEFAULT_MEASURES if names is None else tuple(names)
    _check_overrides(overrides)
    params: dict[str, str] = {}
    shape = _data_shape(batches) if batches is not None else None
    for name in names:
        if not schema.MEASURES[get_measure(name).name].has_settings:
            continue
        settings = {**resolve_settings(name, overrides), "precision": precision_name(dtype)}
        if shape is not None:
            settings["n_examples"] = shape[0]
            if schema.MEASURES[name].per_batch:
                settings["m"] = shape[1]
        params.update({schema.measure_param(name, key): str(value) for key, value in settings.items()})
    return params


def measure_all(model: nn.Module, loss_fn: LossFn, batches: Iterable[Batch],
                names: Iterable[str] | None = None, *,
                init_params: Sequence[torch.Tensor] | Mapping[str, torch.Tensor] | None = None,
                seed: int = 0, overrides: Mapping[str, Mapping[str, object]] | None = None,
                dtype: torch.dtype | None = None) -> dict[str, float]:
    """Every named measure, keyed by metric name (``sharpness_<name>``, ``norm_*``),
    plus ``<metric>_stderr`` for Monte-Carlo estimates and ``<metric>_residual``
    for the Lanczos eigenvalue.

    names: None → :data:`DEFAULT_MEASURES` (without ``norm_dist_from_init`` when
    ``init_params`` is None; naming it explicitly without them is an error).
    overrides: ``{name: {setting: value}}`` changes a measure's settings.
    """
    explicit = names is not None
    names = tuple(names) if explicit else DEFAULT_MEASURES
    if not explicit and init_params is None:
        names = tuple(n for n in names if n != "norm_dist_from_init")
    specs = [get_measure(name) for name in names]
    _check_overrides(overrides)
    batches = list(batches)
    results: dict[str, float] = {}
    for spec in specs:
        _warn_on_data_mismatch(spec, batches)
        kwargs = resolve_settings(spec.name, overrides)
        if spec.stochastic:
            kwargs["seed"] = seed
        if not schema.MEASURES[spec.name].has_settings:
            kwargs["init_params"] = init_params
        measurement = spec.function(model, loss_fn, batches, dtype=dtype, **kwargs)
        results[spec.metric] = measurement.value
        if spec.uncertainty is not None:
            results[f"{spec.metric}_{spec.uncertainty}"] = getattr(measurement, spec.uncertainty)
    return results


def metric_names(names: Iterable[str] | None = None) -> list[str]:
    """The keys :func:`measure_all` returns for ``names`` (None → the defaults,
    ``norm_dist_from_init`` included)."""
    names = None if names is None else tuple(get_measure(name).name for name in names)
    return list(schema.measure_metric_names(names))


def _warn_on_data_mismatch(spec: MeasureSpec, batches: Sequence[Batch]) -> None:
    if not spec.data:
        return
    n_examples, m = _data_shape(batches)
    if (n_examples, m) != (spec.data["n_examples"], spec.data["m"]):
        warnings.warn(f"{spec.name} is defined on {spec.data['n_examples']} examples in "
                      f"batches of {spec.data['m']}; measuring on {n_examples} examples "
                      f"in batches of {m}", stacklevel=3)
