"""Docs that can't rot: the site builds in strict mode, and every command line shown
in the README and docs/ names commands, flags, config keys and files that exist.

A command line is a line of a fenced ``bash``/``sh``/``console``/``text`` block
(or an inline ``raysv ...`` span) starting with ``raysv`` (after an optional
``$ ``, environment assignments, ``.venv/bin/`` or ``python -m``); ``\\``
continuations are joined. For each: the subcommand exists, every ``--flag`` is
one of its options, each ``--set key=value`` key is a key of its config (or the
config a ``--config`` file of that command holds), and each ``configs/``,
``scripts/``, ``jobs/`` or ``k8s/`` path it names exists. ``bash scripts/X.sh``
and ``python jobs/X.py`` lines must name existing files.
"""

from __future__ import annotations

import glob
import os
import re
import shlex
import subprocess
import sys

from raysv.cli import build_parser

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DOC_FILES = [
    os.path.join(ROOT, "README.md"),
    *sorted(glob.glob(os.path.join(ROOT, "docs", "*.md"))),
]
FENCE = re.compile(r"^```(\w*)\s*$")
SHELL = {"bash", "sh", "shell", "console", "text", ""}
PREFIX = re.compile(r"^(?:\$\s+)?(?:[A-Z_][A-Z0-9_]*=\S+\s+)*(?:\.venv/bin/|python -m )?")
PATHS = re.compile(r"(?<![\w/.-])((?:configs|scripts|jobs|k8s)/[\w./-]+\.(?:yaml|yml|sh|py))")


def command_lines(text: str) -> list[tuple[int, str]]:
    """``(line number, command)`` of every shell command line in Markdown ``text``."""
    out: list[tuple[int, str]] = []
    lang, pending, start = None, "", 0
    for i, line in enumerate(text.splitlines(), 1):
        m = FENCE.match(line.strip())
        if m:
            lang = None if lang is not None else m.group(1)
            continue
        if lang is None:
            for span in re.findall(r"`(raysv [^`]+)`", line):
                out.append((i, span))
            continue
        if lang not in SHELL:
            continue
        body = line.split(" #", 1)[0].rstrip() if not line.lstrip().startswith("#") else ""
        if not pending:
            start = i
        if body.endswith("\\"):
            pending += body[:-1] + " "
            continue
        full = (pending + body).strip()
        pending = ""
        if full:
            out.append((start, full))
    return out


def _subparsers() -> dict:
    parser = build_parser()
    action = next(a for a in parser._actions if a.__class__.__name__ == "_SubParsersAction")
    return action.choices


def _config_keys(command: str) -> set[str] | None:
    """Every dotted key of ``command``'s config tree (None: it has none); a mapping
    key (e.g. a sweep's ``base``) is given as ``key.*``: anything under it goes."""
    from raysv.config import reference
    from raysv.reference import COMMANDS, config_class

    if command not in COMMANDS:
        return None
    rows = reference(config_class(command))
    return {r["key"] + (".*" if r["type"] == "mapping" else "") for r in rows}


def _known(key: str, keys: set[str]) -> bool:
    bits = key.split(".")
    return key in keys or any(".".join(bits[:i]) + ".*" in keys for i in range(1, len(bits)))


def check_line(where: str, line: str, parsers: dict) -> list[str]:
    """What is wrong with one documented command line (``[]``: nothing)."""
    problems = []
    for path in PATHS.findall(line):
        if not glob.glob(os.path.join(ROOT, path)) and "<" not in path:
            problems.append(f"{where}: {path} does not exist")
    cmd = PREFIX.sub("", line.strip())
    if not cmd.startswith("raysv "):
        return problems
    try:
        words = shlex.split(cmd.split(" | ")[0].split(" && ")[0].split(" > ")[0])
    except ValueError:
        words = cmd.split()
    if len(words) < 2 or words[1].startswith("-") or words[1].rstrip(":").isupper():
        return problems  # `raysv --version`, `raysv COMMAND ...` (a placeholder)
    name = words[1]
    if name not in parsers:
        return [*problems, f"{where}: raysv {name}: no such command"]
    options = set(parsers[name]._option_string_actions)
    keys = _config_keys(name)
    for j, word in enumerate(words[2:], 2):
        if word.startswith("--"):
            flag = word.split("=", 1)[0]
            if flag not in options and "..." not in flag:
                problems.append(f"{where}: raysv {name}: no option {flag}")
            if flag == "--set" and keys is not None and j + 1 < len(words):
                key = words[j + 1].split("=", 1)[0]
                if "<" not in key and "..." not in key and not _known(key, keys):
                    problems.append(f"{where}: raysv {name}: no config key {key}")
    return problems


def test_every_documented_command_flag_key_and_file_exists():
    parsers = _subparsers()
    problems, seen = [], 0
    for path in DOC_FILES:
        with open(path, encoding="utf-8") as f:
            text = f.read()
        rel = os.path.relpath(path, ROOT)
        for n, line in command_lines(text):
            seen += 1
            problems += check_line(f"{rel}:{n}", line, parsers)
    assert seen > 20, "no command lines found: has the README's format changed?"
    assert not problems, "\n".join(problems)


