"""`samtune search` as a user runs it: Ctrl-C then --resume, and a real
single-node Ray cluster on 127.0.0.1 reached through --address."""

import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest
import yaml
from mlflow.tracking import MlflowClient

pytestmark = pytest.mark.slow

LOOPBACK_ENV = {"RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0", "RAY_AUTH_MODE": "disabled",
                "RAY_USAGE_STATS_ENABLED": "0", "MLFLOW_DISABLE_TELEMETRY": "true"}


def write_spec(folder: Path, name: str, samples: int, epochs: int, concurrency: int = 1) -> Path:
    spec = {"name": name, "samples": samples, "concurrency": concurrency, "seed": 5,
            "resources": {"cpu": 1},
            "trial": {"epochs": epochs, "batch_size": 64, "batch_growth_ratio": 1.0,
                      "batch_stages": 1, "train_eval_examples": 256, "sharpness": []},
            "search": {"rho": {"loguniform": [0.01, 0.3]}}}
    path = folder / f"{name}.yaml"
    path.write_text(yaml.safe_dump(spec))
    return path


def samtune(args, cwd, **kwargs):
    env = dict(os.environ, **LOOPBACK_ENV)
    return subprocess.Popen([sys.executable, "-m", "samtune.cli", *args], cwd=cwd, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, **kwargs)


def trial_runs(uri, name):
    client = MlflowClient(uri)
    experiment = client.get_experiment_by_name(name)
    if experiment is None:
        return []
    return [r for r in client.search_runs([experiment.experiment_id], max_results=1000)
            if r.data.tags.get("samtune.kind") == "trial"]


def test_interrupt_then_resume_loses_and_duplicates_nothing(tmp_path, mlflow_uri):
    spec = write_spec(tmp_path, "resume-e2e", samples=4, epochs=3)
    uri = mlflow_uri
    # this test polls the store while the search writes it: create its schema first, as
    # two processes migrating one fresh SQLite file at once break each other
    MlflowClient(uri).search_experiments()
    process = samtune(["search", str(spec), "--tracking-uri", uri], cwd=tmp_path)
    deadline = time.monotonic() + 400
    while time.monotonic() < deadline and process.poll() is None:
        done = [r for r in trial_runs(uri, "resume-e2e") if r.data.tags.get("samtune.status") == "completed"]
        if done:
            break
        time.sleep(1)  # polling MLflow for the first finished trial
    assert process.poll() is None, process.communicate()[0]
    process.send_signal(signal.SIGINT)
    output, _ = process.communicate(timeout=300)
    interrupted = trial_runs(uri, "resume-e2e")
    assert all(r.info.status != "RUNNING" for r in interrupted), output
    assert len(interrupted) < 4 or any(r.data.tags["samtune.status"] != "completed" for r in interrupted)

    resumed = samtune(["search", str(spec), "--tracking-uri", uri, "--resume"], cwd=tmp_path)
    output, _ = resumed.communicate(timeout=600)
    assert resumed.returncode == 0, output
    runs = trial_runs(uri, "resume-e2e")
    ids = [r.data.tags["samtune.trial_id"] for r in runs]
    assert len(ids) == 4 and len(set(ids)) == 4, ids
    client = MlflowClient(uri)
    for run in runs:
        assert run.info.status == "FINISHED" and run.data.tags["samtune.status"] == "completed"
        history = client.get_metric_history(run.info.run_id, "test_error")
        assert {m.step for m in history} == {1, 2, 3}
        # an epoch replayed from a checkpoint is recorded again with the same value,
        # because a resumed trial is identical to an uninterrupted one
        by_step = {}
        for m in history:
            by_step.setdefault(m.step, set()).add(m.value)
        assert all(len(values) == 1 for values in by_step.values()), by_step
    parents = [r for r in client.search_runs([runs[0].info.experiment_id])
               if r.data.tags.get("samtune.kind") == "search"]
    assert len(parents) == 1 and parents[0].info.status == "FINISHED"


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _processes_mentioning(text: str) -> list[int]:
    pids = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if text in cmdline:
            pids.append(int(entry.name))
    return pids


def _alive(pid: int) -> bool:
    """Running: a process that exited but was never reaped (a zombie) is not."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state != "Z"


def _stop(pids: list[int]) -> None:
    """SIGTERM, then SIGKILL for what is still running after a grace period (some of
    Ray's processes outlive a SIGTERM by more than 20 s)."""
    for sig, grace in ((signal.SIGTERM, 5), (signal.SIGKILL, 20)):
        for pid in pids:
            try:
                os.kill(pid, sig)
            except ProcessLookupError:
                pass
        deadline = time.monotonic() + grace
        while time.monotonic() < deadline and any(_alive(p) for p in pids):
            time.sleep(0.2)  # polling /proc for the processes to end


@pytest.fixture
def loopback_cluster():
    """A real `ray start --head` on 127.0.0.1 with its own ports and temp dir;
    torn down by PID (only the processes that mention our temp dir)."""
    temp_dir = tempfile.mkdtemp(prefix="rt", dir="/tmp")  # short: Ray's socket paths are length-limited
    port = _free_port()
    env = dict(os.environ, **LOOPBACK_ENV)
    ray_bin = Path(sys.executable).parent / "ray"
    command = [str(ray_bin), "start", "--head", f"--port={port}", "--num-cpus=2",
               "--include-dashboard=false", "--node-ip-address=127.0.0.1",
               f"--temp-dir={temp_dir}", "--object-store-memory=268435456",
               f"--dashboard-agent-listen-port={_free_port()}", "--disable-usage-stats"]
    started = subprocess.run(command, env=env, capture_output=True, text=True, timeout=180)
    try:
        assert started.returncode == 0, started.stdout + started.stderr
        yield f"127.0.0.1:{port}"
    finally:
        _stop(_processes_mentioning(temp_dir))


def test_search_on_a_ray_cluster_through_address(tmp_path, loopback_cluster, mlflow_uri):
    spec = write_spec(tmp_path, "cluster-e2e", samples=2, epochs=2, concurrency=2)
    uri = mlflow_uri
    process = samtune(["search", str(spec), "--tracking-uri", uri, "--address", loopback_cluster,
                       "--storage", str(tmp_path / "shared")], cwd=tmp_path)
    output, _ = process.communicate(timeout=600)
    assert process.returncode == 0, output
    runs = trial_runs(uri, "cluster-e2e")
    assert len(runs) == 2 and all(r.data.tags["samtune.status"] == "completed" for r in runs)
    assert any((tmp_path / "shared").iterdir())  # checkpoints went to --storage
