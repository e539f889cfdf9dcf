"""The command line as a user meets it: the version, the list of bundled spaces, help
on every flag, and the UI's address built from the host and port it really uses."""

import argparse

import pytest

from samtune import __version__
from samtune.cli import build_parser, main
from samtune.spec import bundled_space_names
from samtune.tracking.uri import runs_url, ui_address


def test_version(capsys):
    with pytest.raises(SystemExit) as exited:
        main(["--version"])
    assert exited.value.code == 0 and capsys.readouterr().out.strip() == f"samtune {__version__}"


def test_spaces_lists_every_bundled_space_once_with_what_it_is(capsys):
    assert main(["spaces"]) == 0
    lines = capsys.readouterr().out.splitlines()
    names = [line.split()[0] for line in lines]
    assert names == sorted(bundled_space_names()) and len(names) == len(set(names))
    summaries = dict(line.split(None, 1) for line in lines)
    assert "digits" in summaries["default"] and "Khanh" in summaries["khanh2024_cifar10_resnet18"]
    assert all(len(summary) <= 110 for summary in summaries.values())


def _flags(parser: argparse.ArgumentParser):
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                yield from ((f"{name} {flag}", help_) for flag, help_ in _flags(sub))
        elif action.option_strings and not isinstance(action, argparse._HelpAction):
            yield action.option_strings[-1], action.help


def test_a_reader_that_leaves_early_gets_no_traceback():
    """`samtune spaces | head -1`: the pipe closes before samtune writes."""
    import subprocess
    import sys

    spaces = "from samtune.cli import main; raise SystemExit(main(['spaces']))"
    process = subprocess.Popen([sys.executable, "-c", spaces], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                               text=True)
    process.stdout.close()  # the reader is gone before the first line
    _, err = process.communicate(timeout=120)
    assert "Traceback" not in err and "BrokenPipeError" not in err, err
    assert process.returncode == 1


def test_every_flag_says_what_it_does():
    undocumented = [flag for flag, help_ in _flags(build_parser()) if not help_]
    assert not undocumented, undocumented


def test_ui_address_is_the_server_or_the_host_and_port_served():
    assert ui_address("sqlite:////tmp/x/mlflow.db") == "http://127.0.0.1:5000"
    assert ui_address("sqlite:////tmp/x/mlflow.db", "0.0.0.0", 8080) == "http://0.0.0.0:8080"
    assert ui_address("https://mlflow.example.org:5443/") == "https://mlflow.example.org:5443"
    assert runs_url("http://10.0.0.5:5055", "7") == "http://10.0.0.5:5055/#/experiments/7?workflowType=machine_learning"


def test_ui_listens_where_it_says(monkeypatch, capsys, tmp_path):
    """`samtune ui --host H --port P` starts MLflow's UI on H:P and prints that address."""
    import signal
    import subprocess

    started = []

    class Server:
        def __init__(self, command, env):
            started.append(command)

        def wait(self):
            return 0

    monkeypatch.setattr(subprocess, "Popen", Server)
    monkeypatch.setattr(signal, "signal", lambda *args: None)  # the UI stops with SIGTERM; pytest must not
    assert main(["ui", "--host", "0.0.0.0", "--port", "5077", "--tracking-uri", f"sqlite:///{tmp_path}/m.db"]) == 0
    (command,) = started
    assert command[command.index("--host") + 1] == "0.0.0.0" and command[command.index("--port") + 1] == "5077"
    assert "MLflow UI on http://0.0.0.0:5077" in capsys.readouterr().out
