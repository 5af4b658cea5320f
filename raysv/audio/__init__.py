"""Audio: decoding, crops, log-mel features and augmentation (pure functions over arrays)."""
