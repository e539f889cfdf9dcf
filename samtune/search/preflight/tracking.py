"""The tracking store: the tracking URI names a store MLflow can open, and an
``http(s)`` tracking server answers and accepts samtune's credentials, within a limit."""

from __future__ import annotations

import os
import re
from importlib import metadata
from pathlib import Path

from samtune.config import ConfigError
from samtune.search.preflight.shared import TimedOut, bounded, last_line

TRACKING_TIMEOUT_S = 10.0

# The schemes MLflow 3.17.2 registers a tracking store for
# (mlflow/tracking/_tracking_service/utils.py, _register_tracking_stores), except
# "databricks-uc" and "uc", whose store only raises "not supported".  Plugins add
# theirs through the "mlflow.tracking_store" entry point group.
FILE_SCHEMES = ("", "file")
DATABASE_SCHEMES = ("sqlite", "postgresql", "mysql", "mssql")
SERVER_SCHEMES = ("http", "https")
MLFLOW_SCHEMES = (*FILE_SCHEMES, "databricks", *SERVER_SCHEMES, *DATABASE_SCHEMES)
_UNSUPPORTED_SCHEMES = ("databricks-uc", "uc")
_ALLOWED_URIS = ("a local path or file:PATH (needs MLFLOW_ALLOW_FILE_STORE=true), sqlite:///PATH, "
                 "postgresql://, mysql://, mssql://, http://, https://, databricks")


def plugin_schemes() -> tuple[str, ...]:
    return tuple(sorted(ep.name for ep in metadata.entry_points(group="mlflow.tracking_store")))


def uri_scheme(uri: str) -> str:
    """The registry key MLflow picks a tracking store by (``mlflow.utils.uri.get_uri_scheme``):
    a database URI's dialect without its ``+driver``, "" for a plain path."""
    if uri in ("databricks", *_UNSUPPORTED_SCHEMES):
        return uri
    match = re.match(r"^([A-Za-z][A-Za-z0-9+.-]*):", uri)
    scheme = match.group(1).lower() if match else ""
    if len(scheme) == 1:  # a Windows drive letter
        return ""
    return scheme.split("+", 1)[0] if "+" in scheme else scheme


def _uri_key(given: str | None) -> str:
    if given:
        return "--tracking-uri"
    return "$MLFLOW_TRACKING_URI" if os.environ.get("MLFLOW_TRACKING_URI") else "the tracking URI"


def check_tracking_uri(uri: str, given: str | None = None) -> None:
    """``uri`` (resolved) names a store MLflow can open; ``given`` is what the user passed."""
    key = _uri_key(given)
    scheme = uri_scheme(uri)
    plugins = plugin_schemes()
    if scheme not in MLFLOW_SCHEMES and scheme not in plugins:
        extra = f"; installed plugins: {', '.join(plugins)}" if plugins else ""
        raise ConfigError(f"{key} = {uri!r}: MLflow has no tracking store for the scheme {scheme!r}; "
                          f"allowed: {_ALLOWED_URIS}{extra}")
    if scheme in FILE_SCHEMES and os.environ.get("MLFLOW_ALLOW_FILE_STORE", "").lower() not in ("true", "1"):
        raise ConfigError(f"{key} = {uri!r}: MLflow 3 refuses its file store (maintenance mode) unless "
                          f"MLFLOW_ALLOW_FILE_STORE=true; use sqlite:///PATH/mlflow.db")
    if scheme == "sqlite":
        path = uri.split("?", 1)[0].removeprefix("sqlite:///") if uri.startswith("sqlite:///") else ""
        if not path or path == ":memory:":
            raise ConfigError(f"{key} = {uri!r}: trials run in other processes and need a SQLite file "
                              f"they can open; allowed: sqlite:///PATH/mlflow.db")
        folder = Path(path).parent
        if not folder.is_dir():
            raise ConfigError(f"{key} = {uri!r}: the folder {folder} does not exist; create it or give "
                              f"another path")


SEARCH_ENDPOINT = "/api/2.0/mlflow/experiments/search"  # read-only, any authenticated user may call it


def _request_reason(err: BaseException) -> str:
    text = str(err)
    for marker, reason in (("Connection refused", "connection refused"), ("timed out", "no reply"),
                           ("Failed to resolve", "host not found"), ("Name or service not known", "host not found"),
                           ("SSL", "TLS handshake failed")):
        if marker in text:
            return reason
    return last_line(text, 200)


def check_tracking_server(uri: str, timeout: float | None = None) -> None:
    """An ``http(s)`` tracking server answers ``GET /api/2.0/mlflow/experiments/search``
    within ``timeout`` seconds, sent as MLflow's client sends it (its credentials from
    MLFLOW_TRACKING_USERNAME/PASSWORD or _TOKEN, its TLS settings) but never retried,
    and does not refuse the credentials (401, 403) or the path (404)."""
    timeout = TRACKING_TIMEOUT_S if timeout is None else timeout  # the module's limit at call time
    if uri_scheme(uri) not in SERVER_SCHEMES:
        return

    def request() -> int:
        from mlflow.utils.credentials import get_default_host_creds
        from mlflow.utils.rest_utils import http_request

        return http_request(get_default_host_creds(uri), SEARCH_ENDPOINT, "GET", max_retries=0, retry_codes=(),
                            timeout=timeout, params={"max_results": 1}).status_code

    try:
        status = bounded(request, timeout, "tracking-server-check")
    except TimedOut:
        reason = "no reply"
    except Exception as err:  # MlflowException wrapping requests' errors
        reason = _request_reason(err)
    else:
        if status in (401, 403):
            raise ConfigError(f"tracking server {uri} refused samtune's credentials (HTTP {status}); set "
                              f"MLFLOW_TRACKING_USERNAME and MLFLOW_TRACKING_PASSWORD (or MLFLOW_TRACKING_TOKEN) "
                              f"to an account of this server")
        if status == 404:
            raise ConfigError(f"tracking server {uri} answered HTTP 404 to GET {SEARCH_ENDPOINT}: not an MLflow "
                              f"tracking server at that URI (the URI is the one `mlflow server` prints)")
        return
    raise ConfigError(f"tracking server {uri} did not answer within {timeout:g} s ({reason}); start it "
                      f"(mlflow server --host 127.0.0.1 --port PORT) or give another --tracking-uri")
