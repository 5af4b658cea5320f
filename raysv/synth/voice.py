"""Source-filter synthesis of speech-like audio with a stable speaker identity.

A speaker is a set of physiological and habitual parameters (pitch range,
vocal-tract length, per-vowel formant idiosyncrasies, spectral tilt, jitter,
shimmer, breathiness, speaking rate). An utterance is a random syllable
sequence (varied content) rendered through that voice: a glottal pulse train
with a prosodic pitch contour, shaped by a cascade of formant resonators whose
targets glide between phones. A session adds a channel: random EQ, band
limits, mild reverberation and a noise floor.

Everything is driven by a ``numpy.random.Generator``, so a seed fixes it all.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy.signal import fftconvolve, lfilter

SR = 16000
BLOCK = 240  # 15 ms: formant targets are updated per block (filter state carried)

# Reference formants (Hz) for an adult male vocal tract (Peterson & Barney-like).
VOWELS = np.array(
    [
        [270, 2290, 3010, 3600],  # i
        [390, 1990, 2550, 3500],  # I
        [530, 1840, 2480, 3500],  # E
        [660, 1720, 2410, 3400],  # ae
        [730, 1090, 2440, 3400],  # a
        [570, 840, 2410, 3300],  # O
        [440, 1020, 2240, 3300],  # U
        [300, 870, 2240, 3300],  # u
        [640, 1190, 2390, 3400],  # ^
        [490, 1350, 1690, 3300],  # er
    ],
    dtype=np.float64,
)
NASAL = np.array([250, 1000, 2200, 3300], dtype=np.float64)
BANDWIDTHS = np.array([70, 100, 140, 200], dtype=np.float64)


@dataclass(frozen=True)
class Voice:
    """Speaker-specific parameters (fixed across all of the speaker's utterances)."""

    f0: float  # mean pitch, Hz
    f0_spread: float  # pitch variation, semitones
    vtl: float  # formant scale (1/vocal-tract length)
    idio: np.ndarray  # (n_vowels + 1, 4) multiplicative formant offsets
    bw_scale: float
    tilt: float  # glottal low-pass pole: larger = darker voice
    jitter: float
    shimmer: float
    breath: float  # aspiration noise share
    rate: float  # mean phone duration, seconds
    fric_center: float  # speaker's fricative spectral centre, Hz


@dataclass(frozen=True)
class Channel:
    """Session-specific recording conditions."""

    eq: tuple[tuple[float, float, float], ...]  # peaking filters (freq Hz, gain dB, Q)
    lowcut: float
    highcut: float
    snr_db: float
    rt60: float  # 0 = no reverberation
    f0_shift: float  # semitones: the speaker's pitch on that day
    gain: float


def random_voice(rng: np.random.Generator) -> Voice:
    female = rng.random() < 0.5
    return Voice(
        f0=float(rng.uniform(165, 255) if female else rng.uniform(85, 150)),
        f0_spread=float(rng.uniform(1.0, 3.5)),
        vtl=float(rng.uniform(1.04, 1.2) if female else rng.uniform(0.86, 1.02)),
        idio=np.exp(rng.normal(0.0, 0.10, size=(len(VOWELS) + 1, 4))),
        bw_scale=float(rng.uniform(0.7, 1.6)),
        tilt=float(rng.uniform(0.80, 0.97)),
        jitter=float(rng.uniform(0.003, 0.03)),
        shimmer=float(rng.uniform(0.02, 0.15)),
        breath=float(rng.uniform(0.0, 0.35)),
        rate=float(rng.uniform(0.07, 0.14)),
        fric_center=float(rng.uniform(3000, 6500)),
    )


def random_channel(rng: np.random.Generator) -> Channel:
    # Channel severity is tuned so that a training-free baseline is far from
    # perfect (the corpus is worth learning on) yet far from chance.
    n_eq = int(rng.integers(1, 3))
    eq = tuple(
        (float(rng.uniform(300, 5000)), float(rng.uniform(-6, 6)), float(rng.uniform(0.7, 2.0)))
        for _ in range(n_eq)
    )
    return Channel(
        eq=eq,
        lowcut=float(rng.uniform(50, 200)),
        highcut=float(rng.uniform(5000, 7800)),
        snr_db=float(rng.uniform(12, 35)),
        rt60=float(rng.uniform(0.15, 0.4)) if rng.random() < 0.25 else 0.0,
        f0_shift=float(rng.normal(0.0, 0.7)),
        gain=float(rng.uniform(0.15, 0.5)),
    )


def _resonator(freq: float, bw: float) -> np.ndarray:
    """Denominator of a 2-pole resonator at ``freq`` Hz with bandwidth ``bw`` Hz."""
    r = np.exp(-np.pi * bw / SR)
    return np.array([1.0, -2.0 * r * np.cos(2.0 * np.pi * freq / SR), r * r])


def _cascade(formants: np.ndarray, bws: np.ndarray) -> np.ndarray:
    """8th-order all-pole denominator for 4 formants; unit gain at DC removed by caller."""
    den = np.array([1.0])
    for f, b in zip(formants, bws, strict=True):
        den = np.convolve(den, _resonator(min(f, 0.45 * SR), b))
    return den


def _phone_plan(voice: Voice, n: int, rng: np.random.Generator) -> list[tuple[str, int, int]]:
    """Random syllable sequence covering ``n`` samples: (kind, vowel index, length)."""
    plan: list[tuple[str, int, int]] = []
    total = 0
    while total < n:
        r = rng.random()
        if r < 0.08:  # pause between words
            kind, length = "sil", rng.uniform(0.05, 0.2)
        elif r < 0.30:
            kind, length = "fric", rng.uniform(0.5, 1.1) * voice.rate
        elif r < 0.40:
            kind, length = "nasal", rng.uniform(0.6, 1.0) * voice.rate
        else:
            kind, length = "vowel", rng.uniform(0.8, 2.0) * voice.rate
        k = int(max(BLOCK, length * SR))
        plan.append((kind, int(rng.integers(0, len(VOWELS))), k))
        total += k
    return plan


def _glottal(voice: Voice, f0_track: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Pulse train at ``f0_track`` (Hz per sample) with jitter/shimmer, tilt-filtered."""
    period_jitter = 1.0 + voice.jitter * rng.standard_normal(f0_track.shape[0] // 40 + 2)
    jit = np.repeat(period_jitter, 40)[: f0_track.shape[0]]
    phase = np.cumsum(f0_track * jit / SR)
    pulses = np.zeros_like(f0_track)
    idx = np.flatnonzero(np.diff(np.floor(phase)) > 0) + 1
    pulses[idx] = 1.0 + voice.shimmer * rng.standard_normal(idx.shape[0])
    # Two-pole glottal shaping; tilt sets how fast the spectrum falls off.
    src = lfilter([1.0], [1.0, -2 * voice.tilt, voice.tilt**2], pulses)
    src = src - lfilter([1.0], [1.0, -0.995], src) * 0.005  # remove slow DC build-up
    return src / (np.abs(src).max() + 1e-9)


def render(voice: Voice, channel: Channel, seconds: float, rng: np.random.Generator) -> np.ndarray:
    """Render one utterance of ``seconds`` (float32, ``(T,)`` at 16 kHz, peak < 1)."""
    n = int(seconds * SR)
    plan = _phone_plan(voice, n, rng)
    n_total = sum(k for _, _, k in plan)
    # Prosody: declination plus slow random accents, in semitones around f0.
    t = np.arange(n_total) / SR
    knots = rng.normal(0.0, voice.f0_spread, size=int(seconds * 3) + 3)
    accents = np.interp(t, np.linspace(0, t[-1] + 1e-3, knots.shape[0]), knots)
    semis = accents - 1.5 * t / max(seconds, 1e-3) + channel.f0_shift
    f0_track = voice.f0 * 2.0 ** (semis / 12.0)
    voiced_src = _glottal(voice, f0_track, rng)
    noise = rng.standard_normal(n_total)
    aspir = lfilter([1.0, -0.5], [1.0], noise) * 0.3

    out = np.zeros(n_total)
    zi = np.zeros(8)
    pos = 0
    prev = None
    bws = BANDWIDTHS * voice.bw_scale
    for kind, v, k in plan:
        seg = slice(pos, pos + k)
        env = np.ones(k)
        ramp = min(k // 4, 160)
        if ramp:
            env[:ramp] = np.linspace(0, 1, ramp)
            env[-ramp:] = np.linspace(1, 0, ramp)
        if kind == "sil":
            excitation = 0.01 * noise[seg]
            target = prev if prev is not None else VOWELS[4] * voice.vtl
        elif kind == "fric":
            excitation = 0.25 * noise[seg]
            target = np.array(
                [voice.fric_center * 0.6, voice.fric_center, voice.fric_center * 1.2, 7000.0]
            )
        elif kind == "nasal":
            excitation = 0.6 * voiced_src[seg] + voice.breath * aspir[seg]
            target = NASAL * voice.vtl * voice.idio[-1]
        else:
            excitation = voiced_src[seg] + voice.breath * aspir[seg]
            target = VOWELS[v] * voice.vtl * voice.idio[v]
        start = prev if prev is not None else target
        excitation = excitation * env
        level = {"sil": 0.005, "fric": 0.15, "nasal": 0.4, "vowel": 1.0}[kind] * (
            0.85 + 0.3 * rng.random()
        )
        for b0 in range(0, k, BLOCK):
            frac = min(
                1.0, (b0 + BLOCK) / max(k * 0.4, 1)
            )  # glide over the first 40 % of the phone
            formants = start + (target - start) * frac
            den = _cascade(formants, bws)
            blk = excitation[b0 : b0 + BLOCK]
            y, zi = lfilter([den.sum()], den, blk, zi=zi)
            out[pos + b0 : pos + b0 + blk.shape[0]] = y
        seg_out = out[seg]
        seg_out *= level * env / (np.sqrt(np.mean(seg_out**2)) + 1e-9)
        prev = target
        pos += k
    out = out[:n]
    return apply_channel(out / (np.abs(out).max() + 1e-9), channel, rng)


def _peaking(freq: float, gain_db: float, q: float) -> tuple[np.ndarray, np.ndarray]:
    """RBJ peaking-EQ biquad coefficients (b, a)."""
    a_lin = 10 ** (gain_db / 40)
    w0 = 2 * np.pi * freq / SR
    alpha = np.sin(w0) / (2 * q)
    b = np.array([1 + alpha * a_lin, -2 * np.cos(w0), 1 - alpha * a_lin])
    a = np.array([1 + alpha / a_lin, -2 * np.cos(w0), 1 - alpha / a_lin])
    return b / a[0], a / a[0]


def apply_channel(x: np.ndarray, ch: Channel, rng: np.random.Generator) -> np.ndarray:
    """Band-limit, equalise, reverberate and add the noise floor; returns float32."""
    from scipy.signal import butter

    b, a = butter(2, [ch.lowcut / (SR / 2), min(ch.highcut / (SR / 2), 0.99)], btype="band")
    y = lfilter(b, a, x)
    for freq, gain, q in ch.eq:
        bb, aa = _peaking(freq, gain, q)
        y = lfilter(bb, aa, y)
    if ch.rt60 > 0:
        n = int(SR * ch.rt60)
        tt = np.arange(n) / SR
        rir = rng.standard_normal(n) * np.exp(-6.9 * tt / ch.rt60) * 0.3
        rir[0] = 1.0
        y = fftconvolve(y, rir)[: y.shape[0]]
    p_sig = np.mean(y**2) + 1e-12
    floor = lfilter([1.0], [1.0, -0.7], rng.standard_normal(y.shape[0]))
    y = y + floor * np.sqrt(p_sig / (np.mean(floor**2) * 10 ** (ch.snr_db / 10)))
    y = y / (np.abs(y).max() + 1e-9) * ch.gain
    return y.astype(np.float32)
