"""Verification metrics (EER, minDCF), trial scoring and clustering metrics."""
