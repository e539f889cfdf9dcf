"""Pre-launch checks of `samtune search` (samtune.search.preflight) and the exit
status of a search whose trials all failed.

REFUSED is the one table of inputs refused before launch: each runs through the
CLI's entry function and must exit 2 with the fragment in stderr, no exception, and
no MLflow experiment created; those refused only once Ray runs (RAY_REFUSALS) find
the test run's local Ray.  The connection limits are shortened in-process to
TIMEOUT_S.  IN_SUBPROCESS run the CLI as a user runs it, which also holds the
"exit 2, no traceback" contract of the command, its own Ray started and stopped."""

import os
import socket
import subprocess
import sys
import textwrap
from pathlib import Path
from types import SimpleNamespace

import pytest
import yaml

from samtune import schema
from samtune.config import ConfigError
from samtune.data.catalogue import TRAIN_SIZES
from samtune.search import preflight
from samtune.spec import bundled_space_names, load_search_spec, parse_search_spec

LOOPBACK_ENV = {"RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0", "RAY_AUTH_MODE": "disabled",
                "RAY_USAGE_STATS_ENABLED": "0", "MLFLOW_DISABLE_TELEMETRY": "true"}
TINY_TRIAL = {"epochs": 2, "batch_growth_ratio": 1.0, "batch_stages": 1,  # batch_size: 16, the default
              "train_eval_examples": 256, "sharpness": []}
NAME = "preflight-refused"
CLI_TIMEOUT_S = 150  # a refused search ends; the catalogue's inputs hung until killed at 180 s
TIMEOUT_S = 2  # the tracking-server and Ray-address limits in-process (10 s by default)
RAY_REFUSALS = {"gpu-on-cpu-machine", "more-cpus-than-a-node", "cuda-on-cpu-machine",
                "more-workers-than-the-cluster-places", "resume-nothing-to-resume", "resume-unknown-parent"}
IN_SUBPROCESS = {"more-cpus-than-a-node", "tracking-scheme-ftp", "imagefolder-missing"}
HAS_GPU = Path("/proc/driver/nvidia/gpus").is_dir() and any(Path("/proc/driver/nvidia/gpus").iterdir())
no_gpu = pytest.mark.skipif(HAS_GPU, reason="needs a machine without GPUs")


def tiny_spec(**changes):
    data = {"name": NAME, "samples": 2, "concurrency": 1, "resources": {"cpu": 1}, "seed": 1,
            "trial": dict(TINY_TRIAL), "search": {"rho": {"loguniform": [0.01, 0.3]}}}
    for key, value in changes.items():
        if key == "trial":
            data["trial"] = {**data["trial"], **value}
        elif value is None:
            data.pop(key, None)
        else:
            data[key] = value
    return data


def image_folder(root: Path, train: dict[str, int], test: dict[str, int]) -> Path:
    """train/<class>/i.png and test/<class>/i.png; the files are only counted, never decoded."""
    for split, classes in (("train", train), ("test", test)):
        (root / split).mkdir(parents=True, exist_ok=True)
        for name, count in classes.items():
            (root / split / name).mkdir(parents=True, exist_ok=True)
            for i in range(count):
                (root / split / name / f"{i}.png").write_bytes(b"not decoded")
    return root


