"""``samtune train | search | spaces | show | best | replay | sharpness | interpolate | report | ui``.

Heavy libraries are imported inside each command so ``samtune --help`` is quick.
A configuration mistake exits with status 2 and one message naming the key,
the value and what is allowed, before anything is launched or recorded.
``samtune search`` exits 0 when at least one trial completed, 1 when none did,
2 for a mistake refused before launch (samtune.search.preflight) and 130 when
interrupted.
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
from pathlib import Path

from samtune import schema
from samtune.checks import ConfigError


def _add_tracking(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--tracking-uri", default=None, help="MLflow tracking URI "
                        "(default: $MLFLOW_TRACKING_URI, else sqlite:///./mlflow.db)")


def _add_device(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--device", default="auto", help="auto (a GPU when there is one), cpu, cuda or cuda:N")


_SELECTOR_HELP = ("EXPERIMENT:key=value[,key=value...] (the one trial of the experiment's latest search with "
                  "those params)")
_SOURCE_HELP = ("a trial's MLflow run id (from samtune train or any search), a trial selector " + _SELECTOR_HELP
                + ", a models:/ URI, or a model.pt or Ray checkpoint file")


def build_parser() -> argparse.ArgumentParser:
    from samtune import __version__

    parser = argparse.ArgumentParser(prog="samtune", description="Schedule searches for sharpness-aware "
                                     "minimization on Ray Tune, Optuna and MLflow.")
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    parser.add_argument("--verbose", action="store_true", help="show the INFO lines of Ray, MLflow and the "
                        "other libraries on the terminal too (they always go to the log file: see samtune.logs)")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("train", help="run one trial and record it in MLflow")
    p.add_argument("--config", help="YAML file: trial keys, or a search spec whose `trial` is used")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override a trial parameter (repeatable)")
    p.add_argument("--experiment", default=schema.DEFAULT_EXPERIMENT_TRAIN, help="MLflow experiment name")
    _add_tracking(p)

    p = sub.add_parser("search", help="run a schedule search on Ray Tune")
    p.add_argument("space", nargs="?", default=schema.DEFAULT_SPACE,
                   help="search-space YAML (default: the embedded digits search)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override a top-level spec key or trial.KEY (repeatable)")
    p.add_argument("--dry-run", action="store_true", help="print the resolved space and sampled configs")
    p.add_argument("--resume", nargs="?", const=True, default=False, metavar="PARENT_RUN_ID",
                   help="finish an interrupted search: the latest of this space's experiment, or the one whose "
                        "MLflow parent run is PARENT_RUN_ID")
    p.add_argument("--address", default=None, help="attach to a Ray cluster: auto, HOST:PORT or "
                   "ray://HOST:PORT (default: $RAY_ADDRESS, else a new local Ray)")
    p.add_argument("--storage", default=None, help="Ray storage path (shared folder or URI)")
    _add_tracking(p)

    sub.add_parser("spaces", help="list the bundled search spaces, one line each")

    p = sub.add_parser("replay", help="train one trial again on the schedule a PBT search found for it")
    p.add_argument("run_id", metavar="RUN", help="a trial's MLflow run id, trial selector " + _SELECTOR_HELP
                   + " or models:/ URI (a PBT trial's lineage.json gives its schedule)")
    _add_device(p)
    _add_tracking(p)

    p = sub.add_parser("sharpness", help="measure sharpness of a saved trial")
    p.add_argument("source", metavar="RUN", help=_SOURCE_HELP)
    p.add_argument("--measures", default=None, help="comma-separated measure names (default: all defaults)")
    _add_device(p)
    _add_tracking(p)

    p = sub.add_parser("interpolate", help="loss and error along the line between two saved trials' models")
    p.add_argument("run_a", metavar="RUN_A", help="θ₁ (a = 0): " + _SOURCE_HELP)
    p.add_argument("run_b", metavar="RUN_B", help="θ₂ (a = 1): " + _SOURCE_HELP)
    p.add_argument("--points", type=int, default=31, help="evenly spaced values of a (default 31)")
    p.add_argument("--range", nargs=2, type=float, default=[-1.0, 2.0], metavar=("LO", "HI"),
                   help="the values of a, with LO <= 0 and HI >= 1 (default -1 2)")
    p.add_argument("--examples", type=int, default=None,
                   help="training examples to evaluate (default: train_eval_examples of RUN_A)")
    p.add_argument("--out", default=None, help="output folder (default: interpolations/<RUN_A>-<RUN_B>)")
    _add_device(p)
    _add_tracking(p)

    p = sub.add_parser("show", help="a trial as YAML (runnable with samtune train --config), its final metrics "
                       "and where its model is")
    p.add_argument("source", metavar="RUN", help="a trial's MLflow run id, trial selector " + _SELECTOR_HELP
                   + " or models:/ URI")
    _add_tracking(p)

    p = sub.add_parser("best", help="a search's best trial by the search's objective")
    p.add_argument("experiment", nargs="?", default=None, metavar="EXPERIMENT",
                   help="the search's MLflow experiment (default: the latest search's)")
    p.add_argument("--search", default=None, help="parent run id of the search (default: the latest search)")
    _add_tracking(p)

    p = sub.add_parser("report", help="sharpness-generalization report over a search's trials")
    p.add_argument("--experiment", default=None,
                   help="MLflow experiment of the search (default: the latest search's experiment)")
    p.add_argument("--search", default=None, help="parent run id of one search (default: the latest search when "
                   "--experiment is not given, else all the experiment's trials)")
    p.add_argument("--out", default=None, help="output folder (default: reports/<experiment>)")
    p.add_argument("--max-train-error", type=float, default=argparse.SUPPRESS,
                   help="trials trained without a criterion whose final train error is above this did not "
                        "fit their training set and are left out of every fit (default 0.5)")
    _add_tracking(p)

    p = sub.add_parser("ui", help="start the MLflow UI over a store")
    p.add_argument("--host", default=schema.UI_HOST, help=f"address the UI listens on (default {schema.UI_HOST}: "
                   f"this machine only)")
    p.add_argument("--port", type=int, default=schema.UI_PORT,
                   help=f"port the UI listens on (default {schema.UI_PORT})")
    _add_tracking(p)
    return parser


def main(argv: list[str] | None = None) -> int:
    os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")  # an offline tool: no usage reports
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")  # a bar per small file is noise
    args = build_parser().parse_args(argv)
    from samtune.logs import configure_logging

    configure_logging(args.verbose, command=args.command)
    handler = {"train": cmd_train, "search": cmd_search, "spaces": cmd_spaces, "replay": cmd_replay,
               "sharpness": cmd_sharpness, "interpolate": cmd_interpolate, "report": cmd_report,
               "show": cmd_show, "best": cmd_best,
               "ui": cmd_ui}[args.command]
    try:
        return handler(args) or 0
    except ConfigError as err:
        print(f"samtune {args.command}: error: {err}", file=sys.stderr)
        return 2
    except FileNotFoundError as err:
        print(f"samtune {args.command}: error: {err}", file=sys.stderr)
        return 2
    except BrokenPipeError:  # `samtune show RUN | head`: the reader left, which is no error to report
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # so the exit's flush is silent too
        return 1


# -- train ----------------------------------------------------------------------
def cmd_train(args) -> int:
    from samtune.config import load_trial_config

    config = load_trial_config(args.config, args.set)  # validated before anything starts
    from samtune.commands.train import run_cli_trial

    return run_cli_trial(config, experiment=args.experiment, tracking_uri=args.tracking_uri)


# -- replay ---------------------------------------------------------------------
def cmd_replay(args) -> int:
    from samtune.commands.replay import replay_run

    return replay_run(args.run_id, tracking_uri=args.tracking_uri, device=args.device)


# -- search ---------------------------------------------------------------------
def cmd_search(args) -> int:
    from samtune import spec as spec_module

    spec = spec_module.load_search_spec(args.space, args.set)
    if args.dry_run:
        print(spec_module.describe(spec))
        return 0
    from samtune import search

    return search.run_search(spec, tracking_uri=args.tracking_uri, address=args.address,
                             storage=args.storage, resume=args.resume)


# -- spaces ---------------------------------------------------------------------
def cmd_spaces(args) -> int:
    from samtune.spec import bundled_space_summaries

    summaries = bundled_space_summaries()
    width = max(map(len, summaries), default=0)
    for name, summary in summaries.items():
        print(f"{name:<{width}}  {summary}")
    return 0


# -- sharpness ------------------------------------------------------------------
def cmd_sharpness(args) -> int:
    from samtune.commands.sharpness import measure_saved_trial

    names = tuple(n for n in args.measures.split(",") if n) if args.measures else None
    values = measure_saved_trial(args.source, names=names, device=args.device, tracking_uri=args.tracking_uri)
    width = max(map(len, values), default=10)
    for name, value in values.items():
        print(f"{name:<{width}}  {value:.6g}")
    return 0


# -- interpolate ----------------------------------------------------------------
def cmd_interpolate(args) -> int:
    from samtune.commands import interpolate

    sources = interpolate.resolved_sources((args.run_a, args.run_b), args.tracking_uri)
    out = Path(args.out or Path("interpolations") / "-".join(map(interpolate.source_label, sources)))
    frame, run_id = interpolate.interpolate_runs(
        sources, points=args.points, lo=args.range[0], hi=args.range[1], examples=args.examples,
        out=out, device=args.device, tracking_uri=args.tracking_uri)
    print(frame.to_string(index=False, float_format=lambda v: f"{v:.4g}"))
    print(f"\ncurve: {out / schema.ARTIFACT_INTERPOLATION_CSV}  figure: "
          f"{out / schema.ARTIFACT_INTERPOLATION_PNG}\nMLflow run {run_id}")
    return 0


# -- show, best -----------------------------------------------------------------
def cmd_show(args) -> int:
    from samtune.commands.show import show_trial

    print(show_trial(args.source, args.tracking_uri))
    return 0


def cmd_best(args) -> int:
    from samtune.commands.show import show_best

    print(show_best(args.experiment, args.search, args.tracking_uri))
    return 0


# -- report ---------------------------------------------------------------------
def _report_target(args) -> tuple[str, str | None]:
    """(experiment, search run id): as given, else the latest search's."""
    if args.experiment is not None and args.search is None:
        return args.experiment, None
    from samtune.commands.show import find_search
    from samtune.tracking.store import Tracker

    tracker = Tracker(args.tracking_uri)
    search = find_search(tracker, args.experiment, args.search)
    return tracker.client.get_experiment(tracker.run_experiment_id(search)).name, search


