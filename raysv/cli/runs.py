"""Options of the training and run commands: demo, pretrain, train, iterate, tune,
report, bench, config. Their flags become config overrides (``KEY=VALUE``) for the library."""

from __future__ import annotations

import argparse

from raysv.cli.common import overrides_arg

CORPUS_LAYOUT = """\
a corpus folder (--data DIR) holds any of:
  DIR/wav/<speaker>/<session>/<utt>.wav    labelled audio (VoxCeleb-style); speakers that
                                           no trial names are training audio too
  DIR/unlabeled/**/<any name>.<ext>        unlabeled training audio, any depth
  DIR/unlabeled.txt                        more training audio: paths relative to DIR
  DIR/dialogues.jsonl                      {"dialogue_id": ..., "utterances": [paths relative
                                           to DIR, in any folder]}: Stage I in dialogue mode
  DIR/trials/dev.txt, DIR/trials/test.txt  VoxCeleb-format trials, paths relative to DIR/wav
audio: WAV, FLAC, OGG/Vorbis/Opus, MP3 (what libsndfile decodes); .m4a and other
formats are skipped and listed with the ffmpeg line that converts them.
Trial utterances and all audio of the wav/ speakers they draw from are never
trained on. Paths in DIR's files that leave DIR are refused unless
--allow-outside-paths. Without dialogues.jsonl Stage I trains on utterances (SimCLR).
"""


def _corpus_args(p: argparse.ArgumentParser, data_help: str) -> None:
    """``--data DIR`` (a corpus folder, laid out as the epilog says) and its paths' flag."""
    p.epilog = CORPUS_LAYOUT
    p.formatter_class = argparse.RawDescriptionHelpFormatter
    p.add_argument("--data", help=data_help)
    p.add_argument(
        "--allow-outside-paths",
        action="store_true",
        help="import audio that DIR's dialogues.jsonl / unlabeled.txt name outside DIR "
        "(../, absolute, file://, s3://)",
    )


def demo_args(p: argparse.ArgumentParser) -> None:
    _corpus_args(p, "corpus folder to use instead of generating one (see below)")
    p.add_argument("--out", default="runs/demo", help="run folder (default: runs/demo)")
    p.add_argument("--config", help="YAML file with DemoConfig keys")
    overrides_arg(p, ", e.g. synth.train_speakers=80")


def demo(a: argparse.Namespace) -> dict:
    from raysv.config import load_config
    from raysv.pipeline.demo import DemoConfig, run_demo

    overrides = list(a.overrides) + [f"out={a.out}"] + ([f"data={a.data}"] if a.data else [])
    if a.allow_outside_paths:
        overrides.append("allow_outside_paths=true")
    return run_demo(load_config(DemoConfig, a.config, overrides))


def pretrain_args(p: argparse.ArgumentParser) -> None:
    _corpus_args(p, "corpus folder (see below)")
    p.add_argument(
        "--config", help="YAML file with PretrainConfig keys (see configs/pretrain_*.yaml)"
    )
    p.add_argument("--out", help="run folder (default from the config: runs/pretrain)")
    p.add_argument(
        "--run-name", help="run name; rerunning the same name in the same folder resumes it"
    )
    overrides_arg(p, ", e.g. train.epochs=5")


def pretrain(a: argparse.Namespace) -> dict:
    from raysv.config import load_config
    from raysv.training.config import PretrainConfig
    from raysv.training.pretrain import run_pretrain

    extra = [f"data.data={a.data}"] if a.data else []
    extra += ["data.allow_outside_paths=true"] if a.allow_outside_paths else []
    extra += [f"out={a.out}"] if a.out else []
    extra += [f"run_name={a.run_name}"] if a.run_name else []
    return run_pretrain(load_config(PretrainConfig, a.config, list(a.overrides) + extra))


def _config_args(p: argparse.ArgumentParser, what: str, example: str) -> None:
    """``--config``, ``--out``, ``--set`` shared by the config-driven commands."""
    p.add_argument("--config", help=f"YAML file with {what} keys")
    p.add_argument("--out", help="run folder (default from the config)")
    overrides_arg(p, f", e.g. {example}")


def _flag_overrides(*pairs: tuple[str, object]) -> list[str]:
    """``key=value`` overrides for the command-line flags that were given."""
    return [f"{key}={val}" for key, val in pairs if val is not None]


def train_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--labels", help="pseudo-label table (file or folder) from raysv cluster")
    p.add_argument("--manifest", help="utterances manifest (Parquet)")
    p.add_argument("--init", help="initial encoder checkpoint (best_model.pt of Stage I)")
    p.add_argument("--gate", choices=["none", "lgl", "dlg", "dlg-lc"], help="loss gate")
    p.add_argument("--dev-trials", help="dev trials (Parquet or text): picks the best epoch")
    p.add_argument("--test-trials", help="test trials: reported only")
    _config_args(p, "Stage2Config", "gate.tau=3")


