"""Checks made before a search launches anything.

:func:`~samtune.search.runner.run_search` calls them in this order, before it
creates the MLflow experiment or the parent run, so a refused search records
nothing.  Each raises :class:`~samtune.config.ConfigError` naming the key, the
value and what is allowed (the CLI exits with status 2), and every wait has a limit:

1. :func:`check_tracking_uri`: the URI's scheme has an MLflow tracking store
   (MLflow 3.17's registry, plus installed plugins); a file store needs
   ``MLFLOW_ALLOW_FILE_STORE=true``; a SQLite file's folder exists.  No I/O but a stat.
2. :func:`check_tracking_server`: an ``http(s)`` tracking server answers a read-only
   request (``experiments/search``, sent with the credentials MLflow's client uses,
   not retried) within :data:`TRACKING_TIMEOUT_S`, and accepts the credentials.
3. :func:`check_device_names`, :func:`check_data` and :func:`check_batch_sizes`:
   the device is ``auto``, ``cpu``, ``cuda`` or ``cuda:N``; every data set a trial may
   load is present (files looked for the way ``samtune.data``'s loaders look,
   nothing read); every batch a trial may use -- fixed, grid cell or sampled, the
   last stage of a growing batch included, the upper bounds of Optuna
   distributions -- fits the training split.  Disk only, before Ray starts.
4. :func:`resolve_ray_address` and :func:`check_ray_address`: ``--address`` (else
   ``$RAY_ADDRESS``; ``auto`` resolved the way Ray resolves it) accepts a TCP
   connection within :data:`RAY_CONNECT_TIMEOUT_S`; then :func:`connect_ray` runs
   ``ray.init`` in a worker thread and gives up after :data:`RAY_INIT_TIMEOUT_S`
   (Ray retries an unanswered GCS for many minutes).  A local Ray is started by
   ``ray.init`` in the main thread, bounded by Ray's own start-up timeouts.
5. After ``ray.init``: :func:`check_resources` (some alive node has the CPUs and
   GPUs one trial asks for, a fraction of a GPU included; otherwise Tune would wait
   forever) and :func:`check_device` (``cuda`` needs GPUs in the cluster and
   ``resources.gpu > 0``).  run_search shuts Ray down again if it started it.

On a cluster the driver makes the data checks, under the path the trials will
read (the resolved ``data_dir``, the absolute image-folder path): a multi-node
cluster must have that path on a shared folder, the same on every node, and the
error for a missing data set says so.  A Ray Client driver (``ray://``) runs
elsewhere and skips the presence checks.  The resource check reads the nodes alive
now; an autoscaling cluster that would add a larger node later is refused too.
"""

from __future__ import annotations

import math
import os
import re
import signal
import socket
import sys
import threading
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Any, TypeVar

from samtune import schema
from samtune.config import ConfigError, TrialConfig
from samtune.data_files import IMAGENET_FOLDER, TINY_IMAGENET_FOLDER, data_root, imagenet_missing, tiny_imagenet_missing
from samtune.spec import Choice, SearchSpec

TRACKING_TIMEOUT_S = 10.0
RAY_CONNECT_TIMEOUT_S = 10.0
RAY_INIT_TIMEOUT_S = 60.0

# -- MLflow tracking URI --------------------------------------------------------------
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


T = TypeVar("T")


class _TimedOut(Exception):
    pass


def _bounded(fn: Callable[[], T], timeout: float, name: str) -> T:
    """``fn()`` in a daemon thread; raises :class:`_TimedOut` if it has not returned
    within ``timeout`` seconds (the thread is left behind, and dies with the process)."""
    box: dict[str, Any] = {}

    def run() -> None:
        try:
            box["value"] = fn()
        except BaseException as err:  # handed to the caller
            box["error"] = err

    thread = threading.Thread(target=run, name=name, daemon=True)
    thread.start()
    thread.join(timeout)
    if thread.is_alive():
        raise _TimedOut
    if "error" in box:
        raise box["error"]
    return box["value"]


def _reason(err: BaseException) -> str:
    reason = getattr(err, "reason", None) or err
    if isinstance(reason, ConnectionRefusedError):
        return "connection refused"
    if isinstance(reason, (socket.timeout, TimeoutError)):
        return "timed out"
    return str(reason) or type(reason).__name__


