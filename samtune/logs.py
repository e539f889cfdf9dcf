"""Where log records go: every record at INFO and above into a log file, and to the
terminal (stderr) only what a person running samtune needs to see.

Ray, MLflow, alembic, Optuna and others log a line at INFO for each routine step
(starting Ray, creating MLflow's tables, each schema migration, writing Tune's
results).  ``configure_logging``, which ``samtune`` calls before any command, shows
on the terminal

- records at WARNING and above, from any logger;
- samtune's own records (loggers under ``samtune``) at INFO and above;
- with ``samtune --verbose``, every record at INFO and above;

and writes every record at INFO and above to the log file
``logs/samtune-<command>-<YYYYmmdd-HHMMSS>.log`` under the working directory, or
under ``$SAMTUNE_LOG_DIR`` when that is set.  The file and its folder are made at
the first record, so a command that logs nothing leaves none behind.
``samtune search`` names the file at the end of its summary.

MLflow and Ray give their loggers a stderr handler of their own when imported, and
keep those records from the root logger.  MLflow is told not to
(``MLFLOW_CONFIGURE_LOGGING=false``; processes started from samtune inherit that,
so Ray's trial workers leave MLflow's loggers unconfigured too).  Ray has no such
switch: ``adopt_library_loggers`` takes its handler off once it is imported, and
``ray.init`` later only sets the "ray" logger's level.  What Ray's own processes
(raylet, workers) write does not pass through this process's logging at all.
"""

from __future__ import annotations

import logging
import os
import sys
import time
from pathlib import Path

LOG_DIR_ENV = "SAMTUNE_LOG_DIR"
DEFAULT_LOG_DIR = "logs"
FILE_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
TERMINAL_FORMAT = "%(levelname)s %(name)s: %(message)s"

# Loggers a library configures itself on import (handler, level, propagate), and the
# level each gets here: None keeps the library's.  MLflow quiets alembic to WARNING
# and samtune wants its migrations in the file; SQLAlchemy logs every statement at INFO.
_SELF_CONFIGURED: dict[str, int | None] = {
    "ray": None,
    "mlflow": None,
    "alembic": logging.NOTSET,
    "huey": logging.NOTSET,
    "sqlalchemy.engine": logging.WARNING,
}
_QUIETED = {"sqlalchemy": logging.WARNING}


class _Terminal(logging.StreamHandler):
    """Writes to whatever ``sys.stderr`` is when a record comes (pytest and
    redirections swap it after this handler is made)."""

    def __init__(self, verbose: bool):
        logging.Handler.__init__(self, logging.INFO)
        self.verbose = verbose
        if not verbose:
            self.addFilter(_worth_showing)

    @property
    def stream(self):
        return sys.stderr


class _LogFile(logging.FileHandler):
    """Made, with its folder, at the first record."""

    def __init__(self, path: Path):
        super().__init__(path, encoding="utf-8", delay=True)
        self.setLevel(logging.INFO)

    def _open(self):
        Path(self.baseFilename).parent.mkdir(parents=True, exist_ok=True)
        return super()._open()


def _worth_showing(record: logging.LogRecord) -> bool:
    return record.levelno >= logging.WARNING or record.name == "samtune" or record.name.startswith("samtune.")


def default_log_file(command: str) -> Path:
    folder = Path(os.environ.get(LOG_DIR_ENV) or DEFAULT_LOG_DIR)
    return folder / f"samtune-{command}-{time.strftime('%Y%m%d-%H%M%S')}.log"


def configure_logging(verbose: bool = False, log_file: Path | None = None, *, command: str = "samtune") -> Path:
    """Send records to the log file and the terminal as the module says; returns the
    file's absolute path.  Calling it again replaces what an earlier call set up."""
    os.environ["MLFLOW_CONFIGURE_LOGGING"] = "false"  # read when MLflow is imported
    root = logging.getLogger()
    for handler in _installed(root):
        root.removeHandler(handler)
        handler.close()
    file = _LogFile(Path(log_file) if log_file is not None else default_log_file(command))
    file.setFormatter(logging.Formatter(FILE_FORMAT))
    terminal = _Terminal(verbose)
    terminal.setFormatter(logging.Formatter(TERMINAL_FORMAT))
    root.addHandler(terminal)
    root.addHandler(file)
    root.setLevel(logging.INFO)
    for name, level in _QUIETED.items():
        logging.getLogger(name).setLevel(level)
    adopt_library_loggers()  # those already imported (a second call, tests)
    return Path(file.baseFilename)


def adopt_library_loggers() -> None:
    """Route the loggers Ray and MLflow configured on import through samtune's handlers.
    Call it after importing Ray and before ``ray.init`` (which logs that it started a
    local instance); a no-op unless ``configure_logging`` ran, so that code using
    samtune as a library keeps the libraries' own output."""
    if not _installed(logging.getLogger()):
        return
    for name, level in _SELF_CONFIGURED.items():
        logger = logging.getLogger(name)
        logger.handlers.clear()
        logger.propagate = True
        if level is not None:
            logger.setLevel(level)


def current_log_file() -> Path | None:
    """The log file ``configure_logging`` set up, if it did."""
    return next((Path(h.baseFilename) for h in _installed(logging.getLogger()) if isinstance(h, _LogFile)), None)


def _installed(root: logging.Logger) -> list[logging.Handler]:
    return [h for h in root.handlers if isinstance(h, (_Terminal, _LogFile))]
