"""Schedule search on Ray Tune with Optuna.  All of samtune's Ray imports live in
this package (Ray renames its API between releases); importing it does not
import Ray, so the CLI stays quick and a bad spec fails before Ray starts.

- ``runner``: builds the Tuner from a :class:`~samtune.spec.SearchSpec` and runs or resumes it;
- ``context``: the frozen :class:`TrialContext` each trial gets besides its hyperparameters;
- ``trainable``: the function trainable that runs one trial in a Ray worker;
- ``callbacks``: driver-side callbacks (MLflow run closing, progress lines);
- ``preflight``: the checks made before launch, by concern (tracking store, data, batch sizes, cluster).
"""

from samtune.search.context import TrialContext
from samtune.search.runner import configure_ray_environment, run_search

__all__ = ["TrialContext", "configure_ray_environment", "run_search"]