SEARCH_ENDPOINT = "/api/2.0/mlflow/experiments/search"  # read-only, any authenticated user may call it


def _request_reason(err: BaseException) -> str:
    text = str(err)
    for marker, reason in (("Connection refused", "connection refused"), ("timed out", "no reply"),
                           ("Failed to resolve", "host not found"), ("Name or service not known", "host not found"),
                           ("SSL", "TLS handshake failed")):
        if marker in text:
            return reason
    return last_line(text, 200)


def check_tracking_server(uri: str, timeout: float = TRACKING_TIMEOUT_S) -> None:
    """An ``http(s)`` tracking server answers ``GET /api/2.0/mlflow/experiments/search``
    within ``timeout`` seconds, sent as MLflow's client sends it (its credentials from
    MLFLOW_TRACKING_USERNAME/PASSWORD or _TOKEN, its TLS settings) but never retried,
    and does not refuse the credentials (401, 403) or the path (404)."""
    if uri_scheme(uri) not in SERVER_SCHEMES:
        return

    def request() -> int:
        from mlflow.utils.credentials import get_default_host_creds
        from mlflow.utils.rest_utils import http_request

        return http_request(get_default_host_creds(uri), SEARCH_ENDPOINT, "GET", max_retries=0, retry_codes=(),
                            timeout=timeout, params={"max_results": 1}).status_code

    try:
        status = _bounded(request, timeout, "tracking-server-check")
    except _TimedOut:
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


# -- what the trials may run with -------------------------------------------------------
BATCH_KEYS = ("batch_size", "batch_growth_ratio", "batch_stages", "batch_max", "epochs")


def _default(key: str) -> Any:
    return TrialConfig.model_fields[key].default


@dataclass(frozen=True)
class Variant:
    """Trial values the checks read, and where they come from (for messages)."""

    where: str
    values: Mapping[str, Any]
    searched: tuple[str, ...] = ()  # keys set to a searched choice or upper bound

    def get(self, key: str) -> Any:
        return self.values.get(key, _default(key))


def _upper(dist) -> Any:
    if isinstance(dist, Choice):
        if None in dist.values:
            return None  # batch_max: None is no cap, the largest
        return max(v for v in dist.values if isinstance(v, (int, float)) and not isinstance(v, bool))
    return dist.values[1]


def variants(spec: SearchSpec) -> list[Variant]:
    """The trial values the checks must hold for: every grid cell; for an Optuna search
    the fixed values with each searched data set and each searched batch key at its
    upper bound (``when`` conditions ignored); else the fixed trial."""
    if spec.grid:
        import itertools

        axes = spec.grid_axes()
        combos = itertools.product(*axes.values())
        return [Variant("grid cell {" + ", ".join(f"{k}: {v}" for k, v in zip(axes, combo, strict=True)) + "}",
                        cell) for combo, cell in zip(combos, spec.cells(), strict=True)]
    if not spec.search:
        return [Variant("trial", dict(spec.trial))]
    searched = {dist.key: dist for dist in spec.search}
    base = dict(spec.trial)
    bounds = tuple(key for key in BATCH_KEYS if key in searched)
    for key in bounds:
        base[key] = _upper(searched[key])
    if isinstance(searched.get("dataset"), Choice):
        return [Variant("search", {**base, "dataset": dataset}, (*bounds, "dataset"))
                for dataset in searched["dataset"].values]
    return [Variant("search", base, bounds)]


def _key(variant: Variant, key: str) -> str:
    """``trial.batch_size``, ``search.batch_size`` or ``grid cell {...}: batch_size``."""
    if variant.where == "trial" or (variant.where == "search" and key not in variant.searched):
        return f"trial.{key}"
    if variant.where == "search":
        return f"search.{key}"
    return f"{variant.where}: {key}"


def check_device_names(spec: SearchSpec) -> None:
    """``trial.device`` is ``auto``, ``cpu``, ``cuda`` or ``cuda:N`` (torch's spelling)."""
    device = spec.trial.get("device")
    if device is not None and not re.fullmatch(r"auto|cpu|cuda(:\d+)?", str(device)):
        raise ConfigError(f"trial.device = {device!r}: not a device; allowed: auto, cpu, cuda, cuda:N")


