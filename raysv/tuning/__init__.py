"""Hyper-parameter sweeps (Ray Tune)."""
