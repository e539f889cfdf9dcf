"""The documentation site: every trial key, spec key, measure, metric, CLI argument and
API entry point has a description (the reference pages are generated from them by
docs/gen_reference.py), and ``mkdocs build --strict`` builds the site (a broken link or
anchor fails it)."""

import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parent.parent
MKDOCS_ENV = {**os.environ, "NO_MKDOCS_2_WARNING": "1"}


def _load_generator():
    spec = importlib.util.spec_from_file_location("gen_reference", ROOT / "docs" / "gen_reference.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


gen = _load_generator()


@pytest.fixture(scope="module")
def missing():
    return gen.undocumented()


@pytest.mark.parametrize("kind", ["trial keys", "spec keys", "measures", "metrics", "cli arguments",
                                  "cli commands", "api", "modules"])
def test_everything_has_a_description(missing, kind):
    assert missing[kind] == [], f"{kind} without a description: {missing[kind]}"


def test_a_missing_description_is_found(monkeypatch):
    """The check above is not vacuous: a field, a metric or a flag without text is reported."""
    import argparse

    import samtune.cli
    from samtune.config import TrialConfig
    from samtune.spec.resources import Resources

    monkeypatch.setattr(TrialConfig.model_fields["lr"], "description", None)
    monkeypatch.setattr(Resources.model_fields["cpu"], "description", "")
    monkeypatch.delitem(gen.METRIC_TEXT, "gen_gap")
    build = samtune.cli.build_parser

    def parser_with_a_bare_flag() -> argparse.ArgumentParser:
        parser = build()
        parser.add_argument("--undocumented")
        return parser

    monkeypatch.setattr(samtune.cli, "build_parser", parser_with_a_bare_flag)
    found = gen.undocumented()
    assert found["trial keys"] == ["lr"]
    assert found["spec keys"] == ["Resources.cpu"]
    assert found["metrics"] == ["gen_gap"]
    assert found["cli arguments"] == ["samtune `--undocumented UNDOCUMENTED`"]


def test_reference_pages_list_every_name():
    from samtune import schema
    from samtune.config import TRIAL_KEYS
    from samtune.spec import SPEC_KEYS

    trial, spec, measures, metrics, cli = (gen.PAGES[f"reference/{name}.md"]() for name in
                                           ("trial-parameters", "search-spec", "measures", "metrics", "cli"))
    assert all(f"| `{key}` |" in trial for key in TRIAL_KEYS)
    assert all(f"| `{key}` |" in spec for key in SPEC_KEYS)
    assert all(f"| `{name}` |" in measures for name in schema.MEASURES)
    every_metric = (schema.EPOCH_METRICS + schema.PROBE_METRICS + schema.FINAL_METRICS + schema.CRITERION_METRICS
                    + schema.measure_metric_names(tuple(schema.MEASURES)))
    assert all(f"`{metric}`" in metrics for metric in every_metric)
    for command, _, action in gen.cli_arguments():
        assert all(option in cli for option in action.option_strings), (command, action.option_strings)


def test_mkdocs_build_is_strict_about_links(tmp_path):
    """The site's validation settings turn a broken page link or anchor into a failed build."""
    settings = yaml.safe_load((ROOT / "mkdocs.yml").read_text())
    docs = tmp_path / "docs"
    docs.mkdir()
    (docs / "index.md").write_text("# Home\n\n[gone](missing.md) and [nowhere](#no-such-heading)\n")
    config = {"site_name": "t", "theme": {"name": "material", "font": False}, "validation": settings["validation"],
              "markdown_extensions": settings["markdown_extensions"]}
    (tmp_path / "mkdocs.yml").write_text(yaml.safe_dump(config))
    done = subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "-f", str(tmp_path / "mkdocs.yml"),
                           "-d", str(tmp_path / "site")], capture_output=True, text=True, timeout=120, env=MKDOCS_ENV)
    assert done.returncode != 0
    assert "missing.md" in done.stderr and "no-such-heading" in done.stderr, done.stderr[-3000:]


def test_site_builds_strict(tmp_path):
    """``mkdocs build --strict``: every page, nav entry, link and anchor resolves, the
    reference pages included."""
    site = tmp_path / "site"
    done = subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "-f", str(ROOT / "mkdocs.yml"),
                           "-d", str(site)], capture_output=True, text=True, timeout=300, env=MKDOCS_ENV, cwd=ROOT)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    trial_page = (site / "reference" / "trial-parameters" / "index.html").read_text()
    assert "sharpness_batch" in trial_page and "GSAM gap coefficient" in trial_page
    assert (site / "how-to" / "pbt" / "index.html").is_file()
    assert not (site / "gen_reference.py").exists()


def test_code_layout_lists_every_module_on_its_floor():
    page = gen.PAGES["reference/code-layout.md"]()
    modules = gen.code_modules()
    assert {"samtune.search.parallel", "samtune.search.preflight", "analysis.report"} <= set(modules)
    assert all(f"| `{name}` |" in page for name in modules)
    floors = gen.room_floors(modules)
    assert floors["samtune.schema"] == 0 and floors["samtune.cli"] == max(floors.values())
    assert floors["analysis"] == floors["samtune.schema"] + 1  # it uses samtune.schema and nothing else


def test_readme_is_short_and_its_links_resolve():
    import re

    text = (ROOT / "README.md").read_text()
    assert len(text.splitlines()) <= 150
    targets = re.findall(r"\]\(([^)#\s]+)(?:#[^)]*)?\)", text)
    local = [t for t in targets if "://" not in t]
    assert local, "the README links into the documentation"
    assert [t for t in local if not (ROOT / t).exists()] == []


def test_datasets_page_lists_every_set_and_how_to_get_it():
    from samtune.data.catalogue import CATALOGUE

    page = gen.PAGES["reference/datasets.md"]()
    for name, entry in CATALOGUE.items():
        assert f"| `{name}` |" in page
        assert all(f"`{file}`" in page for file in entry.files)
    assert "tiny-imagenet-200.zip" in page  # a set without a download says where to get it
