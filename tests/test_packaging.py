"""What a user gets from an installed samtune: the bundled search spaces travel in the
wheel as package data, and ``samtune search --dry-run`` works without torch or Ray."""

import shutil
import subprocess
import sys
import textwrap
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent

DRY_RUN = textwrap.dedent("""
    import sys
    from samtune.cli import main

    for space in ({spaces}):
        assert main(["search", *space, "--dry-run"]) == 0
    heavy = sorted(name for name in ("torch", "ray", "torchvision", "mlflow") if name in sys.modules)
    assert not heavy, f"the dry run imported {{heavy}}"
""")


def _dry_run(spaces: str, cwd: Path, **env) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", DRY_RUN.format(spaces=spaces)], cwd=cwd,
                          capture_output=True, text=True, timeout=120, env=env or None)


def test_dry_run_imports_neither_torch_nor_ray(tmp_path):
    done = _dry_run('[], ["harada2024_cifar10_resnet18"]', tmp_path)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    assert "name: samtune-default" in done.stdout and "name: harada2024_cifar10_resnet18" in done.stdout
    assert not (tmp_path / "mlflow.db").exists()


@pytest.mark.slow
def test_wheel_ships_the_bundled_spaces(tmp_path):
    # Build from a copy of the sources, so the build leaves nothing (build/, egg-info)
    # in the working tree.
    source = tmp_path / "src"
    source.mkdir()
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc", "*.egg-info")
    for name in ("pyproject.toml", "setup.py", "README.md"):
        shutil.copy2(ROOT / name, source / name)
    for name in ("samtune", "analysis", "search_spaces"):
        shutil.copytree(ROOT / name, source / name, ignore=ignore)
    dist, target, elsewhere = tmp_path / "dist", tmp_path / "site", tmp_path / "elsewhere"
    elsewhere.mkdir()
    pip = [sys.executable, "-m", "pip", "--disable-pip-version-check", "--no-input", "-q"]
    built = subprocess.run([*pip, "wheel", "--no-deps", "--no-build-isolation", "-w", str(dist), str(source)],
                           capture_output=True, text=True, timeout=180)
    assert built.returncode == 0, built.stdout + built.stderr
    wheel, = dist.glob("samtune-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    assert "samtune/search_spaces/default.yaml" in names
    assert "samtune/search_spaces/harada2024_cifar10_resnet18.yaml" in names
    assert not any(name.startswith("search_spaces/") for name in names)

    installed = subprocess.run([*pip, "install", "--no-deps", "--target", str(target), str(wheel)],
                               capture_output=True, text=True, timeout=120)
    assert installed.returncode == 0, installed.stdout + installed.stderr
    # PYTHONPATH comes before the editable install of this checkout (a finder that
    # site-packages appends to sys.meta_path), so the wheel's samtune is the one imported.
    check = (f"import samtune, pathlib; "
             f"assert pathlib.Path(samtune.__file__).is_relative_to({str(target)!r}), samtune.__file__")
    env = {"PYTHONPATH": str(target), "PATH": "/usr/bin:/bin", "HOME": str(tmp_path)}
    where = subprocess.run([sys.executable, "-c", check], cwd=elsewhere, capture_output=True, text=True,
                           timeout=60, env=env)
    assert where.returncode == 0, where.stderr
    done = _dry_run('[], ["harada2024_cifar10_resnet18.yaml"]', elsewhere, **env)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    assert "name: samtune-default" in done.stdout and "9 grid points" in done.stdout


@pytest.mark.skipif(not (ROOT / ".git").exists() or shutil.which("git") is None, reason="not a git checkout")
def test_runs_from_a_checkout_are_tagged_with_its_commit():
    from samtune import schema
    from samtune.tracking import provenance

    provenance.code_version.cache_clear()
    head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True, text=True,
                          check=True).stdout.strip()
    assert provenance.code_version()[schema.TAG_GIT_COMMIT].removesuffix("-dirty") == head