# -- data --------------------------------------------------------------------------------
# What samtune.data's loaders look for (tests/test_preflight.py holds these against
# samtune.data and torchvision).
CIFAR_FILES = {
    "cifar10": ("cifar-10-batches-py", "CIFAR10",
                ("data_batch_1", "data_batch_2", "data_batch_3", "data_batch_4", "data_batch_5",
                 "test_batch", "batches.meta")),
    "cifar100": ("cifar-100-python", "CIFAR100", ("train", "test", "meta")),
}
IMG_EXTENSIONS = ('.jpg', '.jpeg', '.png', '.ppm', '.bmp', '.pgm', '.tif', '.tiff', '.webp')  # torchvision's


def _shared_hint(cluster: bool) -> str:
    return (" The driver checks the path the trials will read: on a multi-node Ray cluster it must be "
            "a shared folder, the same path on every node." if cluster else "")


def _images(folder: Path) -> Iterable[Path]:
    for root, _, names in os.walk(folder, followlinks=True):
        for name in names:
            if name.lower().endswith(IMG_EXTENSIONS):
                yield Path(root) / name


def imagefolder_train_size(dataset: str, *, cluster: bool = False, key: str = "trial.dataset") -> int:
    """Check an ``imagefolder:PATH`` the way ``samtune.data.load_imagefolder`` reads it
    (``train/<class>/*``, ``test/<class>/*``, test classes among the train classes,
    every train class and the test split with an image); returns the train split's size."""
    # resolved as samtune.search.context.hyperparameters resolves it for the trials
    folder = Path(dataset.removeprefix(schema.IMAGEFOLDER_PREFIX)).resolve()
    train_dir, test_dir = folder / "train", folder / "test"
    where = f"{key} = {dataset!r}"
    if not train_dir.is_dir() or not test_dir.is_dir():
        raise ConfigError(f"{where}: no image folder at {folder}: expected {train_dir}/<class>/* and "
                          f"{test_dir}/<class>/* (torchvision ImageFolder layout).{_shared_hint(cluster)}")
    classes = sorted(entry.name for entry in os.scandir(train_dir) if entry.is_dir())
    if not classes:
        raise ConfigError(f"{where}: {train_dir} has no class folders; expected {train_dir}/<class>/*")
    test_classes = sorted(entry.name for entry in os.scandir(test_dir) if entry.is_dir())
    unknown = sorted(set(test_classes) - set(classes))
    if unknown:
        raise ConfigError(f"{where}: {test_dir} has classes with no train folder: {unknown}; "
                          f"train classes are {classes}")
    counts = {name: sum(1 for _ in _images(train_dir / name)) for name in classes}
    empty = [name for name, count in counts.items() if not count]
    if empty:
        raise ConfigError(f"{where}: no images with extensions {', '.join(IMG_EXTENSIONS)} in the train "
                          f"class folder(s) {', '.join(empty)} under {train_dir}")
    if not any(True for name in test_classes for _ in _images(test_dir / name)):
        raise ConfigError(f"{where}: no images with extensions {', '.join(IMG_EXTENSIONS)} under {test_dir}")
    return sum(counts.values())


