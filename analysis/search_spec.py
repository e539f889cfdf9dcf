"""A search run's ``search.yaml`` as the report reads it: the distribution each
searched key had, the objective, and the trial scheduler.  The one reader of that
artifact in ``analysis``.

Lenient: a spec logged by hand or by an older samtune still gives what it holds (a
distribution of a kind it does not know is ``unknown``, no objective is None, and
nothing else is validated); only a file that is not YAML is refused, with
:class:`UnreadableSpec`.
"""

from __future__ import annotations

import tempfile
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from analysis import schema

LOG, CHOICE = "loguniform", "choice"
assert {LOG, CHOICE} <= set(schema.SEARCH_DISTRIBUTIONS)
# a searched key's kind besides the distributions: a grid axis, or a distribution not known here
GRID, UNKNOWN = "grid", "unknown"


class UnreadableSpec(ValueError):
    """A ``search.yaml`` that is not YAML; the message is the YAML parser's."""


@dataclass(frozen=True)
class Objective:
    metrics: tuple[str, ...]
    modes: tuple[str, ...]

    @property
    def is_pareto(self) -> bool:
        return len(self.metrics) > 1

    @property
    def label(self) -> str:
        return " × ".join(f"{m} ({mode})" for m, mode in zip(self.metrics, self.modes))


# what a spec that names no objective optimizes
DEFAULT_OBJECTIVE = Objective((schema.DEFAULT_OBJECTIVE[0],), (schema.DEFAULT_OBJECTIVE[1],))


def parse_spec(text: str) -> tuple[dict[str, str], Objective | None]:
    """Each searched key's distribution kind and the objective from a ``search.yaml``
    (None when it names no objective: the spec's default applies)."""
    data = _load(text)
    if not isinstance(data, Mapping):
        return {}, None
    kinds = {}
    for key, dist in (data.get("search") or {}).items():
        found = [k for k in schema.SEARCH_DISTRIBUTIONS if isinstance(dist, Mapping) and k in dist]
        kinds[str(key)] = found[0] if found else UNKNOWN
    kinds.update({str(key): GRID for key in (data.get("grid") or {})})
    objective = data.get("objective")
    if not isinstance(objective, Mapping):
        return kinds, None
    metric = objective.get("metric", DEFAULT_OBJECTIVE.metrics[0])
    metrics = tuple(metric) if isinstance(metric, (list, tuple)) else (metric,)
    mode = objective.get("mode", DEFAULT_OBJECTIVE.modes[0])
    modes = tuple(mode) if isinstance(mode, (list, tuple)) else (mode,) * len(metrics)
    return kinds, Objective(tuple(map(str, metrics)), tuple(map(str, modes)))


def _load(text: str):
    import yaml

    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as error:
        raise UnreadableSpec(str(error)) from error


def parse_scheduler(text: str) -> str:
    """The trial scheduler a ``search.yaml`` names (``asha``, ``pbt``, ``pb2``…), or
    ``none``: its ``scheduler`` is ``none``, absent, or one section ``{<name>: {...}}``."""
    data = _load(text)
    value = data.get("scheduler") if isinstance(data, Mapping) else None
    if isinstance(value, Mapping):
        return str(next(iter(value), "none"))
    return "none" if value is None else str(value)


def spec_text(client, run_id: str) -> str | None:
    """The ``search.yaml`` of search run ``run_id``; None when the run has none (an older
    search run, or one logged by hand)."""
    with tempfile.TemporaryDirectory() as folder:
        try:
            return Path(client.download_artifacts(run_id, schema.ARTIFACT_SEARCH_SPEC, folder)).read_text()
        except Exception:  # a search run without the artifact (older, or logged by hand)
            return None


def read_spec(client, run_id: str) -> tuple[dict[str, str], Objective | None] | None:
    """:func:`parse_spec` of the ``search.yaml`` of search run ``run_id``; None when the
    run has none."""
    text = spec_text(client, run_id)
    return None if text is None else parse_spec(text)
