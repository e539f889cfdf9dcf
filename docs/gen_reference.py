"""The reference pages, generated from the code at every build so they cannot drift.

An MkDocs hook (``hooks:`` in mkdocs.yml): :func:`on_files` adds the pages below to the
build as generated files; nothing is written into ``docs/``.  Each page is read from the
one place that defines what it lists:

- trial parameters: the fields of :class:`samtune.config.TrialConfig` (type, constraints,
  default, ``Field(description=...)``), hyperparameters and run settings apart;
- the search spec: the pydantic models of :mod:`samtune.spec`, section by section;
- measures: :data:`samtune.sharpness.registry.MEASURES` (definition text, settings) with
  :data:`samtune.schema.MEASURES` (metric names);
- metrics: the catalogues of :mod:`samtune.schema`, described by :data:`METRIC_TEXT`;
- the command line: the argparse parser of :func:`samtune.cli.build_parser`;
- the Python API: the docstrings of :data:`API`, read from the source with ``ast`` (no
  torch or Ray import);
- the code layout: every module's docstring and the imports between the rooms, read with
  ``ast`` as well;
- the data sets: :data:`samtune.data.catalogue.CATALOGUE`.

:func:`undocumented` lists every item without a description; ``tests/test_docs.py``
holds it empty.
"""

from __future__ import annotations

import argparse
import ast
import inspect
import json
import re
import types
import typing
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, Literal, Union

import yaml
from pydantic import BaseModel, RootModel
from pydantic.fields import FieldInfo
from pydantic_core import PydanticUndefined

ROOT = Path(__file__).resolve().parent.parent

# -- metrics: what each name in samtune.schema's metric catalogues means ----------------------
# A metric added to samtune.schema without a line here fails tests/test_docs.py.
METRIC_TEXT = {
    "train_loss": "cross-entropy on the first `train_eval_examples` training examples, in eval mode",
    "train_error": "error (a fraction) on the same examples",
    "test_loss": "cross-entropy on the test set",
    "test_error": "error (a fraction, not percent) on the test set",
    "gen_gap": "`test_error − train_error`",
    "lr": "the learning rate at the epoch's end",
    "batch_size": "the epoch's batch size (global, across data-parallel workers)",
    "rho": "the epoch's ρ",
    "steps": "cumulative optimizer updates (a growing batch changes how many a trial gets)",
    "samples_seen": "cumulative training examples drawn",
    "gradient_evaluations": "cumulative gradient evaluations: one per base-optimizer step, two per SAM-family step",
    "epoch_seconds": "wall time of the epoch's training",
    "samples_per_second": "training throughput of the epoch",
    "workers": "data-parallel workers that trained the epoch",
    "probe_sam_grad_sq": "‖d‖² of the trial's full-batch update direction at the epoch's ρ (trial key `probes`)",
    "probe_direction_msd": "mean over `probe_batches` mini-batches of ‖d_B − d‖², the variance term of the bound",
    "criterion_reached": "1 when the training criterion was met, else 0",
    "criterion_epoch": "epochs trained when the criterion was met (NaN if never)",
    "criterion_steps": "optimizer steps when the criterion was met (NaN if never)",
    "criterion_samples": "training samples when the criterion was met (NaN if never)",
}
UNCERTAINTY_TEXT = {
    "stderr": "standard error of the Monte-Carlo estimate",
    "residual": "Lanczos residual: the eigenvalue's error bound",
}

# -- the Python API: public name -> what it is (the text is its docstring) -------------------
API = (
    "samtune.config.make_trial_config",
    "samtune.spec.load_search_spec",
    "samtune.search.run_search",
    "samtune.trial.open_data",
    "samtune.trial.train",
    "samtune.sharpness.measure_all",
    "samtune.optim.SAM",
    "samtune.optim.GSAM",
    "analysis.report.build_report",
)

# The YAML shape of spec fields whose Python type is what validation makes of them.
_SPEC_YAML_TYPES = {
    "search": "mapping: trial key → distribution",
    "grid": "mapping: trial key → list of values, or axis name → mapping of bundles",
    "resources": "mapping (section below)",
    "scheduler": "`none` or a mapping (sections below)",
    "objective": "mapping (section below)",
    "design": "mapping (section below)",
    "until": "mapping (section below)",
    "equal_budget": "mapping (section below)",
}
_SPEC_YAML_DEFAULTS = {"search": "none", "grid": "none"}