def check_dataset_present(dataset: str, root: Path, *, download: bool = False, cluster: bool = False,
                          key: str = "trial.dataset") -> int:
    """A data set's files are where ``samtune.data`` looks for them (a built-in set
    under ``root``, the resolved data_dir; an image folder at its path), nothing read;
    returns its training-split size.  CIFAR with ``download`` is fetched by the trial."""
    where = f"{key} = {dataset!r}"
    hint = (f"trial.data_dir (else $SAMTUNE_DATA, else ./data) resolves to {root}."
            f"{_shared_hint(cluster)}")
    if dataset.startswith(schema.IMAGEFOLDER_PREFIX):
        return imagefolder_train_size(dataset, cluster=cluster, key=key)
    if dataset in CIFAR_FILES and not download:
        base, class_name, files = CIFAR_FILES[dataset]
        folder = root / base
        if not folder.is_dir():
            raise ConfigError(f"{where}: {dataset} not found: looked for {folder} (torchvision's {class_name} "
                              f"format). To download it, --set trial.download=true; or point trial.data_dir "
                              f"/ $SAMTUNE_DATA at the folder that contains {base}. {hint}")
        missing = [name for name in files if not (folder / name).is_file()]
        if missing:
            raise ConfigError(f"{where}: {dataset} at {folder} is incomplete: {', '.join(missing)} missing. "
                              f"Delete {folder} and --set trial.download=true. {hint}")
    elif dataset == "tiny-imagenet":
        problem = tiny_imagenet_missing(root)
        if problem:
            raise ConfigError(f"{where}: {problem}, or point trial.data_dir / $SAMTUNE_DATA at the folder "
                              f"that contains {TINY_IMAGENET_FOLDER}. {hint}")
        train_dir = root / TINY_IMAGENET_FOLDER / "train"
        if not any(entry.is_dir() for entry in os.scandir(train_dir)):
            raise ConfigError(f"{where}: {train_dir} has no class folders. {hint}")
    elif dataset == "imagenet":
        problem = imagenet_missing(root)
        if problem:
            raise ConfigError(f"{where}: {problem}; point trial.data_dir / $SAMTUNE_DATA at the folder that "
                              f"contains {IMAGENET_FOLDER}. {hint}")
    return schema.DATASET_TRAIN_SIZES[dataset]


def check_data(spec: SearchSpec, *, cluster: bool = False) -> dict[str, int]:
    """Every data set a trial may load is present; returns each one's training-split size."""
    root = data_root(spec.trial.get("data_dir")).resolve()  # a run setting: the same in every trial
    download = bool(spec.trial.get("download", False))
    sizes: dict[str, int] = {}
    for variant in variants(spec):
        dataset = str(variant.get("dataset"))
        if dataset not in sizes:
            sizes[dataset] = check_dataset_present(dataset, root, download=download, cluster=cluster,
                                                   key=_key(variant, "dataset"))
    return sizes


def largest_batch(values: Variant) -> int:
    """The last stage's batch, ``min(batch_max, round(batch_size * ratio^(stages-1)))``,
    stages capped by epochs (a trial reaches its last stage in its last epoch)."""
    size, ratio = int(values.get("batch_size")), float(values.get("batch_growth_ratio"))
    stages = max(1, min(int(values.get("batch_stages")), int(values.get("epochs"))))
    cap = values.get("batch_max")
    largest = round(size * ratio ** (stages - 1))
    return max(size, min(largest, int(cap))) if cap is not None else largest


def check_batch_sizes(spec: SearchSpec, sizes: Mapping[str, int]) -> None:
    """Every batch a trial may train with fits its training split (the loader drops
    the last partial batch, so a larger batch leaves an epoch with none)."""
    for variant in variants(spec):
        dataset = str(variant.get("dataset"))
        n_train = sizes.get(dataset)
        largest = largest_batch(variant)
        if n_train is None or largest <= n_train:  # None: an image folder the driver cannot see
            continue
        size = variant.get("batch_size")
        what = f"{_key(variant, 'batch_size')} = {size}"
        if "batch_size" in variant.searched:
            what += " (its upper bound)"
        if largest != size:
            settings = ", ".join(f"{k} = {variant.get(k)}" for k in ("batch_growth_ratio", "batch_stages",
                                                                     "batch_max", "epochs"))
            what += f" grows to {largest} in its last stage ({settings})"
        raise ConfigError(
            f"{what}: more than the {n_train} training examples of {dataset}, so an epoch would have no "
            f"batch (the last partial batch is dropped); allowed: a batch of at most {n_train}"
            + ("; lower batch_size, batch_growth_ratio or batch_stages, or set batch_max"
               if largest != size else ""))


def check_trial_data(spec: SearchSpec, *, cluster: bool = False, client: bool = False) -> None:
    """Device names, data presence and batch sizes: everything that needs neither Ray nor
    MLflow.  A Ray Client driver (``client``, ray://) does not share the cluster's disk:
    it checks the batch sizes of the built-in data sets only."""
    check_device_names(spec)
    if client:
        check_batch_sizes(spec, schema.DATASET_TRAIN_SIZES)
    else:
        check_batch_sizes(spec, check_data(spec, cluster=cluster))


