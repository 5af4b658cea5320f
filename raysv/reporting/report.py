"""``raysv report RUN``: one self-contained HTML page for a ``raysv iterate`` or ``raysv demo`` run
(a ``raysv tune`` folder gets its sweep report: :mod:`raysv.reporting.sweep_report`).

Reads only what the run wrote (summaries, embeddings, pseudo-label tables,
Stage I rejection weights) and draws with matplotlib (Agg):

- EER and minDCF per stage and round;
- DET curves and target / non-target score histograms on the test trials;
- Stage I rejection weights against the multi-speaker ground truth;
- cluster-size histogram per round; NMI and gate pass rate per round.

PNGs are written beside ``report.html`` (which embeds them as data URIs)
and, when the run has an MLflow run id, logged to it as artifacts.
"""

from __future__ import annotations

import base64
import html
import json
import logging
import os

import numpy as np

from raysv.errors import ConfigError, RaysvError

log = logging.getLogger("raysv")


def _load_run(run: str) -> tuple[dict, dict]:
    """``(iterate summary, demo summary or {})`` of a run folder."""
    path = os.path.join(run, "summary.json")
    if not os.path.isfile(path):
        raise ConfigError(f"{run}: no summary.json; is this a finished raysv iterate/demo folder?")
    from raysv.data.outputs import read_json

    try:
        top = read_json(path)
    except RaysvError as exc:
        raise ConfigError(str(exc)) from None
    if not isinstance(top, dict):
        raise ConfigError(f"{path}: not a raysv run summary (a JSON object); delete it and rerun")
    if "rounds" in top:
        return top, {}
    stage2 = top.get("stage2")
    if isinstance(stage2, dict) and "rounds" in stage2:
        return stage2, top
    raise ConfigError(f"{path}: neither an iterate nor a demo summary with Stage II rounds")


def _stages(it: dict, demo: dict) -> list[tuple[str, dict, str | None]]:
    """``(name, {split: metrics}, embeddings folder of trial utterances)`` in pipeline order."""
    out = []
    if demo.get("baseline"):
        out.append(("baseline", demo["baseline"], None))
    out.append(("Stage I", it["initial"], os.path.join(it["out"], "round0", "embeddings", "eval")))
    for r in it["rounds"]:
        scores: dict = {}
        for key, v in r.items():
            split, _, metric = key.partition(".")
            if split in ("dev", "test"):
                scores.setdefault(split, {})[metric] = v
        folder = os.path.join(it["out"], f"round{r['round']}", "embeddings", "eval")
        out.append((f"round {r['round']}", scores, folder))
    if it.get("reference"):
        ref = os.path.join(it["out"], "reference", "embeddings", "eval")
        out.append(("supervised reference", it["reference"]["scores"], ref))
    return out


def _png(fig, path: str) -> str:
    fig.savefig(path, dpi=110, bbox_inches="tight")
    import matplotlib.pyplot as plt

    plt.close(fig)
    return path


def plot_metrics(stages, folder: str) -> str:
    """Bar charts of test (and dev) EER and minDCF(0.01) per stage."""
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(10, 3.6))
    names = [n for n, _, _ in stages]
    x = np.arange(len(names))
    for ax, metric, title in zip(
        axes, ("eer", "min_dcf_0.01"), ("EER (%)", "minDCF (p=0.01)"), strict=True
    ):
        for k, split in enumerate(("dev", "test")):
            vals = [s.get(split, {}).get(metric, np.nan) for _, s, _ in stages]
            ax.bar(x + (k - 0.5) * 0.38, vals, 0.38, label=split)
        ax.set_xticks(x, names, rotation=20)
        ax.set_title(title)
        ax.legend()
    return _png(fig, os.path.join(folder, "metrics.png"))


def _scores(stages, it: dict) -> list[tuple[str, np.ndarray, np.ndarray]]:
    from raysv.evaluation.evaluate import centre_of, evaluate

    trials = it.get("trials", {}).get("test") or it.get("trials", {}).get("dev")
    out = []
    for name, _, folder in stages:
        if folder and trials and os.path.isdir(folder):
            # centred as iterate scored them: on the mean of the training pool beside them
            pool = os.path.join(os.path.dirname(folder), "pool")
            centre = centre_of(pool) if os.path.isdir(pool) else None
            if centre is None:  # a folder from before one convention (issue #24)
                log.warning("%s: no training pool beside it; centred on the trials' mean", folder)
            r = evaluate(
                trials,
                folder,
                it.get("eval_manifest"),
                center=centre is None,
                keep_scores=True,
                centre=centre,
            )
            out.append((name, r["scores"], r["labels"]))
    return out