# -- rendering helpers ------------------------------------------------------------------------
def _escape_cell(text: str) -> str:
    """One table cell: newlines folded, ``|`` escaped outside code spans (inside them
    Python-Markdown's tables leave it alone)."""
    parts = " ".join(str(text).split()).split("`")
    return "`".join(part if i % 2 else part.replace("|", r"\|") for i, part in enumerate(parts))


def _table(header: tuple[str, ...], rows: list[tuple[str, ...]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join(" --- " for _ in header) + "|"]
    lines += ["| " + " | ".join(_escape_cell(cell) for cell in row) + " |" for row in rows]
    return "\n".join(lines) + "\n"


def _value(value: Any) -> str:
    """A default as YAML spells it."""
    if isinstance(value, BaseModel):
        value = value.model_dump(mode="json", by_alias=True)
    if value is None:
        return "none"
    if isinstance(value, tuple):
        value = list(value)
    text = yaml.safe_dump(value, default_flow_style=True, width=1000).strip()
    return f"`{text.removesuffix('...').strip()}`"


def _default(field: FieldInfo) -> str:
    if field.default_factory is not None:
        return _value(field.default_factory())
    if field.default is PydanticUndefined:
        return "required"
    return _value(field.default)


_CONSTRAINTS = {"gt": "> {}", "ge": "≥ {}", "lt": "< {}", "le": "≤ {}", "min_length": "at least {} long",
                "max_length": "at most {} long"}


def _constraints(items: list[Any]) -> list[str]:
    """Bounds in words, from annotated_types' Gt, Ge, Lt, Le, MinLen and MaxLen."""
    out: list[str] = []
    for item in items:
        if isinstance(item, FieldInfo):
            found = _constraints(item.metadata)
        else:
            found = []
            for attr, words in _CONSTRAINTS.items():
                bound = getattr(item, attr, None)
                if isinstance(bound, (int, float)) and not isinstance(bound, bool):
                    found.append("non-empty" if (attr, bound) == ("min_length", 1) else words.format(bound))
        out += [text for text in found if text not in out]
    return out


def _type(tp: Any) -> str:
    """A field's type in words: what a YAML value of it looks like."""
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin is typing.Annotated:
        inner = _type(args[0])
        extra = _constraints(list(args[1:]))
        return f"{inner} ({', '.join(extra)})" if extra else inner
    if tp is type(None):
        return "none"
    if tp is Any:
        return "any"
    if origin is Literal:
        from samtune import schema

        if set(args) == set(schema.MEASURES):
            return "measure name"
        return " or ".join(f"`{a}`" for a in args)
    if origin in (Union, types.UnionType):
        if set(args) == {int, float}:
            return "number"
        return " or ".join(_type(a) for a in args)
    if origin is tuple:
        if len(args) == 2 and args[1] is Ellipsis:
            inner = _type(args[0])
            return "list of measure names" if inner == "measure name" else f"list of {inner}"
        return "[" + ", ".join(_type(a) for a in args) + "]" if args else "list"
    if origin is dict:
        return f"mapping {_type(args[0])} → {_type(args[1])}"
    if isinstance(tp, type):
        if issubclass(tp, BaseModel):
            return "mapping"
        return {"str": "string", "int": "integer", "float": "number", "bool": "boolean"}.get(tp.__name__, tp.__name__)
    return str(tp)


def _literal_choices(tp: Any) -> tuple | None:
    """The values of a ``Literal`` annotation (inside ``| None`` too); None for any other."""
    if typing.get_origin(tp) is Literal:
        return typing.get_args(tp)
    if typing.get_origin(tp) in (Union, types.UnionType):
        found = [_literal_choices(a) for a in typing.get_args(tp) if a is not type(None)]
        return found[0] if len(found) == 1 else None
    return None


def _field_type(field: FieldInfo) -> str:
    choices = _literal_choices(field.annotation)
    if choices and all(f"`{c}`" in (field.description or "") for c in choices):
        text = "choice" + (" or none" if type(None) in typing.get_args(field.annotation) else "")
    else:  # the description does not list the values: the type does
        text = _type(field.annotation)
    extra = _constraints(field.metadata)
    return f"{text}, {', '.join(extra)}" if extra else text


def _fields(model: type[BaseModel]) -> Iterator[tuple[str, FieldInfo]]:
    """(YAML key, field) of a model, without the ones YAML never gives."""
    hidden = getattr(model, "_not_in_yaml", frozenset())
    for name, field in model.model_fields.items():
        if name not in hidden:
            yield field.alias or name, field


# -- trial parameters -------------------------------------------------------------------------
def trial_parameters_page() -> str:
    from samtune import schema
    from samtune.config import HyperParams, RunSettings
    from samtune.schedules import SCHEDULE_KEYS

    def rows(model, keep=lambda key: True):
        out = []
        for key, field in _fields(model):
            if not keep(key):
                continue
            notes = []
            if key in schema.PBT_KEYS:
                notes.append("PBT may change it during a trial")
            if key in schema.MEASUREMENT_KEYS:
                notes.append("measurement protocol")
            text = field.description + (f" *({'; '.join(notes)})*" if notes else "")
            out.append((f"`{key}`", _field_type(field), _default(field), text))
        return out

    header = ("key", "type", "default", "meaning")
    return "\n".join([
        "# Trial parameters",
        "",
        "<!-- generated by docs/gen_reference.py from samtune.config.TrialConfig: edit the Field descriptions -->",
        "",
        "Every key a trial takes, in YAML (`trial:` of a search spec, `samtune train --config`), on the "
        "command line (`--set KEY=VALUE`) and as MLflow params.  A key not listed here is refused, as is a "
        "value outside its type or bounds; the checks across keys (`lr_final ≤ lr`, a ViT option on a CNN, "
        "a budget the epochs cannot hold, …) are made when the configuration is built.",
        "",
        "## Hyperparameters",
        "",
        "They define the experiment and enter the trial's hyperparameter digest "
        "(tag `samtune.hparams_digest`; see [Concepts](../concepts.md)).",
        "",
        _table(header, rows(HyperParams, lambda key: key not in SCHEDULE_KEYS)),
        "### Schedules: learning rate, batch size, ρ",
        "",
        "Pure functions of training progress (`samtune.schedules`); with a `budget` they run over the budget.",
        "",
        _table(header, rows(HyperParams, lambda key: key in SCHEDULE_KEYS)),
        f"Default measures (`sharpness: none`): {', '.join(f'`{m}`' for m in schema.DEFAULT_MEASURES)}.",
        "",
        "## Run settings",
        "",
        "Where and how a trial runs; they change nothing beyond floating-point noise and stay out of the digest.",
        "",
        _table(header, rows(RunSettings)),
    ])


# -- the search spec --------------------------------------------------------------------------
def _spec_sections() -> list[tuple[str, type[BaseModel], str]]:
    """(heading, model, what it is) for every mapping of a search spec's YAML."""
    from samtune.spec.design import Design
    from samtune.spec.grid import EqualBudget
    from samtune.spec.objective import Objective
    from samtune.spec.resources import Resources
    from samtune.spec.schedulers import Asha, Pb2, Pbt
    from samtune.spec.search_spec import SearchSpec
    from samtune.spec.until import Until

    return [
        ("Top level", SearchSpec, "One YAML file describes one search."),
        ("`objective`", Objective, ""),
        ("`resources`", Resources, ""),
        ("`scheduler: {asha: ...}`", Asha, ""),
        ("`scheduler: {pbt: ...}`", Pbt, ""),
        ("`scheduler: {pb2: ...}`", Pb2, "The keys of `pbt`."),
        ("`design`", Design, ""),
        ("`until`", Until, ""),
        ("`equal_budget`", EqualBudget, ""),
    ]


def spec_models() -> list[type[BaseModel]]:
    """Every pydantic model defined in ``samtune.spec``: each field of each is a YAML key."""
    import importlib
    import pkgutil

    import samtune.spec

    found = []
    for module_info in pkgutil.iter_modules(samtune.spec.__path__):
        module = importlib.import_module(f"samtune.spec.{module_info.name}")
        for _, obj in inspect.getmembers(module, inspect.isclass):
            generic = "[" in obj.__name__  # a parametrization such as RootModel[...], not a model of its own
            if issubclass(obj, BaseModel) and obj.__module__ == module.__name__ and not generic and obj not in found:
                found.append(obj)
    return found


def _docstring_text(obj: Any) -> str:
    return _rst_to_md(inspect.cleandoc(obj.__doc__ or ""))


def search_spec_page() -> str:
    from samtune.spec.distributions import Choice, IntUniform, LogUniform, Uniform, _Distribution

    parts = [
        "# Search-spec keys",
        "",
        "<!-- generated by docs/gen_reference.py from the pydantic models of samtune.spec -->",
        "",
        "A search spec is one YAML file (`samtune search PATH.yaml`, or a bundled space by name).  An unknown "
        "key is refused with the list of known ones; see [Troubleshooting](../troubleshooting.md) for the "
        "checks across sections.",
        "",
    ]
    header = ("key", "type", "default", "meaning")
    for heading, model, intro in _spec_sections():
        parts += [f"## {heading}", ""]
        doc = intro or _docstring_text(model)
        if doc:
            parts += [doc, ""]
        top = heading == "Top level"
        rows = [(f"`{key}`", _SPEC_YAML_TYPES.get(key, _field_type(field)) if top else _field_type(field),
                 _SPEC_YAML_DEFAULTS.get(key, _default(field)) if top else _default(field), field.description or "")
                for key, field in _fields(model)]
        parts += [_table(header, rows)]
    parts += ["## `search: {KEY: distribution}`", "", _docstring_text(_Distribution), ""]
    rows = []
    for cls in (Uniform, LogUniform, IntUniform, Choice):
        field = cls.model_fields["values"]
        rows.append((f"`{{{cls.kind}: ...}}`", _field_type(field), field.description))
    when = _Distribution.model_fields["when"]
    rows.append(("`when`", _field_type(when), when.description))
    parts += [_table(("key", "type", "meaning"), rows)]
    return "\n".join(parts)


# -- measures and metrics ---------------------------------------------------------------------
def measures_page() -> str:
    from samtune import schema
    from samtune.sharpness.registry import MEASURES

    rows = []
    for name, spec in MEASURES.items():
        names = schema.MEASURES[name]
        settings = ", ".join(f"`{k}={v}`" for k, v in spec.settings.items()) or "none"
        flags = [label for label, on in (("default", name in schema.DEFAULT_MEASURES),
                                         ("per batch (m)", names.per_batch), ("seeded", spec.stochastic)) if on]
        extra = f"`_{names.uncertainty}`: {UNCERTAINTY_TEXT[names.uncertainty]}" if names.uncertainty else ""
        rows.append((f"`{name}`", spec.description, settings, extra, ", ".join(flags)))
    return "\n".join([
        "# Sharpness measures",
        "",
        "<!-- generated by docs/gen_reference.py from samtune.sharpness.registry and samtune.schema -->",
        "",
        "A name fixes a definition.  Each measure is reported as the metric `sharpness_<name>` (the `norm_*` "
        "baselines keep their name), with its error estimate `sharpness_<name>_stderr` or `_residual` beside it "
        "where it has one, and logged with the settings that "
        "define it, params `sharpness.<name>.<setting>` (these settings, plus `precision`, `n_examples` and, for "
        "the per-batch measures, `m`), so numbers of different definitions are never compared by mistake.  "
        "Pick them with the trial key `sharpness` (or `sharpness:` at the top of a spec), or afterwards with "
        "`samtune sharpness RUN --measures NAME,...`.",
        "",
        _table(("name", "definition", "settings", "error estimate", "flags"), rows),
        "*default*: measured when a trial names none; *per batch (m)*: averaged over batches of "
        "`sharpness_batch` (m-sharpness), so m is part of the definition; *seeded*: drawn from the trial's seed.",
        "",
    ])


def metric_catalogue() -> list[tuple[str, str, str]]:
    """(group, metric, meaning) for every metric a trial can report."""
    from samtune import schema
    from samtune.sharpness.registry import MEASURES

    out = [("per epoch", m, METRIC_TEXT.get(m, "")) for m in schema.EPOCH_METRICS]
    out += [("per epoch, with `probes: true`", m, METRIC_TEXT.get(m, "")) for m in schema.PROBE_METRICS]
    out += [("final", schema.FINAL_PREFIX + m, f"the last epoch's `{m}`") for m in schema.FINAL_OF]
    out += [("final, with a training criterion", m, METRIC_TEXT.get(m, "")) for m in schema.CRITERION_METRICS]
    for name, names in schema.MEASURES.items():
        out.append(("measures", names.metric, MEASURES[name].description if name in MEASURES else ""))
        if names.uncertainty:
            out.append(("measures", f"{names.metric}_{names.uncertainty}",
                        UNCERTAINTY_TEXT.get(names.uncertainty, "")))
    return out


def metrics_page() -> str:
    rows = [(group, f"`{metric}`", text) for group, metric, text in metric_catalogue()]
    return "\n".join([
        "# Metrics",
        "",
        "<!-- generated by docs/gen_reference.py from the catalogues of samtune.schema -->",
        "",
        "What a trial reports to MLflow (per-epoch metrics with MLflow `step` = epoch) and what an objective, "
        "ASHA, PBT or `until` may name.  Errors are fractions, not percent.",
        "",
        _table(("when", "metric", "meaning"), rows),
    ])


# -- the command line -------------------------------------------------------------------------
def cli_arguments() -> Iterator[tuple[str, argparse.ArgumentParser, argparse.Action]]:
    """(command, its parser, one argument) for every argument of every command."""
    from samtune.cli import build_parser

    parser = build_parser()
    commands = [("samtune", parser)]
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            commands += [(f"samtune {name}", sub) for name, sub in action.choices.items()]
    for command, sub in commands:
        for action in sub._actions:
            if isinstance(action, (argparse._HelpAction, argparse._SubParsersAction)):
                continue
            yield command, sub, action


def cli_commands() -> list[tuple[str, str]]:
    """(command, its help) for every subcommand."""
    from samtune.cli import build_parser

    parser = build_parser()
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            return [(choice.dest, choice.help or "") for choice in action._choices_actions]
    return []


def _usage(parser: argparse.ArgumentParser) -> str:
    formatter = argparse.HelpFormatter(parser.prog, width=88)
    formatter.add_usage(parser.usage, parser._actions, parser._mutually_exclusive_groups, prefix="")
    return formatter.format_help().strip()


def _argument_name(action: argparse.Action) -> str:
    if action.option_strings:
        metavar = ""
        if action.nargs != 0:
            metavar = action.metavar or action.dest.upper()
            metavar = " ".join(metavar) if isinstance(metavar, tuple) else metavar
            if action.nargs == "?":
                metavar = f"[{metavar}]"
        return f"`{', '.join(action.option_strings)}{' ' + metavar if metavar else ''}`"
    name = action.metavar or action.dest
    return f"`{name}`" + (" (optional)" if action.nargs == "?" else "")


def cli_page() -> str:
    from samtune.cli import build_parser

    parser = build_parser()
    by_command: dict[str, list[argparse.Action]] = {}
    parsers: dict[str, argparse.ArgumentParser] = {}
    for command, sub, action in cli_arguments():
        by_command.setdefault(command, []).append(action)
        parsers[command] = sub
    parts = [
        "# Command line",
        "",
        "<!-- generated by docs/gen_reference.py from samtune.cli.build_parser -->",
        "",
        _rst_to_md(parser.description or ""),
        "",
        "A configuration mistake exits with status 2 and one message naming the key, the value and what is "
        "allowed, before anything is launched or recorded (see [Troubleshooting](../troubleshooting.md)).",
        "",
        _table(("command", "what it does"), [(f"[`samtune {name}`](#samtune-{name})", text)
                                             for name, text in cli_commands()]),
        "## `samtune`",
        "",
        _table(("option", "meaning"), [(_argument_name(a), a.help or "") for a in by_command["samtune"]]),
    ]
    for name, text in cli_commands():
        command = f"samtune {name}"
        parts += [f"## `{command}` {{#samtune-{name}}}", "", text[:1].upper() + text[1:] + ".", "",
                  "```text", _usage(parsers.get(command) or _subparser(parser, name)), "```", ""]
        actions = by_command.get(command, [])
        if actions:
            parts.append(_table(("argument", "meaning"), [(_argument_name(a), (a.help or "").replace(
                "%(default)s", str(a.default))) for a in actions]))
    return "\n".join(parts)


def _subparser(parser: argparse.ArgumentParser, name: str) -> argparse.ArgumentParser:
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            return action.choices[name]
    raise KeyError(name)


# -- the Python API ---------------------------------------------------------------------------
def _module_file(module: str) -> Path:
    base = ROOT.joinpath(*module.split("."))
    return base / "__init__.py" if base.is_dir() else base.with_suffix(".py")


def _find_definition(module: str, name: str, depth: int = 0) -> tuple[str, ast.AST]:
    """(defining module, its def/class node), following ``from X import name`` from a
    package's ``__init__`` without importing anything."""
    tree = ast.parse(_module_file(module).read_text())
    for node in tree.body:
        if isinstance(node, (ast.FunctionDef, ast.ClassDef)) and node.name == name:
            return module, node
    for node in tree.body:
        if isinstance(node, ast.ImportFrom) and depth < 5 and any(a.name == name for a in node.names):
            source = node.module if node.level == 0 else ".".join(module.split(".")[:-node.level] + [node.module])
            return _find_definition(source, name, depth + 1)
    raise LookupError(f"{module}.{name}: no definition found")


def _parameters(args: ast.arguments) -> list[str]:
    """A def's parameters as PEP 8 writes them (``name: T = default``)."""
    def one(arg: ast.arg, default: ast.expr | None, prefix: str = "") -> str:
        text = prefix + arg.arg + (f": {ast.unparse(arg.annotation)}" if arg.annotation else "")
        if default is not None:
            text += (" = " if arg.annotation else "=") + ast.unparse(default)
        return text

    positional = args.posonlyargs + args.args
    defaults = [None] * (len(positional) - len(args.defaults)) + list(args.defaults)
    out = [one(arg, default) for arg, default in zip(positional, defaults)]
    if args.posonlyargs:
        out.insert(len(args.posonlyargs), "/")
    if args.vararg:
        out.append(one(args.vararg, None, "*"))
    elif args.kwonlyargs:
        out.append("*")
    out += [one(arg, default) for arg, default in zip(args.kwonlyargs, args.kw_defaults)]
    if args.kwarg:
        out.append(one(args.kwarg, None, "**"))
    return [p for p in out if p not in ("self", "cls")]


def _signature(node: ast.AST) -> str:
    if isinstance(node, ast.ClassDef):
        init = next((n for n in node.body if isinstance(n, ast.FunctionDef) and n.name == "__init__"), None)
        head, params, returns = f"class {node.name}", _parameters(init.args) if init else [], ""
    else:
        head, params = f"def {node.name}", _parameters(node.args)
        returns = f" -> {ast.unparse(node.returns)}" if node.returns else ""
    flat = f"{head}({', '.join(params)}){returns}"
    if len(flat) <= 80:
        return flat
    return f"{head}(\n" + "".join(f"    {p},\n" for p in params) + f"){returns}"


def _rst_to_md(text: str) -> str:
    """The reST of samtune's docstrings as Markdown: roles to code, literals to code."""
    text = re.sub(r":(?:func|class|meth|mod|data|attr|exc):`~?([^`]+)`",
                  lambda m: f"`{m.group(1).split('.')[-1] if m.group(0).count('~') else m.group(1)}`", text)
    text = text.replace("``", "`")
    return re.sub(r"::\n", ":\n", text)


def api_entries() -> list[tuple[str, str, str, str]]:
    """(public name, defining module, signature, docstring) of every :data:`API` entry."""
    out = []
    for public in API:
        module, name = public.rsplit(".", 1)
        defined_in, node = _find_definition(module, name)
        out.append((public, defined_in, _signature(node), ast.get_docstring(node) or ""))
    return out


def api_page() -> str:
    parts = [
        "# Python API",
        "",
        "<!-- generated by docs/gen_reference.py from the docstrings of the entry points it lists -->",
        "",
        "The entry points the command line is built on.  Every configuration goes through "
        "`make_trial_config` or `load_search_spec`, which refuse a mistake with a `ConfigError` naming the "
        "key, the value and what is allowed.",
        "",
        "```python",
        "from samtune.config import make_trial_config",
        "from samtune.trial import open_data, train",
        "config = make_trial_config({\"optimizer\": \"sam\", \"epochs\": 5})",
        "result = train(config, data=open_data(config))   # result.final, result.history",
        "",
        "from samtune.optim import GSAM                    # the optimizers in a training loop of your own",
        "opt = GSAM(model.parameters(), torch.optim.SGD, rho=0.05, alpha=0.1, lr=0.1, momentum=0.9)",
        "loss_fn(model(x), y).backward()",
        "opt.first_step(zero_grad=True)     # w <- w + e(w)",
        "loss_fn(model(x), y).backward()    # the gradient at the perturbed point",
        "opt.second_step(zero_grad=True)    # restore w, GSAM's direction, the base step",
        "",
        "from samtune.spec import load_search_spec",
        "from samtune.search import run_search",
        "run_search(load_search_spec(\"default\"), tracking_uri=\"sqlite:///mlflow.db\")   # the exit status",
        "```",
        "",
    ]
    for public, defined_in, signature, doc in api_entries():
        parts += [f"## `{public}`", "", f"Defined in `{defined_in}`.", "", "```python", signature, "```", "",
                  _rst_to_md(doc), ""]
    return "\n".join(parts)


# -- the code layout --------------------------------------------------------------------------
CODE_PACKAGES = ("samtune", "analysis")


def _module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _room(module: str) -> str:
    """A module's room: a sub-package of samtune or a top-level module (analysis is one room)."""
    return "analysis" if module.startswith("analysis") else ".".join(module.split(".")[:2])


def code_modules() -> dict[str, tuple[Path, ast.Module]]:
    """Every module of the code, by dotted name, parsed (nothing imported)."""
    paths = sorted(p for package in CODE_PACKAGES for p in (ROOT / package).rglob("*.py"))
    return {_module_name(p): (p, ast.parse(p.read_text())) for p in paths}


def _imported_rooms(name: str, path: Path, tree: ast.Module) -> set[str]:
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                base = ".".join(package.split(".")[:len(package.split(".")) - node.level + 1] + [base]).strip(".")
            found.update(f"{base}.{alias.name}" for alias in node.names)  # `from samtune import schema`
    return {_room(m) for m in found if m.split(".")[0] in CODE_PACKAGES and _room(m) != "samtune"}


def room_floors(modules: dict[str, tuple[Path, ast.Module]]) -> dict[str, int]:
    """Each room's floor: 0 for a room that uses no other, else one above the highest it uses
    (tests/test_schema.py holds the imports between rooms free of circles)."""
    uses: dict[str, set[str]] = {}
    for name, (path, tree) in modules.items():
        if name != "samtune":
            uses.setdefault(_room(name), set()).update(_imported_rooms(name, path, tree) - {_room(name)})
    floors: dict[str, int] = {}

    def floor(room: str) -> int:
        if room not in floors:
            floors[room] = 1 + max((floor(other) for other in uses.get(room, ()) if other in uses), default=-1)
        return floors[room]

    for room in uses:
        floor(room)
    return floors


def _summary(tree: ast.Module) -> str:
    """A docstring's first paragraph, on one line."""
    first = (ast.get_docstring(tree) or "").split("\n\n")[0]
    return " ".join(_rst_to_md(first).split())


def _room_link(room: str) -> str:
    return f"[`{room}`](#{room.replace('.', '')})"


def code_layout_page() -> str:
    modules = code_modules()
    floors = room_floors(modules)
    parts = [
        "# Code layout",
        "",
        "<!-- generated by docs/gen_reference.py from the modules' docstrings and imports -->",
        "",
        "Each room (a sub-package of `samtune`, one of its top-level modules, or `analysis`) has one job, and "
        "the imports between rooms point one way: a room uses only rooms on lower floors.  Floor 0 uses no "
        "other room.  `analysis` uses nothing of `samtune` but `samtune.schema` and never imports torch; "
        "nothing imports `samtune.cli`.  `tests/test_schema.py` holds the code to these rules.",
        "",
        _table(("package", "what it holds"), [("`samtune`", _summary(modules["samtune"][1]))]),
        _table(("floor", "rooms"), [(str(level), ", ".join(_room_link(room) for room in sorted(floors)
                                                           if floors[room] == level))
                                    for level in sorted(set(floors.values()))]),
    ]
    for room in sorted(floors, key=lambda r: (floors[r], r)):
        parts += [f"## `{room}` {{#{room.replace('.', '')}}}", "", f"Floor {floors[room]}.", ""]
        rows = [(f"`{name}`", _summary(tree)) for name, (_, tree) in modules.items() if _room(name) == room]
        parts += [_table(("module", "what it holds"), rows)]
    return "\n".join(parts)


# -- the data sets ----------------------------------------------------------------------------
def datasets_page() -> str:
    from samtune.data.catalogue import CATALOGUE, DIGITS_LOADER, DIGITS_SPLIT, IMAGEFOLDER_PREFIX

    def stats(values) -> str:
        return "/".join(f"{v:g}" for v in values)

    rows = []
    for entry in CATALOGUE.values():
        where = (f"`{entry.folder}/`: " + ", ".join(f"`{f}`" for f in entry.files)) if entry.folder \
            else f"`{DIGITS_LOADER}` (ships with scikit-learn)"
        get = entry.how_to_get(Path("DATA_ROOT")) if entry.folder else "nothing to get"
        normalized = f"mean {stats(entry.mean)}, std {stats(entry.std)}" if entry.mean else "its own pixels' statistics"
        rows.append((f"`{entry.name}`", f"{entry.train_size:,} / {entry.test_size:,}", where, normalized,
                     "streamed from disk" if entry.streamed else "held in memory", get))
    split = ", ".join(f"{k}={v}" for k, v in DIGITS_SPLIT.items())
    return "\n".join([
        "# Data sets",
        "",
        "<!-- generated by docs/gen_reference.py from samtune.data.catalogue -->",
        "",
        "The sets a trial names with the key `dataset`, read from the data root (`trial.data_dir`, default "
        "`$SAMTUNE_DATA`, else `./data`); DATA_ROOT below stands for it.  A set that is missing or "
        "incomplete is refused before launch with the path looked in and how to get it.  "
        f"`digits` holds out its test split with scikit-learn's `train_test_split` ({split}), the same "
        "whatever the trial's seed.  Besides these names, `dataset: "
        f"{IMAGEFOLDER_PREFIX}PATH` reads any folder in torchvision's ImageFolder layout "
        "(`PATH/train/<class>/*`, `PATH/test/<class>/*`); `streaming: true` reads it from disk as ImageNet is.  "
        "Step by step: [Preparing the data](../how-to/data.md).",
        "",
        _table(("name", "train / test images", "where, under DATA_ROOT", "normalized with", "read", "how to get it"),
               rows),
    ])


# -- what has no description ------------------------------------------------------------------
def undocumented() -> dict[str, list[str]]:
    """Every trial key, spec key, measure, metric, CLI argument and API entry without a
    description, by kind (empty lists when everything is documented)."""
    from samtune.config import TrialConfig
    from samtune.sharpness.registry import MEASURES

    missing: dict[str, list[str]] = {"trial keys": [], "spec keys": [], "measures": [], "metrics": [],
                                     "cli arguments": [], "cli commands": [], "api": [], "modules": []}
    missing["trial keys"] = [k for k, f in TrialConfig.model_fields.items() if not (f.description or "").strip()]
    for model in spec_models():
        if issubclass(model, RootModel):
            if not (model.__doc__ or "").strip():
                missing["spec keys"].append(f"{model.__name__} (docstring)")
            continue
        missing["spec keys"] += [f"{model.__name__}.{k}" for k, f in model.model_fields.items()
                                 if not (f.description or "").strip()]
    missing["measures"] = [name for name, spec in MEASURES.items() if not spec.description.strip()]
    missing["metrics"] = [metric for _, metric, text in metric_catalogue() if not text.strip()]
    missing["cli arguments"] = [f"{command} {_argument_name(a)}" for command, _, a in cli_arguments()
                                if not (a.help or "").strip()]
    missing["cli commands"] = [name for name, text in cli_commands() if not text.strip()]
    missing["api"] = [public for public, _, _, doc in api_entries() if not doc.strip()]
    missing["modules"] = [name for name, (_, tree) in code_modules().items() if not _summary(tree)]
    return missing


# -- the MkDocs hook --------------------------------------------------------------------------
PAGES: dict[str, Callable[[], str]] = {
    "reference/trial-parameters.md": trial_parameters_page,
    "reference/search-spec.md": search_spec_page,
    "reference/measures.md": measures_page,
    "reference/metrics.md": metrics_page,
    "reference/cli.md": cli_page,
    "reference/python-api.md": api_page,
    "reference/code-layout.md": code_layout_page,
    "reference/datasets.md": datasets_page,
}


def on_files(files, config):
    """Add the generated reference pages to the build (MkDocs event)."""
    from mkdocs.structure.files import File

    for uri, make in PAGES.items():
        files.append(File.generated(config, uri, content=make()))
    return files


if __name__ == "__main__":  # print what has no description, as JSON
    print(json.dumps(undocumented(), indent=1))
