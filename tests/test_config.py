import glob
import os
from dataclasses import dataclass, field

import pytest
import yaml

from raysv.config import apply_overrides, flatten, from_dict, load_config
from raysv.errors import ConfigError
from raysv.pipeline.demo import DemoConfig
from raysv.pipeline.iterate import IterateConfig
from raysv.synth.corpus import SynthConfig
from raysv.training.config import PretrainConfig
from raysv.training.stage2_config import Stage2Config
from raysv.tuning.sweep import SweepConfig, trial_config, trial_points

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@dataclass
class Inner:
    a: int = 1
    b: float = 0.5


@dataclass
class Outer:
    name: str = "x"
    inner: Inner = field(default_factory=Inner)
    opt: str | None = None


def test_nested_build_and_types():
    cfg = from_dict(Outer, {"name": "y", "inner": {"a": 3, "b": 2}})
    assert cfg.inner.a == 3 and isinstance(cfg.inner.b, float) and cfg.inner.b == 2.0
    assert cfg.opt is None


def test_unknown_key_is_named_with_its_path():
    with pytest.raises(ConfigError, match=r"inner\.c") as exc:
        from_dict(Outer, {"inner": {"c": 1}})
    assert "inner.a" in str(exc.value)  # lists the valid keys


def test_wrong_type_is_named():
    with pytest.raises(ConfigError, match=r"inner\.a: expected an integer"):
        from_dict(Outer, {"inner": {"a": "three"}})
    with pytest.raises(ConfigError, match="expected an integer"):
        from_dict(Outer, {"inner": {"a": True}})


def test_range_checks_become_config_errors():
    with pytest.raises(ConfigError, match="sessions_per_speaker must be >= 2"):
        from_dict(SynthConfig, {"sessions_per_speaker": 1})
    with pytest.raises(ConfigError, match="multi_speaker_fraction"):
        from_dict(SynthConfig, {"multi_speaker_fraction": 1.5})


def test_iterate_kmeans_settings_are_checked_when_the_config_is_read():
    cfg = from_dict(IterateConfig, {"cluster": {"init": "kmeans++", "iterations": 7}})
    spec = cfg.cluster.kmeans()
    assert (spec.init, spec.iterations, spec.spherical) == ("kmeans++", 7, True)
    with pytest.raises(ConfigError, match=r"cluster\.init: 'kmeans\+' is not one of"):
        from_dict(IterateConfig, {"cluster": {"init": "kmeans+"}})


def test_overrides_parse_yaml_values():
    data = apply_overrides({"inner": {"a": 1}}, ["inner.b=0.25", "name=z", "opt=null"])
    cfg = from_dict(Outer, data)
    assert cfg.inner.b == 0.25 and cfg.name == "z" and cfg.inner.a == 1 and cfg.opt is None
    with pytest.raises(ConfigError, match="key.sub=value"):
        apply_overrides({}, ["novalue"])