# -- Ray ------------------------------------------------------------------------------------
@dataclass(frozen=True)
class RayAddress:
    """Where to attach: ``init`` is what ``ray.init(address=...)`` gets, ``host:port``
    what is probed, ``label`` how the user gave it."""

    init: str
    host: str
    port: int
    label: str


def resolve_ray_address(address: str | None) -> RayAddress | None:
    """``--address`` (else ``$RAY_ADDRESS``) as Ray would use it; None for a local Ray.
    ``auto`` is resolved by Ray's own lookup ($RAY_ADDRESS, then the address file of
    the last ``ray start``, then a running GCS process)."""
    label = f"--address {address}"
    if address is None:
        address = os.environ.get("RAY_ADDRESS") or None
        label = f"$RAY_ADDRESS = {address}"
    if address is None or address == "local":
        return None
    init = address
    if address == "auto":
        from ray._private.services import canonicalize_bootstrap_address_or_die

        try:
            address = canonicalize_bootstrap_address_or_die("auto")
        except (ConnectionError, ValueError) as err:
            raise ConfigError(f"--address auto: no running Ray cluster found ({err}); start one with "
                              f"`ray start --head`, give HOST:PORT, or leave --address out for a "
                              f"local Ray") from None
        init = address
    match = re.fullmatch(r"(?:ray://)?\[?([^\[\]]+?)\]?:(\d+)", address)
    if not match:
        raise ConfigError(f"{label}: not a Ray address; allowed: auto, HOST:PORT (the head's GCS port, "
                          f"ray start --head --port) or ray://HOST:PORT")
    return RayAddress(init, match.group(1), int(match.group(2)), label)


def check_ray_address(target: RayAddress, timeout: float = RAY_CONNECT_TIMEOUT_S) -> None:
    """The cluster's port accepts a TCP connection within ``timeout`` seconds."""
    def connect() -> None:
        with socket.create_connection((target.host, target.port), timeout=timeout):
            pass

    try:
        _bounded(connect, timeout, "ray-address-check")
    except _TimedOut:
        reason = "no reply"
    except OSError as err:
        reason = _reason(err)
    else:
        return
    raise ConfigError(f"{target.label}: the Ray cluster at {target.host}:{target.port} did not answer within "
                      f"{timeout:g} s ({reason}); start it with `ray start --head --port={target.port}`, "
                      f"or leave --address out for a local Ray")


def connect_ray(target: RayAddress, timeout: float = RAY_INIT_TIMEOUT_S) -> None:
    """``ray.init(address=...)`` given at most ``timeout`` seconds; a failure to
    connect is a ConfigError with Ray's reason."""
    import ray

    try:
        _bounded(lambda: ray.init(address=target.init, log_to_driver=False), timeout, "ray-init")
    except _TimedOut:
        raise ConfigError(f"{target.label}: ray.init did not connect to {target.host}:{target.port} within "
                          f"{timeout:g} s; is it a Ray head's GCS port (ray start --head --port), and do "
                          f"RAY_AUTH_MODE and RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER match the cluster's?") from None
    except (ConnectionError, RuntimeError, ValueError, TimeoutError) as err:
        raise ConfigError(f"{target.label}: ray.init could not connect: {last_line(str(err))}") from None
    if threading.current_thread() is threading.main_thread():
        # ray.init installs this only from the main thread
        signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(signum))


def cluster_nodes() -> list[dict[str, float]]:
    """Total resources of each alive node (``ray.nodes()``), with its address as ``node``."""
    import ray

    return [{"node": node.get("NodeManagerAddress", "?"), **node.get("Resources", {})}
            for node in ray.nodes() if node.get("Alive")]


def _node_text(node: Mapping[str, Any]) -> str:
    return f"{node.get('node', '?')}: {node.get('CPU', 0):g} CPU, {node.get('GPU', 0):g} GPU"


