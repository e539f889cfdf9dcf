"""deploy/: what can be checked without Docker, Kubernetes or Slurm.  The compose
file's ``mlflow server`` command is the one tests/servers.py runs (and
tests/test_tracking_servers.py tests against a real PostgreSQL) up to hosts, ports and
paths; the RayJob manifest is a KubeRay RayJob with a GPU worker group running
``samtune search``; the Slurm script parses, and its control flow (head, workers,
search, stop) runs against stand-ins for srun, scontrol, squeue, scancel, ray and samtune.
tests/test_slurm.py runs the script under a real one-node Slurm."""

import os
import re
import shlex
import stat
import subprocess
import textwrap
from pathlib import Path

import servers
import yaml

DEPLOY = Path(__file__).resolve().parent.parent / "deploy"


def _load_all(name):
    return [doc for doc in yaml.safe_load_all((DEPLOY / name).read_text()) if doc is not None]


def _option(args, flag):
    return args[args.index(flag) + 1]


# -- compose ---------------------------------------------------------------------------
def _compose_mlflow():
    compose = yaml.safe_load((DEPLOY / "compose.yaml").read_text())
    return compose, compose["services"]["mlflow"]


def test_compose_runs_the_tested_mlflow_server_command():
    compose, mlflow = _compose_mlflow()
    command = mlflow["command"]
    assert isinstance(command, list) and command[0] == "mlflow"
    args = command[1:]
    # the values that depend on where it runs: hosts, ports, paths
    backend, artifacts = _option(args, "--backend-store-uri"), _option(args, "--artifacts-destination")
    host, port, allowed = _option(args, "--host"), int(_option(args, "--port")), _option(args, "--allowed-hosts")
    # everything else is exactly what the test fixture runs
    assert args == servers.mlflow_server_args(backend_store_uri=backend, artifacts_destination=artifacts,
                                              host=host, port=port, allowed_hosts=allowed)
    fixture = servers.mlflow_server_args(backend_store_uri="postgresql+psycopg://mlflow@127.0.0.1:5432/mlflow",
                                         artifacts_destination="/tmp/artifacts", host="127.0.0.1", port=5000,
                                         allowed_hosts="127.0.0.1,127.0.0.1:5000")
    assert [a for a in args if a.startswith("--")] == [a for a in fixture if a.startswith("--")]
    # and the differing values are the deployment's: PostgreSQL with no password in the URI,
    # artifacts in MinIO, reachable as http://mlflow:5000 from the Ray pods
    assert backend == f"postgresql+psycopg://{servers.DB_USER}@postgres:5432/{servers.TRACKING_DB}"
    assert artifacts.startswith("s3://")
    assert (host, port) == ("0.0.0.0", 5000)
    assert {"mlflow", "mlflow:5000"} <= set(allowed.split(","))
    assert mlflow["ports"] == ["5000:5000"]