def test_load_config_errors_name_the_file(tmp_path):
    with pytest.raises(ConfigError, match="not found"):
        load_config(SynthConfig, tmp_path / "nope.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("- a list\n")
    with pytest.raises(ConfigError, match="bad.yaml: top level must be a mapping"):
        load_config(SynthConfig, bad)
    typo = tmp_path / "typo.yaml"
    typo.write_text("train_speaker: 3\n")
    with pytest.raises(ConfigError, match="train_speaker"):
        load_config(SynthConfig, typo)


def test_flatten():
    assert flatten({"a": {"b": 1, "c": {"d": 2}}, "e": 3}) == {"a.b": 1, "a.c.d": 2, "e": 3}


# Every YAML under configs/ (recursively) must load into the config class it is for.
CONFIG_CLASSES = {
    "demo": DemoConfig,
    "synth": SynthConfig,
    "pretrain": PretrainConfig,
    "train": Stage2Config,
    "iterate": IterateConfig,
    "tune": SweepConfig,
}


def _class_for(path: str):
    name = os.path.basename(path)
    for prefix, cls in CONFIG_CLASSES.items():
        if name.startswith(prefix):
            return cls
    raise AssertionError(f"{path}: no config class registered for this file name")


ALL_YAML = sorted(glob.glob(os.path.join(ROOT, "configs", "**", "*.yaml"), recursive=True))


def test_config_folder_is_not_empty():
    assert len(ALL_YAML) >= 3


@pytest.mark.parametrize("path", ALL_YAML, ids=lambda p: os.path.relpath(p, ROOT))
def test_every_config_file_validates(path):
    cls = _class_for(path)
    cfg = load_config(cls, path)
    with open(path) as f:
        assert yaml.safe_load(f)  # non-empty
    assert cfg is not None
    if isinstance(cfg, SweepConfig):  # every trial of a sweep is a valid stage config
        for i, point in enumerate(trial_points(cfg)):
            trial_config(cfg, i, point, None)


def test_partial_nested_override_keeps_the_fields_own_defaults():
    """Setting one key of the demo's Stage II keeps the demo's other Stage II settings."""
    default = DemoConfig()
    cfg = load_config(DemoConfig, None, ["stage2.train.train.epochs=5", "pretrain.train.epochs=1"])
    assert cfg.stage2.train.train.epochs == 5 and cfg.pretrain.train.epochs == 1
    assert cfg.stage2.reference == default.stage2.reference is True
    assert cfg.stage2.train.gate == default.stage2.train.gate
    assert cfg.stage2.train.train.batch_size == default.stage2.train.train.batch_size
    assert (
        cfg.pretrain.model == default.pretrain.model
    )  # the demo's small ECAPA, not the class default
    # Plain dict fields are replaced, not merged.
    cfg = load_config(DemoConfig, None, ["pretrain.model.kwargs={hidden: 8}"])
    assert cfg.pretrain.model.kwargs == {"hidden": 8}
    with pytest.raises(ConfigError, match="stage2.train.nope"):
        load_config(DemoConfig, None, ["stage2.train.nope=1"])


# -- #20: one place per setting: default, range and why declared with the field ----------


def _config_classes(cls, seen=None) -> set:
    """``cls`` and every config class nested in it (by field type)."""
    import dataclasses
    import typing

    seen = set() if seen is None else seen
    seen.add(cls)
    for f in dataclasses.fields(cls):
        tp = typing.get_type_hints(cls)[f.name]
        if isinstance(tp, type) and dataclasses.is_dataclass(tp) and tp not in seen:
            _config_classes(tp, seen)
    return seen


ALL_CONFIG_CLASSES = sorted(
    set().union(*(_config_classes(c) for c in CONFIG_CLASSES.values())), key=lambda c: c.__name__
)


def test_the_config_roots_are_the_commands_of_the_reference():
    from raysv.reference import COMMANDS, config_class

    assert {c: config_class(c) for c in COMMANDS} == CONFIG_CLASSES
    assert len(ALL_CONFIG_CLASSES) >= 19  # the nested ones are found too (ClusterSpec, ...)


@pytest.mark.parametrize("cls", ALL_CONFIG_CLASSES, ids=lambda c: c.__name__)
def test_every_setting_says_why_its_default_and_every_config_is_frozen(cls):
    import dataclasses

    assert cls.__dataclass_params__.frozen, f"{cls.__name__} is not frozen"
    for f in dataclasses.fields(cls):
        why = f.metadata.get("why", "")
        assert len(why) >= 12, f"{cls.__name__}.{f.name}: no reason given for its default"


def test_a_loaded_config_cannot_be_changed(tmp_path):
    import dataclasses

    cfg = load_config(IterateConfig, os.path.join(ROOT, "configs", "iterate_smoke.yaml"))
    for obj, name in [(cfg, "rounds"), (cfg.schedule, "k"), (cfg.cluster, "seed")]:
        with pytest.raises(dataclasses.FrozenInstanceError):
            setattr(obj, name, getattr(obj, name))
    again = dataclasses.replace(cfg, rounds=3)  # the way to another value: checked again
    assert again.rounds == 3 and cfg.rounds != 3
    with pytest.raises(ConfigError, match=r"schedule\.k\[1\] must be >= 2 \(or auto\), got 1"):
        load_config(IterateConfig, None, ["schedule.k=[auto, 1]"])


def test_declared_ranges_check_every_number_and_name_the_key():
    from raysv.config import Range, RangeError, config, setting

    assert [str(r) for r in (Range(ge=1), Range(gt=0), Range(ge=0, lt=1), Range(gt=0, le=64))] == [
        ">= 1",
        "> 0",
        "in [0, 1)",
        "in (0, 64]",
    ]
    assert Range(ge=0, lt=1).ok(0) and not Range(ge=0, lt=1).ok(1)
    assert not Range(ge=0).ok(float("nan"))

    @config
    class Leaf:
        n: int | None = setting(None, ge=1, why="null: automatic, from the data")
        xs: list[float] = setting(factory=lambda: [0.5], ge=0, le=1, why="a test's fractions")

    @config
    class Root:
        leaf: Leaf = setting(factory=Leaf, why="the test's nested settings")

    assert from_dict(Root, {"leaf": {"n": 3, "xs": [0, 1]}}).leaf.n == 3
    with pytest.raises(RangeError, match=r"^leaf\.n must be >= 1 \(or null\), got 0$"):
        from_dict(Root, {"leaf": {"n": 0}})
    with pytest.raises(RangeError, match=r"^leaf\.xs\[2\] must be in \[0, 1\], got 1\.5$"):
        from_dict(Root, {"leaf": {"xs": [0.1, 0.2, 1.5]}})
    with pytest.raises(RangeError, match=r"^n must be >= 1 \(or null\), got -2$"):
        Leaf(n=-2)  # built in Python, not read from YAML: checked all the same
    with pytest.raises(TypeError, match="needs a reason"):
        setting(1, why=" ")


def test_the_settings_reference_is_generated_and_current():
    """docs/config.md is what the classes say (regenerate: raysv config --markdown)."""
    from raysv.reference import markdown

    path = os.path.join(ROOT, "docs", "config.md")
    with open(path, encoding="utf-8") as f:
        assert f.read() == markdown(), "docs/config.md is stale: raysv config --markdown > it"
    text = markdown()
    assert "| `schedule.tau` | list of float \\| auto | `[1.0, 3.0, 3.0, 5.0, 6.0]` | > 0 |" in text
    assert text.count("## `raysv ") == len(CONFIG_CLASSES)


def test_raysv_config_lists_a_commands_settings_as_a_run_would_use_them(capsys):
    import json

    from raysv.cli import main

    smoke = os.path.join(ROOT, "configs", "iterate_smoke.yaml")
    assert main(["config", "iterate", "--config", smoke, "--set", "rounds=4", "--json"]) == 0
    rows = {r["key"]: r for r in json.loads(capsys.readouterr().out)["rows"]}
    assert rows["schedule.k"]["default"] == "[6]" and rows["rounds"]["default"] == "4"
    assert rows["schedule.tau"]["range"] == "> 0" and "LGL" in rows["schedule.tau"]["why"]
    assert rows["cluster.auto_k_false_accepts"]["range"] == "in (0, 0.5)"
    assert main(["config", "iterate"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("raysv iterate settings (IterateConfig):")
    assert "  schedule.k = [60]    (list of int | auto, >= 2)\n" in out
    assert main(["config", "iterate", "--set", "cluster.shards=0"]) == 2
    assert capsys.readouterr().err.strip() == (
        "raysv config: error: cluster.shards must be >= 1 (or null: automatic), got 0"
    )


def test_the_demo_config_file_holds_the_built_in_defaults():
    """configs/demo.yaml says its values are the defaults: it must not drift from them
    (it kept 10 dev/test speakers and 1000 trials after the defaults moved to 25/3000)."""
    assert load_config(DemoConfig, os.path.join(ROOT, "configs", "demo.yaml")) == DemoConfig()


def test_a_sweep_folder_given_as_a_uri_is_refused_before_anything_is_written(
    tmp_path, capsys, monkeypatch
):
    """``raysv tune --out s3://...``: a sweep's trials write their run folders where they
    run, so a sweep folder is a local path (or a shared mount). Refused in one line that
    names the commands that take a URI (tests/data/test_object_store.py runs them)."""
    from raysv.cli import main

    monkeypatch.chdir(tmp_path)
    assert main(["tune", "--out", "s3://bucket/run"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("raysv tune: error: ")
    assert "out='s3://bucket/run': a sweep folder is a local path" in err
    assert "(demo, pretrain, train, iterate) take --out s3://" in err and "\n" not in err
    assert os.listdir(tmp_path) == []


@pytest.mark.parametrize("command", ["demo", "pretrain", "train", "iterate", "tune"])
def test_a_run_folder_given_as_a_file_uri_is_refused(command, tmp_path, capsys, monkeypatch):
    """``file://`` names a local path: refused in one line (give the path), nothing written."""
    from raysv.cli import main

    monkeypatch.chdir(tmp_path)
    assert os.listdir(tmp_path) == []
    assert main([command, "--out", "file:///tmp/run"]) == 2
    assert "give a run folder as a plain path, without file://" in capsys.readouterr().err
    assert os.listdir(tmp_path) == []
