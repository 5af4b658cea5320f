"""``raysv synth``: write a corpus folder with known speakers, sessions and dialogues.

Layout (the one every raysv command accepts with ``--data DIR``)::

    DIR/wav/<speaker>/<session>/<NNNNN>.wav   16 kHz mono PCM-16
    DIR/dialogues.jsonl                       training dialogues (paths relative to DIR)
    DIR/trials/dev.txt, DIR/trials/test.txt   VoxCeleb-format trials (paths relative to DIR/wav)
    DIR/meta/speakers.parquet                 speaker, split, voice parameters (analysis only)
    DIR/meta/dialogues_truth.parquet          which dialogues mix speakers (analysis only)
    DIR/meta/synth.yaml                       the config that made the corpus

Training, dev and test speakers are disjoint (as VoxCeleb2-dev / VoxCeleb1).
Sessions are recording conditions (channels) named globally (``ses00042``):
in a multi-speaker dialogue the second speaker talks into the host's device,
so their audio is stored under ``wav/<intruder>/<host session>/``. Some
single-speaker dialogues span two sessions, so a channel change alone does not
give a two-speaker dialogue away.

Every utterance is rendered from its own seed (derived from the corpus seed),
so the corpus is identical for a seed whatever the number of processes.
"""

from __future__ import annotations

import json
import logging
import os
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import soundfile as sf
import yaml

from raysv.config import config, setting, to_dict
from raysv.progress import Progress
from raysv.synth.voice import SR, random_channel, random_voice, render

log = logging.getLogger("raysv")


@config
class SynthConfig:
    """Corpus generator settings.

    Args:
        train_speakers / dev_speakers / test_speakers: disjoint speaker sets.
        utts_per_speaker: utterances planned per speaker (train speakers: grouped into dialogues).
        sessions_per_speaker: recording sessions (channels) per speaker; >= 2 so trials cross sessions.
        min_seconds / max_seconds: utterance duration range.
        min_dialogue / max_dialogue: customer utterances per dialogue (2-6: the generator's; the paper needs at least two).
        multi_speaker_fraction: share of dialogues that mix two speakers.
        cross_session_fraction: share of single-speaker dialogues spanning two sessions.
        trials_per_split: trials in each of dev.txt and test.txt (half target, half non-target).
        seed: everything is determined by it.
        workers: processes used for rendering (0 = all cores).
    """

    train_speakers: int = setting(
        80,
        ge=2,
        hint="a multi-speaker dialogue needs two",
        why="the benchmark corpus (configs/synth_100x20.yaml): 100 speakers, 80/10/10; "
        "a multi-speaker dialogue needs two",
    )
    dev_speakers: int = setting(
        10,
        ge=2,
        hint="to make non-target trials",
        why="the benchmark corpus's 10 (>= 2 for non-target trials); the demo uses 25, as 10 "
        "make test EER noisy",
    )
    test_speakers: int = setting(
        10,
        ge=2,
        hint="to make non-target trials",
        why="the benchmark corpus's 10 (>= 2 for non-target trials); the demo uses 25, as 10 "
        "make test EER noisy",
    )
    utts_per_speaker: int = setting(
        20,
        ge=2,
        why="the benchmark corpus's 100 speakers x 20 utterances: 1.67 h, 22.6 s to render on "
        "2 processes (docs/data.md)",
    )
    sessions_per_speaker: int = setting(
        3,
        ge=2,
        why="the benchmark corpus's; >= 2 so that trials and some dialogues cross sessions",
    )
    min_seconds: float = setting(
        2.0,
        ge=0.5,
        why="2-4 s utterances, within the papers' 1.8-4 s training crops (DESIGN.md)",
    )
    max_seconds: float = setting(
        4.0,
        ge=0.5,
        why="2-4 s utterances, within the papers' 1.8-4 s training crops (DESIGN.md)",
    )
    min_dialogue: int = setting(
        2,
        ge=2,
        why="two make a positive pair (the dialogue paper needs at least two)",
    )
    max_dialogue: int = setting(
        6, ge=2, why="the generator's choice: dialogues of 2-6 customer turns"
    )
    multi_speaker_fraction: float = setting(
        0.2,
        ge=0,
        le=1,
        why="chosen, not measured: a fifth of the dialogues noisy, for rejection to work against",
    )
    cross_session_fraction: float = setting(
        0.2,
        ge=0,
        le=1,
        why="chosen, not measured: enough single-speaker channel changes that a channel change "
        "does not give a two-speaker dialogue away",
    )
    trials_per_split: int = setting(
        2000, ge=2, why="the benchmark corpus's (half target, half non-target)"
    )
    seed: int = setting(
        0, ge=0, why="any fixed seed: the corpus is identical for a seed, whatever the processes"
    )
    workers: int = setting(
        0,
        ge=0,
        hint="0: all cores",
        why="0: all cores; every utterance has its own seed, so any count gives the same "
        "corpus (docs/data.md)",
    )

    def __post_init__(self):
        if self.min_dialogue > self.max_dialogue:
            raise ValueError(
                f"need min_dialogue <= max_dialogue, got {self.min_dialogue}, {self.max_dialogue}"
            )
        if self.utts_per_speaker < self.min_dialogue:
            raise ValueError(
                f"utts_per_speaker must be >= min_dialogue ({self.min_dialogue}), "
                f"got {self.utts_per_speaker}"
            )
        if self.min_seconds > self.max_seconds:
            raise ValueError(
                f"need min_seconds <= max_seconds, got {self.min_seconds}, {self.max_seconds}"
            )

    @property
    def total_speakers(self) -> int:
        return self.train_speakers + self.dev_speakers + self.test_speakers


