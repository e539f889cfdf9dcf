"""One trial, with no Ray and no MLflow: the training loop (``loop``), its data-parallel
place (``replica``), the theory probes (``probes``) and a population-based trial's
ancestry (``lineage``).  The loop hands each epoch's record to a sink; whoever runs the
trial decides where records go."""

from samtune.trial.loop import Trial, TrialResult, open_data, resolve_device, train

__all__ = ["Trial", "TrialResult", "open_data", "resolve_device", "train"]
