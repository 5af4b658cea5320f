"""Decoding audio with soundfile: headers, whole files, segments and crops.

Every failure raises :class:`~raysv.errors.AudioError` naming the file.
Waveforms are float32 mono numpy arrays in [-1, 1] at ``TARGET_SR``.
"""

from __future__ import annotations

import io as _io
import os
from dataclasses import dataclass

import numpy as np
import soundfile as sf

from raysv.data import fs
from raysv.errors import AudioError, ManifestError

TARGET_SR = 16000
# Files libsndfile decodes (by content; the suffix only picks files in folder walks).
AUDIO_SUFFIXES = (".wav", ".flac", ".ogg", ".oga", ".opus", ".mp3", ".sph")
# Common audio containers libsndfile cannot decode: imported as a counted problem
# naming the conversion command, never silently ignored (VoxCeleb2 ships .m4a).
UNDECODABLE_SUFFIXES = (".m4a", ".aac", ".mp4", ".wma", ".webm", ".amr")


def conversion_hint(path: str) -> str:
    """The message for an audio file in a format soundfile cannot decode."""
    stem = path.rsplit(".", 1)[0]
    return (
        f"format not decodable by libsndfile; convert it first, e.g. "
        f"ffmpeg -i {path} -ac 1 -ar 16000 {stem}.flac"
    )


@dataclass(frozen=True)
class AudioInfo:
    """Header facts of one file (read without decoding samples)."""

    frames: int
    sample_rate: int
    channels: int

    @property
    def duration_s(self) -> float:
        return self.frames / self.sample_rate if self.sample_rate else 0.0


def bound(v) -> float | None:
    """A segment bound from a batch column: None/NaN (whole file) -> None, else float seconds."""
    return None if v is None or (isinstance(v, float) and np.isnan(v)) else float(v)


def _open(path: str):
    """soundfile accepts a local path; other URIs are opened through pyarrow."""
    if fs.is_local(path):
        local = fs.resolve(path)[1]
        # libsndfile reports a missing file as a generic open error ("System error"):
        # tell it apart here, where the file is opened
        if not os.path.exists(local):
            raise AudioError(path, "file does not exist", "missing_file")
        return local
    try:
        with fs.open_input(path) as f:
            return _io.BytesIO(f.read())
    except ManifestError as exc:
        raise AudioError(path, "file does not exist or cannot be opened", "missing_file") from exc


def info(path: str) -> AudioInfo:
    """Read the header of ``path``. Raises AudioError if missing, unreadable or empty."""
    local = fs.resolve(path)[1] if fs.is_local(path) else None
    if local and os.path.isfile(local) and os.path.getsize(local) == 0:
        raise AudioError(path, "empty file (0 bytes)", "empty_audio")
    try:
        meta = sf.info(_open(path))
    except FileNotFoundError as exc:
        raise AudioError(path, "file does not exist", "missing_file") from exc
    except (sf.LibsndfileError, RuntimeError, OSError) as exc:
        if fs.is_local(path) and not fs.exists(path):
            raise AudioError(path, "file does not exist", "missing_file") from exc
        raise AudioError(path, f"unreadable audio ({exc})") from exc
    if meta.frames <= 0:
        raise AudioError(path, "empty audio (0 samples)", "empty_audio")
    if meta.samplerate <= 0:
        raise AudioError(path, f"invalid sample rate {meta.samplerate}")
    return AudioInfo(
        frames=int(meta.frames), sample_rate=int(meta.samplerate), channels=int(meta.channels)
    )


def resample(wave: np.ndarray, orig_sr: int, target_sr: int = TARGET_SR) -> np.ndarray:
    """Resample a mono float32 wave (shape ``(T,)``) with torchaudio's sinc interpolation."""
    if orig_sr == target_sr:
        return wave
    import torch
    import torchaudio.functional as AF

    out = AF.resample(torch.from_numpy(np.ascontiguousarray(wave)), orig_sr, target_sr)
    return out.numpy().astype(np.float32, copy=False)


