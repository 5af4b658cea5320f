import numpy as np
import pytest
import soundfile as sf

from raysv.audio import features, io
from raysv.audio.pipeline import load_features
from raysv.errors import AudioError
from tests.conftest import write_wav


def test_crop_random_centre_and_padding():
    w = np.arange(100, dtype=np.float32)
    assert np.array_equal(features.crop(w, 10), w[45:55])  # centre
    rng = np.random.default_rng(0)
    c = features.crop(w, 10, rng)
    assert c.shape == (10,) and np.array_equal(c, w[int(c[0]) : int(c[0]) + 10])
    starts = {int(features.crop(w, 10, rng)[0]) for _ in range(50)}
    assert len(starts) > 10  # random offsets vary
    rep = features.crop(w[:30], 70)
    assert rep.shape == (70,) and np.array_equal(rep[30:60], w[:30])
    z = features.crop(w[:30], 70, pad="zero")
    assert np.all(z[30:] == 0)
    with pytest.raises(ValueError):
        features.crop(w, 0)


def test_fbank_shape_and_mean_norm():
    rng = np.random.default_rng(0)
    w = rng.standard_normal(16000).astype(np.float32) * 0.1
    f = features.fbank(w, n_mels=80)
    assert f.shape == (features.num_frames(16000), 80) == (98, 80)
    assert np.abs(f.mean(axis=0)).max() < 1e-4
    f40 = features.fbank(w, n_mels=40, mean_norm=False)
    assert (
        f40.shape == (98, 40) and f40.mean() > 1.0
    )  # raw log energies are positive at int16 scale
    # Scale invariance after mean normalisation (Kaldi log-mel: gain is an offset).
    assert np.allclose(features.fbank(w * 3, 80), f, atol=1e-3)
    with pytest.raises(ValueError, match="shorter than one"):
        features.fbank(w[:100])


def test_read_mono_mixdown_and_resample(tmp_path):
    sr = 44100
    t = np.arange(sr) / sr
    left = 0.5 * np.sin(2 * np.pi * 440 * t)
    stereo = np.stack([left, -left * 0 + left], axis=1).astype(np.float32)
    p = write_wav(tmp_path / "s.wav", data=stereo, sr=sr)
    w = io.read(p)
    assert w.dtype == np.float32 and w.ndim == 1
    assert abs(w.shape[0] - 16000) <= 1
    spec = np.abs(np.fft.rfft(w))
    assert abs(np.argmax(spec) * 16000 / w.shape[0] - 440) < 3  # tone survives resampling


def test_read_segment_and_crop(tmp_path):
    data = np.linspace(-0.5, 0.5, 32000, dtype=np.float32)
    p = write_wav(tmp_path / "ramp.wav", data=data)
    seg = io.read(p, start_s=0.5, end_s=1.0)
    assert seg.shape == (8000,)
    assert seg[0] == pytest.approx(data[8000], abs=1e-4)
    c = io.read_crop(p, 0.25, None)
    assert c.shape == (4000,) and c[0] == pytest.approx(data[14000], abs=1e-4)  # centre crop
    short = io.read_crop(p, 5.0, np.random.default_rng(0))
    assert short.shape == (32000,)  # shorter file: everything, padded later


def test_load_features_fixed_shape(tmp_path):
    p = write_wav(tmp_path / "a.wav", seconds=0.7, sr=8000)
    f = load_features(p, 2.0, np.random.default_rng(0), n_mels=40)
    assert f.shape == (features.num_frames(32000), 40)


def test_audio_errors_name_the_file(tmp_path):
    with pytest.raises(AudioError, match="nope.wav: file does not exist"):
        io.info(str(tmp_path / "nope.wav"))
    junk = tmp_path / "junk.wav"
    junk.write_bytes(b"this is not audio" * 10)
    with pytest.raises(AudioError, match="junk.wav: unreadable audio"):
        io.info(str(junk))
    empty = tmp_path / "empty.wav"
    sf.write(str(empty), np.zeros(0, dtype=np.float32), 16000)
    with pytest.raises(AudioError, match="empty.wav: empty audio"):
        io.info(str(empty))
    nan = np.zeros(1600, dtype=np.float32)
    nan[100] = np.nan
    pn = tmp_path / "nan.wav"
    sf.write(str(pn), nan, 16000, subtype="FLOAT")
    with pytest.raises(AudioError, match="nan.wav: 1 NaN/inf samples"):
        io.read(str(pn))
    with pytest.raises(AudioError, match="nan.wav: NaN/inf sample at frame 100"):
        io.scan_samples(str(pn))