# (id, spec changes, extra CLI args, fragments expected in stderr, marks).
# "{tmp}" is the test's folder, "{silent}" a 127.0.0.1 port that accepts and never answers.
REFUSED = [
    # the catalogue of inputs that hung, raised or launched doomed searches
    ("gpu-on-cpu-machine", {"resources": {"cpu": 1, "gpu": 1}}, [],
     ["resources.gpu = 1", "no node of the Ray cluster has 1 GPU", "allowed: gpu: 0"], [pytest.mark.slow, no_gpu]),
    ("more-cpus-than-a-node", {"resources": {"cpu": 1024}}, [],
     ["resources.cpu = 1024", "no node of the Ray cluster has 1024 CPUs", "allowed: cpu <="], [pytest.mark.slow]),
    ("tracking-server-down", {}, ["--tracking-uri", "http://127.0.0.1:9"],
     ["tracking server http://127.0.0.1:9 did not answer within {timeout} s"], []),
    ("ray-address-down", {}, ["--address", "127.0.0.1:9"],
     ["--address 127.0.0.1:9", "Ray cluster at 127.0.0.1:9 did not answer within {timeout} s"], []),
    ("tracking-scheme-ftp", {}, ["--tracking-uri", "ftp://x/y"],
     ["--tracking-uri = 'ftp://x/y'", "scheme 'ftp'", "allowed:", "sqlite:///", "http://"], []),
    ("cifar10-data-dir-missing", {"trial": {"dataset": "cifar10", "data_dir": "{tmp}/nowhere"}}, [],
     ["trial.dataset = 'cifar10'", "looked for {tmp}/nowhere/cifar-10-batches-py", "trial.download=true"], []),
    ("imagefolder-missing", {"trial": {"dataset": "imagefolder:/nonexistent"}}, [],
     ["trial.dataset = 'imagefolder:/nonexistent'", "no image folder at /nonexistent"], []),
    ("cuda-on-cpu-machine", {"trial": {"device": "cuda"}}, [],
     ["trial.device = 'cuda'", "the Ray cluster has no GPU", "allowed here: auto, cpu"], [pytest.mark.slow, no_gpu]),
    ("batch-larger-than-train-set", {"trial": {"batch_size": 1024}}, [],
     ["trial.batch_size = 1024", "797 training examples of digits", "allowed: a batch of at most 797"], []),
    # more of the same kinds
    ("tracking-server-silent", {}, ["--tracking-uri", "http://{silent}"],
     ["tracking server http://{silent} did not answer within {timeout} s (no reply)"], []),
    ("sqlite-folder-missing", {}, ["--tracking-uri", "sqlite:///{tmp}/no/such/mlflow.db"],
     ["the folder {tmp}/no/such does not exist"], []),
    ("file-store", {}, ["--tracking-uri", "{tmp}/mlruns"], ["MLFLOW_ALLOW_FILE_STORE=true", "sqlite:///"], []),
    ("ray-address-not-host-port", {}, ["--address", "localhost"],
     ["--address localhost: not a Ray address", "HOST:PORT"], []),
    ("device-misspelt", {"trial": {"device": "cuda0"}}, [],
     ["trial.device = 'cuda0'", "allowed: auto, cpu, cuda, cuda:N"], []),
    ("tiny-imagenet-missing", {"trial": {"dataset": "tiny-imagenet", "data_dir": "{tmp}"}}, [],
     ["trial.dataset = 'tiny-imagenet'", "looked for {tmp}/tiny-imagenet-200/train", "no automatic download"], []),
    ("imagefolder-without-classes", {"trial": {"dataset": "imagefolder:{tmp}/flat"}}, [],
     ["{tmp}/flat/train has no class folders"], []),
    ("imagefolder-test-class-unknown", {"trial": {"dataset": "imagefolder:{tmp}/stray"}}, [],
     ["trial.dataset = 'imagefolder:{tmp}/stray'", "{tmp}/stray/test has classes with no train folder: ['z']"], []),
    ("imagefolder-class-without-images", {"trial": {"dataset": "imagefolder:{tmp}/hollow"}}, [],
     ["class folders with no images under {tmp}/hollow/train: ['b']"], []),
    ("batch-larger-than-imagefolder", {"trial": {"dataset": "imagefolder:{tmp}/small"}}, [],
     ["trial.batch_size = 16", "6 training examples of imagefolder:{tmp}/small"], []),
    ("growing-batch-last-stage", {"trial": {"batch_size": 256, "batch_growth_ratio": 2.0, "batch_stages": 3,
                                            "epochs": 3}}, [],
     ["trial.batch_size = 256 grows to 1024 in its last stage", "batch_stages = 3", "set batch_max"], []),
    ("grid-cell-batch", {"search": None, "grid": {"batch_size": [64, 1024]}}, [],
     ["grid cell {batch_size: 1024}: batch_size = 1024", "797"], []),
    ("search-upper-bound-batch", {"search": {"batch_size": {"int": [32, 1000]}}}, [],
     ["search.batch_size = 1000 (its upper bound)", "797"], []),
    # the training recipe of the ViT runs
    ("cutmix-prob-above-one", {"trial": {"cutmix_prob": 1.5}}, [],
     ["trial.cutmix_prob = 1.5", "less than or equal to 1"], []),
    ("vit-variant-unknown", {"trial": {"model": "vit_huge"}}, [],
     ["trial.model = 'vit_huge'", "'vit_tiny', 'vit_small'"], []),
    ("vit-option-on-a-cnn", {"grid": {"drop_path": [0.0, 0.1]}, "search": None}, [],
     ["drop_path = 0.1 applies to the ViT models only", "model = 'small_cnn'"], []),
    ("more-workers-than-the-cluster-places",
     {"resources": {"cpu": 1, "workers": 512}, "trial": {"batch_size": 512, "batch_growth_ratio": 1.0}}, [],
     ["resources.workers = 512", "workers of 1 CPU and 0 GPU each", "allowed: workers <="], [pytest.mark.slow]),
    ("loader-workers-beyond-cpus", {"trial": {"autoaugment": True, "loader_workers": 4}}, [],
     ["trial.loader_workers = 4 needs resources.cpu >= 5", "resources.cpu = 1"], []),
    # where the search keeps things
    ("storage-not-creatable", {}, ["--storage", "/proc/samtune"],
     ["--storage = '/proc/samtune'", "cannot create or write the folder /proc/samtune"], []),
    ("storage-is-a-file", {}, ["--storage", "{tmp}/spec.yaml"],
     ["cannot create or write the folder {tmp}/spec.yaml"], []),
    ("keep-models-zero", {"keep_models": 0}, [], ["keep_models = 0", "allowed all or none or an integer k >= 1"], []),
    ("resume-nothing-to-resume", {}, ["--resume"], ["no earlier search of 'preflight-refused'"], [pytest.mark.slow]),
    ("resume-unknown-parent", {}, ["--resume", "0123abcd"], ["no MLflow run '0123abcd'"], [pytest.mark.slow]),
]


