"""Experiment tracking. All MLflow calls live in :mod:`raysv.tracking.mlflow_tracking`."""
