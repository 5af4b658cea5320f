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


def set_by_command(command: str) -> dict[str, str]:
    """Keys of ``command``'s config that the command sets itself (refused when given):
    ``{dotted key: what sets it}``."""
    if command == "iterate":
        from raysv.pipeline.iterate import SET_BY_ROUNDS

        return {f"train.{k}": f"each round, from {v}" for k, v in SET_BY_ROUNDS.items()}
    if command == "demo":
        from raysv.pipeline.demo import SET_BY_DEMO

        return {k: f"the demo, from {v}" for k, v in SET_BY_DEMO.items()}
    return {}


def rows(command: str, cfg=None) -> list[dict]:
    """The reference rows of ``command`` (:func:`raysv.config.reference` of its config
    class), or of a loaded config ``cfg``: a value that differs from the default says
    so and keeps the default's reason; a key the command sets itself says that."""
    cls = config_class(command)
    default = reference(cls)
    if cfg is not None:
        given = {r["key"]: r for r in reference(cfg)}
        for r in default:
            now = given[r["key"]]["default"]
            if now != r["default"]:
                r["why"] = f"given (default {r['default']}: {r['why']})"
                r["default"] = now
    owned = set_by_command(command)
    for r in default:
        for key, by in owned.items():
            if r["key"] == key or r["key"].startswith(key + "."):
                r["why"] = f"set by {by}; refused if given"
    return default


def settings(
    command: str | None,
    config: str | None = None,
    overrides: list[str] | None = None,
    markdown_too: bool = False,
) -> dict:
    """``raysv config``: ``command``'s settings, ``{"command", "class", "config", "rows"}``,
    with the values ``--config`` and ``overrides`` give (the defaults without them),
    checked as a run would check them (a sweep: every trial's stage config); or, with
    ``markdown_too`` and nothing else, ``{"markdown": the whole reference}``."""
    if markdown_too:
        if command or config or overrides:
            raise ConfigError("--markdown prints every command's defaults: give it alone")
        return {"markdown": markdown()}
    cls = config_class(command)
    cfg = load_config(cls, config, overrides) if config or overrides else None
    if cfg is not None and command == "tune":
        from raysv.tuning.sweep import trial_config, trial_points

        for i, point in enumerate(trial_points(cfg)):
            trial_config(cfg, i, point, None)
    return {"command": command, "class": cls.__name__, "config": config, "rows": rows(command, cfg)}


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
        parts.append(_section(f"`raysv {command}` ({cls.__name__})", rows(command)))
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