def check_resources(resources: Mapping[str, float], nodes: list[Mapping[str, Any]]) -> None:
    """Some alive node holds one trial's ``cpu`` and ``gpu`` (a fraction of one GPU
    needs a node with a GPU); otherwise Tune would wait for it forever."""
    cpu, gpu = float(resources.get("cpu", 1)), float(resources.get("gpu", 0))
    fits = [n for n in nodes if n.get("CPU", 0) >= cpu and n.get("GPU", 0) >= gpu]
    if fits:
        return
    have = "; ".join(map(_node_text, nodes)) or "no alive node"
    most_cpu = max((n.get("CPU", 0) for n in nodes), default=0)
    most_gpu = max((n.get("GPU", 0) for n in nodes), default=0)
    if gpu > most_gpu:
        key, value = "resources.gpu", resources.get("gpu")
        allowed = f"gpu <= {most_gpu:g}" if most_gpu else "gpu: 0, or leave gpu out (the cluster has no GPU)"
        what = f"{value:g} GPU" if gpu >= 1 else "a GPU"
    elif cpu > most_cpu:
        key, value, allowed = "resources.cpu", resources.get("cpu"), f"cpu <= {most_cpu:g}"
        what = f"{value:g} CPUs"
    else:
        key, value = "resources", dict(resources)
        allowed, what = "what one node has", f"{cpu:g} CPUs and {gpu:g} GPU together"
    raise ConfigError(f"{key} = {value}: no node of the Ray cluster has {what}, so no trial could ever "
                      f"start (nodes: {have}); allowed: {allowed}")


def check_workers(resources: Mapping[str, float], workers: int, nodes: list[Mapping[str, Any]]) -> None:
    """The cluster holds all ``workers`` of one data-parallel trial at once (Ray Train
    starts a trial only when every worker is placed), each worker on one node."""
    if workers == 1:
        return
    cpu, gpu = float(resources.get("cpu", 1)), float(resources.get("gpu", 0))
    places = sum(min(math.floor(n.get("CPU", 0) / cpu + 1e-9),
                     math.floor(n.get("GPU", 0) / gpu + 1e-9) if gpu else math.inf) for n in nodes)
    if places < workers:
        raise ConfigError(f"resources.workers = {workers}: the Ray cluster can place only {places:g} workers of "
                          f"{cpu:g} CPU and {gpu:g} GPU each (nodes: {'; '.join(map(_node_text, nodes))}), so no "
                          f"trial could ever start; allowed: workers <= {places:g}, or less cpu/gpu per worker")


def check_device(spec: SearchSpec, resources: Mapping[str, float], nodes: list[Mapping[str, Any]]) -> None:
    """``trial.device`` cuda/cuda:N needs GPUs in the cluster and ``resources.gpu > 0``,
    and N below the GPUs a trial sees (Ray sets CUDA_VISIBLE_DEVICES per trial)."""
    device = str(spec.trial.get("device", "auto"))
    if not device.startswith("cuda"):
        return
    gpus = sum(n.get("GPU", 0) for n in nodes)
    if gpus <= 0:
        raise ConfigError(f"trial.device = {device!r}: the Ray cluster has no GPU "
                          f"({'; '.join(map(_node_text, nodes)) or 'no alive node'}); allowed here: auto, cpu")
    gpu = float(resources.get("gpu", 0))
    if gpu <= 0:
        raise ConfigError(f"trial.device = {device!r} needs resources.gpu > 0 (now {gpu:g}); allowed: "
                          f"resources.gpu: 1 (or a fraction such as 0.5), or trial.device: cpu")
    index = int(device.partition(":")[2] or 0)
    visible = max(1, math.ceil(gpu))
    if index >= visible:
        raise ConfigError(f"trial.device = {device!r}: a trial sees {visible} GPU(s) (resources.gpu = {gpu:g}), "
                          f"numbered from 0; allowed: cuda, cuda:0" + (f"..cuda:{visible - 1}" if visible > 1 else ""))


def last_line(text: str, limit: int = 300) -> str:
    """The last non-empty line of ``text`` (an error's own message, after its traceback),
    cut to ``limit`` characters."""
    lines = [line.strip() for line in str(text).splitlines() if line.strip()]
    line = lines[-1] if lines else ""
    return line if len(line) <= limit else line[: limit - 3] + "..."