@dataclass
class _Utt:
    speaker: int
    session: int  # global session index = channel
    seconds: float
    seed: int
    name: str = ""
    dialogue: str | None = None


@dataclass
class _Plan:
    utts: list[_Utt] = field(default_factory=list)
    dialogues: list[dict] = field(default_factory=list)  # truth rows
    split: dict[int, str] = field(default_factory=dict)


def _spk(i: int) -> str:
    return f"spk{i:05d}"


def _ses(i: int) -> str:
    return f"ses{i:06d}"


def plan_corpus(cfg: SynthConfig) -> _Plan:
    """Decide every utterance (speaker, session, length, seed) and dialogue, without audio."""
    rng = np.random.default_rng([cfg.seed, 1])
    plan = _Plan()
    n_spk = cfg.total_speakers
    order = rng.permutation(n_spk)
    for i in order[: cfg.train_speakers]:
        plan.split[int(i)] = "train"
    for i in order[cfg.train_speakers : cfg.train_speakers + cfg.dev_speakers]:
        plan.split[int(i)] = "dev"
    for i in order[cfg.train_speakers + cfg.dev_speakers :]:
        plan.split[int(i)] = "test"
    sessions = {
        s: [s * cfg.sessions_per_speaker + k for k in range(cfg.sessions_per_speaker)]
        for s in range(n_spk)
    }
    train = sorted(s for s, sp in plan.split.items() if sp == "train")

    def utt(spk: int, ses: int, dialogue: str | None = None) -> _Utt:
        return _Utt(
            spk,
            ses,
            float(rng.uniform(cfg.min_seconds, cfg.max_seconds)),
            int(rng.integers(2**31)),
            dialogue=dialogue,
        )

    n_dlg = 0
    for spk in train:
        left = cfg.utts_per_speaker
        while left >= cfg.min_dialogue:
            size = int(rng.integers(cfg.min_dialogue, min(cfg.max_dialogue, left) + 1))
            if (
                0 < left - size < cfg.min_dialogue
            ):  # don't leave a remainder too short to be a dialogue
                if left <= cfg.max_dialogue:
                    size = left
                elif left - cfg.min_dialogue >= cfg.min_dialogue:
                    size = left - cfg.min_dialogue
            left -= size
            did = f"dlg{n_dlg:06d}"
            n_dlg += 1
            host_ses = int(rng.choice(sessions[spk]))
            speakers = [spk] * size
            sess = [host_ses] * size
            multi = rng.random() < cfg.multi_speaker_fraction
            cross = False
            if multi:
                other = int(rng.choice([s for s in train if s != spk]))
                k = int(rng.integers(1, size))  # the intruder speaks 1..size-1 turns
                for j in rng.choice(size, size=k, replace=False):
                    speakers[int(j)] = other  # same device: host's session/channel
            elif rng.random() < cfg.cross_session_fraction:
                cross = True
                second = int(rng.choice([s for s in sessions[spk] if s != host_ses]))
                for j in range(size // 2, size):
                    sess[j] = second
            for s, ses in zip(speakers, sess, strict=True):
                plan.utts.append(utt(s, ses, did))
            plan.dialogues.append(
                {
                    "dialogue_id": did,
                    "num_utts": size,
                    "num_speakers": len(set(speakers)),
                    "multi_speaker": bool(multi),
                    "cross_session": cross,
                    "speakers": [_spk(s) for s in speakers],
                }
            )
    for spk in sorted(s for s, sp in plan.split.items() if sp != "train"):
        for j in range(cfg.utts_per_speaker):
            plan.utts.append(utt(spk, sessions[spk][j % cfg.sessions_per_speaker]))
    counters: dict[tuple[int, int], int] = {}
    for u in plan.utts:
        key = (u.speaker, u.session)
        counters[key] = counters.get(key, 0) + 1
        u.name = f"{_spk(u.speaker)}/{_ses(u.session)}/{counters[key]:05d}.wav"
    return plan


def _voices(cfg: SynthConfig) -> list:
    return [
        random_voice(np.random.default_rng([cfg.seed, 2, i])) for i in range(cfg.total_speakers)
    ]


def _channels(cfg: SynthConfig) -> list:
    n = cfg.total_speakers * cfg.sessions_per_speaker
    return [random_channel(np.random.default_rng([cfg.seed, 3, i])) for i in range(n)]


_WORKER_STATE: dict = {}


def _init_worker(cfg: SynthConfig, wav_root: str) -> None:
    _WORKER_STATE.update(voices=_voices(cfg), channels=_channels(cfg), root=wav_root)


def _render_one(u: _Utt) -> None:
    st = _WORKER_STATE
    audio = render(
        st["voices"][u.speaker], st["channels"][u.session], u.seconds, np.random.default_rng(u.seed)
    )
    path = os.path.join(st["root"], u.name)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    sf.write(path, audio, SR, subtype="PCM_16")


def make_trials(
    utts: list[_Utt], n_trials: int, rng: np.random.Generator
) -> list[tuple[int, str, str]]:
    """Half target trials (same speaker, different sessions first), half non-target."""
    by_spk: dict[int, list[_Utt]] = {}
    for u in utts:
        by_spk.setdefault(u.speaker, []).append(u)
    targets = []
    for us in by_spk.values():
        for a in range(len(us)):
            for b in range(a + 1, len(us)):
                targets.append((us[a], us[b]))
    cross = [p for p in targets if p[0].session != p[1].session]
    same = [p for p in targets if p[0].session == p[1].session]
    n_tar = min(n_trials // 2, len(targets))
    pick = [cross[i] for i in rng.permutation(len(cross))[:n_tar]]
    pick += [same[i] for i in rng.permutation(len(same))[: n_tar - len(pick)]]
    trials = [(1, a.name, b.name) for a, b in pick]
    seen = set()
    attempts = 0
    while len(trials) < n_trials and attempts < 50 * n_trials:
        attempts += 1
        a, b = utts[int(rng.integers(len(utts)))], utts[int(rng.integers(len(utts)))]
        if a.speaker == b.speaker or (a.name, b.name) in seen:
            continue
        seen.add((a.name, b.name))
        trials.append((0, a.name, b.name))
    order = rng.permutation(len(trials))
    return [trials[i] for i in order]


def synthesize(cfg: SynthConfig, out_dir: str) -> dict:
    """Write the corpus folder ``out_dir``; return a summary dict (counts, seconds)."""
    import time

    t0 = time.monotonic()
    plan = plan_corpus(cfg)
    wav_root = os.path.join(out_dir, "wav")
    os.makedirs(wav_root, exist_ok=True)
    workers = cfg.workers or (os.cpu_count() or 1)
    progress = Progress("rendering utterances", len(plan.utts))
    if workers == 1:
        _init_worker(cfg, wav_root)
        for u in plan.utts:
            _render_one(u)
            progress.update()
    else:
        with ProcessPoolExecutor(
            workers, initializer=_init_worker, initargs=(cfg, wav_root)
        ) as pool:
            for _ in pool.map(_render_one, plan.utts, chunksize=16):
                progress.update()
    progress.close()

    with open(os.path.join(out_dir, "dialogues.jsonl"), "w") as f:
        by_dlg: dict[str, list[str]] = {}
        for u in plan.utts:
            if u.dialogue is not None:
                by_dlg.setdefault(u.dialogue, []).append(f"wav/{u.name}")
        for d in plan.dialogues:
            f.write(
                json.dumps(
                    {"dialogue_id": d["dialogue_id"], "utterances": by_dlg[d["dialogue_id"]]}
                )
                + "\n"
            )
    os.makedirs(os.path.join(out_dir, "trials"), exist_ok=True)
    trial_counts = {}
    for split in ("dev", "test"):
        utts = [u for u in plan.utts if plan.split[u.speaker] == split]
        trials = make_trials(
            utts, cfg.trials_per_split, np.random.default_rng([cfg.seed, 4, split == "test"])
        )
        with open(os.path.join(out_dir, "trials", f"{split}.txt"), "w") as f:
            f.writelines(f"{lab} {a} {b}\n" for lab, a, b in trials)
        trial_counts[split] = len(trials)
    _write_meta(cfg, plan, out_dir)
    summary = {
        "out": out_dir,
        "speakers": {
            "train": cfg.train_speakers,
            "dev": cfg.dev_speakers,
            "test": cfg.test_speakers,
        },
        "utterances": len(plan.utts),
        "audio_hours": round(sum(u.seconds for u in plan.utts) / 3600, 3),
        "dialogues": len(plan.dialogues),
        "multi_speaker_dialogues": sum(d["multi_speaker"] for d in plan.dialogues),
        "trials": trial_counts,
        "seconds": round(time.monotonic() - t0, 2),
        "workers": workers,
    }
    return summary


def _write_meta(cfg: SynthConfig, plan: _Plan, out_dir: str) -> None:
    meta = os.path.join(out_dir, "meta")
    os.makedirs(meta, exist_ok=True)
    voices = _voices(cfg)
    spk = sorted(plan.split)
    pq.write_table(
        pa.table(
            {
                "speaker": [_spk(s) for s in spk],
                "split": [plan.split[s] for s in spk],
                "f0": [voices[s].f0 for s in spk],
                "vtl": [voices[s].vtl for s in spk],
            }
        ),
        os.path.join(meta, "speakers.parquet"),
    )
    pq.write_table(
        pa.Table.from_pylist(plan.dialogues), os.path.join(meta, "dialogues_truth.parquet")
    )
    with open(os.path.join(meta, "synth.yaml"), "w") as f:
        yaml.safe_dump(to_dict(cfg), f, sort_keys=False)


# What marks a folder as a corpus synth wrote (it is written last).
SYNTH_MARKER = ("meta", "synth.yaml")
# What synth writes at the top of a corpus folder: all that --force replaces.
SYNTH_ENTRIES = ("wav", "dialogues.jsonl", "trials", "meta")


def synthesize_replacing(cfg: SynthConfig, out_dir: str) -> dict:
    """:func:`synthesize` into a hidden sibling, then move its entries into ``out_dir``.

    An earlier synth corpus there loses exactly the entries synth writes
    (:data:`SYNTH_ENTRIES`: no old utterance survives to be imported with the
    new ones); anything else in the folder is left alone. A kill during
    rendering leaves ``out_dir`` as it was.
    """
    import shutil
    import uuid

    out_dir = os.path.abspath(out_dir)
    parent, name = os.path.split(out_dir)
    os.makedirs(parent, exist_ok=True)
    tmp = os.path.join(parent, f".{name}.tmp-{uuid.uuid4().hex[:8]}")
    old = os.path.join(parent, f".{name}.old-{uuid.uuid4().hex[:8]}")
    try:
        summary = synthesize(cfg, tmp)
        os.makedirs(out_dir, exist_ok=True)
        os.makedirs(old)
        marker = os.path.join(out_dir, *SYNTH_MARKER)
        if os.path.isfile(marker):  # the old corpus stops counting as complete first
            os.remove(marker)
        for entry in SYNTH_ENTRIES:
            if os.path.lexists(os.path.join(out_dir, entry)):
                os.rename(os.path.join(out_dir, entry), os.path.join(old, entry))
        for entry in sorted(os.listdir(tmp), key=lambda e: e == SYNTH_MARKER[0]):
            os.rename(os.path.join(tmp, entry), os.path.join(out_dir, entry))
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
        shutil.rmtree(old, ignore_errors=True)
    summary["out"] = out_dir
    return summary
