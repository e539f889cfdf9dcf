"""deploy/'s manifests against their published schemas, and the image against what they call.

``compose.yaml`` is validated against the Compose Specification's JSON schema and the
``RayJob`` of ``rayjob.yaml`` against the OpenAPI v3 schema of KubeRay's ``rayjobs.ray.io``
CRD, both kept in deploy/schemas/ (sources, versions and hashes in its README), with
unknown fields refused as ``kubectl apply`` refuses them.  Then the Dockerfiles are parsed:
the commands the manifests run (the RayJob's entrypoint, the compose services' commands)
are executables the images install, at the versions constraints.txt pins.  No network,
no Docker, no Kubernetes."""

import copy
import functools
import hashlib
import json
import re
import shlex
from pathlib import Path

import jsonschema
import pytest
import yaml

ROOT = Path(__file__).resolve().parent.parent
DEPLOY = ROOT / "deploy"
SCHEMAS = DEPLOY / "schemas"
COMPOSE_SCHEMA = SCHEMAS / "compose-spec.json"
RAYJOB_SCHEMA = SCHEMAS / "kuberay-v1.6.2-rayjob-v1.json"


# -- reading the files -------------------------------------------------------------------
def _compose() -> dict:
    return yaml.safe_load((DEPLOY / "compose.yaml").read_text())


def _rayjob() -> dict:
    docs = [d for d in yaml.safe_load_all((DEPLOY / "rayjob.yaml").read_text()) if d is not None]
    job, = [d for d in docs if d["kind"] == "RayJob"]
    return job


def _pins() -> dict[str, str]:
    lines = (ROOT / "constraints.txt").read_text().splitlines()
    return dict(line.split("==", 1) for line in lines if "==" in line and not line.startswith("#"))


def _project() -> tuple[str, dict[str, str]]:
    """pyproject.toml's version and console scripts (read by hand: tomllib needs Python 3.11)."""
    text = (ROOT / "pyproject.toml").read_text()
    version = re.search(r'^version = "([^"]+)"$', text, re.M).group(1)
    section = re.search(r"^\[project\.scripts\]\n(.*?)(?:^\[|\Z)", text, re.M | re.S).group(1)
    scripts = dict(re.findall(r'^([\w-]+) = "([^"]+)"', section, re.M))
    return version, scripts


