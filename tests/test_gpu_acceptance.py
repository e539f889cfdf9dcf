"""benchmarks/gpu_acceptance.py, the first command a user with a GPU runs, cannot rot: its CPU
smoke run (``--device cpu --quick``) exits 0 and writes a row for every section into its own
section of a results file, leaving the rest of the file as it was."""

import importlib.util
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow  # a samtune search on local Ray, and a trial on a process group

SCRIPT = Path(__file__).resolve().parent.parent / "benchmarks" / "gpu_acceptance.py"
HEADING = "## GPU acceptance: `benchmarks/gpu_acceptance.py`, CPU smoke run (not a GPU figure)"
LOOPBACK_ENV = {"RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0", "RAY_AUTH_MODE": "disabled",
                "RAY_USAGE_STATS_ENABLED": "0", "MLFLOW_DISABLE_TELEMETRY": "true"}


def rows(text: str) -> list[list[str]]:
    """The table rows of the section: [section, what, status, figures]."""
    found = []
    for line in text.splitlines():
        cells = [c.strip() for c in re.split(r"(?<!\\)\|", line)[1:-1]]
        if len(cells) == 4 and cells[0] in "abcde" and len(cells[0]) == 1:
            found.append(cells)
    return found


def test_cpu_smoke_run_writes_every_section_and_exits_0(tmp_path):
    results = tmp_path / "RESULTS.md"
    before = "# Benchmark results\n\n## Another benchmark\n\nIts table.\n\n"
    stale = f"{HEADING}\n\nan earlier run's table\n\n"
    after = "## A later benchmark\n\nIts text.\n"
    results.write_text(before + stale + after)
    env = dict(os.environ, **LOOPBACK_ENV)
    done = subprocess.run([sys.executable, str(SCRIPT), "--device", "cpu", "--quick", "--results", str(results),
                           "--work", str(tmp_path / "work")],
                          cwd=tmp_path, env=env, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    text = results.read_text()
    # the earlier run's section is replaced in place; the others are untouched
    assert text.startswith(before) and text.endswith(after) and text.count(HEADING) == 1
    assert "an earlier run's table" not in text
    section = text[len(before):-len(after)]
    assert "not a GPU figure" in section and "has not run on a GPU yet" in section
    assert re.search(r"Run \d{4}-\d\d-\d\d on .+; Python \d+\.\d+\.\d+, torch ", section)
    table = rows(section)
    assert {row[0] for row in table} == set("abcde"), table
    statuses = {row[1]: row[2] for row in table}
    assert not [what for what, status in statuses.items() if status.startswith("FAILED")], statuses
    # what runs here runs: the trial in both precisions, both loaders, the packed search,
    # the process-group trial, and the Hessian comparison when PyHessian is installed
    for section_key, count in (("a", 2), ("b", 2)):
        assert [row[2] for row in table if row[0] == section_key] == ["ok"] * count, table
    ray_here = all(importlib.util.find_spec(m) for m in ("ray", "mlflow", "optuna"))
    c_status, = [row[2] for row in table if row[0] == "c"]
    assert c_status == ("ok" if ray_here else "skipped: ray not installed")
    d_statuses = [row[2] for row in table if row[0] == "d"]
    assert d_statuses[0] == "ok" and d_statuses[1].startswith("skipped:")
    e_status, = [row[2] for row in table if row[0] == "e"]
    if importlib.util.find_spec("pyhessian"):
        assert e_status == "ok"
    else:
        assert e_status.startswith("skipped: pyhessian not installed")
    # the same table went to stdout
    assert rows(done.stdout) == table
