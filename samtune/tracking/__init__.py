"""MLflow, and nothing else of samtune's, writes here: where the store is (``uri``), the
runs and their artifacts in one store (``store``), one trial's run from start to end
(``trial_run``) and the tags that say what produced a number (``provenance``).

It writes what it is given and loads nothing: no data set, no model, no training code.
"""

from samtune.tracking.store import Tracker, filter_literal, history_to_csv
from samtune.tracking.trial_run import TrialRun
from samtune.tracking.uri import DEFAULT_DB, resolve_tracking_uri, runs_url, ui_command

__all__ = ["DEFAULT_DB", "Tracker", "TrialRun", "filter_literal", "history_to_csv", "resolve_tracking_uri",
           "runs_url", "ui_command"]