def cmd_report(args) -> int:
    from analysis import AnalysisError
    from analysis.report import build_report
    from samtune.tracking.uri import resolve_tracking_uri

    experiment, search = _report_target(args)
    out = Path(args.out or Path("reports") / experiment)
    try:
        result = build_report(experiment, tracking_uri=resolve_tracking_uri(args.tracking_uri),
                              search_run_id=search, out_dir=out,
                              **({"max_train_error": args.max_train_error} if "max_train_error" in args else {}))
    except AnalysisError as err:
        print(f"samtune report: {err}", file=sys.stderr)
        return 1
    print(result.summary)
    print(f"\nreport: {out / 'report.html'}  (also report.md, trials.csv, fits.csv, figures/)")
    return 0


# -- ui -------------------------------------------------------------------------
def cmd_ui(args) -> int:
    from samtune.tracking.uri import resolve_tracking_uri, ui_address

    uri = resolve_tracking_uri(args.tracking_uri)
    if uri.startswith("http"):
        print(f"{uri} is a tracking server already: open it in a browser")
        return 0
    env = dict(os.environ, MLFLOW_SERVER_ENABLE_JOB_EXECUTION="false")
    print(f"MLflow UI on {ui_address(uri, args.host, args.port)}  (store {uri}); Ctrl-C stops it")
    command = [sys.executable, "-m", "mlflow", "ui", "--backend-store-uri", uri,
               "--host", args.host, "--port", str(args.port), "--workers", "1"]
    server = subprocess.Popen(command, env=env)
    signal.signal(signal.SIGTERM, _raise_interrupt)  # stop the server with us
    signal.signal(signal.SIGINT, signal.default_int_handler)  # also when started in the background, SIGINT ignored
    try:
        return server.wait()
    except KeyboardInterrupt:
        server.terminate()
        server.wait(timeout=30)
        return 0


def _raise_interrupt(signum, frame):
    raise KeyboardInterrupt


if __name__ == "__main__":
    sys.exit(main())
