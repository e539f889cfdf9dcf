"""The terminal shows warnings and samtune's own lines, the log file every INFO line
(samtune.logs), and values print to the digits that tell them apart (samtune.display)."""

import logging

import numpy as np
import pytest

from samtune import logs
from samtune.cli import main
from samtune.display import value_text, values_text

LIBRARY_INFO = ("mlflow.store", "ray.tune", "alembic.runtime.migration")
# the loggers configure_logging changes, besides the root
TOUCHED = (*logs._SELF_CONFIGURED, *logs._QUIETED)


@pytest.fixture(autouse=True)
def logging_state(monkeypatch, tmp_path):
    """Put back the root's and the libraries' loggers as they were, closing what a test opened."""
    monkeypatch.delenv("MLFLOW_CONFIGURE_LOGGING", raising=False)  # restored as it was after the test
    monkeypatch.setenv(logs.LOG_DIR_ENV, str(tmp_path / "logs"))
    loggers = [logging.getLogger(), *map(logging.getLogger, TOUCHED)]
    saved = [(lg, list(lg.handlers), lg.level, lg.propagate) for lg in loggers]
    for handler in logs._installed(logging.getLogger()):  # an earlier test's command, in this process
        logging.getLogger().removeHandler(handler)
    yield
    for handler in logs._installed(logging.getLogger()):
        handler.close()
    for logger, handlers, level, propagate in saved:
        logger.handlers[:] = handlers
        logger.setLevel(level)
        logger.propagate = propagate


def log_all(message):
    for name in LIBRARY_INFO:
        logging.getLogger(name).info(f"{message} from {name}")


def test_library_info_goes_to_the_file_only(tmp_path, capsys):
    path = logs.configure_logging(verbose=False, log_file=tmp_path / "run.log")
    log_all("quiet")
    assert capsys.readouterr().err == ""
    written = path.read_text()
    assert all(f"INFO {name}: quiet from {name}" in written for name in LIBRARY_INFO)
    assert path == (tmp_path / "run.log").resolve() == logs.current_log_file()


def test_verbose_shows_library_info_on_the_terminal_too(tmp_path, capsys):
    path = logs.configure_logging(verbose=True, log_file=tmp_path / "run.log")
    log_all("loud")
    err = capsys.readouterr().err
    assert all(f"INFO {name}: loud from {name}" in err for name in LIBRARY_INFO)
    assert "loud from ray.tune" in path.read_text()


def test_warnings_and_samtunes_own_lines_still_show(tmp_path, capsys):
    logs.configure_logging(verbose=False, log_file=tmp_path / "run.log")
    logging.getLogger("samtune.search").warning("a samtune warning")
    logging.getLogger("samtune.search").info("a samtune note")
    logging.getLogger("mlflow.store").warning("an mlflow warning")
    err = capsys.readouterr().err
    assert "a samtune warning" in err and "a samtune note" in err and "an mlflow warning" in err


def test_a_second_call_replaces_the_handlers_of_the_first(tmp_path, capsys):
    logs.configure_logging(verbose=True, log_file=tmp_path / "first.log")
    second = logs.configure_logging(verbose=False, log_file=tmp_path / "second.log")
    assert len(logs._installed(logging.getLogger())) == 2
    logging.getLogger("ray.tune").info("once")
    assert capsys.readouterr().err == ""
    assert second.read_text().count("once") == 1 and not (tmp_path / "first.log").exists()


def test_the_file_and_its_folder_are_made_at_the_first_record(tmp_path):
    path = logs.configure_logging(command="search")
    assert path.parent == (tmp_path / "logs").resolve() and path.name.startswith("samtune-search-")
    assert not path.parent.exists()
    logging.getLogger("alembic.runtime.migration").info("Running upgrade")
    assert "Running upgrade" in path.read_text()


def test_a_library_logger_with_its_own_handler_is_routed_through_samtunes():
    """As Ray and MLflow leave their loggers on import: a stderr handler, no propagation."""
    ray_logger = logging.getLogger("ray")
    ray_logger.addHandler(logging.StreamHandler())
    ray_logger.propagate = False
    logs.adopt_library_loggers()  # before configure_logging: a library's use of samtune keeps Ray's own
    assert ray_logger.handlers and not ray_logger.propagate
    logs.configure_logging()
    assert not ray_logger.handlers and ray_logger.propagate
    assert logging.getLogger("alembic").getEffectiveLevel() == logging.INFO
    assert logging.getLogger("sqlalchemy.engine").getEffectiveLevel() == logging.WARNING


def test_mlflow_is_told_not_to_configure_its_loggers():
    import os

    logs.configure_logging()
    assert os.environ["MLFLOW_CONFIGURE_LOGGING"] == "false"


def test_verbose_is_a_global_flag(capsys):
    assert main(["--verbose", "spaces"]) == 0
    (terminal,) = [h for h in logs._installed(logging.getLogger()) if isinstance(h, logs._Terminal)]
    assert terminal.verbose and "default" in capsys.readouterr().out
    assert main(["spaces"]) == 0
    (terminal,) = [h for h in logs._installed(logging.getLogger()) if isinstance(h, logs._Terminal)]
    assert not terminal.verbose


@pytest.mark.parametrize(("value", "text"), [
    (0.014061448697390061, "0.0141"), (3, "3"), ("sgd", "sgd"), (2.205526752143288, "2.21"),
    (1e-05, "1e-05"), (float("nan"), "nan"), (None, "None"), (True, "True"), ([0.1234567, 2], "[0.123, 2]"),
    (np.float32(0.014061448697390061), "0.0141"), (np.int64(64), "64"),
])
def test_a_value_prints_with_three_significant_digits(value, text):
    assert value_text(value) == text


def test_more_digits_only_where_three_would_print_two_values_alike():
    assert value_text(0.01234, among=[0.01236]) == "0.0123"  # 0.0124: apart at three
    assert value_text(0.01231, among=[0.01234, 0.5]) == "0.01231"
    assert value_text(0.0123456, among=[0.0123451, 0.01231]) == "0.012346"
    assert value_text(0.01234, among=[0.01234, 0.5]) == "0.0123"  # itself is no rival


def test_a_dict_of_searched_values_prints_as_key_equals_value():
    searched = {"rho": 0.014061448697390061, "batch_size": 64, "lr_shape": "linear"}
    assert values_text(searched) == "rho=0.0141, batch_size=64, lr_shape=linear"
