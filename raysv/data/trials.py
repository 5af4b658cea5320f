"""Trial lists: VoxCeleb text (``1 a.wav b.wav``), Kaldi text (``u1 u2 target``), Parquet.

Trial entries are matched to an utterances manifest by utt_id, by utt_id plus
extension, or by the trailing path components of the manifest's ``path``
(trial paths are relative to an audio root). Unmatched entries are reported
with a count and examples.
"""

from __future__ import annotations

import posixpath

import pyarrow as pa

from raysv.data import fs
from raysv.data.problems import Problems
from raysv.data.schema import TRIALS, conform
from raysv.errors import ManifestError

_KALDI_LABELS = {"target": 1, "nontarget": 0}


def parse_trials(uri: str, problems: Problems) -> pa.Table:
    """Read a trial list (text in either form, or Parquet) into the TRIALS schema."""
    if uri.endswith(".parquet"):
        return conform(fs.read_table(uri), "trials", uri)
    labels, enrolls, tests = [], [], []
    for lineno, line in enumerate(fs.read_text(uri).splitlines(), 1):
        fields = line.split()
        if not fields:
            continue
        where = f"{uri}:{lineno}"
        if len(fields) != 3:
            problems.add(
                "bad_line",
                where,
                f"expected 3 fields ('1 enroll test' or 'enroll test target'), got {line!r}",
            )
            continue
        if fields[0] in ("0", "1"):
            label, a, b = int(fields[0]), fields[1], fields[2]
        elif fields[2] in _KALDI_LABELS:
            a, b, label = fields[0], fields[1], _KALDI_LABELS[fields[2]]
        else:
            problems.add(
                "bad_line",
                where,
                f"no label: first field must be 0/1 or last target/nontarget, got {line!r}",
            )
            continue
        labels.append(label)
        enrolls.append(a)
        tests.append(b)
    if not labels:
        raise ManifestError(f"{uri}: no trials found")
    return pa.table({"label": labels, "enroll": enrolls, "test": tests}, schema=TRIALS)


class PathMatcher:
    """Maps trial entries (ids or relative paths) to manifest utt_ids."""

    def __init__(self, utterances: pa.Table):
        self.ids = utterances.column("utt_id").to_pylist()
        self.id_set = set(self.ids)
        self.paths = [p.replace("\\", "/") for p in utterances.column("path").to_pylist()]
        self._suffix: dict[int, dict[str, str | None]] = {}

    def _index(self, depth: int) -> dict[str, str | None]:
        if depth not in self._suffix:
            idx: dict[str, str | None] = {}
            for uid, p in zip(self.ids, self.paths, strict=True):
                key = "/".join(p.split("/")[-depth:])
                idx[key] = None if key in idx else uid  # None marks an ambiguous suffix
            self._suffix[depth] = idx
        return self._suffix[depth]

    def match(self, entry: str) -> str | None:
        """utt_id for ``entry``, or None if unknown or ambiguous."""
        if entry in self.id_set:
            return entry
        stem = posixpath.splitext(entry)[0]
        if stem in self.id_set:
            return stem
        norm = entry.replace("\\", "/").lstrip("./")
        return self._index(norm.count("/") + 1).get(norm)


def resolve_trials(
    trials: pa.Table, utterances: pa.Table, source: str, problems: Problems
) -> pa.Table:
    """Replace trial entries by manifest utt_ids; report and drop unmatched trials."""
    m = PathMatcher(utterances)
    labels, enrolls, tests = [], [], []
    for row, (lab, a, b) in enumerate(
        zip(*(trials.column(c).to_pylist() for c in ("label", "enroll", "test")), strict=True)
    ):
        ua, ub = m.match(a), m.match(b)
        if ua is None or ub is None:
            missing = " and ".join(x for x, u in ((a, ua), (b, ub)) if u is None)
            problems.add(
                "unknown_trial_file", f"{source} trial {row + 1}", f"{missing} not in the manifest"
            )
            continue
        labels.append(lab)
        enrolls.append(ua)
        tests.append(ub)
    if not labels:
        raise ManifestError(
            f"{source}: none of the {trials.num_rows} trials name files in the manifest"
        )
    return pa.table({"label": labels, "enroll": enrolls, "test": tests}, schema=TRIALS)
