import numpy as np
import pytest

from raysv.audio import augment
from raysv.audio.augment import AugmentConfig, Augmenter
from tests.conftest import write_wav


def _snr(clean, mixed):
    noise = mixed - clean
    return 10 * np.log10(np.mean(clean**2) / np.mean(noise**2))


@pytest.mark.parametrize("snr", [0.0, 5.0, 17.5])
def test_add_noise_hits_the_requested_snr(snr):
    rng = np.random.default_rng(0)
    clean = rng.standard_normal(16000).astype(np.float32)
    noise = rng.standard_normal(4000).astype(np.float32)  # shorter: tiled
    mixed = augment.add_noise(clean, noise, snr)
    assert mixed.shape == clean.shape
    assert _snr(clean, mixed) == pytest.approx(snr, abs=0.05)


def test_reverberate_keeps_length_and_power():
    rng = np.random.default_rng(0)
    w = rng.standard_normal(16000).astype(np.float32)
    rir = augment.synthetic_rir(rng, rt60=0.5)
    out = augment.reverberate(w, rir)
    assert out.shape == w.shape
    assert np.mean(out**2) == pytest.approx(np.mean(w**2), rel=1e-3)
    assert not np.allclose(out, w)
    # A pure impulse leaves the signal unchanged.
    delta = np.zeros(100, dtype=np.float32)
    delta[10] = 1.0
    assert np.allclose(augment.reverberate(w, delta), w, atol=1e-5)


@pytest.mark.parametrize(
    "maker", [augment.synthetic_noise, augment.synthetic_music, augment.synthetic_babble]
)
def test_synthetic_sources(maker):
    x = maker(8000, np.random.default_rng(1))
    assert x.shape == (8000,) and x.dtype == np.float32 and np.isfinite(x).all()
    assert x.std() == pytest.approx(1.0, rel=1e-3)


def test_augmenter_synthetic_fallback_changes_audio():
    aug = Augmenter(AugmentConfig(prob=1.0, reverb_prob=1.0))
    rng = np.random.default_rng(0)
    w = np.sin(np.arange(16000) / 10).astype(np.float32)
    out = aug(w, rng)
    assert out.shape == w.shape and not np.allclose(out, w)
    assert Augmenter(AugmentConfig(prob=0.0))(w, rng) is w


def test_augmenter_reads_musan_and_rir_folders(tmp_path):
    for sub in ("noise", "music", "speech"):
        write_wav(tmp_path / "musan" / sub / "x" / f"{sub}.wav", seconds=0.5, seed=hash(sub) % 100)
    write_wav(
        tmp_path / "rirs" / "room1" / "r.wav",
        data=augment.synthetic_rir(np.random.default_rng(0), 0.3),
    )
    aug = Augmenter(
        AugmentConfig(
            prob=1.0,
            reverb_prob=1.0,
            noise_dir=str(tmp_path / "musan"),
            rir_dir=str(tmp_path / "rirs"),
        )
    )
    assert all(len(v) == 1 for v in aug.sources.values()) and len(aug.rirs) == 1
    w = np.sin(np.arange(16000) / 10).astype(np.float32)
    assert aug(w, np.random.default_rng(0)).shape == w.shape


def test_augmenter_bad_folders(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="MUSAN layout"):
        Augmenter(AugmentConfig(noise_dir=str(tmp_path / "empty")))
    with pytest.raises(ValueError, match="room impulse"):
        Augmenter(AugmentConfig(rir_dir=str(tmp_path / "empty")))
    with pytest.raises(ValueError, match="noise_snr range is empty"):
        AugmentConfig(noise_snr=(10.0, 5.0))