@pytest.fixture
def silent_port():
    """A port on 127.0.0.1 that accepts connections (the kernel's backlog) and never answers."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen(16)
        yield f"127.0.0.1:{sock.getsockname()[1]}"


def _fill(value, tmp: Path, silent: str):
    if isinstance(value, str):
        return value.replace("{tmp}", str(tmp)).replace("{silent}", silent).replace("{timeout}", str(TIMEOUT_S))
    if isinstance(value, dict):
        return {k: _fill(v, tmp, silent) for k, v in value.items()}
    if isinstance(value, list):
        return [_fill(v, tmp, silent) for v in value]
    return value


def _refused_in_subprocess(args: list[str], cwd: Path) -> tuple[int, str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("RAY_ADDRESS", "MLFLOW_ALLOW_FILE_STORE",
                                                            "MLFLOW_TRACKING_URI")}
    done = subprocess.run([sys.executable, "-m", "samtune.cli", *args], cwd=cwd, env=env | LOOPBACK_ENV,
                          capture_output=True, text=True, timeout=CLI_TIMEOUT_S)
    return done.returncode, done.stdout, done.stderr


def _refused_in_process(args: list[str], monkeypatch, capsys) -> tuple[int, str, str]:
    from samtune.cli import main
    from samtune.search.preflight import cluster, tracking

    for key in ("RAY_ADDRESS", "MLFLOW_ALLOW_FILE_STORE", "MLFLOW_TRACKING_URI"):
        monkeypatch.delenv(key, raising=False)
    monkeypatch.setattr(tracking, "TRACKING_TIMEOUT_S", TIMEOUT_S)
    monkeypatch.setattr(cluster, "RAY_CONNECT_TIMEOUT_S", TIMEOUT_S)
    code = main(args)  # an exception would fail the test: the CLI must turn each into exit 2
    captured = capsys.readouterr()
    return code, captured.out, captured.err


@pytest.mark.parametrize(("case", "changes", "args", "fragments"),
                         [pytest.param(i, c, a, f, id=i, marks=[*m, *[pytest.mark.slow] * (i in IN_SUBPROCESS)])
                          for i, c, a, f, m in REFUSED])
def test_refused_before_launch(tmp_path, silent_port, monkeypatch, capsys, request, case, changes, args,
                               fragments):
    image_folder(tmp_path / "small", {"a": 3, "b": 3}, {"a": 1})
    image_folder(tmp_path / "stray", {"a": 3, "b": 3}, {"a": 1, "z": 1})
    image_folder(tmp_path / "hollow", {"a": 3, "b": 0}, {"a": 1})
    (tmp_path / "flat" / "train").mkdir(parents=True)
    (tmp_path / "flat" / "test").mkdir()
    spec = tmp_path / "spec.yaml"
    spec.write_text(yaml.safe_dump(tiny_spec(**_fill(changes, tmp_path, silent_port))))
    db = tmp_path / "mlflow.db"
    args = ["search", str(spec), *_fill(args, tmp_path, silent_port)]
    if "--tracking-uri" not in args:
        args += ["--tracking-uri", f"sqlite:///{db}"]
    monkeypatch.chdir(tmp_path)
    if case in IN_SUBPROCESS:
        code, out, err = _refused_in_subprocess(args, tmp_path)
    else:
        if case in RAY_REFUSALS:
            request.getfixturevalue("local_ray")  # the run_search of a test attaches to it
        code, out, err = _refused_in_process(args, monkeypatch, capsys)
    assert code == 2, out + err
    assert "Traceback" not in out + err
    for fragment in _fill(fragments, tmp_path, silent_port):
        assert fragment in err, (fragment, err)
    assert not list(tmp_path.glob("ray_results*")), "launched"
    if db.exists():  # nothing recorded: no experiment of that name
        from mlflow.tracking import MlflowClient

        assert MlflowClient(f"sqlite:///{db}").get_experiment_by_name(NAME) is None


# -- the checks against what they mirror -------------------------------------------------
@pytest.mark.parametrize("dataset", ["cifar10", "cifar100", "tiny-imagenet", "imagefolder"])
def test_presence_check_and_loader_agree_on_a_missing_folder(tmp_path, dataset):
    from samtune.checks import DatasetError
    from samtune.data.tensors import load_dataset

    name = f"imagefolder:{tmp_path / 'images'}" if dataset == "imagefolder" else dataset
    with pytest.raises(DatasetError) as loaded:
        load_dataset(name, root=tmp_path)
    with pytest.raises(ConfigError) as checked:
        preflight.check_dataset_present(name, tmp_path)
    looked_for = str(loaded.value).split("looked for ", 1)[-1].split(" ")[0].rstrip(".")
    if dataset == "imagefolder":
        looked_for = str(tmp_path / "images")
    assert looked_for.startswith(str(tmp_path)) and looked_for in str(checked.value)


def test_catalogue_names_the_files_torchvision_reads(tmp_path):
    from torchvision import datasets

    from samtune.data.catalogue import CATALOGUE

    for dataset, cls in (("cifar10", datasets.CIFAR10), ("cifar100", datasets.CIFAR100)):
        entry = CATALOGUE[dataset]
        assert (entry.folder, entry.loader) == (cls.base_folder, cls.__name__)
        assert set(entry.files) == {n for n, _ in cls.train_list + cls.test_list} | {cls.meta["filename"]}
        (tmp_path / entry.folder).mkdir()
        for name in entry.files:
            (tmp_path / entry.folder / name).write_bytes(b"")
        assert preflight.check_dataset_present(dataset, tmp_path) == 50_000
        (tmp_path / entry.folder / entry.files[0]).unlink()
        with pytest.raises(ConfigError, match=f"{entry.files[0]} missing"):
            preflight.check_dataset_present(dataset, tmp_path)
        assert preflight.check_dataset_present(dataset, tmp_path, download=True) == 50_000


def test_scanner_lists_what_torchvision_lists(tmp_path):
    """The one image-folder scanner (loaders and the pre-launch check) against
    torchvision's own ImageFolder listing: same classes, files, order and labels."""
    from torchvision.datasets.folder import IMG_EXTENSIONS, find_classes, make_dataset

    from samtune.data import folders

    assert folders.IMG_EXTENSIONS == IMG_EXTENSIONS
    for split, classes in (("train", {"b": 3, "a": 2, "c": 1}), ("test", {"a": 1, "c": 2})):
        for name, count in classes.items():
            for i in range(count):
                folder = tmp_path / split / name / ("sub" if i % 2 else "")
                folder.mkdir(parents=True, exist_ok=True)
                (folder / f"{i}.{'PNG' if i % 3 else 'jpg'}").write_bytes(b"")
    (tmp_path / "train" / "a" / "notes.txt").write_text("not an image")
    scanned = folders.scan_image_folder(tmp_path)
    classes, class_to_idx = find_classes(str(tmp_path / "train"))
    assert scanned.classes == tuple(classes)
    for split, samples in (("train", scanned.train), ("test", scanned.test)):
        expected = make_dataset(str(tmp_path / split), class_to_idx, extensions=IMG_EXTENSIONS, allow_empty=True)
        assert list(zip(samples.paths(), samples.labels.tolist())) == expected


