"""Search spec: one YAML file describes one search.

The spec is a tree of frozen pydantic models, so the models are the one place
that says what a spec may contain.  :func:`parse_search_spec` validates a spec
completely before anything starts and turns every mistake into a
:class:`~samtune.config.ConfigError` that names the key, the value and what is
allowed.  A searched or grid value that is invalid for its own key (``rho < 0``)
is refused here; whether values of different keys fit together is checked when
each trial starts.

One module per concern:

- :mod:`~samtune.spec.values`: the value types, the section base, how a refusal is worded;
- :mod:`~samtune.spec.distributions`: ``search:``, the Optuna distributions;
- :mod:`~samtune.spec.grid`: ``grid:`` axes and bundles, the grid's cells, ``equal_budget:``;
- :mod:`~samtune.spec.schedulers`: ``scheduler:``, ASHA, PBT and PB2;
- :mod:`~samtune.spec.resources`: ``resources:``, loader CPUs, data-parallel batches;
- :mod:`~samtune.spec.objective`: ``objective:`` and the metrics a trial reports;
- :mod:`~samtune.spec.search_spec`: :class:`SearchSpec` and the checks across sections;
- :mod:`~samtune.spec.loading`: files, bundled spaces, ``--set`` overrides, validation;
- :mod:`~samtune.spec.describe`: the define-by-run space, sampled configs, the dry run.

Nothing here imports torch or Ray: ``samtune search --dry-run`` runs without them.
"""

from samtune.spec.describe import DefineByRun, define_by_run, describe, sample_configs, search_description
from samtune.spec.distributions import DISTRIBUTIONS, Choice, Distribution, IntUniform, LogUniform, Uniform, upper_bound
from samtune.spec.grid import (
    BundleAxis,
    EqualBudget,
    ValueAxis,
    bundle_table,
    expand_bundles,
    grid_cells,
    grid_choices,
    grid_size,
)
from samtune.spec.loading import (
    SPEC_KEYS,
    bundled_space_names,
    bundled_space_summaries,
    bundled_spaces,
    load_search_spec,
    parse_search_spec,
)
from samtune.spec.objective import Objective, reported_metrics
from samtune.spec.resources import BATCH_KEYS, Resources, Stage, WorkerLayout, check_batches_split, stage_batches
from samtune.spec.schedulers import PROGRESS_UNITS, Asha, Pb2, Pbt, asha_max_t
from samtune.spec.search_spec import SearchSpec

__all__ = [
    "BATCH_KEYS", "DISTRIBUTIONS", "PROGRESS_UNITS", "SPEC_KEYS",
    "Asha", "BundleAxis", "Choice", "DefineByRun", "Distribution", "EqualBudget", "IntUniform", "LogUniform",
    "Objective", "Pb2", "Pbt", "Resources", "SearchSpec", "Stage", "Uniform", "ValueAxis", "WorkerLayout",
    "asha_max_t", "bundle_table", "bundled_space_names", "bundled_space_summaries",
    "bundled_spaces", "check_batches_split", "define_by_run",
    "describe", "search_description", "expand_bundles", "grid_cells", "grid_choices", "grid_size", "load_search_spec",
    "parse_search_spec", "reported_metrics", "sample_configs", "stage_batches", "upper_bound",
]
