"""The search's Ray storage: a local folder it can write, checked before anything is
recorded (a remote URI is left to Ray: reaching it may take credentials and time)."""

from __future__ import annotations

import tempfile
from pathlib import Path

from samtune.checks import ConfigError


def check_storage(storage: str | None, path: str) -> None:
    """``path`` (the resolved ``--storage``) is a folder this process can create and
    write.  Tried for real (permissions alone do not tell: root may not write /proc),
    and the folders the try made are removed again."""
    if "://" in path:
        return
    folder = Path(path)
    missing = [p for p in (folder, *folder.parents) if not p.exists()]
    try:
        folder.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=folder, prefix=".samtune-write-check-"):
            pass
    except OSError as err:
        raise ConfigError(f"--storage = {storage or path!r}: cannot create or write the folder {path} "
                          f"({err.strerror or err}); allowed: a folder this user can write, or a URI such as "
                          f"s3://bucket/path") from None
    finally:
        for made in missing:  # deepest first
            if made.is_dir():
                made.rmdir()
