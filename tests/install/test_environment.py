"""A torch/torchaudio pair that does not load is one line from the CLI, before Ray starts."""

from __future__ import annotations

import os
import subprocess
import sys
from importlib import metadata

from raysv.environment import check_environment, required_pins
from tests.conftest import write_empty_manifest


def _run(args, tmp_path, shadow: str | None = None):
    env = dict(os.environ)
    if shadow is not None:
        # A torchaudio that fails to load the way a mismatched build does: the dynamic
        # loader's OSError at import time. It shadows the installed one on sys.path.
        pkg = tmp_path / "shadow" / "torchaudio"
        pkg.mkdir(parents=True)
        (pkg / "__init__.py").write_text(f"raise OSError({shadow!r})\n")
        env["PYTHONPATH"] = str(tmp_path / "shadow")
    return subprocess.run(
        [sys.executable, *args], capture_output=True, text=True, env=env, cwd=tmp_path, timeout=300
    )


def test_the_installed_pair_loads():
    line = check_environment()
    assert f"torch {metadata.version('torch')}" in line
    assert f"torchaudio {metadata.version('torchaudio')}" in line


def test_raysv_pins_torch_and_torchaudio_as_one_release():
    pins = required_pins()
    assert set(pins) == {"torch", "torchaudio"}
    assert pins["torch"] == pins["torchaudio"] == metadata.version("torch").split("+")[0]


def test_a_broken_torchaudio_is_one_line_naming_both_versions(tmp_path):
    (tmp_path / "mine.txt").write_text("keep")
    write_empty_manifest(tmp_path / "m.parquet")  # exists, --out is free: next, the environment
    r = _run(
        ["-m", "raysv.cli", "embed", "--manifest", "m.parquet", "--out", "out"],
        tmp_path,
        shadow="Could not load this library: libtorchaudio.so: undefined symbol: _ZN3c10",
    )
    assert r.returncode == 2, r.stderr
    lines = [ln for ln in r.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1, r.stderr
    msg = lines[0]
    assert msg.startswith("raysv embed: error: torchaudio ")
    assert f"beside torch {metadata.version('torch')}" in msg
    assert "OSError: Could not load this library" in msg
    assert "bash scripts/setup.sh" in msg and "pip install torch==" in msg
    assert "Traceback" not in r.stderr
    assert (tmp_path / "mine.txt").read_text() == "keep" and not (tmp_path / "out").exists()


def test_setup_check_exits_nonzero_on_a_broken_pair(tmp_path):
    ok = _run(["-m", "raysv.environment"], tmp_path)
    assert ok.returncode == 0 and "load together" in ok.stdout
    bad = _run(["-m", "raysv.environment"], tmp_path, shadow="undefined symbol")
    assert bad.returncode == 1 and "does not load beside torch" in bad.stderr
