"""Errors that raysv raises for bad input.

Every error names the offending file, row or value, so that a user can fix the
input without reading a traceback. The CLI prints ``str(error)`` and exits 2.
"""

from __future__ import annotations


class RaysvError(Exception):
    """Base class for errors caused by user input or configuration."""


class ConfigError(RaysvError):
    """A configuration value or key is invalid (unknown key, bad type, bad range)."""


class ManifestError(RaysvError):
    """A manifest, dialogue file or trial list is malformed."""


class AudioError(RaysvError):
    """An audio file is missing, unreadable, empty, or holds non-finite samples."""

    def __init__(self, path: str, reason: str, kind: str | None = None):
        super().__init__(f"{path}: {reason}")
        self.path = path
        self.reason = reason
        # The problem kind (raysv.data.problems.KINDS), chosen where it is detected.
        self.kind = kind or "unreadable_audio"


class DivergedError(RaysvError, FloatingPointError):
    """Training diverged (a NaN/inf loss in too many steps): the settings, e.g. the learning rate."""


class OutputError(RaysvError):
    """An output folder is incomplete, foreign, of an older format, or not ours to replace."""


class RunInterrupted(RaysvError):
    """A run was stopped before it finished (a signal, Ctrl-C); rerunning resumes it."""


def raysv_cause(exc: BaseException) -> RaysvError | None:
    """The raysv error behind ``exc``: itself, or the first one along the chain of
    causes that Ray's wrappers keep (``cause``, ``__cause__``, ``__context__``)."""
    seen: set[int] = set()
    todo: list[BaseException | None] = [exc]
    while todo:
        e = todo.pop(0)
        if e is None or id(e) in seen:
            continue
        seen.add(id(e))
        cause = getattr(e, "cause", None)
        if isinstance(e, RaysvError) and not isinstance(cause, RaysvError):
            return e
        todo += [cause if isinstance(cause, BaseException) else None, e.__cause__, e.__context__]
    return None


def one_line(exc: BaseException) -> str:
    """``exc``'s message as one line (pyarrow's and torch's errors span several)."""
    return " ".join(str(exc).split()) or type(exc).__name__
