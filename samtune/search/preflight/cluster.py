"""The cluster: ``--address`` (else ``$RAY_ADDRESS``) names a Ray cluster that answers,
``ray.init`` connects within a limit, some node holds one trial's resources (all the
workers of a data-parallel trial at once), and ``trial.device`` names a device the
trials will have.

Ray is imported only inside the functions that need it.  The resource checks read
the nodes alive now; an autoscaling cluster that would add a larger node later is
refused too.
"""

from __future__ import annotations

import math
import os
import re
import signal
import socket
import sys
import threading
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from samtune.config import ConfigError
from samtune.search.preflight.shared import TimedOut, bounded, last_line
from samtune.spec import SearchSpec

RAY_CONNECT_TIMEOUT_S = 10.0
RAY_INIT_TIMEOUT_S = 60.0


def check_device_names(spec: SearchSpec) -> None:
    """``trial.device`` is ``auto``, ``cpu``, ``cuda`` or ``cuda:N`` (torch's spelling)."""
    device = spec.trial.get("device")
    if device is not None and not re.fullmatch(r"auto|cpu|cuda(:\d+)?", str(device)):
        raise ConfigError(f"trial.device = {device!r}: not a device; allowed: auto, cpu, cuda, cuda:N")


def _reason(err: BaseException) -> str:
    reason = getattr(err, "reason", None) or err
    if isinstance(reason, ConnectionRefusedError):
        return "connection refused"
    if isinstance(reason, (socket.timeout, TimeoutError)):
        return "timed out"
    return str(reason) or type(reason).__name__


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


def check_ray_address(target: RayAddress, timeout: float | None = None) -> None:
    """The cluster's port accepts a TCP connection within ``timeout`` seconds."""
    timeout = RAY_CONNECT_TIMEOUT_S if timeout is None else timeout

    def connect() -> None:
        with socket.create_connection((target.host, target.port), timeout=timeout):
            pass

    try:
        bounded(connect, timeout, "ray-address-check")
    except TimedOut:
        reason = "no reply"
    except OSError as err:
        reason = _reason(err)
    else:
        return
    raise ConfigError(f"{target.label}: the Ray cluster at {target.host}:{target.port} did not answer within "
                      f"{timeout:g} s ({reason}); start it with `ray start --head --port={target.port}`, "
                      f"or leave --address out for a local Ray")


def connect_ray(target: RayAddress, timeout: float | None = None) -> None:
    """``ray.init(address=...)`` given at most ``timeout`` seconds; a failure to
    connect is a ConfigError with Ray's reason."""
    timeout = RAY_INIT_TIMEOUT_S if timeout is None else timeout
    import ray

    try:
        bounded(lambda: ray.init(address=target.init, log_to_driver=False), timeout, "ray-init")
    except TimedOut:
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


def check_workers(resources: Mapping[str, float], workers: int, nodes: list[Mapping[str, Any]],
                  key: str = "resources.workers") -> None:
    """The cluster holds all ``workers`` of one data-parallel trial at once (Ray Train
    starts a trial, or a stage of one, only when every worker is placed), each worker on
    one node; ``key`` is the setting that asks for them."""
    if workers == 1:
        return
    cpu, gpu = float(resources.get("cpu", 1)), float(resources.get("gpu", 0))
    places = sum(min(math.floor(n.get("CPU", 0) / cpu + 1e-9),
                     math.floor(n.get("GPU", 0) / gpu + 1e-9) if gpu else math.inf) for n in nodes)
    if places < workers:
        name = key.rsplit(".", 1)[-1]
        raise ConfigError(f"{key} = {workers}: the Ray cluster can place only {places:g} workers of "
                          f"{cpu:g} CPU and {gpu:g} GPU each (nodes: {'; '.join(map(_node_text, nodes))}), so no "
                          f"trial could ever start; allowed: {name} <= {places:g}, or less cpu/gpu per worker")


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
