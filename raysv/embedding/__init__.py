"""Embedding extraction: callable classes for Ray Data ``map_batches``."""
