"""Reading a spec: a YAML file given by path or a bundled search space given by name,
``--set`` overrides, and validation that turns every mistake into one
:class:`~samtune.config.ConfigError` naming the key, the value and what is allowed.

The bundled spaces are the package data ``samtune.search_spaces`` (the repository's
top-level ``search_spaces/`` folder), read with :mod:`importlib.resources` so they are
found the same way from a checkout and from an installed wheel.
"""

from __future__ import annotations

import contextlib
from collections.abc import Mapping
from importlib import resources
from importlib.resources.abc import Traversable
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from samtune.config import ConfigError, load_yaml, parse_assignment
from samtune.spec.search_spec import SearchSpec
from samtune.spec.values import _explain

SPACES_PACKAGE = "samtune.search_spaces"  # package data: the top-level search_spaces/ folder
SPEC_KEYS = SearchSpec.yaml_keys()
SUMMARY_CHARS = 110


def bundled_spaces() -> dict[str, Traversable]:
    """The search spaces shipped in the package, by name (file name without ``.yaml``)."""
    try:
        folder = resources.files(SPACES_PACKAGE)
    except ModuleNotFoundError:
        return {}
    if not folder.is_dir():
        return {}
    return {Path(entry.name).stem: entry for entry in folder.iterdir() if entry.name.endswith(".yaml")}


def space_summary(text: str) -> str:
    """The first line of a space file's opening comment, cut to ``SUMMARY_CHARS``; "..."
    says the comment goes on."""
    lines = [line.lstrip("#").strip() for line in text.splitlines()[:2] if line.startswith("#")]
    if not lines:
        return ""
    first = lines[0].rstrip(":,;")
    if len(first) > SUMMARY_CHARS:
        return first[:SUMMARY_CHARS - 3].rsplit(" ", 1)[0] + "..."
    return first if first.endswith(".") or len(lines) == 1 else first + " ..."


def bundled_space_summaries() -> dict[str, str]:
    """Each bundled space's name and what it searches, from its file's opening comment
    (the files are read, not validated: listing them stays instant)."""
    return {name: space_summary(entry.read_text()) for name, entry in sorted(bundled_spaces().items())}


def bundled_space_names() -> tuple[str, ...]:
    return tuple(sorted(bundled_spaces()))


def _space_file(space: str) -> contextlib.AbstractContextManager[Path]:
    """A YAML file given by path, or a bundled space given by name (``default``,
    ``harada2024_cifar10_resnet18`` or ``harada2024_cifar10_resnet18.yaml``)."""
    path = Path(space)
    if path.is_file():
        return contextlib.nullcontext(path)
    bundled = bundled_spaces()
    if path.name == space and path.stem in bundled and path.suffix in ("", ".yaml"):
        return resources.as_file(bundled[path.stem])
    raise ConfigError(f"search space {space!r} not found: no such file, and no bundled space of that name; "
                      f"bundled: {', '.join(sorted(bundled))}")


def load_search_spec(space: str, assignments: list[str] = ()) -> SearchSpec:
    """The spec in ``space`` (a path or a bundled name) with ``--set`` overrides
    (``KEY=VALUE`` for a top-level key, ``trial.KEY=VALUE`` for a trial parameter)."""
    with _space_file(space) as path:
        data, source = load_yaml(path), path.read_text()
    for text in assignments:
        key, value = parse_assignment(text)
        if key.startswith("trial."):
            trial = data.get("trial")
            trial = trial if isinstance(trial, Mapping) else {}
            data["trial"] = {**trial, key.removeprefix("trial."): value}
        else:
            data[key] = value
    return parse_search_spec(data, source=source)


def parse_search_spec(data: Mapping[str, Any], source: str = "") -> SearchSpec:
    """Validate a spec given as a mapping; every mistake is a :class:`ConfigError`."""
    if not isinstance(data, Mapping):
        raise ConfigError(f"a search spec is a mapping of {', '.join(SPEC_KEYS)}; got {type(data).__name__}")
    if not source:
        try:
            source = yaml.safe_dump(dict(data), sort_keys=False)
        except yaml.YAMLError:
            source = repr(dict(data))
    try:
        return SearchSpec.model_validate(data, context={"source": source})
    except ValidationError as err:
        raise ConfigError(_explain(err.errors())) from None
