"""Where the tracking store is, and how a person opens it."""

from __future__ import annotations

import os
from pathlib import Path

DEFAULT_DB = "mlflow.db"


def resolve_tracking_uri(uri: str | None = None) -> str:
    """Explicit URI, else ``MLFLOW_TRACKING_URI``, else ``./mlflow.db`` (absolute,
    so Ray workers with another working directory reach the same file)."""
    uri = uri or os.environ.get("MLFLOW_TRACKING_URI")
    if not uri:
        return f"sqlite:///{Path.cwd() / DEFAULT_DB}"
    if uri.startswith("sqlite:///") and not uri.startswith("sqlite:////"):
        return f"sqlite:///{Path(uri.removeprefix('sqlite:///')).resolve()}"
    return uri


def ui_command(uri: str) -> str:
    if uri.startswith("http"):
        return f"open {uri}"
    return f"samtune ui --tracking-uri {uri}"


def runs_url(base: str, experiment_id: str) -> str:
    """The page that lists an experiment's runs (MLflow 3.x opens experiments on a
    GenAI overview page otherwise)."""
    return f"{base.rstrip('/')}/#/experiments/{experiment_id}/runs"