def test_compose_mlflow_environment_and_auth_config_match_the_fixture():
    compose, mlflow = _compose_mlflow()
    env = mlflow["environment"]
    s3 = {"MLFLOW_S3_ENDPOINT_URL", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"}  # the MinIO destination
    assert set(env) == set(servers.MLFLOW_SERVER_ENV) | s3
    # secrets are references to deploy/.env, never literals
    for name in ("PGPASSWORD", "MLFLOW_AUTH_ADMIN_PASSWORD", "MLFLOW_FLASK_SERVER_SECRET_KEY",
                 "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"):
        assert env[name].startswith("${"), name
    ini_target = next(c["target"] for c in mlflow["configs"] if c["source"] == "basic-auth-ini")
    assert env["MLFLOW_AUTH_CONFIG_PATH"] == ini_target
    ini = compose["configs"]["basic-auth-ini"]["content"]
    assert ini == servers.auth_ini(f"postgresql+psycopg://{servers.DB_USER}@postgres:5432/{servers.AUTH_DB}")
    assert "password" not in ini.lower()
    # PostgreSQL: the databases the fixture creates, owned by the same user
    postgres = compose["services"]["postgres"]
    assert postgres["environment"]["POSTGRES_USER"] == servers.DB_USER
    assert postgres["environment"]["POSTGRES_DB"] == servers.TRACKING_DB
    assert f"CREATE DATABASE {servers.AUTH_DB};" in compose["configs"]["create-auth-db"]["content"]
    # MinIO holds the artifact bucket the server writes to
    bucket = _option(mlflow["command"], "--artifacts-destination").removeprefix("s3://").split("/")[0]
    assert f"local/{bucket}" in compose["services"]["buckets"]["entrypoint"]
    assert mlflow["depends_on"]["postgres"]["condition"] == "service_healthy"


def test_env_example_names_every_secret_the_compose_file_needs():
    text = (DEPLOY / "compose.yaml").read_text()
    example = dict(line.split("=", 1) for line in (DEPLOY / ".env.example").read_text().splitlines()
                   if line and not line.startswith("#"))
    needed = set(re.findall(r"\$\{([A-Z_]+)", text))
    assert needed == set(example)
    assert len(example["MLFLOW_ADMIN_PASSWORD"]) >= 12  # MLflow refuses shorter admin passwords
    assert ".env" in (DEPLOY / ".gitignore").read_text().split()


def test_mlflow_image_installs_the_drivers_the_command_needs():
    dockerfile = (DEPLOY / "mlflow.Dockerfile").read_text()
    assert "mlflow[auth]==3.17.2" in dockerfile and "psycopg[binary]" in dockerfile and "boto3" in dockerfile
    assert _compose_mlflow()[1]["build"]["dockerfile"] == "mlflow.Dockerfile"


# -- KubeRay ---------------------------------------------------------------------------
def test_rayjob_manifest_runs_samtune_search_on_a_gpu_worker_group():
    docs = _load_all("rayjob.yaml")
    job, = [d for d in docs if d["kind"] == "RayJob"]
    assert job["apiVersion"] == "ray.io/v1"
    entry = shlex.split(job["spec"]["entrypoint"])
    assert entry[:3] == ["samtune", "search", "gsam_schedule_search"]
    assert _option(entry, "--address") == "auto"
    assert _option(entry, "--tracking-uri") == "http://mlflow:5000"
    assert _option(entry, "--storage").startswith("s3://")
    cluster = job["spec"]["rayClusterSpec"]
    assert cluster["rayVersion"] == "2.60.0"
    head = cluster["headGroupSpec"]["template"]["spec"]["containers"][0]
    groups = cluster["workerGroupSpecs"]
    gpu_groups = [g for g in groups
                  if "nvidia.com/gpu" in g["template"]["spec"]["containers"][0]["resources"]["limits"]]
    assert gpu_groups and all(g["replicas"] >= 1 for g in gpu_groups)
    images = {head["image"]} | {g["template"]["spec"]["containers"][0]["image"] for g in groups}
    assert len(images) == 1 and images.pop().endswith("samtune-ray:0.1.0")
    # credentials reach every Ray container (so every `ray start`, so every trial) from a Secret
    for container in [head] + [g["template"]["spec"]["containers"][0] for g in groups]:
        assert {"secretRef": {"name": "samtune-credentials"}} in container["envFrom"]
        assert {"name": "RAY_AUTH_MODE", "value": "disabled"} in container["env"]
    # `mlflow` resolves in the cluster: a Service of that name on port 5000
    service, = [d for d in docs if d["kind"] == "Service"]
    assert service["metadata"]["name"] == "mlflow" and service["spec"]["ports"][0]["port"] == 5000
    # the image is Ray's, at the pinned Ray and Python, with samtune installed against constraints.txt
    dockerfile = (DEPLOY / "ray.Dockerfile").read_text()
    assert "FROM rayproject/ray:2.60.0-py311-gpu" in dockerfile
    assert "ray==2.60.0" in (DEPLOY.parent / "constraints.txt").read_text().split()
    assert "-c /home/ray/samtune/constraints.txt" in dockerfile


# -- Slurm -----------------------------------------------------------------------------
SBATCH = DEPLOY / "samtune-search.sbatch"


def test_slurm_script_parses():
    done = subprocess.run(["bash", "-n", str(SBATCH)], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert "#SBATCH --nodes=" in SBATCH.read_text()


FAKES = {
    # srun [options] COMMAND...: run COMMAND here; a named step is listed (for squeue) as
    # JOB.PID NAME, PID being the step's process
    "srun": """
        args="$*"
        echo "srun ${args//$'\\n'/ }" >> "$LOG"  # one line, the Ray steps' script included
        name=
        while [[ $# -gt 0 && $1 == -* ]]; do
            case $1 in -w|--nodelist) shift 2;; --job-name=*) name=${1#*=}; shift;; *) shift;; esac
        done
        [[ -z $name ]] || echo "$SLURM_JOB_ID.$$ $name" >> "$LOG.steps"
        exec "$@"
    """,
    "scontrol": 'printf "%s\\n" node1 node2 node3',
    # squeue --steps --jobs JOB --format "%i %j": the steps srun listed
    "squeue": 'cat "$LOG.steps" 2>/dev/null || true',
    # scancel --signal=SIG JOB.STEP: the signal to that step's process
    "scancel": """
        for arg; do case $arg in --signal=*) sig=${arg#*=};; *) id=$arg;; esac; done
        echo "scancel $sig $id" >> "$LOG"
        kill -"$sig" "${id#*.}"
    """,
    "hostname": "echo 127.0.0.1",
    # ray start --block: log, then wait for the signal stop_cluster sends
    "ray": """
        if [[ $1 == start ]]; then
            echo "ray $* creds=${MLFLOW_TRACKING_PASSWORD:+yes}" >> "$LOG"
            trap 'echo "stopped $$" >> "$LOG"; exit 0' TERM
            while true; do sleep 0.1; done
        fi
        # ray health-check: up once the head has started
        until grep -q -- "^ray start --head" "$LOG" 2>/dev/null; do sleep 0.05; done
        echo "ray $1" >> "$LOG"
    """,
    # python - ADDRESS N TIMEOUT <<node-wait script: returns once N nodes have started
    "python": """
        cat > /dev/null
        until [[ $(grep -c "^ray start" "$LOG") -ge $3 ]]; do sleep 0.05; done
        echo "python wait $*" >> "$LOG"
    """,
    "samtune": 'echo "samtune $* creds=${MLFLOW_TRACKING_USERNAME:-none}" >> "$LOG"; exit "${FAKE_RC:-0}"',
}


def _run_sbatch(tmp_path, credentials_mode=0o600, **env):
    bin_dir, venv = tmp_path / "bin", tmp_path / "venv"
    bin_dir.mkdir()
    (venv / "bin").mkdir(parents=True)
    (venv / "bin" / "activate").write_text("")
    for name, body in FAKES.items():
        path = bin_dir / name
        path.write_text("#!/usr/bin/env bash\n" + textwrap.dedent(body))
        path.chmod(path.stat().st_mode | stat.S_IEXEC)
    credentials = tmp_path / "mlflow.env"
    credentials.write_text("MLFLOW_TRACKING_USERNAME=samtune\nMLFLOW_TRACKING_PASSWORD=pw-not-on-any-command-line\n")
    credentials.chmod(credentials_mode)
    log = tmp_path / "calls.log"
    full_env = {"PATH": f"{bin_dir}:{os.environ['PATH']}", "HOME": str(tmp_path), "LOG": str(log),
                "SLURM_JOB_ID": "42", "SLURM_JOB_NODELIST": "node[1-3]", "SLURM_CPUS_PER_TASK": "8", "VENV": str(venv),
                "CREDENTIALS": str(credentials), "TRACKING_URI": "http://mlflow.example.org:5000",
                "STORAGE": "/shared/ray_results", **env}
    done = subprocess.run(["bash", str(SBATCH)], env=full_env, capture_output=True, text=True, timeout=120)
    return done, (log.read_text().splitlines() if log.exists() else [])


def test_slurm_script_starts_head_then_workers_runs_one_search_and_stops_the_cluster(tmp_path):
    done, calls = _run_sbatch(tmp_path, FAKE_RC="3")
    assert done.returncode == 3, done.stdout + done.stderr  # samtune's exit status comes back
    starts = [c for c in calls if c.startswith("ray start")]
    assert len(starts) == 3
    assert "--head" in starts[0] and "--port=6379" in starts[0]
    assert all("--address=127.0.0.1:6379" in s for s in starts[1:])
    assert all(s.endswith("creds=yes") for s in starts)  # every `ray start` has the credentials
    search, = [c for c in calls if c.startswith("samtune")]
    assert search == ("samtune search gsam_schedule_search --address 127.0.0.1:6379 "
                      "--tracking-uri http://mlflow.example.org:5000 --storage /shared/ray_results creds=samtune")
    wait, = [c for c in calls if c.startswith("python wait")]
    assert wait.startswith("python wait - 127.0.0.1:6379 3 ")  # waited for all 3 nodes, then searched
    assert max(calls.index(s) for s in starts) < calls.index(wait) < calls.index(search)
    assert len([c for c in calls if c.startswith("stopped")]) == 3  # each Ray step stopped by the trap
    assert not any("pw-not-on-any-command-line" in c for c in calls)
    # each Ray step is a named srun step with the node's CPUs and GPUs, `ray start --block` in it
    ray_steps = [c for c in calls if c.startswith("srun") and "--job-name=ray-" in c]
    assert len(ray_steps) == 3
    assert all("--cpus-per-task=8 --gpus-per-task=4 " in c and c.endswith(" --block") for c in ray_steps)
    # stopped by SIGURG to the step (never SIGTERM to srun, which makes Slurm kill it):
    # the workers first, then the head, and each step's shell exits 0 (the step COMPLETED)
    stops = [c for c in calls if c.startswith("scancel")]
    assert [c.split()[1] for c in stops] == ["URG"] * 3
    steps = dict(line.split()[::-1] for line in (tmp_path / "calls.log.steps").read_text().splitlines())
    assert [c.split()[2] for c in stops] == [steps["ray-worker-node3"], steps["ray-worker-node2"], steps["ray-head"]]
    exits = re.findall(r"^Ray step (\S+) \((42\.\d+)\) exited with (\d+)$", done.stdout, re.M)
    assert exits == [("ray-worker-node3", steps["ray-worker-node3"], "0"),
                     ("ray-worker-node2", steps["ray-worker-node2"], "0"), ("ray-head", steps["ray-head"], "0")]


def test_slurm_script_takes_the_head_address_gpus_and_ray_options_from_the_environment(tmp_path):
    """HEAD_IP (a one-machine cluster on 127.0.0.1), no GPUs (--gpus-per-node=0), and
    RAY_START_ARGS (ports, a temp dir) for every `ray start`."""
    done, calls = _run_sbatch(tmp_path, HEAD_IP="10.1.2.3", SLURM_GPUS_PER_NODE="0",
                              RAY_START_ARGS="--ray-client-server-port=1234 --temp-dir=/tmp/r")
    assert done.returncode == 0, done.stdout + done.stderr
    first_srun = next(c for c in calls if c.startswith("srun"))
    assert "--job-name=ray-head" in first_srun  # no `srun hostname` for the head's address
    starts = [c for c in calls if c.startswith("ray start")]
    assert "--node-ip-address=10.1.2.3 " in starts[0] and "--num-gpus=0 " in starts[0]
    assert all("--ray-client-server-port=1234 --temp-dir=/tmp/r --block" in s for s in starts)
    assert all("--address=10.1.2.3:6379" in s for s in starts[1:])
    assert not any("--gpus-per-task" in c for c in calls if c.startswith("srun"))
    search, = [c for c in calls if c.startswith("samtune")]
    assert "--address 10.1.2.3:6379 " in search


def test_slurm_script_resumes_and_refuses_a_readable_credentials_file(tmp_path):
    (tmp_path / "resume").mkdir()
    done, calls = _run_sbatch(tmp_path / "resume", RESUME="1")
    assert done.returncode == 0, done.stdout + done.stderr
    assert [c for c in calls if c.startswith("samtune")][0].split(" creds=")[0].endswith("--resume")
    (tmp_path / "open").mkdir()
    done, calls = _run_sbatch(tmp_path / "open", credentials_mode=0o644)
    assert done.returncode == 2 and "chmod 600" in done.stderr
    assert not any(c.startswith("ray start") for c in calls)