def plot_det(scored, folder: str) -> str:
    """DET curves (probit axes) of every stage's test scores."""
    import matplotlib.pyplot as plt
    from scipy.stats import norm

    from raysv.evaluation.metrics import det_curve

    fig, ax = plt.subplots(figsize=(5.2, 5))
    eps = 1e-4
    for name, s, lab in scored:
        miss, fa, _ = det_curve(s, lab)
        ax.plot(
            norm.ppf(np.clip(fa, eps, 1 - eps)), norm.ppf(np.clip(miss, eps, 1 - eps)), label=name
        )
    ticks = np.array([0.01, 0.02, 0.05, 0.1, 0.2, 0.4])
    ax.set_xticks(norm.ppf(ticks), [f"{100 * t:g}" for t in ticks])
    ax.set_yticks(norm.ppf(ticks), [f"{100 * t:g}" for t in ticks])
    ax.set_xlim(norm.ppf(0.005), norm.ppf(0.6))
    ax.set_ylim(norm.ppf(0.005), norm.ppf(0.6))
    ax.set_xlabel("false alarm (%)")
    ax.set_ylabel("miss (%)")
    ax.plot([-5, 5], [-5, 5], ":", color="grey", lw=0.8)
    ax.legend()
    ax.set_title("DET, test trials")
    return _png(fig, os.path.join(folder, "det.png"))


def plot_score_histograms(scored, folder: str) -> str:
    """Target vs non-target cosine scores of the first scored stage and the last."""
    import matplotlib.pyplot as plt

    pick = [scored[0], scored[-1]] if len(scored) > 1 else scored
    fig, axes = plt.subplots(1, len(pick), figsize=(5 * len(pick), 3.4), squeeze=False)
    for ax, (name, s, lab) in zip(axes[0], pick, strict=True):
        bins = np.linspace(float(s.min()), float(s.max()), 40)
        ax.hist(s[lab == 1], bins, alpha=0.6, label="target", density=True)
        ax.hist(s[lab == 0], bins, alpha=0.6, label="non-target", density=True)
        ax.set_title(f"scores: {name}")
        ax.legend()
    return _png(fig, os.path.join(folder, "scores.png"))


def plot_rejection(npz: str, folder: str) -> str | None:
    """Stage I rejection weights of single- vs multi-speaker dialogues (last epoch)."""
    import matplotlib.pyplot as plt

    d = np.load(npz)
    if "multi_speaker" not in d.files:
        return None
    w, multi = d["weight"], d["multi_speaker"].astype(bool)
    fig, ax = plt.subplots(figsize=(5.2, 3.4))
    bins = np.linspace(0, 1, 30)
    ax.hist(w[~multi], bins, alpha=0.6, label=f"single speaker ({(~multi).sum()})", density=True)
    ax.hist(w[multi], bins, alpha=0.6, label=f"multi-speaker ({multi.sum()})", density=True)
    title = "Stage I rejection weights"
    if 0 < multi.sum() < multi.size:
        from sklearn.metrics import roc_auc_score

        title += f" (ROC AUC {roc_auc_score(multi, -w):.3f})"
    ax.set_title(title)
    ax.set_xlabel("weight w")
    ax.legend()
    return _png(fig, os.path.join(folder, "rejection.png"))


def plot_cluster_sizes(it: dict, folder: str) -> str | None:
    """Histogram of kept cluster sizes per round."""
    import matplotlib.pyplot as plt

    from raysv.data import fs

    fig, ax = plt.subplots(figsize=(5.2, 3.4))
    drawn = False
    for r in it["rounds"]:
        labels = os.path.join(it["out"], f"round{r['round']}", "labels")
        if not os.path.isdir(labels):
            continue
        t = fs.read_table(labels, ["cluster", "kept"])
        c = t.column("cluster").to_numpy()[t.column("kept").to_numpy(zero_copy_only=False)]
        sizes = np.bincount(c)
        sizes = sizes[sizes > 0]
        ax.hist(sizes, bins=30, alpha=0.6, label=f"round {r['round']} ({sizes.size} clusters)")
        drawn = True
    if not drawn:
        plt.close(fig)
        return None
    ax.set_xlabel("utterances per cluster (kept)")
    ax.set_title("cluster sizes")
    ax.legend()
    return _png(fig, os.path.join(folder, "cluster_sizes.png"))