def test_image_folder_size_is_what_the_loader_loads(tmp_path):
    from PIL import Image

    from samtune.data.tensors import load_imagefolder

    for split, classes in (("train", {"a": 3, "b": 2}), ("test", {"a": 1})):
        for name, count in classes.items():
            (tmp_path / split / name / "sub").mkdir(parents=True)
            for i in range(count):
                Image.new("RGB", (8, 8)).save(tmp_path / split / name / "sub" / f"{i}.PNG")
    (tmp_path / "train" / "a" / "notes.txt").write_text("not an image")
    size = preflight.imagefolder_train_size(f"imagefolder:{tmp_path}")
    assert size == 5 == len(load_imagefolder(tmp_path).train_y)


@pytest.mark.parametrize("params", [
    dict(batch_size=16, batch_growth_ratio=2.0, batch_stages=5, epochs=200),
    dict(batch_size=16, batch_growth_ratio=2.0, batch_stages=5, epochs=200, batch_max=64),
    dict(batch_size=24, batch_growth_ratio=1.5, batch_stages=4, epochs=7),
    dict(batch_size=128, batch_growth_ratio=1.0, batch_stages=1, epochs=3),
])
def test_largest_batch_is_the_schedules_last_batch(params):
    from samtune.schedules import TrialSchedule

    schedule = TrialSchedule.from_params(**params)
    expected = max(schedule.batch_size(e) for e in range(params["epochs"]))
    assert preflight.largest_batch(preflight.Variant("trial", params)) == expected


