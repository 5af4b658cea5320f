"""Is this Python environment one raysv can run in? Checked before any work starts.

torchaudio's compiled library needs the symbols of the exact torch release it
was built against: a torchaudio from another release (e.g. 2.11.1 beside torch
2.11.0) fails at ``import torchaudio`` with an ``OSError`` from the dynamic
loader. Inside a Ray actor that surfaced as a 60-line traceback from the first
feature computation; :func:`check_environment` turns it into one line, raised
in the driver before Ray starts, that names both versions and the fix.

``python -m raysv.environment`` runs the check (``scripts/setup.sh`` does after
every install) and prints the versions.
"""

from __future__ import annotations

import functools
import re
import sys
from importlib import metadata

from raysv.errors import RaysvError

FIX = "bash scripts/setup.sh (installs the lock requirements/lock-cpu.txt)"


class BrokenEnvironmentError(RaysvError):
    """The installed packages do not work together (e.g. torch and torchaudio)."""


def installed_version(dist: str) -> str:
    """The installed version of distribution ``dist``, or ``"not installed"``."""
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return "not installed"


def required_pins(names: tuple[str, ...] = ("torch", "torchaudio")) -> dict[str, str]:
    """The exact ``==`` pins raysv's own metadata declares for ``names`` (missing ones left out)."""
    try:
        requires = metadata.requires("raysv") or []
    except metadata.PackageNotFoundError:
        return {}
    pins = {}
    for req in requires:
        if ";" in req:  # extras and markers: not a base pin
            continue
        m = re.fullmatch(r"\s*([A-Za-z0-9_.-]+)\s*==\s*([^\s,*]+)\s*", req)
        if m and m.group(1).lower() in names:
            pins[m.group(1).lower()] = m.group(2)
    return pins


def _fix_line() -> str:
    pins = required_pins()
    pair = " ".join(f"{name}=={version}" for name, version in sorted(pins.items()))
    return f"run {FIX}" + (f", or: pip install {pair}" if pair else "")


@functools.cache
def check_environment() -> str:
    """Import torch and torchaudio (with its Kaldi front-end) in this process.

    Returns a one-line description of the versions; raises
    :class:`BrokenEnvironmentError` naming both versions and the fix when
    either fails to load. Cached: the imports happen once per process.
    """
    torch_v, audio_v = installed_version("torch"), installed_version("torchaudio")
    try:
        import torch  # noqa: F401
    except Exception as exc:  # OSError, ImportError, RuntimeError from the loader
        raise BrokenEnvironmentError(
            f"torch {torch_v} does not load ({type(exc).__name__}: {_first_line(exc)}); {_fix_line()}"
        ) from exc
    try:
        import torchaudio  # noqa: F401
        from torchaudio.compliance import kaldi  # noqa: F401
    except Exception as exc:
        raise BrokenEnvironmentError(
            f"torchaudio {audio_v} does not load beside torch {torch_v} "
            f"({type(exc).__name__}: {_first_line(exc)}): the two must come from the same "
            f"release; {_fix_line()}"
        ) from exc
    return f"torch {torch_v} + torchaudio {audio_v} load together"


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0][:200] if text else "no message"


def main() -> int:
    try:
        print(f"[setup] {check_environment()}")
    except BrokenEnvironmentError as exc:
        print(f"raysv: error: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
