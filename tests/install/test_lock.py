"""The locks are current, complete and installable as written.

A changed pin in pyproject.toml without ``bash scripts/lock.sh`` must fail here,
not on a user's fresh machine.
"""

from __future__ import annotations

import importlib.util
import re
import shutil
from importlib import metadata
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
LOCKS = [ROOT / "requirements" / "lock-cpu.txt", ROOT / "requirements" / "lock-gpu.txt"]
PIN = re.compile(r"^([a-z0-9][a-z0-9._-]*)==([^\s;\\]+)\s*(?:;\s*([^\\]+?))?\s*\\?$")


def _spec_hash(root: Path) -> str:
    spec = importlib.util.spec_from_file_location("lock_spec", ROOT / "scripts" / "lock_spec.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.spec_hash(root / "pyproject.toml")


def _recorded_hash(lock: Path) -> str:
    for line in lock.read_text().splitlines()[:5]:
        if line.startswith("# spec-sha256: "):
            return line.split(": ", 1)[1].strip()
    raise AssertionError(f"{lock} has no '# spec-sha256:' line; run: bash scripts/lock.sh")


def _pins(lock: Path) -> list[tuple[str, str, str | None]]:
    """(name, version, marker) of every pinned line of ``lock``."""
    pins = []
    for line in lock.read_text().splitlines():
        m = PIN.match(line)
        if m:
            pins.append((m.group(1), m.group(2), m.group(3)))
    return pins


def check_current(root: Path) -> list[str]:
    """Messages for every lock under ``root`` that pyproject.toml no longer matches."""
    want = _spec_hash(root)
    return [
        f"{lock.name} was made from another dependency specification than pyproject.toml's; "
        "run: bash scripts/lock.sh"
        for lock in (root / "requirements" / "lock-cpu.txt", root / "requirements" / "lock-gpu.txt")
        if _recorded_hash(lock) != want
    ]


def test_locks_are_current():
    problems = check_current(ROOT)
    assert not problems, "\n".join(problems)


def test_a_changed_range_without_a_new_lock_fails(tmp_path):
    (tmp_path / "requirements").mkdir()
    for lock in LOCKS:
        shutil.copy(lock, tmp_path / "requirements" / lock.name)
    text = (ROOT / "pyproject.toml").read_text()
    changed = text.replace('"pyarrow>=20"', '"pyarrow>=21"')
    assert changed != text, "the test's edit no longer applies to pyproject.toml"
    (tmp_path / "pyproject.toml").write_text(changed)
    problems = check_current(tmp_path)
    assert len(problems) == 2 and all("bash scripts/lock.sh" in p for p in problems)
    # Comments, tool settings and the version are not part of the specification.
    (tmp_path / "pyproject.toml").write_text(text.replace('version = "0.1.0"', 'version = "0.1.1"'))
    assert check_current(tmp_path) == []


@pytest.mark.parametrize("lock", LOCKS, ids=lambda p: p.name)
def test_every_pin_is_exact_and_hashed(lock):
    text = lock.read_text()
    entries = re.split(r"\n(?=[a-z0-9])", text.split("\n", 2)[2])
    assert len(entries) > 100
    for entry in entries:
        head = entry.splitlines()[0]
        assert PIN.match(head), f"{lock.name}: not an exact pin: {head!r}"
        assert "--hash=sha256:" in entry, f"{lock.name}: no hash for {head!r}"


@pytest.mark.parametrize("lock", LOCKS, ids=lambda p: p.name)
def test_torch_and_torchaudio_are_the_pair_pyproject_pins(lock):
    pins = {name: version for name, version, _ in _pins(lock)}
    requires = (ROOT / "pyproject.toml").read_text()
    for name in ("torch", "torchaudio"):
        m = re.search(rf'"{name}==([0-9.]+)"', requires)
        assert m, f"pyproject.toml does not pin {name} exactly"
        assert pins[name] == m.group(1)
    assert pins["torch"] == pins["torchaudio"]


def test_the_gpu_lock_swaps_faiss_for_its_cuda_build():
    cpu = {name for name, _, _ in _pins(LOCKS[0])}
    gpu = {name for name, _, _ in _pins(LOCKS[1])}
    assert "faiss-cpu" in cpu and "faiss-cpu" not in gpu
    assert "faiss-gpu-cu12" in gpu and "faiss-gpu-cu12" not in cpu


def test_this_environment_is_the_lock():
    """What is installed here is what the CPU (or GPU) lock pins, for this Python."""
    from packaging.markers import Marker

    installed_faiss_gpu = any(
        d.metadata["Name"].lower() == "faiss-gpu-cu12" for d in metadata.distributions()
    )
    lock = LOCKS[1] if installed_faiss_gpu else LOCKS[0]
    wrong = []
    for name, version, marker in _pins(lock):
        if marker and not Marker(marker).evaluate():
            continue
        try:
            have = metadata.version(name)
        except metadata.PackageNotFoundError:
            wrong.append(f"{name} not installed (lock: {version})")
            continue
        if have != version:
            wrong.append(f"{name} {have} (lock: {version})")
    assert not wrong, (
        f"installed packages differ from {lock.name}: {wrong}; run: bash scripts/setup.sh"
    )


def test_setup_installs_with_hash_checking():
    text = (ROOT / "scripts" / "setup.sh").read_text()
    assert "--require-hashes" in text and "requirements/lock-" in text
    cluster = (ROOT / "cluster.yaml").read_text()
    assert "requirements/lock-gpu.txt" in cluster
    assert not re.search(r"pip install[^\n]*torch", cluster), "cluster.yaml installs torch by hand"