def read(
    path: str,
    start_s: float | None = None,
    end_s: float | None = None,
    target_sr: int = TARGET_SR,
) -> np.ndarray:
    """Decode ``path`` (optionally the segment [start_s, end_s)), mix to mono, resample.

    Returns float32 array of shape ``(T,)`` at ``target_sr``. Raises AudioError
    for missing/unreadable files, empty segments and NaN/inf samples.
    """
    try:
        with sf.SoundFile(_open(path)) as f:
            sr = f.samplerate
            start = int(round((start_s or 0.0) * sr))
            stop = int(round(end_s * sr)) if end_s is not None else f.frames
            f.seek(min(start, f.frames))
            data = f.read(max(0, stop - start), dtype="float32", always_2d=True)
    except FileNotFoundError as exc:
        raise AudioError(path, "file does not exist", "missing_file") from exc
    except (sf.LibsndfileError, RuntimeError, OSError) as exc:
        raise AudioError(path, f"unreadable audio ({exc})") from exc
    return _finish(data, sr, path, target_sr)


def read_crop(
    path: str,
    seconds: float,
    rng: np.random.Generator | None,
    start_s: float | None = None,
    end_s: float | None = None,
    target_sr: int = TARGET_SR,
) -> np.ndarray:
    """Decode only a crop of ``seconds`` (random offset with ``rng``, centre if None).

    Reads just the needed frames from disk, so long files cost no more than
    short ones. The result may be shorter than ``seconds`` for short files;
    pad it with :func:`raysv.audio.features.crop`.
    """
    try:
        with sf.SoundFile(_open(path)) as f:
            sr = f.samplerate
            seg_start = int(round((start_s or 0.0) * sr))
            seg_stop = int(round(end_s * sr)) if end_s is not None else f.frames
            seg_len = max(0, min(seg_stop, f.frames) - seg_start)
            want = int(round(seconds * sr))
            if seg_len > want:
                off = (
                    int(rng.integers(0, seg_len - want + 1))
                    if rng is not None
                    else (seg_len - want) // 2
                )
            else:
                off, want = 0, seg_len
            f.seek(seg_start + off)
            data = f.read(want, dtype="float32", always_2d=True)
    except FileNotFoundError as exc:
        raise AudioError(path, "file does not exist", "missing_file") from exc
    except (sf.LibsndfileError, RuntimeError, OSError) as exc:
        raise AudioError(path, f"unreadable audio ({exc})") from exc
    return _finish(data, sr, path, target_sr)


def _finish(data: np.ndarray, sr: int, path: str, target_sr: int) -> np.ndarray:
    if data.shape[0] == 0:
        raise AudioError(path, "empty audio (0 samples in the requested range)", "empty_audio")
    mono = data.mean(axis=1) if data.shape[1] > 1 else data[:, 0]
    if not np.isfinite(mono).all():
        bad = int((~np.isfinite(mono)).sum())
        raise AudioError(path, f"{bad} NaN/inf samples", "bad_samples")
    return resample(np.ascontiguousarray(mono, dtype=np.float32), sr, target_sr)


def scan_samples(path: str, block: int = 1 << 16) -> None:
    """Decode ``path`` block by block (bounded memory) and raise AudioError on NaN/inf."""
    try:
        with sf.SoundFile(_open(path)) as f:
            pos = 0
            for chunk in f.blocks(blocksize=block, dtype="float32", always_2d=True):
                finite = np.isfinite(chunk)
                if not finite.all():
                    row = int(np.argwhere(~finite)[0][0])
                    raise AudioError(path, f"NaN/inf sample at frame {pos + row}", "bad_samples")
                pos += chunk.shape[0]
    except (sf.LibsndfileError, RuntimeError, OSError) as exc:
        raise AudioError(path, f"unreadable audio ({exc})") from exc
    if pos == 0:
        raise AudioError(path, "empty audio (0 samples)", "empty_audio")


def each_readable(rows, make) -> tuple[list[int], list, list[tuple[int, AudioError]]]:
    """``make(row)`` for each of ``rows``, skipping those whose audio is unreadable.

    Returns ``(kept row indices, outputs, [(row index, AudioError)])``: a file
    that went bad after the import costs its row, not the batch (embedding and
    training input both use this).
    """
    keep, out, bad = [], [], []
    for i, row in enumerate(rows):
        try:
            out.append(make(row))
        except AudioError as exc:
            bad.append((i, exc))
            continue
        keep.append(i)
    return keep, out, bad
