"""Folders under a search's Ray storage, which may be a local path or a URI."""

from __future__ import annotations

from urllib.parse import urlsplit, urlunsplit


def storage_child(storage_path: str, name: str) -> str:
    """The folder ``name`` under the storage path; a URI keeps its query
    (``s3://bucket/runs?endpoint_override=...``) after the path."""
    parts = urlsplit(storage_path)
    if not parts.scheme or len(parts.scheme) == 1:  # a local path (or a Windows drive letter)
        return f"{storage_path.rstrip('/')}/{name}"
    return urlunsplit(parts._replace(path=f"{parts.path.rstrip('/')}/{name}"))
