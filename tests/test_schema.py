"""Every catalogue in samtune.schema against the registry or model that implements
it, the torch-free promise of the schema, and the package's import graph."""

import ast
import subprocess
import sys
import typing
from pathlib import Path

import pytest

from samtune import schema
from samtune.config import HyperParams, RunSettings, TrialConfig, make_trial_config
from samtune.data import catalogue

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("samtune", "analysis")


def literal_choices(model, key):
    annotation = model.model_fields[key].annotation
    if typing.get_origin(annotation) is not typing.Literal:  # tuple[Literal[...], ...] | None
        annotation = typing.get_args(typing.get_args(annotation)[0])[0]
    return set(typing.get_args(annotation))


def test_registries_implement_exactly_the_catalogues():
    from samtune.data.tensors import LOADERS
    from samtune.models import MODELS
    from samtune.optim import OPTIMIZERS
    from samtune.optim.factory import BASE_OPTIMIZERS
    from samtune.sharpness import MEASURES

    assert set(OPTIMIZERS) == set(schema.OPTIMIZERS)
    assert set(BASE_OPTIMIZERS) == set(schema.BASE_OPTIMIZERS)
    assert set(MODELS) == set(schema.MODELS)
    assert set(LOADERS) == set(catalogue.IN_MEMORY)
    assert set(MEASURES) == set(schema.MEASURES)
    assert {name for name, info in OPTIMIZERS.items() if not info.two_pass} == set(schema.ONE_PASS_OPTIMIZERS)


def test_config_choices_are_the_catalogues():
    assert literal_choices(HyperParams, "optimizer") == set(schema.OPTIMIZERS)
    assert literal_choices(HyperParams, "base_optimizer") == set(schema.BASE_OPTIMIZERS)
    assert literal_choices(HyperParams, "model") == set(schema.MODELS)
    assert literal_choices(HyperParams, "lr_shape") == set(schema.LR_SHAPES)
    assert literal_choices(HyperParams, "rho_schedule") == set(schema.RHO_SCHEDULES)
    assert literal_choices(HyperParams, "lr_batch_scaling") == set(schema.LR_BATCH_SCALINGS)
    assert literal_choices(HyperParams, "precision") == set(schema.PRECISIONS)
    assert literal_choices(HyperParams, "sharpness") == set(schema.MEASURES)
    assert set(RunSettings.model_fields) == set(schema.RUN_SETTINGS)
    assert set(TrialConfig.model_fields) == set(HyperParams.model_fields) | set(RunSettings.model_fields)
    assert not set(HyperParams.model_fields) & set(RunSettings.model_fields)


@pytest.mark.filterwarnings("ignore:harada is defined on")
def test_every_measure_reports_the_metrics_the_schema_names():
    import torch

    from samtune.sharpness import measure_all

    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.Tanh(), torch.nn.Linear(4, 2))
    batches = [(torch.randn(8, 3), torch.randint(0, 2, (8,)))]
    init = [p.detach().clone() + 0.1 for p in model.parameters()]
    names = tuple(schema.MEASURES)
    values = measure_all(model, torch.nn.functional.cross_entropy, batches, names=names,
                         init_params=init, overrides={"hessian_max_eig": {"iters": 5},
                                                      "hessian_trace": {"samples": 3, "deflation": 2}})
    assert set(values) == set(schema.measure_metric_names(names))


def test_every_default_and_final_metric_is_reported_by_a_trial():
    from samtune.trial.loop import train

    config = make_trial_config({"epochs": 1, "batch_size": 256, "batch_stages": 1,
                                "train_eval_examples": 128, "sharpness": ["ascent", "norm_param_l2"]})
    result = train(config)
    assert set(result.history[-1]) == set(schema.EPOCH_METRICS) | {schema.EPOCH}
    assert set(result.final) == set(schema.FINAL_METRICS) | set(schema.measure_metric_names(config.sharpness))
    assert set(result.measure_params) == {schema.measure_param("ascent", key)
                                          for key in ("rho", "adaptive", "precision", "n_examples", "m")}


