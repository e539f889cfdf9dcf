"""Schedule search on Ray Tune with Optuna.  All of samtune's Ray imports live in
this package (Ray renames its API between releases); importing it does not
import Ray, so the CLI stays quick and a bad spec fails before Ray starts.

- ``runner``: builds the Tuner from a :class:`~samtune.spec.SearchSpec` and runs or resumes it;
- ``trainable``: the function trainable that runs one trial in a Ray worker;
- ``callbacks``: driver-side callbacks (MLflow run closing, progress lines).
"""

from samtune.search.runner import FAULT_ENV, configure_ray_environment, run_search

__all__ = ["FAULT_ENV", "configure_ray_environment", "run_search"]
