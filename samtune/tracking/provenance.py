"""What produced a number: the hyperparameters' digest and the code version,
logged as tags on every trial run."""

from __future__ import annotations

import functools
import subprocess
from pathlib import Path

from samtune import __version__, schema
from samtune.config import HyperParams

_GIT_TIMEOUT_S = 5


@functools.cache
def code_version() -> dict[str, str]:
    """The package version and, when samtune runs from a git checkout, the commit
    (with ``-dirty`` when tracked files differ from it)."""
    tags = {schema.TAG_VERSION: __version__}
    commit = _git_commit(Path(__file__).resolve().parents[2])  # samtune/tracking/ -> the checkout
    if commit:
        tags[schema.TAG_GIT_COMMIT] = commit
    return tags


def _git_commit(root: Path) -> str | None:
    if not (root / ".git").exists():
        return None
    try:
        head = _git(root, "rev-parse", "HEAD")
        dirty = _git(root, "status", "--porcelain", "--untracked-files=no")
    except (OSError, subprocess.SubprocessError):
        return None
    return f"{head}-dirty" if dirty else head


def _git(root: Path, *args: str) -> str:
    done = subprocess.run(["git", *args], cwd=root, capture_output=True, text=True,
                          timeout=_GIT_TIMEOUT_S, check=True)
    return done.stdout.strip()


def identity_tags(hparams: HyperParams) -> dict[str, str]:
    """Tags that say which experiment a trial run is, and which code ran it."""
    return {schema.TAG_HPARAMS_DIGEST: hparams.digest(), **code_version()}
