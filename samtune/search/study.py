"""Where an Optuna search keeps its Optuna study, so that optuna-dashboard can show it
while it runs and after, and ``--resume`` continues it.

Beside the tracking store: on the same PostgreSQL database when MLflow uses one (in its
own schema ``optuna``: both keep an ``alembic_version`` table), else in a journal file,
``optuna.journal``, next to the SQLite file or ``mlruns`` folder (for a tracking server,
in the search's local Ray storage folder).  Each search is one study, named after its Ray
experiment.  Open it with ``optuna-dashboard <storage>`` (the parent run's tag
``samtune.optuna_storage`` holds the argument).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

JOURNAL_FILE = "optuna.journal"
POSTGRES_SCHEMA = "optuna"


@dataclass(frozen=True)
class StudyStorage:
    """An Optuna storage: what optuna-dashboard is given (a file path or a database URL)."""

    location: str

    @property
    def is_journal(self) -> bool:
        return "://" not in self.location

    def open(self):
        """The ``optuna.storages.BaseStorage`` OptunaSearch writes the study to."""
        import optuna

        if self.is_journal:
            from optuna.storages.journal import JournalFileBackend

            Path(self.location).parent.mkdir(parents=True, exist_ok=True)
            return optuna.storages.JournalStorage(JournalFileBackend(self.location))
        _create_schema(self.location)
        return optuna.storages.RDBStorage(self.location)


def study_storage(tracking_uri: str, storage_path: str) -> StudyStorage | None:
    """The study's storage for a search tracked at ``tracking_uri`` whose Ray storage is
    ``storage_path``; None where neither lies on this machine or a shared database."""
    scheme = urlsplit(tracking_uri).scheme
    if scheme.startswith("postgresql"):
        joiner = "&" if "?" in tracking_uri else "?"
        return StudyStorage(f"{tracking_uri}{joiner}options=-csearch_path%3D{POSTGRES_SCHEMA}")
    if scheme == "sqlite":
        return StudyStorage(str(Path(tracking_uri.removeprefix("sqlite:///")).resolve().parent / JOURNAL_FILE))
    if scheme in ("", "file"):
        folder = Path(tracking_uri.removeprefix("file://")).resolve()
        return StudyStorage(str(folder.parent / JOURNAL_FILE))
    if "://" not in storage_path:
        return StudyStorage(str(Path(storage_path) / JOURNAL_FILE))
    return None


def _create_schema(url: str) -> None:
    """The PostgreSQL schema the study's tables go in (the URL's search_path names it)."""
    import sqlalchemy

    base = url.split("options=")[0].rstrip("?&")
    engine = sqlalchemy.create_engine(base)
    try:
        with engine.begin() as connection:
            connection.execute(sqlalchemy.text(f"CREATE SCHEMA IF NOT EXISTS {POSTGRES_SCHEMA}"))
    finally:
        engine.dispose()
