"""Print the sha256 of pyproject.toml's dependency specification.

The hash covers what a lock is resolved from: ``requires-python``,
``dependencies`` and ``optional-dependencies`` (in the order written), so a
changed range, pin or extra changes it while docs, tool settings or the
version do not. ``scripts/lock.sh`` writes it into each lock and
``tests/test_lock.py`` checks that it still matches.
"""

from __future__ import annotations

import hashlib
import json
import sys
from pathlib import Path

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    import tomli as tomllib


def spec_hash(pyproject: Path) -> str:
    """sha256 hex digest of the dependency specification in ``pyproject``."""
    project = tomllib.loads(pyproject.read_text())["project"]
    spec = {
        "requires-python": project.get("requires-python"),
        "dependencies": project.get("dependencies", []),
        "optional-dependencies": project.get("optional-dependencies", {}),
    }
    return hashlib.sha256(json.dumps(spec, sort_keys=True).encode()).hexdigest()


if __name__ == "__main__":
    root = Path(sys.argv[1]) if len(sys.argv) > 1 else Path(__file__).resolve().parent.parent
    print(spec_hash(root / "pyproject.toml"))
