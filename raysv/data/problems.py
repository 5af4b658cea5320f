"""Collecting bad input: strict mode raises at the first problem, lenient mode counts.

Every problem names its source (file path, or ``file:line`` for text inputs).
A report groups problems by kind, with a count and the first few offenders,
and can be written next to the output as JSON lines for the user to fix.
"""

from __future__ import annotations

import json
import logging
from collections import defaultdict
from dataclasses import dataclass, field

from raysv.errors import ManifestError

log = logging.getLogger("raysv")

# Human wording for each kind of problem (used in summaries).
KINDS = {
    "missing_file": "files that do not exist",
    "unreadable_audio": "unreadable audio files",
    "empty_audio": "empty audio files (0 samples)",
    "bad_samples": "files with NaN/inf samples",
    "duplicate_utt_id": "duplicate utt_id",
    "bad_layout": "paths that do not fit the folder layout",
    "bad_line": "malformed lines",
    "short_dialogue": "dialogues with fewer than 2 utterances",
    "unknown_trial_file": "trial entries naming files not in the manifest",
    "bad_value": "rows with invalid values",
    "unsupported_format": "audio files in a format libsndfile cannot decode",
    "outside_corpus": "paths that leave the corpus folder",
}


@dataclass
class Problem:
    kind: str
    where: str
    message: str

    def __str__(self) -> str:
        return f"{self.where}: {self.message}"


@dataclass
class Problems:
    """Problem collector. ``strict=True`` turns the first problem into a ManifestError."""

    strict: bool = False
    items: list[Problem] = field(default_factory=list)

    def add(self, kind: str, where: str, message: str) -> None:
        if kind not in KINDS:
            raise KeyError(f"unknown problem kind {kind!r}")
        problem = Problem(kind, where, message)
        if self.strict:
            raise ManifestError(
                f"{problem} (strict mode; rerun without --strict to skip and report bad rows)"
            )
        self.items.append(problem)

    def counts(self) -> dict[str, int]:
        out: dict[str, int] = defaultdict(int)
        for p in self.items:
            out[p.kind] += 1
        return dict(out)

    def summary_lines(self, examples: int = 3) -> list[str]:
        """One line per kind: count, description and the first ``examples`` offenders."""
        by_kind: dict[str, list[Problem]] = defaultdict(list)
        for p in self.items:
            by_kind[p.kind].append(p)
        lines = []
        for kind, probs in by_kind.items():
            shown = "; ".join(str(p) for p in probs[:examples])
            more = f" (+{len(probs) - examples} more)" if len(probs) > examples else ""
            lines.append(f"skipped {len(probs)} {KINDS[kind]}: {shown}{more}")
        return lines

    def log_summary(self) -> None:
        for line in self.summary_lines():
            log.warning(line)

    def write_jsonl(self, path: str) -> None:
        with open(path, "w") as f:
            for p in self.items:
                f.write(json.dumps({"kind": p.kind, "where": p.where, "message": p.message}) + "\n")