def test_the_checker_catches_what_disappeared():
    """A flag, command, key or file that does not exist is reported, naming the line."""
    parsers = _subparsers()
    assert check_line("R:1", "raysv embed --manifest m --out o", parsers) == []
    assert check_line("R:2", "raysv embed --no-such-flag 3", parsers) == [
        "R:2: raysv embed: no option --no-such-flag"
    ]
    assert check_line("R:3", "$ raysv frobnicate --x", parsers) == [
        "R:3: raysv frobnicate: no such command"
    ]
    bad = "raysv pretrain --config configs/nope.yaml --set train.no_such_key=1"
    assert check_line("R:4", bad, parsers) == [
        "R:4: configs/nope.yaml does not exist",
        "R:4: raysv pretrain: no config key train.no_such_key",
    ]
    good = "raysv pretrain --config configs/pretrain_smoke.yaml --set train.epochs=2"
    assert check_line("R:5", good, parsers) == []
    text = "```bash\nraysv cluster --embeddings e \\\n  --out o --k 4 --bogus\n```\n"
    assert command_lines(text) == [(2, "raysv cluster --embeddings e    --out o --k 4 --bogus")]


# Dotted names in backticks that look like config keys but are not (an MLflow metric):
# each must stay a non-key (checked below), so that the list cannot hide a real key.
NOT_KEYS = {"gate.gate_tau"}
FILE_SUFFIXES = (
    "json", "jsonl", "yaml", "yml", "onnx", "ts", "py", "parquet", "png", "html", "db", "pt",
    "npz", "npy", "txt", "sh", "md",
)  # fmt: skip
KEY_SPAN = re.compile(r"`([a-z_][a-z0-9_]*(?:\.[a-z_][a-z0-9_]*)+)(?:=[^`]*)?`")


def _all_config_keys() -> set[str]:
    """Every dotted key of every command's config tree (mappings as ``key.*``)."""
    from raysv.reference import COMMANDS

    return set().union(*(_config_keys(c) for c in COMMANDS))


def config_key_problems(where: str, text: str, keys: set[str]) -> list[str]:
    """Backticked dotted names in prose whose first part is a config section (``train``,
    ``optim``, ``schedule``, ...) but that are no key of any command's config (a key
    may be written from any level: ``train.epochs`` for ``stage2.train.train.epochs``)."""
    sections = {k.split(".")[0] for k in keys}
    problems = []
    for n, line in enumerate(text.splitlines(), 1):
        for span in KEY_SPAN.findall(line):
            if span.split(".")[0] not in sections or span.endswith(FILE_SUFFIXES):
                continue
            if span in NOT_KEYS or _documented_key(span, keys):
                continue
            problems.append(f"{where}:{n}: `{span}` is no config key")
    return problems


def _documented_key(span: str, keys: set[str]) -> bool:
    for key in keys:
        if key == span or key.endswith("." + span):
            return True
        if key.endswith(".*"):  # a mapping (a sweep's base, grid, space): anything under it
            base = key[:-2]
            for tail in (base, base.rsplit(".", 1)[-1]):
                if span.startswith(tail + "."):
                    return True
    return False


def test_every_config_key_named_in_the_docs_exists():
    """A key named in prose (``train.storage_path``, ``schedule.tau``) that no config
    has any more fails here, naming the file and line (docs/config.md is generated)."""
    keys = _all_config_keys()
    assert not any(_documented_key(k, keys) for k in NOT_KEYS)  # still not keys
    problems, seen = [], 0
    for path in DOC_FILES:
        if path.endswith("config.md"):
            continue
        with open(path, encoding="utf-8") as f:
            text = f.read()
        seen += len(KEY_SPAN.findall(text))
        problems += config_key_problems(os.path.relpath(path, ROOT), text, keys)
    assert seen > 50, "no key spans found: has the docs' format changed?"
    assert not problems, "\n".join(problems)


def test_the_key_checker_catches_a_vanished_key():
    keys = _all_config_keys()
    text = "Set `train.storage_path` or `schedule.tau=auto`, not `train.no_such_key`;\n" + (
        "`raysv.training.data`, `model.json` and `optim.lr_warp` aside.\n"
    )
    assert config_key_problems("D", text, keys) == [
        "D:1: `train.no_such_key` is no config key",
        "D:2: `optim.lr_warp` is no config key",
    ]


def test_the_docs_site_builds_in_strict_mode(tmp_path):
    """``mkdocs build --strict``: a broken link, or a page missing from the nav, fails."""
    done = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "-d", str(tmp_path / "site")],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-3000:] + done.stdout[-2000:]
    assert os.path.isfile(tmp_path / "site" / "index.html")


def test_the_table_formats_page_is_the_schemas():
    """docs/data.md's table of Parquet columns lists exactly the columns of
    raysv/data/schema.py, with their required-ness."""
    from raysv.data import schema

    tables = {
        "utterances": schema.UTTERANCES,
        "dialogues": schema.DIALOGUES,
        "trials": schema.TRIALS,
        "embeddings": schema.embeddings_schema(4),
        "pseudo labels": schema.PSEUDO_LABELS,
    }
    with open(os.path.join(ROOT, "docs", "data.md"), encoding="utf-8") as f:
        text = f.read()
    rows = re.findall(r"^\| ([a-z ]+) \| `(\w+)` \| ([^|]+) \|", text, re.M)
    documented = {(t, c): "required" in kind for t, c, kind in rows if t in tables}
    expected = {(t, f.name): not f.nullable for t, sch in tables.items() for f in sch}
    assert documented == expected