def plot_rounds(it: dict, folder: str) -> str:
    """NMI (analysis) and gate pass rate per round."""
    import matplotlib.pyplot as plt

    rounds = [r["round"] for r in it["rounds"]]
    fig, ax = plt.subplots(figsize=(5.2, 3.4))
    nmi = [r.get("all.nmi", np.nan) for r in it["rounds"]]
    passed = [r.get("gate.gate_pass_share", np.nan) for r in it["rounds"]]
    if it.get("final_clustering", {}).get("analysis", {}).get("all"):
        ax.plot(
            [rounds[-1] + 1], [it["final_clustering"]["analysis"]["all"]["nmi"]], "o", color="C0"
        )
    ax.plot(rounds, nmi, "o-", label="NMI of the round's pseudo labels")
    ax.plot(rounds, passed, "s-", label="gate pass rate (last epoch)")
    ax.set_xticks(rounds + [rounds[-1] + 1])
    ax.set_xlabel("round (last point: clustering with the final encoder)")
    ax.set_ylim(0, 1.05)
    ax.legend()
    return _png(fig, os.path.join(folder, "rounds.png"))


def _table(stages) -> str:
    rows = []
    for name, scores, _ in stages:
        cells = [html.escape(name)]
        for split in ("dev", "test"):
            r = scores.get(split, {})
            cells += [
                f"{r['eer']:.2f}" if "eer" in r else "",
                f"{r['min_dcf_0.01']:.3f}" if "min_dcf_0.01" in r else "",
                f"{r['min_dcf_0.05']:.3f}" if "min_dcf_0.05" in r else "",
            ]
        rows.append("<tr>" + "".join(f"<td>{c}</td>" for c in cells) + "</tr>")
    head = (
        "<tr><th rowspan=2>stage</th><th colspan=3>dev</th><th colspan=3>test</th></tr>"
        "<tr>" + "<th>EER %</th><th>minDCF 0.01</th><th>minDCF 0.05</th>" * 2 + "</tr>"
    )
    return f"<table>{head}{''.join(rows)}</table>"


def _round_table(it: dict) -> str:
    keys = [
        ("k", "k", "{}"),
        ("clusters", "clusters", "{:.0f}"),
        ("kept_share", "kept", "{:.1%}"),
        ("all.nmi", "NMI", "{:.3f}"),
        ("all.reliable_share", "reliable labels", "{:.1%}"),
        ("gate.gate_pass_share", "gate passed", "{:.1%}"),
        ("gate.reliable_share_passed", "reliable among passed", "{:.1%}"),
        ("gate.reliable_share_all", "reliable among all", "{:.1%}"),
    ]
    head = "<tr><th>round</th>" + "".join(f"<th>{t}</th>" for _, t, _ in keys) + "</tr>"
    rows = [
        f"<tr><td>{r['round']}</td>"
        + "".join(f"<td>{fmt.format(r[k]) if k in r else ''}</td>" for k, _, fmt in keys)
        + "</tr>"
        for r in it["rounds"]
    ]
    return f"<table>{head}{''.join(rows)}</table>"


def _auto_k_sections(it: dict) -> list[str]:
    """For each round whose k was chosen from the data: the evidence table and plot."""
    out = []
    for r in it["rounds"]:
        path = os.path.join(r.get("labels", ""), "_auto_k.json")
        if not r.get("k_auto") or not os.path.isfile(path):
            continue
        with open(path) as f:
            auto = json.load(f)
        if auto.get("method") == "merge":
            head = "<tr><th>merge threshold</th><th>k</th><th>all groups</th></tr>"
            rows = "".join(
                f"<tr><td>{t['threshold']:.3f}</td><td>{t['k']}</td><td>{t['groups']}</td></tr>"
                for t in auto["table"]
            )
            note = f"{html.escape(auto['rule'])}, on {auto['sample']} embeddings."
            caption = "k against the merge threshold"
        else:
            head = "<tr><th>k</th><th>silhouette</th><th>objective</th></tr>"
            rows = "".join(
                f"<tr><td>{t['k']}</td><td>{t['silhouette']:.4f}</td><td>{t['objective']:.4g}</td></tr>"
                for t in auto["table"]
            )
            note = (
                f"{html.escape(auto['rule'])}, on {auto['sample']} embeddings; "
                f"the elbow of the objective would give {auto['elbow_k']}."
            )
            caption = "silhouette per k"
        out += [
            f"<h3>Round {r['round']}: k = {auto['k']} chosen from the embeddings</h3>",
            f"<p>{note}</p>",
            f"<table>{head}{rows}</table>",
            _img(auto.get("plot") if os.path.isfile(auto.get("plot", "")) else None, caption),
        ]
    return out


STYLE = (
    "body{font-family:sans-serif;max-width:1100px;margin:2em auto}"
    "table{border-collapse:collapse}td,th{border:1px solid #bbb;padding:3px 8px}"
    "img{max-width:100%}figure{margin:1em 0}"
)


def html_page(title: str, body: list[str]) -> str:
    """A self-contained HTML page of the report style with ``body``'s parts in order."""
    return (
        f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>"
        f"<style>{STYLE}</style></head><body>{''.join(body)}</body></html>"
    )