def test_digest_depends_on_hyperparameters_only():
    base = make_trial_config({"rho": 0.1, "sharpness": ["ascent"]})
    assert base.hparams.digest() == make_trial_config(
        {"sharpness": ["ascent"], "rho": 0.1, "device": "cpu", "num_threads": 3,
         "eval_batch_size": 64, "data_dir": "/elsewhere"}).hparams.digest()
    for change in ({"rho": 0.2}, {"sharpness_batch": 64}, {"precision": "bf16"}, {"seed": 1}):
        assert make_trial_config({"rho": 0.1, "sharpness": ["ascent"], **change}).hparams.digest() \
            != base.hparams.digest(), change


def test_schema_and_config_do_not_import_torch_ray_or_mlflow():
    code = ("import sys, samtune.schema, samtune.config, samtune.spec; "
            "heavy = {'torch', 'ray', 'mlflow'} & set(sys.modules); assert not heavy, heavy")
    subprocess.run([sys.executable, "-c", code], check=True, cwd=ROOT)


def _module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports(path: Path, name: str, modules: set[str]) -> set[str]:
    """Modules of the packages that ``path`` imports, at any depth of its code."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                base = ".".join(package.split(".")[: len(package.split(".")) - node.level + 1] + [base]).strip(".")
            targets = [f"{base}.{alias.name}" if f"{base}.{alias.name}" in modules else base
                       for alias in node.names]
        else:
            continue
        found.update(t for t in targets if t in modules and t != name)
    return found


def test_no_import_circles():
    paths = [p for package in PACKAGES for p in (ROOT / package).rglob("*.py")]
    modules = {_module_name(p) for p in paths}
    graph = {_module_name(p): _imports(p, _module_name(p), modules) for p in paths}
    visiting, done, cycles = [], set(), []

    def visit(node):
        if node in visiting:
            cycles.append(visiting[visiting.index(node):] + [node])
            return
        if node in done:
            return
        visiting.append(node)
        for target in sorted(graph[node]):
            visit(target)
        visiting.pop()
        done.add(node)

    for node in sorted(graph):
        visit(node)
    assert not cycles, " ; ".join(" -> ".join(c) for c in cycles)


def _room(module: str) -> str:
    """The room a module lives in: a sub-package of samtune, or a top-level module."""
    return ".".join(module.split(".")[:2])


def test_rooms_form_layers():
    """Between rooms (samtune's sub-packages and top-level modules, and analysis) the
    imports point one way: no room imports a room that imports it back, at any distance,
    so every room sits on a floor above all it uses."""
    paths = [p for package in PACKAGES for p in (ROOT / package).rglob("*.py")]
    modules = {_module_name(p) for p in paths}
    rooms: dict[str, set[str]] = {}
    for path in paths:
        name = _module_name(path)
        used = {_room(target) for target in _imports(path, name, modules)} - {_room(name), "samtune"}
        rooms.setdefault(_room(name), set()).update(used)
    reach = {room: set(used) for room, used in rooms.items()}
    for _ in rooms:  # transitive closure
        for room in reach:
            reach[room] |= set().union(*(reach.get(other, set()) for other in reach[room]))
    upward = sorted(f"{room} -> {other}" for room in reach for other in reach[room] if room in reach.get(other, ()))
    assert not upward, upward
    assert "samtune.cli" not in set().union(*rooms.values())  # nothing imports the CLI


@pytest.mark.parametrize("package", ["analysis"])
def test_analysis_imports_no_training_code(package):
    graph_sources = [p for p in (ROOT / package).rglob("*.py")]
    modules = {_module_name(p) for p in (ROOT / "samtune").rglob("*.py")}
    used = set().union(*(_imports(p, _module_name(p), modules) for p in graph_sources))
    assert used <= {"samtune.schema"}, used
