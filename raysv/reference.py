"""The settings reference: every key of every command's config, its default, range and why.

Generated from the config classes (:func:`raysv.config.setting` declares all
three with the field), so it cannot drift from the code: ``raysv config
COMMAND`` prints one command's settings as a run would use them (after
``--config`` and ``--set``), ``raysv config --markdown`` the whole reference
(``docs/config.md``, checked against the classes by a test).
"""

from __future__ import annotations

import importlib

from raysv.config import load_config, reference
from raysv.errors import ConfigError

# command: (module, config class); the commands whose settings are a config tree
COMMANDS = {
    "demo": ("raysv.pipeline.demo", "DemoConfig"),
    "pretrain": ("raysv.training.config", "PretrainConfig"),
    "train": ("raysv.training.stage2_config", "Stage2Config"),
    "iterate": ("raysv.pipeline.iterate", "IterateConfig"),
    "tune": ("raysv.tuning.sweep", "SweepConfig"),
    "synth": ("raysv.synth.corpus", "SynthConfig"),
}


def config_class(command: str | None) -> type:
    """The config class of ``command`` (one of :data:`COMMANDS`)."""
    if command is None:
        raise ConfigError(f"name a command ({', '.join(COMMANDS)}) or give --markdown")
    if command not in COMMANDS:
        raise ConfigError(
            f"no config for command {command!r}; commands with one: {', '.join(COMMANDS)}"
        )
    module, name = COMMANDS[command]
    return getattr(importlib.import_module(module), name)


def settings(
    command: str | None, config: str | None = None, overrides: list[str] | None = None
) -> dict:
    """``command``'s settings: ``{"command", "class", "config", "rows"}``; rows as in
    :func:`raysv.config.reference`, with the values ``--config`` and ``overrides``
    give (the defaults when neither is given; checked as a run would check them)."""
    cls = config_class(command)
    cfg = load_config(cls, config, overrides) if config or overrides else cls
    return {"command": command, "class": cls.__name__, "config": config, "rows": reference(cfg)}


def markdown() -> str:
    """The whole reference as Markdown (``docs/config.md``)."""
    parts = [
        "# Settings reference",
        "",
        "Generated from the config classes by `raysv config --markdown > docs/config.md`;",
        "a test fails when this file and the code disagree. Each command reads its",
        "settings from `--config FILE` (YAML) and `--set key=value` overrides; a key that",
        "is not listed here, a value of the wrong type or out of its range is refused",
        "before any work starts. `raysv config COMMAND --config FILE` prints the values",
        "a run would use.",
        "",
    ]
    for command in COMMANDS:
        cls = config_class(command)
        parts.append(_section(f"`raysv {command}` ({cls.__name__})", reference(cls)))
    return "\n".join(parts)


def _section(title: str, rows: list[dict]) -> str:
    esc = lambda t: t.replace("|", "\\|")  # noqa: E731 - Markdown table cells
    lines = [f"## {title}", "", "| key | type | default | range | why this default |"]
    lines.append("| --- | --- | --- | --- | --- |")
    for r in rows:
        cells = [
            f"`{r['key']}`",
            esc(r["type"]),
            f"`{esc(r['default'])}`",
            r["range"],
            esc(r["why"]),
        ]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"