def _img(path: str | None, caption: str) -> str:
    if not path:
        return ""
    with open(path, "rb") as f:
        data = base64.b64encode(f.read()).decode()
    return (
        f'<figure><img src="data:image/png;base64,{data}" alt="{html.escape(caption)}">'
        f"<figcaption>{html.escape(caption)}</figcaption></figure>"
    )


def _sweep_summary(run: str) -> dict | None:
    """The summary of a ``raysv tune`` folder, or None for any other folder."""
    from raysv.data.outputs import read_json
    from raysv.reporting.sweep_report import is_sweep_summary

    try:
        top = read_json(os.path.join(run, "summary.json"))
    except RaysvError:
        return None
    return top if isinstance(top, dict) and is_sweep_summary(top) else None


def _sweep_report(summary: dict, folder: str, log_to_mlflow: bool) -> dict:
    from raysv.reporting.sweep_report import write_sweep_report

    result = write_sweep_report(summary, folder)
    mlflow_info = summary.get("mlflow")
    if log_to_mlflow and mlflow_info:
        from raysv.tracking import mlflow_tracking as tracking

        tracking.log_artifacts_to(
            mlflow_info["tracking_uri"], mlflow_info["run_id"], folder, "report"
        )
        result["mlflow"] = mlflow_info
    log.info("sweep report written to %s", result["report"])
    return result


def write_report(run: str, out: str | None = None, log_to_mlflow: bool = True) -> dict:
    """Write ``report.html`` and its PNGs for run folder ``run``; returns their paths.

    ``run`` may be a run folder on object storage (``s3://...``): the report is made
    in its working copy (:mod:`raysv.data.run_store`) and, by default, uploaded to
    ``<run>/report``."""
    from raysv.data import run_store

    if run_store.is_uri(run):
        with run_store.run_folder(run, "raysv report", create=False) as local:
            return {**write_report(local, out, log_to_mlflow), "run_folder": run.rstrip("/")}
    import matplotlib

    matplotlib.use("Agg")
    sweep = _sweep_summary(os.path.abspath(run))
    if sweep is not None:  # a raysv tune folder: its own report
        return _sweep_report(
            sweep, os.path.abspath(out or os.path.join(run, "report")), log_to_mlflow
        )
    it, demo = _load_run(os.path.abspath(run))
    folder = os.path.abspath(out or os.path.join(run, "report"))
    os.makedirs(folder, exist_ok=True)
    stages = _stages(it, demo)
    scored = _scores(stages, it)
    figs = {
        "metrics": plot_metrics(stages, folder),
        "det": plot_det(scored, folder) if scored else None,
        "scores": plot_score_histograms(scored, folder) if scored else None,
        "rejection": None,
        "cluster_sizes": plot_cluster_sizes(it, folder),
        "rounds": plot_rounds(it, folder),
    }
    npz = os.path.join(os.path.dirname(it.get("init_checkpoint", "")), "rejection_weights.npz")
    if os.path.isfile(npz):
        figs["rejection"] = plot_rejection(npz, folder)
    body = [
        "<h1>raysv run report</h1>",
        f"<p>run folder: <code>{html.escape(os.path.abspath(run))}</code></p>",
        "<h2>Verification per stage</h2>",
        _table(stages),
        _img(figs["metrics"], "EER and minDCF per stage and round"),
        _img(figs["det"], "DET curves on the test trials"),
        _img(figs["scores"], "target / non-target score distributions"),
        "<h2>Stage I</h2>",
        _img(figs["rejection"], "rejection weights against the multi-speaker ground truth")
        or "<p>no rejection weights with ground truth in this run</p>",
        "<h2>Stage II rounds</h2>",
        _round_table(it),
        "<p>NMI, reliable-label shares: analysis against true speakers only; never used by training.</p>",
        _img(figs["rounds"], "NMI and gate pass rate per round"),
        _img(figs["cluster_sizes"], "cluster sizes per round"),
        *_auto_k_sections(it),
    ]
    page = html_page("raysv report", body)
    path = os.path.join(folder, "report.html")
    with open(path, "w") as f:
        f.write(page)
    result = {"report": path, "plots": {k: v for k, v in figs.items() if v}}
    mlflow_info = (demo or it).get("mlflow") or it.get("mlflow")
    if log_to_mlflow and mlflow_info:
        from raysv.tracking import mlflow_tracking as tracking

        tracking.log_artifacts_to(
            mlflow_info["tracking_uri"], mlflow_info["run_id"], folder, "report"
        )
        result["mlflow"] = mlflow_info
    log.info("report written to %s", path)
    return result
