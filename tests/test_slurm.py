"""deploy/samtune-search.sbatch under a real Slurm: a one-node cluster on this machine
(munged, slurmctld and slurmd from Debian's slurm-wlm and munge, all on 127.0.0.1, in a
temporary folder, started and stopped by PID; tests/servers.py), the script submitted
with ``sbatch`` as docs/how-to/slurm.md shows, against the PostgreSQL-backed MLflow server
of deploy/compose.yaml with credentials from a mode-600 file.  The job starts its Ray
head in an ``srun`` step, runs a two-trial digits search, stops the step, and ends
COMPLETED, its Ray step too; nothing it started is left running."""

import contextlib
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest
import servers
import yaml

pytestmark = pytest.mark.slow

SBATCH = Path(__file__).resolve().parent.parent / "deploy" / "samtune-search.sbatch"
USER = "samtune"
NAME = "slurm-e2e"
SPACE = {"name": NAME, "samples": 2, "concurrency": 2, "seed": 3, "resources": {"cpu": 1},
         "trial": {"epochs": 2, "batch_size": 64, "batch_growth_ratio": 1.0, "batch_stages": 1,
                   "train_eval_examples": 256, "sharpness": ["norm_param_l2"]},
         "search": {"rho": {"loguniform": [0.01, 0.3]}}}
JOB_TIMEOUT_S = 240
MARK = "SAMTUNE_SLURM_TEST"  # in the environment of every process the test's cluster starts


def _ours(root: Path) -> dict[int, str]:
    """PID -> name of every process whose environment carries our mark (the daemons,
    slurmstepd, the job's shell, its steps, Ray)."""
    import psutil

    found = {}
    for process in psutil.process_iter(["pid", "name"]):
        try:
            if process.environ().get(MARK) == str(root):
                found[process.pid] = process.info["name"]
        except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess, OSError):
            continue
    return found


def _running(pids) -> list[int]:
    import psutil

    alive = []
    for pid in pids:
        try:
            if psutil.Process(pid).status() != psutil.STATUS_ZOMBIE:
                alive.append(pid)
        except psutil.NoSuchProcess:
            continue
    return alive