@pytest.mark.parametrize("space", bundled_space_names())
def test_bundled_spaces_pass_the_batch_check(space):
    spec = load_search_spec(space)
    preflight.check_batch_sizes(spec, {v.get("dataset"): TRAIN_SIZES[v.get("dataset")]
                                       for v in preflight.variants(spec)})


def test_searched_datasets_are_each_checked(tmp_path):
    spec = parse_search_spec(tiny_spec(trial={"data_dir": str(tmp_path)},
                                       search={"dataset": {"choice": ["digits", "cifar100"]}}))
    with pytest.raises(ConfigError, match=r"search.dataset = 'cifar100': cifar100 not found"):
        preflight.check_data(spec)


def test_tracking_schemes_are_mlflows():
    from mlflow.tracking._tracking_service.utils import _tracking_store_registry

    registered = set(_tracking_store_registry._registry)  # private: this test watches for drift
    assert set(preflight.MLFLOW_SCHEMES) | {"databricks-uc", "uc"} | set(preflight.plugin_schemes()) == registered
    assert preflight.uri_scheme("postgresql+psycopg2://u@h/db") == "postgresql"
    assert preflight.uri_scheme("/abs/mlruns") == "" and preflight.uri_scheme("databricks") == "databricks"
    with pytest.raises(ConfigError, match="scheme 'uc'"):
        preflight.check_tracking_uri("uc")


@pytest.fixture
def http_status():
    """A 127.0.0.1 HTTP server answering every GET with the status in ``status[0]``."""
    import threading
    from http.server import BaseHTTPRequestHandler, HTTPServer

    status = [200]

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self):
            self.send_response(status[0])
            self.send_header("Content-Type", "application/json")
            self.end_headers()
            self.wfile.write(b"{}")

        def log_message(self, *args):
            pass

    server = HTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}", status
    server.shutdown()
    server.server_close()


def test_tracking_server_must_accept_the_credentials(http_status):
    url, status = http_status
    preflight.check_tracking_server(url)
    status[0] = 503  # MLflow's client retries this itself
    preflight.check_tracking_server(url)
    status[0] = 401
    with pytest.raises(ConfigError, match=r"refused samtune's credentials \(HTTP 401\).*MLFLOW_TRACKING_USERNAME"):
        preflight.check_tracking_server(url)
    status[0] = 404
    with pytest.raises(ConfigError, match=r"HTTP 404 .*not an MLflow tracking server"):
        preflight.check_tracking_server(url)


