"""Where the tracking store is, and how a person opens it."""

from __future__ import annotations

import os
from pathlib import Path

from samtune.schema import UI_HOST, UI_PORT

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


def ui_address(uri: str, host: str = UI_HOST, port: int = UI_PORT) -> str:
    """Where a browser finds the UI of the store ``uri``: a tracking server is its own
    UI; a local store's is what ``samtune ui --host HOST --port PORT`` serves."""
    if uri.startswith("http"):
        return uri.rstrip("/")
    return f"http://{host}:{port}"


def runs_url(uri: str, experiment_id: str) -> str:
    """The page that lists an experiment's runs in the UI of the store ``uri``, in the
    model-training view: MLflow 3.17's UI opens every experiment in its GenAI view unless
    the address (or an earlier click on "Model training") says otherwise, whatever the
    experiment's ``mlflow.experimentKind`` tag."""
    return f"{ui_address(uri)}/#/experiments/{experiment_id}?workflowType=machine_learning"