def _submit(root: Path, cluster, server, submitted: list[str]) -> tuple[str, Path]:
    """``sbatch`` the script with the settings docs/how-to/slurm.md gives for a one-machine
    cluster on 127.0.0.1; returns the job id and its output file."""
    credentials = root / "mlflow.env"
    credentials.write_text(f"MLFLOW_TRACKING_USERNAME={USER}\nMLFLOW_TRACKING_PASSWORD={server.users[USER]}\n")
    credentials.chmod(0o600)
    space = root / "space.yaml"
    space.write_text(yaml.safe_dump(SPACE))
    job_env = cluster.env | {
        "SPACE": str(space), "TRACKING_URI": server.url, "STORAGE": str(root / "ray_results"),
        "VENV": sys.prefix, "CREDENTIALS": str(credentials), "HEAD_IP": "127.0.0.1",
        "RAY_PORT": str(servers.free_port()), "START_TIMEOUT_S": "120", "SAMTUNE_LOG_DIR": str(root / "logs"),
        "RAY_START_ARGS": f"--temp-dir={root / 'ray'} --object-store-memory=268435456 "
                          f"--dashboard-agent-listen-port={servers.free_port()}"}
    output = root / "job.out"
    done = subprocess.run(
        [shutil.which("sbatch", path=servers.SBIN_PATH), "--parsable", "--nodes=1", "--cpus-per-task=2",
         "--gpus-per-node=0", "--time=10", f"--chdir={root}", f"--output={output}", str(SBATCH)],
        env=job_env, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    job_id = done.stdout.strip().split(";")[0]
    submitted.append(job_id)
    return job_id, output


def _cancel(cluster, submitted: list[str]) -> None:
    """``scancel`` the job this test submitted if it has not ended, and wait (bounded) for it."""
    for job_id in submitted:
        subprocess.run([shutil.which("scancel", path=servers.SBIN_PATH), job_id], env=cluster.env,
                       capture_output=True, timeout=30)
        deadline = time.monotonic() + 60
        while cluster.job(job_id).get("JobState", "COMPLETED") not in servers.TERMINAL_JOB_STATES:
            if time.monotonic() > deadline:
                break
            time.sleep(1)  # polling Slurm for the cancelled job's end


def test_sbatch_runs_a_search_on_a_one_node_slurm_cluster(tmp_path, monkeypatch):
    if (reason := servers.slurm_missing()) is not None:
        pytest.skip(reason)
    from mlflow.tracking import MlflowClient

    started = time.monotonic()
    # short: munge's and Ray's socket paths are length-limited (Ray's temp dir is in it too)
    root = Path(tempfile.mkdtemp(prefix="st-slurm-"))
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MLFLOW_", "AWS_", "SLURM_", "PG"))}
    env |= {MARK: str(root), "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0", "RAY_AUTH_MODE": "disabled",
            "RAY_USAGE_STATS_ENABLED": "0", "MLFLOW_DISABLE_TELEMETRY": "true"}
    seen: dict[int, str] = {}
    submitted: list[str] = []  # the job, until it ended
    try:
        with contextlib.ExitStack() as stack:
            auth = stack.enter_context(servers.munge(root / "munge", env))
            cluster = stack.enter_context(servers.slurm(root / "slurm", auth, cpus=2, env=env))
            # on the way out, before the daemons stop: cancel our job if it still runs
            stack.callback(_cancel, cluster, submitted)
            db = stack.enter_context(servers.postgres())
            server = stack.enter_context(servers.mlflow_server(db, root / "mlflow"))
            server.create_user(USER)
            seen |= _ours(root) | {p.pid: name for name, p in cluster.daemons.items()}
            seen[auth.process.pid] = "munged"
            ready_s = time.monotonic() - started
            job_id, output = _submit(root, cluster, server, submitted)

            deadline = time.monotonic() + JOB_TIMEOUT_S
            state = ""
            while state not in servers.TERMINAL_JOB_STATES:
                assert time.monotonic() < deadline, (f"job {job_id} still {state} after {JOB_TIMEOUT_S} s:\n"
                                                     f"{servers._tail(output)}\n{cluster.logs()}")
                seen |= _ours(root)
                time.sleep(1)  # polling Slurm for the job's end
                state = cluster.job(job_id).get("JobState", "")
            submitted.clear()
            job = cluster.job(job_id)
            job_s = time.monotonic() - started - ready_s
            text = output.read_text(errors="replace")
            assert (job["JobState"], job["ExitCode"]) == ("COMPLETED", "0:0"), text + cluster.logs()
            assert "samtune search exited with 0" in text
            # the Ray head ran as a step of the job, and was stopped, not killed: its shell
            # exited 0 (the step COMPLETED) and Slurm cancelled nothing
            steps = re.findall(rf"^Ray step ray-head \(({job_id}\.\d+)\) exited with (\d+)$", text, re.M)
            assert len(steps) == 1 and steps[0][1] == "0", text
            slurmd_log = (cluster.folder / "slurmd.log").read_text(errors="replace")
            assert f"launch task StepId={steps[0][0]} " in slurmd_log
            for sign in ("CANCELLED AT", "task 0: Killed", "forcing job termination", "Some Ray subprocesses exited"):
                assert sign not in text and sign not in slurmd_log, sign
            assert "ray stopped on" in text
            # Ray ran on 127.0.0.1, in the step (its processes carried the job's mark)
            assert f"Ray head on {cluster.node} (127.0.0.1:" in text
            assert "'node:127.0.0.1': 1.0" in text
            assert "raylet" in seen.values(), seen

            # the search as MLflow recorded it, read back with the same user's credentials
            monkeypatch.setenv("MLFLOW_TRACKING_USERNAME", USER)
            monkeypatch.setenv("MLFLOW_TRACKING_PASSWORD", server.users[USER])
            client = MlflowClient(server.url)
            experiment = client.get_experiment_by_name(NAME)
            runs = client.search_runs([experiment.experiment_id], max_results=100)
            parents = [r for r in runs if r.data.tags.get("samtune.kind") == "search"]
            trials = [r for r in runs if r.data.tags.get("samtune.kind") == "trial"]
            assert len(parents) == 1 and parents[0].info.status == "FINISHED"
            assert len(trials) == 2, [r.info.run_name for r in trials]
            for run in trials:
                assert run.info.status == "FINISHED" and run.data.tags["samtune.status"] == "completed"
                assert run.data.tags["mlflow.parentRunId"] == parents[0].info.run_id
                assert [m.step for m in client.get_metric_history(run.info.run_id, "test_error")] == [1, 2]
            assert server.users[USER] not in text  # the password never reached the job's output
    finally:
        # every process the cluster started (daemons, slurmstepd, the job, Ray) has ended
        import psutil

        psutil.wait_procs([psutil.Process(p) for p in _running(seen)], timeout=30)
        leftover = {pid: seen[pid] for pid in _running(seen)} | _ours(root)
        shutil.rmtree(root, ignore_errors=True)
    assert not leftover, f"still running: {leftover}"
    print(f"\nSlurm + munge + PostgreSQL + MLflow ready in {ready_s:.1f} s; the job ran {job_s:.1f} s; "
          f"{time.monotonic() - started:.1f} s in all")