def test_ray_address_resolution(monkeypatch):
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    assert preflight.resolve_ray_address(None) is None
    assert preflight.resolve_ray_address("local") is None
    target = preflight.resolve_ray_address("ray://10.0.0.5:10001")
    assert (target.host, target.port, target.init) == ("10.0.0.5", 10001, "ray://10.0.0.5:10001")
    monkeypatch.setenv("RAY_ADDRESS", "127.0.0.1:9")
    assert preflight.resolve_ray_address(None).port == 9  # ray.init() would use $RAY_ADDRESS too
    assert preflight.resolve_ray_address("auto").port == 9  # as Ray resolves auto


def test_workers_of_a_data_parallel_trial_must_all_fit_at_once():
    nodes = [{"node": "a", "CPU": 8, "GPU": 2}, {"node": "b", "CPU": 4, "GPU": 1}]
    preflight.check_workers({"cpu": 2, "gpu": 1}, 3, nodes)  # 2 on a (its GPUs), 1 on b
    preflight.check_workers({"cpu": 3}, 3, nodes)  # CPU only: 2 on a, 1 on b
    with pytest.raises(ConfigError, match=r"resources.workers = 4: .* only 3 workers of 2 CPU and 1 GPU each"):
        preflight.check_workers({"cpu": 2, "gpu": 1}, 4, nodes)
    with pytest.raises(ConfigError, match=r"allowed: workers <= 3"):
        preflight.check_workers({"cpu": 3}, 4, nodes)


def test_resources_and_device_against_nodes():
    cpu_node = {"node": "a", "CPU": 8}
    gpu_node = {"node": "b", "CPU": 2, "GPU": 1}
    preflight.check_resources({"cpu": 8}, [cpu_node, gpu_node])
    preflight.check_resources({"cpu": 1, "gpu": 0.5}, [cpu_node, gpu_node])  # fractional GPU
    with pytest.raises(ConfigError, match=r"resources = .*8 CPUs and 1 GPU together"):
        preflight.check_resources({"cpu": 8, "gpu": 1}, [cpu_node, gpu_node])
    with pytest.raises(ConfigError, match=r"resources.gpu = 0.5: no node .* has a GPU"):
        preflight.check_resources({"cpu": 1, "gpu": 0.5}, [cpu_node])
    spec = parse_search_spec(tiny_spec(trial={"device": "cuda:1"}))
    with pytest.raises(ConfigError, match=r"a trial sees 1 GPU"):
        preflight.check_device(spec, {"cpu": 1, "gpu": 1}, [gpu_node])
    preflight.check_device(spec, {"cpu": 1, "gpu": 2}, [{"CPU": 2, "GPU": 2}])
    with pytest.raises(ConfigError, match=r"needs resources.gpu > 0"):
        preflight.check_device(spec, {"cpu": 1, "gpu": 0}, [gpu_node])


