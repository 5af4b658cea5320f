"""Shared fixtures: a tiny generated corpus, WAV writers, a local Ray instance."""

from __future__ import annotations

import os

import numpy as np
import pytest
import soundfile as sf

from raysv.synth.corpus import SynthConfig, synthesize

TINY = SynthConfig(
    train_speakers=6,
    dev_speakers=3,
    test_speakers=3,
    utts_per_speaker=6,
    trials_per_split=40,
    min_seconds=1.0,
    max_seconds=1.5,
    seed=3,
    workers=1,
)


@pytest.fixture(scope="session")
def tiny_corpus(tmp_path_factory) -> str:
    """A generated corpus folder (read-only for tests: copy before changing it)."""
    out = str(tmp_path_factory.mktemp("corpus") / "c")
    synthesize(TINY, out)
    return out


def write_wav(
    path, seconds: float = 1.0, sr: int = 16000, channels: int = 1, seed: int = 0, data=None
) -> str:
    """Write a WAV of noise (or ``data``) and return its path."""
    path = str(path)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    if data is None:
        rng = np.random.default_rng(seed)
        shape = (int(seconds * sr), channels) if channels > 1 else (int(seconds * sr),)
        data = (rng.standard_normal(shape) * 0.1).astype(np.float32)
    subtype = (
        "FLOAT" if np.asarray(data).dtype == np.float32 and not np.isfinite(data).all() else None
    )
    sf.write(path, data, sr, subtype=subtype)
    return path


@pytest.fixture(scope="session")
def ray_local():
    """A real local Ray instance with 2 CPUs, shared by the session's Ray tests."""
    import ray

    from raysv.runtime import ensure_ray

    ensure_ray(num_cpus=2)
    yield ray
    ray.shutdown()


def cli_json(out: str) -> dict:
    """The CLI's ``--json`` summary from captured stdout (Ray's raylet may print a warning line first)."""
    import json

    return json.loads(out if out.startswith("{") else out[out.index("\n{") + 1 :])


def write_empty_manifest(path) -> str:
    """An utterances manifest with the full schema and no rows."""
    import pyarrow.parquet as pq

    from raysv.data.schema import UTTERANCES

    pq.write_table(UTTERANCES.empty_table(), str(path))
    return str(path)
