"""What the pre-launch checks share: a wait with a limit, and the one line of an
error worth showing."""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any, TypeVar

T = TypeVar("T")


class TimedOut(Exception):
    pass


def bounded(fn: Callable[[], T], timeout: float, name: str) -> T:
    """``fn()`` in a daemon thread; raises :class:`TimedOut` if it has not returned
    within ``timeout`` seconds (the thread is left behind, and dies with the process)."""
    box: dict[str, Any] = {}

    def run() -> None:
        try:
            box["value"] = fn()
        except BaseException as err:  # handed to the caller
            box["error"] = err

    thread = threading.Thread(target=run, name=name, daemon=True)
    thread.start()
    thread.join(timeout)
    if thread.is_alive():
        raise TimedOut
    if "error" in box:
        raise box["error"]
    return box["value"]


def last_line(text: str, limit: int = 300) -> str:
    """The last non-empty line of ``text`` (an error's own message, after its traceback),
    cut to ``limit`` characters."""
    lines = [line.strip() for line in str(text).splitlines() if line.strip()]
    line = lines[-1] if lines else ""
    return line if len(line) <= limit else line[: limit - 3] + "..."