@pytest.mark.slow  # ray.init in a subprocess
def test_ray_init_is_bounded(silent_port):
    """ray.init against a port that never speaks Ray gives up after its limit (in a
    subprocess: the abandoned ray.init thread must not stay in the test process)."""
    code = textwrap.dedent(f"""
        import sys
        from samtune.config import ConfigError
        from samtune.search import preflight
        target = preflight.resolve_ray_address({silent_port!r})
        preflight.check_ray_address(target)  # the port accepts TCP
        try:
            preflight.connect_ray(target, timeout=3)
        except ConfigError as err:
            print(err)
            sys.exit(2)
    """)
    done = subprocess.run([sys.executable, "-c", code], env=dict(os.environ, **LOOPBACK_ENV),
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 2, done.stdout + done.stderr
    assert f"ray.init did not connect to {silent_port} within 3 s" in done.stdout


# -- exit status of a finished search -----------------------------------------------------------
def fake_result(status=None, error=None, trial="t1", reported=True):
    metrics = {"trial_id": trial, "training_iteration": 1} if reported else {}
    if status:
        metrics["samtune_status"] = status
    return SimpleNamespace(metrics=metrics, error=error, path=f"/r/trial_{trial}")


@pytest.mark.parametrize(("results", "interrupted", "expected"), [
    ([fake_result("completed"), fake_result(error=RuntimeError("x"))], False, 0),
    ([fake_result("completed"), fake_result()], False, 0),  # stopped by ASHA
    ([fake_result(error=RuntimeError("x")), fake_result(error=RuntimeError("y"))], False, 1),
    ([fake_result("failed"), fake_result("diverged"), fake_result()], False, 1),
    ([fake_result("completed"), fake_result(reported=False)], True, 130),
])
def test_exit_status(results, interrupted, expected):
    from samtune.search.runner import exit_status, trial_outcomes

    outcomes = trial_outcomes(results)
    assert exit_status(outcomes, interrupted) == expected
    assert [o.error for o in outcomes if o.error] == [str(r.error) for r in results if r.error]
    assert all(o.status == "failed" for o in outcomes if o.error)


def always_failing():
    def trainable(hparams, context):
        raise RuntimeError("injected: this trial cannot run")

    return trainable


@pytest.fixture
def ray_not_running(no_ray):
    """run_search starts its own Ray in this process."""
    from samtune.search import configure_ray_environment

    configure_ray_environment(local=True)


@pytest.mark.slow
def test_refused_after_ray_init_shuts_ray_down(tmp_path, ray_not_running):
    import ray

    from samtune.search import run_search

    spec = parse_search_spec(tiny_spec(resources={"cpu": 1024}))
    with pytest.raises(ConfigError, match="resources.cpu = 1024"):
        run_search(spec, tracking_uri=f"sqlite:///{tmp_path}/mlflow.db", storage=str(tmp_path / "ray"))
    assert not ray.is_initialized()
    assert not (tmp_path / "mlflow.db").exists() and not (tmp_path / "ray").exists()


@pytest.mark.slow
def test_search_whose_trials_all_fail_exits_1(tmp_path, capsys, ray_not_running, mlflow_uri):
    from mlflow.tracking import MlflowClient

    from samtune.search import run_search

    uri = mlflow_uri
    spec = parse_search_spec(tiny_spec(name="all-fail", max_failures=0))
    assert run_search(spec, tracking_uri=uri, storage=str(tmp_path / "ray"), trainable=always_failing()) == 1
    err = capsys.readouterr().err
    assert "no trial completed (2 failed)" in err
    assert "first error (trial " in err and "RuntimeError: injected: this trial cannot run" in err
    assert str(tmp_path / "ray") in err and "samtune.error" in err
    client = MlflowClient(uri)
    parent = client.search_runs([client.get_experiment_by_name("all-fail").experiment_id],
                                filter_string="tags.`samtune.kind` = 'search'")[0]
    assert parent.info.status == "FAILED" and parent.data.metrics["trials_completed"] == 0


@pytest.mark.slow
@pytest.mark.parametrize(("fault", "state", "reason"), [
    (RuntimeError("the Tuner could not start"), "FAILED", "RuntimeError: the Tuner could not start"),
    (KeyboardInterrupt(), "KILLED", "interrupted by the user"),
])
def test_a_search_that_stops_after_its_parent_run_started_leaves_no_run_running(
        tmp_path, monkeypatch, local_ray, mlflow_uri, fault, state, reason):
    """Past the pre-launch checks, whatever stops the search ends its parent run with the reason."""
    from mlflow.tracking import MlflowClient

    from samtune.search import run_search, runner

    def launch(*args, **kwargs):
        raise fault

    monkeypatch.setattr(runner, "_launch", launch)
    with pytest.raises(type(fault)):
        run_search(parse_search_spec(tiny_spec()), tracking_uri=mlflow_uri, storage=str(tmp_path / "ray"))
    client = MlflowClient(mlflow_uri)
    (parent,) = client.search_runs([client.get_experiment_by_name(NAME).experiment_id])
    assert parent.info.status == state
    assert parent.data.tags[schema.TAG_ERROR] == reason


def test_first_error_comes_from_the_exception_else_the_mlflow_tag():
    from samtune.search.runner import SearchRun, _first_error, trial_outcomes

    class Tracker:
        def find_trial_run(self, experiment_id, trial, parent_run_id):
            return f"run-{trial}"

        def run_tag(self, run_id, key):
            assert key == schema.TAG_ERROR
            return f"Traceback (most recent call last):\n  ...\nValueError: no trial can run {run_id}\n"

    opened = SearchRun(Tracker(), "1", "parent", "x", "/ray/x", "/ray")
    outcomes = trial_outcomes([fake_result("completed", trial="a"), fake_result("diverged", trial="b"),
                               fake_result(error=RuntimeError("boom"), trial="c")])
    assert _first_error(outcomes, opened) == ("b", "ValueError: no trial can run run-b")
    assert _first_error(outcomes[2:], opened) == ("c", "boom")
