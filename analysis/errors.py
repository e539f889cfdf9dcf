"""Exceptions raised by the report pipeline; all are ``ValueError`` so a CLI can
catch bad input with one clause."""

from __future__ import annotations


class AnalysisError(ValueError):
    """Base class: the trials cannot support the requested analysis."""


class UnknownExperiment(AnalysisError, LookupError):
    """No MLflow experiment (or search run) with the given name (or id)."""


class NotEnoughTrials(AnalysisError):
    """Fewer usable trials than the fits need (at least ``MIN_TRIALS``)."""

