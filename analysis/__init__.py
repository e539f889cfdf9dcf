"""Sharpness-generalization analysis over MLflow trials."""
