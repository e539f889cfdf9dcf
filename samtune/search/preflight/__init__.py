"""Checks made before a search launches anything, one module per concern:
:mod:`.tracking` (the tracking store), :mod:`.storage` (Ray's storage folder), :mod:`.data` (data sets present),
:mod:`.batches` (batch sizes, over the trial values of :mod:`.variants`) and
:mod:`.cluster` (Ray address, connection, resources, workers, device).

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
3. :func:`check_storage`: a local ``--storage`` folder can be created and written.
4. :func:`check_trial_data`, that is :func:`check_device_names`, :func:`check_data` and
   :func:`check_batch_sizes`: the device is ``auto``, ``cpu``, ``cuda`` or ``cuda:N``;
   every data set a trial may load is present (files looked for the way
   ``samtune.data``'s loaders look, nothing read); every batch a trial may use -- fixed,
   grid cell or sampled, the last stage of a growing batch included, the upper bounds
   of Optuna distributions -- fits the training split.  Disk only, before Ray starts.
5. :func:`resolve_ray_address` and :func:`check_ray_address`: ``--address`` (else
   ``$RAY_ADDRESS``; ``auto`` resolved the way Ray resolves it) accepts a TCP
   connection within :data:`RAY_CONNECT_TIMEOUT_S`; then :func:`connect_ray` runs
   ``ray.init`` in a worker thread and gives up after :data:`RAY_INIT_TIMEOUT_S`
   (Ray retries an unanswered GCS for many minutes).  A local Ray is started by
   ``ray.init`` in the main thread, bounded by Ray's own start-up timeouts.
6. After ``ray.init``: :func:`check_resources` (some alive node has the CPUs and
   GPUs one trial asks for, a fraction of a GPU included; otherwise Tune would wait
   forever), :func:`check_workers` (the cluster places every worker of a data-parallel
   trial) and :func:`check_device` (``cuda`` needs GPUs in the cluster and
   ``resources.gpu > 0``).  run_search shuts Ray down again if it started it.

On a cluster the driver makes the data checks, under the path the trials will
read (the resolved ``data_dir``, the absolute image-folder path): a multi-node
cluster must have that path on a shared folder, the same on every node, and the
error for a missing data set says so.  A Ray Client driver (``ray://``) runs
elsewhere and skips the presence checks.  The resource check reads the nodes alive
now; an autoscaling cluster that would add a larger node later is refused too.
"""

from __future__ import annotations

from samtune.data.catalogue import TRAIN_SIZES
from samtune.search.preflight.batches import check_batch_sizes, largest_batch
from samtune.search.preflight.cluster import (
    RAY_CONNECT_TIMEOUT_S,
    RAY_INIT_TIMEOUT_S,
    RayAddress,
    check_device,
    check_device_names,
    check_ray_address,
    check_resources,
    check_workers,
    cluster_nodes,
    connect_ray,
    resolve_ray_address,
)
from samtune.search.preflight.data import check_data, check_dataset_present, imagefolder_train_size
from samtune.search.preflight.shared import last_line
from samtune.search.preflight.storage import check_storage
from samtune.search.preflight.tracking import (
    MLFLOW_SCHEMES,
    SERVER_SCHEMES,
    TRACKING_TIMEOUT_S,
    check_tracking_server,
    check_tracking_uri,
    plugin_schemes,
    uri_scheme,
)
from samtune.search.preflight.variants import Variant, variants
from samtune.spec import SearchSpec


def check_trial_data(spec: SearchSpec, *, cluster: bool = False, client: bool = False) -> None:
    """Device names, data presence and batch sizes: everything that needs neither Ray nor
    MLflow.  A Ray Client driver (``client``, ray://) does not share the cluster's disk:
    it checks the batch sizes of the built-in data sets only."""
    check_device_names(spec)
    if client:
        check_batch_sizes(spec, TRAIN_SIZES)
    else:
        check_batch_sizes(spec, check_data(spec, cluster=cluster))


__all__ = [
    "MLFLOW_SCHEMES", "RAY_CONNECT_TIMEOUT_S", "RAY_INIT_TIMEOUT_S",
    "SERVER_SCHEMES", "TRACKING_TIMEOUT_S",
    "RayAddress", "Variant",
    "check_batch_sizes", "check_data", "check_dataset_present", "check_device", "check_device_names",
    "check_ray_address", "check_resources", "check_storage", "check_tracking_server", "check_tracking_uri",
    "check_trial_data",
    "check_workers", "cluster_nodes", "connect_ray", "imagefolder_train_size", "largest_batch",
    "last_line", "plugin_schemes", "resolve_ray_address", "uri_scheme", "variants",
]
