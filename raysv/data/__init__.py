"""Manifests (Parquet tables), importers, validation and corpus folders."""