def dockerfile_instructions(path: Path) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) in order: comments dropped, continuation lines joined."""
    instructions, pending = [], ""
    for line in path.read_text().splitlines():
        if not pending and (not line.strip() or line.lstrip().startswith("#")):
            continue
        if line.rstrip().endswith("\\"):
            pending += line.rstrip()[:-1] + " "
            continue
        keyword, _, rest = (pending + line).strip().partition(" ")
        instructions.append((keyword.upper(), rest.strip()))
        pending = ""
    return instructions


def _only(instructions, keyword: str) -> list[str]:
    return [args for key, args in instructions if key == keyword]


def _exec_form(args: str) -> list[str]:
    """A CMD/ENTRYPOINT in exec form (a JSON array), which runs without a shell."""
    value = json.loads(args)
    assert isinstance(value, list) and all(isinstance(v, str) for v in value), args
    return value


# -- the kept schemas --------------------------------------------------------------------
def test_kept_schemas_are_the_published_files_listed_in_their_readme():
    readme = (SCHEMAS / "README.md").read_text()
    for path in (COMPOSE_SCHEMA, RAYJOB_SCHEMA):
        row, = [line for line in readme.splitlines() if line.startswith(f"| `{path.name}` |")]
        assert hashlib.sha256(path.read_bytes()).hexdigest() in row, path.name
    assert "v1.6.2" in RAYJOB_SCHEMA.name and "release **v1.6.2**" in readme


@functools.cache
def _compose_validator() -> jsonschema.Draft7Validator:
    schema = json.loads(COMPOSE_SCHEMA.read_text())
    assert schema["$schema"].startswith("https://json-schema.org/draft-07/")  # its $schema lacks the "#"
    jsonschema.Draft7Validator.check_schema(schema)
    return jsonschema.Draft7Validator(schema)


def strict(schema):
    """The CRD schema with unknown fields refused wherever it lists an object's fields and
    does not keep unknown ones: what ``kubectl apply`` (field validation Strict, its
    default) does, where plain JSON Schema would let a misspelt key through."""
    if isinstance(schema, dict):
        schema = {key: strict(value) for key, value in schema.items()}
        if ("properties" in schema and "additionalProperties" not in schema
                and not schema.get("x-kubernetes-preserve-unknown-fields")):
            schema["additionalProperties"] = False
        return schema
    if isinstance(schema, list):
        return [strict(item) for item in schema]
    return schema


@functools.cache
def _rayjob_schema() -> dict:
    return json.loads(RAYJOB_SCHEMA.read_text())


@functools.cache
def _rayjob_validator() -> jsonschema.Draft7Validator:
    schema = strict(_rayjob_schema())
    jsonschema.Draft7Validator.check_schema(schema)
    return jsonschema.Draft7Validator(schema)


def _errors(validator, document) -> list[str]:
    return [f"{'/'.join(map(str, e.absolute_path)) or '<root>'}: {e.message}"
            for e in validator.iter_errors(document)]


# -- the manifests against them ----------------------------------------------------------
def test_compose_file_is_valid_under_the_compose_specification():
    assert _errors(_compose_validator(), _compose()) == []


def test_compose_schema_refuses_what_compose_refuses():
    broken = _compose()
    broken["services"]["mlflow"]["comand"] = ["mlflow"]  # a misspelt key
    broken["services"]["mlflow"]["depends_on"]["postgres"]["condition"] = "service_ready"  # not in its enum
    errors = _errors(_compose_validator(), broken)
    assert any("comand" in e for e in errors) and any(e.startswith("services/mlflow/depends_on") for e in errors)


def test_rayjob_is_valid_under_the_kuberay_crd_schema():
    job = _rayjob()
    assert job["apiVersion"] == "ray.io/v1" and job["kind"] == "RayJob"
    assert _errors(_rayjob_validator(), job) == []


def test_rayjob_schema_refuses_misspelt_fields_and_wrong_types():
    job = _rayjob()
    typo, wrong_type, bad_quantity = copy.deepcopy(job), copy.deepcopy(job), copy.deepcopy(job)
    worker_group = typo["spec"]["rayClusterSpec"]["workerGroupSpecs"][0]
    worker_group["rayStartParam"] = worker_group.pop("rayStartParams")
    wrong_type["spec"]["rayClusterSpec"]["workerGroupSpecs"][0]["replicas"] = "2"
    container = bad_quantity["spec"]["rayClusterSpec"]["headGroupSpec"]["template"]["spec"]["containers"][0]
    container["resources"]["limits"]["memory"] = "8 gigabytes"
    assert any("rayStartParam'" in e for e in _errors(_rayjob_validator(), typo))
    assert any(e.startswith("spec/rayClusterSpec/workerGroupSpecs/0/replicas")
               for e in _errors(_rayjob_validator(), wrong_type))
    assert any("limits/memory" in e for e in _errors(_rayjob_validator(), bad_quantity))


def _guarded_fields(schema: dict, document, path: str = "") -> list[str]:
    """Paths in ``document`` whose schema carries CEL rules (x-kubernetes-validations),
    which jsonschema cannot evaluate."""
    found = [path or "<root>"] if "x-kubernetes-validations" in schema else []
    if isinstance(document, dict):
        for key, value in document.items():
            below = schema.get("properties", {}).get(key)
            if below is None and isinstance(schema.get("additionalProperties"), dict):
                below = schema["additionalProperties"]
            if below is not None:
                found += _guarded_fields(below, value, f"{path}/{key}")
    elif isinstance(document, list) and isinstance(schema.get("items"), dict):
        for index, value in enumerate(document):
            found += _guarded_fields(schema["items"], value, f"{path}/{index}")
    return found


def test_rayjob_sets_no_field_the_crd_guards_with_cel_rules():
    # the rules exist (deletionStrategy, managedBy, ...): a manifest that sets one of those
    # fields needs a check this test does not make
    assert '"x-kubernetes-validations"' in RAYJOB_SCHEMA.read_text()
    assert _guarded_fields(_rayjob_schema(), _rayjob()) == []


# -- the images against what the manifests run ------------------------------------------
RAY_DOCKERFILE = DEPLOY / "ray.Dockerfile"


def _ray_image() -> dict:
    """What deploy/ray.Dockerfile builds: its base, the folder samtune is installed from,
    what is copied there, its pip install and CMD."""
    instructions = dockerfile_instructions(RAY_DOCKERFILE)
    base, = _only(instructions, "FROM")
    copied: dict[str, str] = {}
    for args in _only(instructions, "COPY"):
        words = [w for w in shlex.split(args) if not w.startswith("--")]
        *sources, dest = words
        for source in sources:
            copied[source] = dest.rstrip("/") + ("/" + source if dest.endswith("/") else "")
    installs = [shlex.split(r) for r in _only(instructions, "RUN") if r.startswith("pip install")]
    cmd, = _only(instructions, "CMD")
    return {"base": base, "copied": copied, "installs": installs, "cmd": _exec_form(cmd),
            "runs": _only(instructions, "RUN"), "entrypoint": _only(instructions, "ENTRYPOINT")}


def test_ray_image_is_the_pinned_cuda_ray_image_with_samtune_installed_against_constraints():
    image, pins = _ray_image(), _pins()
    repository, tag = image["base"].split(":")
    python = re.search(r"Python (\d+)\.(\d+)", (ROOT / "constraints.txt").read_text()).groups()
    assert repository == "rayproject/ray" and tag == f"{pins['ray']}-py{''.join(python)}-gpu"  # CUDA, named tag
    assert pins["torch"] == "2.14.1" and _rayjob()["spec"]["rayClusterSpec"]["rayVersion"] == pins["ray"]
    # every file the build of the package reads is copied, from paths that exist, into one folder
    needed = {"pyproject.toml", "setup.py", "README.md", "constraints.txt", "samtune", "analysis", "search_spaces"}
    assert needed <= set(image["copied"]) and all((ROOT / source).exists() for source in image["copied"])
    folder = {str(Path(dest).parent) for source, dest in image["copied"].items()}
    assert len(folder) == 1
    folder = folder.pop()
    # one pip install of that folder, constrained by the copied constraints.txt
    install, = image["installs"]
    assert install[-1] == folder and install[install.index("-c") + 1] == f"{folder}/constraints.txt"


def test_rayjob_entrypoint_and_image_cmd_are_samtune_commands_the_image_installs():
    image = _ray_image()
    scripts = _project()[1]  # pip installs these onto the image's PATH
    entry = shlex.split(_rayjob()["spec"]["entrypoint"])
    assert entry[0] in scripts and image["cmd"][0] in scripts and not image["entrypoint"]
    assert scripts[entry[0]] == "samtune.cli:main"
    # the build fails unless both commands the cluster needs are on PATH: samtune, and ray (`ray start`)
    assert any(run.split("&&")[0].split()[:2] == ["samtune", "--version"] for run in image["runs"])
    assert any("ray --version" in run for run in image["runs"])
    # samtune's own parser takes the entrypoint and the CMD as they are
    from samtune.cli import build_parser

    args = build_parser().parse_args(entry[1:])
    assert (args.command, args.address) == ("search", "auto")
    with pytest.raises(SystemExit) as shown:  # `samtune --help` prints and exits 0
        build_parser().parse_args(image["cmd"][1:])
    assert shown.value.code == 0
    # the space it names is a bundled one, which the image copies
    assert (ROOT / "search_spaces" / f"{args.space}.yaml").is_file() and "search_spaces" in image["copied"]


def test_rayjob_containers_run_the_image_the_how_to_builds_at_the_package_version():
    readme = (ROOT / "docs" / "how-to" / "kuberay.md").read_text()
    built = re.search(r"docker build -f deploy/ray\.Dockerfile -t (\S+) \.", readme).group(1)
    assert built in RAY_DOCKERFILE.read_text()  # the Dockerfile's own build line agrees
    cluster = _rayjob()["spec"]["rayClusterSpec"]
    pods = [cluster["headGroupSpec"]] + cluster["workerGroupSpecs"]
    images = {c["image"] for pod in pods for c in pod["template"]["spec"]["containers"]}
    assert images == {built}
    assert built.rsplit(":", 1)[1] == _project()[0]


def test_ray_image_build_context_leaves_out_the_venv_and_secrets():
    ignored = (DEPLOY / "ray.Dockerfile.dockerignore").read_text().split()
    assert {".venv", ".git", "deploy/.env", "**/__pycache__"} <= set(ignored)


def test_compose_commands_are_executables_their_images_install():
    compose, pins = _compose(), _pins()
    services = compose["services"]
    mlflow = services["mlflow"]
    dockerfile = DEPLOY / mlflow["build"]["dockerfile"]
    instructions = dockerfile_instructions(dockerfile)
    base, = _only(instructions, "FROM")
    installed = " ".join(_only(instructions, "RUN"))
    # `mlflow server` and the healthcheck's `python`: the official MLflow image (a Python
    # image) at the pinned version, and mlflow reinstalled with its extras at that version
    assert base == f"ghcr.io/mlflow/mlflow:v{pins['mlflow']}"
    assert f'"mlflow[auth]=={pins["mlflow"]}"' in installed
    assert mlflow["command"][0] == "mlflow" and mlflow["healthcheck"]["test"][1] == "python"
    assert mlflow["image"] == f"samtune-mlflow:{pins['mlflow']}"
    # MinIO's image runs `minio` with the service's command; mc's entrypoint is `mc`
    assert services["minio"]["image"].startswith("minio/minio:") and services["minio"]["command"][0] == "server"
    assert services["buckets"]["image"].startswith("minio/mc:") and services["buckets"]["entrypoint"][0] == "mc"
    # every image is named with an explicit tag
    for name, service in services.items():
        repository, _, tag = service["image"].rpartition(":")
        assert repository and tag and tag != "latest" and "/" not in tag, name
