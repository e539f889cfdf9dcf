"""Loss and error along the line between two trained models (Keskar et al., "On
large-batch training for deep learning", ICLR 2017, Figure 3):

    θ(a) = (1 − a) θ₁ + a θ₂,   a in [lo, hi] ⊇ [0, 1],

on the training examples and on the test set, for every a of an even grid that
contains a = 0 and a = 1 exactly (θ(0) is θ₁ and θ(1) is θ₂, bit for bit).

BatchNorm: the running mean and variance are interpolated like the parameters,
so θ(a) is one model with one set of statistics and the endpoints are exactly the
two trained models; recomputing the statistics at each a would measure another
model than the one either run reports. Outside [0, 1] an extrapolated running
variance can fall below zero: it is clamped at zero (BatchNorm's ε keeps the layer
defined). Integer buffers (``num_batches_tracked``) are θ₁'s.

Models are evaluated in eval mode, in their stored dtype, without autocast, with
the plain cross-entropy a trial reports as train_loss and test_loss.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from matplotlib.figure import Figure
from torch import nn
from torch.func import functional_call

from samtune import schema
from samtune.checks import ConfigError
from samtune.sharpness._surface import LossFn, evaluation_mode

COLUMNS = ("a", "train_loss", "train_error", "test_loss", "test_error")
DEFAULT_POINTS = 31
DEFAULT_RANGE = (-1.0, 2.0)
MIN_POINTS = 3  # a curve, not only its endpoints
_VARIANCE_BUFFER = "running_var"
_SNAP = 1e-9  # grid values this close (relative to the range) to 0 or 1 are made exact
Batch = tuple[torch.Tensor, torch.Tensor]
StateDict = Mapping[str, torch.Tensor]


def check_grid(points: object, lo: object, hi: object) -> None:
    """ConfigError naming the key, the value and what is allowed."""
    if not isinstance(points, int) or isinstance(points, bool) or points < MIN_POINTS:
        raise ConfigError(f"points = {points!r}: allowed an integer >= {MIN_POINTS}")
    if not all(isinstance(v, (int, float)) and np.isfinite(v) for v in (lo, hi)) or not lo < hi:
        raise ConfigError(f"range = {lo!r} {hi!r}: allowed two finite numbers lo < hi")
    if lo > 0 or hi < 1:
        raise ConfigError(f"range = {lo!r} {hi!r}: allowed lo <= 0 and hi >= 1 (the range must "
                          f"contain both models, a = 0 and a = 1)")


def grid(points: int = DEFAULT_POINTS, lo: float = DEFAULT_RANGE[0], hi: float = DEFAULT_RANGE[1]) -> np.ndarray:
    """``points`` values evenly spaced from lo to hi, those within rounding of 0 and
    1 made exact; where the spacing misses 0 or 1, it is added (so there may be
    one or two more values than ``points``)."""
    check_grid(points, lo, hi)
    values = np.linspace(float(lo), float(hi), points)
    for anchor in (0.0, 1.0):
        values[np.abs(values - anchor) <= _SNAP * (hi - lo)] = anchor
    return np.unique(np.concatenate([values, [0.0, 1.0]]))


def check_compatible(first: StateDict, second: StateDict, names: tuple[str, str]) -> None:
    """ConfigError unless both state dicts have the same keys and shapes."""
    if first.keys() != second.keys():
        only = sorted(set(first) ^ set(second))
        raise ConfigError(f"{names[0]} and {names[1]} are different architectures: "
                          f"tensors {', '.join(only[:5])} are in only one of them")
    for key, tensor in first.items():
        if tensor.shape != second[key].shape:
            raise ConfigError(f"{key} has shape {tuple(tensor.shape)} in {names[0]} and "
                              f"{tuple(second[key].shape)} in {names[1]} (a different number "
                              f"of classes or architecture)")


def interpolate_state(first: StateDict, second: StateDict, a: float) -> dict[str, torch.Tensor]:
    """``(1 − a) θ₁ + a θ₂`` for every floating tensor (written so that a = 0 and
    a = 1 give θ₁ and θ₂ exactly); running variances clamped at 0; other tensors θ₁'s."""
    state = {}
    for key, t1 in first.items():
        if not t1.is_floating_point():
            state[key] = t1
            continue
        mixed = (1.0 - a) * t1 + a * second[key]
        state[key] = mixed.clamp_min(0.0) if key.endswith(_VARIANCE_BUFFER) else mixed
    return state


