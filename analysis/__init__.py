"""Sharpness-generalization analysis over MLflow trials.

``build_report`` (in ``analysis.report``) is imported lazily so that using the
statistics modules does not import MLflow.
"""

from analysis.errors import AnalysisError, NotEnoughTrials, UnknownExperiment

__all__ = ["AnalysisError", "NotEnoughTrials", "ReportResult", "UnknownExperiment", "build_report"]


def __getattr__(name: str):
    if name in ("build_report", "ReportResult"):
        from analysis import report

        return getattr(report, name)
    raise AttributeError(f"module 'analysis' has no attribute {name!r}")