def train(a: argparse.Namespace) -> dict:
    from raysv.config import load_config
    from raysv.training.stage2 import run_train
    from raysv.training.stage2_config import Stage2Config

    extra = _flag_overrides(
        ("data.labels", a.labels),
        ("data.utterances", a.manifest),
        ("init_checkpoint", a.init),
        ("gate.name", a.gate),
        ("data.dev_trials", a.dev_trials),
        ("data.test_trials", a.test_trials),
        ("out", a.out),
    )
    return run_train(load_config(Stage2Config, a.config, list(a.overrides) + extra))


def iterate_args(p: argparse.ArgumentParser) -> None:
    _corpus_args(p, "corpus folder (see below)")
    p.add_argument("--init", help="Stage I encoder checkpoint (best_model.pt)")
    p.add_argument("--rounds", type=int, help="number of rounds R")
    _config_args(p, "IterateConfig", "schedule.k=[60,60] train.gate.name=lgl")


def iterate(a: argparse.Namespace) -> dict:
    from raysv.config import load_config
    from raysv.pipeline.iterate import IterateConfig, run_iterate

    extra = _flag_overrides(
        ("data", a.data), ("init_checkpoint", a.init), ("rounds", a.rounds), ("out", a.out)
    )
    extra += ["allow_outside_paths=true"] if a.allow_outside_paths else []
    return run_iterate(load_config(IterateConfig, a.config, list(a.overrides) + extra))


def tune_args(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--data",
        help="corpus folder (sets base.data.data; for stage: round, base.data)",
    )
    _config_args(p, "SweepConfig", "repeats=2")


def tune(a: argparse.Namespace) -> dict:
    from raysv.config import load_config
    from raysv.tuning.sweep import SweepConfig, run_sweep

    overrides = list(a.overrides)
    stage = load_config(SweepConfig, a.config, overrides).stage if a.data else None
    if stage == "train":
        from raysv.errors import ConfigError

        raise ConfigError(
            "--data: a Stage II sweep (stage: train) trains on fixed pseudo labels "
            "(base.data.labels, base.data.utterances, base.data.dev_trials), not a corpus "
            "folder; stage: round clusters a corpus folder first"
        )
    # a round trial's corpus is raysv iterate's top-level data
    key = "base.data" if stage == "round" else "base.data.data"
    extra = _flag_overrides((key, a.data), ("out", a.out))
    return run_sweep(load_config(SweepConfig, a.config, overrides + extra))


def report_args(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "run",
        help="run folder of raysv iterate, demo or tune (a path, or s3://... for a run there)",
    )
    p.add_argument("--out", help="report folder (default: RUN/report)")
    p.add_argument("--no-mlflow", action="store_true", help="do not log the report to MLflow")


def report(a: argparse.Namespace) -> dict:
    from raysv.reporting.report import write_report

    return write_report(a.run, a.out, log_to_mlflow=not a.no_mlflow)


def bench_args(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "name",
        choices="featurize synth input pretrain pretrain_gpu stage1 stream cluster embed export autok demo tune".split(),  # noqa: SIM905
        help="benchmark to run",
    )
    p.add_argument("--out", default="bench/results", help="folder for the JSON result")
    p.add_argument(
        "--quick", action="store_true", help="a small configuration (seconds, for tests)"
    )
    p.add_argument(
        "--sizes",
        help="cluster only: N of the raysv/faiss scaling runs, a comma list such as "
        "100k,1M (default 100k,1M,10M; --quick 5k,50k,200k; none: no scaling runs)",
    )


def bench(a: argparse.Namespace) -> dict:
    from raysv import bench as benchmarks

    options = {}
    if a.sizes is not None:
        from raysv.bench.cluster import parse_sizes
        from raysv.errors import ConfigError

        if a.name != "cluster":
            raise ConfigError("--sizes is an option of raysv bench cluster only")
        options["sizes"] = parse_sizes(a.sizes)
    return benchmarks.run(a.name, a.out, quick=a.quick, **options)


def config_args(p: argparse.ArgumentParser) -> None:
    from raysv.reference import COMMANDS

    p.add_argument("name", nargs="?", choices=list(COMMANDS), help="the command's settings")
    p.add_argument("--config", help="YAML file of that command: show the values it gives")
    overrides_arg(p, ": show the value it gives")
    p.add_argument("--markdown", action="store_true", help="every command's, as Markdown")


def config(a: argparse.Namespace) -> dict:
    from raysv.reference import settings

    return settings(a.name, a.config, a.overrides, markdown_too=a.markdown)