def plain_cross_entropy(outputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    return F.cross_entropy(outputs.float(), targets)


@torch.no_grad()
def evaluate(model: nn.Module, state: StateDict, batches: Sequence[Batch],
             loss_fn: LossFn = plain_cross_entropy) -> tuple[float, float]:
    """Size-weighted mean loss and the error (argmax ≠ target) of ``model`` with
    tensors ``state`` over ``batches``; the error is NaN for real-valued targets."""
    loss_sum, wrong, seen = 0.0, 0.0, 0
    for x, y in batches:
        outputs = functional_call(model, dict(state), (x,))
        loss_sum += loss_fn(outputs, y).item() * len(y)
        wrong += float("nan") if y.is_floating_point() else int((outputs.argmax(1) != y).sum())
        seen += len(y)
    return loss_sum / seen, wrong / seen


def interpolation_curve(model: nn.Module, first: StateDict, second: StateDict,
                        train_batches: Sequence[Batch], test_batches: Sequence[Batch],
                        alphas: Sequence[float] | None = None, *,
                        loss_fn: LossFn = plain_cross_entropy) -> pd.DataFrame:
    """Loss (``loss_fn``: the mean over a batch) and error of θ(a) for each a
    (default :func:`grid`), columns :data:`COLUMNS`. ``model`` gives the
    architecture only: its own tensors, and its train/eval flags, are left as found."""
    alphas = grid() if alphas is None else alphas
    check_compatible(first, second, ("the first model", "the second model"))
    device = next(model.parameters()).device
    first = {k: v.to(device) for k, v in first.items()}
    second = {k: v.to(device) for k, v in second.items()}
    rows = []
    with evaluation_mode(model):
        for a in alphas:
            state = interpolate_state(first, second, float(a))
            rows.append((float(a), *evaluate(model, state, train_batches, loss_fn),
                         *evaluate(model, state, test_batches, loss_fn)))
    return pd.DataFrame(rows, columns=list(COLUMNS))


def interpolation_figure(frame: pd.DataFrame, labels: tuple[str, str] = ("", "")) -> Figure:
    """Loss (log axis) and error (twin axis) against a, with the two models marked
    θ₁ and θ₂ followed by their ``labels``."""
    fig = Figure(figsize=(7.0, 4.2), layout="constrained")
    ax = fig.subplots()
    err_ax = ax.twinx()
    for split, style in (("train", "-"), ("test", "--")):
        ax.plot(frame["a"], frame[f"{split}_loss"], style, color="C0", marker=".", label=f"{split} loss")
        err_ax.plot(frame["a"], frame[f"{split}_error"], style, color="C1", marker=".", label=f"{split} error")
    ax.set_yscale("log")
    ax.set_xlabel("a   (θ = (1 − a) θ₁ + a θ₂)")
    ax.set_ylabel("cross-entropy loss", color="C0")
    err_ax.set_ylabel("error", color="C1")
    err_ax.set_ylim(0.0, 1.0)
    for a, name, label in zip((0.0, 1.0), ("θ₁", "θ₂"), labels):
        ax.axvline(a, color="0.4", linewidth=0.8, linestyle=":")
        ax.annotate(f"{name} {label}", (a, 1.0), xycoords=("data", "axes fraction"), xytext=(3, -12),
                    textcoords="offset points", fontsize=8, color="0.3")
    lines = ax.get_legend_handles_labels()
    err_lines = err_ax.get_legend_handles_labels()
    fig.legend(lines[0] + err_lines[0], lines[1] + err_lines[1], fontsize=8, ncols=4, loc="outside upper center")
    return fig


def write_outputs(frame: pd.DataFrame, labels: tuple[str, str], out: Path) -> tuple[Path, Path]:
    """``interpolation.csv`` and ``interpolation.png`` in ``out`` (created)."""
    out.mkdir(parents=True, exist_ok=True)
    csv, png = out / schema.ARTIFACT_INTERPOLATION_CSV, out / schema.ARTIFACT_INTERPOLATION_PNG
    frame.to_csv(csv, index=False)
    interpolation_figure(frame, labels).savefig(png, dpi=120, format="png")
    return csv, png
