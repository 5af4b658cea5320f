"""The report of a ``raysv tune`` sweep: learning curves, dev EER per knob value, the best trial.

Reads only the sweep's ``summary.json`` (written by :func:`raysv.tuning.sweep.run_sweep`):
each trial's status, swept values (``params``), best dev EER and per-epoch dev-EER
curve. Writes ``curves.png``, ``knobs.png`` and a self-contained ``report.html``
into the report folder; ``raysv tune`` writes it into ``<sweep>/report`` and logs it
to the sweep's MLflow parent run, and ``raysv report SWEEP`` redraws it.
Dev figures only decide anything here; test EER is shown in the table for the
finished trials, as in the summary.
"""

from __future__ import annotations

import html
import math
import os

from raysv.reporting.report import _png

STYLES = {  # status -> (line style, marker at the last epoch)
    "finished": ("-", "o"),
    "stopped": ("--", "x"),
    "ended_early": (":", "s"),
}


def is_sweep_summary(summary: dict) -> bool:
    """True for the summary of a ``raysv tune`` sweep."""
    return isinstance(summary.get("trials"), list) and "search" in summary and "best" in summary


def _finite(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def plot_curves(summary: dict, path: str) -> str:
    """Dev EER per epoch of every trial (stopped trials dashed, ending in x; the best
    trial thick); one line per trial."""
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7.5, 4.2))
    best = summary["best"]["trial"]
    for r in summary["trials"]:
        curve = r.get("curve") or []
        if not curve:
            continue
        x = [c["epochs"] for c in curve]
        y = [c["dev_eer"] for c in curve]
        style, marker = STYLES.get(r["status"], ("-.", "."))
        width = 2.8 if r["trial"] == best else 1.2
        (line,) = ax.plot(x, y, style, lw=width, label=f"#{r['trial']} {r['status']}")
        ax.plot(x[-1:], y[-1:], marker, color=line.get_color(), ms=8)
    from matplotlib.ticker import MaxNLocator

    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel("epochs")
    ax.set_ylabel("dev EER (%)")
    ax.set_title(f"learning curves (best: trial {best}; dashed + x: stopped by the scheduler)")
    if len(summary["trials"]) <= 16:
        ax.legend(fontsize=7, ncol=2)
    ax.grid(alpha=0.3)
    return _png(fig, path)


def plot_knobs(summary: dict, path: str) -> str:
    """One panel per swept key: each trial's best dev EER against its value (x: stopped,
    o: finished, star: the best trial); non-numeric values on a categorical axis."""
    import matplotlib.pyplot as plt

    keys = sorted({k for r in summary["trials"] for k in r.get("params", {})})
    n = max(1, len(keys))
    fig, axes = plt.subplots(1, n, figsize=(4.2 * n, 3.6), squeeze=False, constrained_layout=True)
    best = summary["best"]["trial"]
    for ax, key in zip(axes[0], keys, strict=False):
        values = [r["params"].get(key) for r in summary["trials"]]
        numeric = all(_finite(v) for v in values if v is not None)
        cats = sorted({str(v) for v in values}) if not numeric else []
        for r, v in zip(summary["trials"], values, strict=True):
            if v is None or not _finite(r.get("dev_eer")):
                continue
            x = float(v) if numeric else cats.index(str(v))
            marker = STYLES.get(r["status"], ("", "."))[1]
            ax.plot([x], [r["dev_eer"]], marker, color="tab:blue", ms=7)
            if r["trial"] == best:
                ax.plot([x], [r["dev_eer"]], "*", color="tab:red", ms=16, zorder=3)
        if not numeric:
            ax.set_xticks(range(len(cats)), cats, rotation=20)
        ax.set_xlabel(key)
        ax.set_ylabel("best dev EER (%)")
        ax.grid(alpha=0.3)
    fig.suptitle("dev EER per knob value (star: best trial; x: stopped)")
    return _png(fig, path)


def _table(summary: dict) -> str:
    keys = sorted({k for r in summary["trials"] for k in r.get("params", {})})
    head = ["trial", "status", "epochs", *keys, "dev EER %", "test EER %"]
    rows = []
    for r in summary["trials"]:
        cells = [
            str(r["trial"]),
            r["status"] + (f" ({r['reason']})" if r.get("reason") else ""),
            str(r.get("epochs", "")),
            *(str(r["params"].get(k, "")) for k in keys),
            f"{r['dev_eer']:.2f}" if _finite(r.get("dev_eer")) else "",
            f"{r['test_eer']:.2f}" if _finite(r.get("test_eer")) else "",
        ]
        bold = r["trial"] == summary["best"]["trial"]
        tds = "".join(
            f"<td>{'<b>' if bold else ''}{html.escape(c)}{'</b>' if bold else ''}</td>"
            for c in cells
        )
        rows.append(f"<tr>{tds}</tr>")
    ths = "".join(f"<th>{html.escape(h)}</th>" for h in head)
    return f"<table><tr>{ths}</tr>{''.join(rows)}</table>"


def write_sweep_report(summary: dict, folder: str) -> dict:
    """Write ``report.html``, ``curves.png`` and ``knobs.png`` of a sweep into ``folder``;
    returns ``{"report": path, "plots": {name: path}}``."""
    import matplotlib

    matplotlib.use("Agg")
    from raysv.reporting.report import _img, html_page

    os.makedirs(folder, exist_ok=True)
    plots = {
        "curves": plot_curves(summary, os.path.join(folder, "curves.png")),
        "knobs": plot_knobs(summary, os.path.join(folder, "knobs.png")),
    }
    b = summary["best"]
    counts = ", ".join(f"{n} {k}" for k, n in summary.get("counts", {}).items() if n)
    body = [
        "<h1>raysv sweep report</h1>",
        f"<p>sweep folder: <code>{html.escape(summary['out'])}</code>; stage "
        f"{html.escape(summary['stage'])}, {html.escape(summary['search'])} search, scheduler "
        f"{html.escape(summary['scheduler'])}; trials: {html.escape(counts)}</p>",
        f"<p><b>best trial: #{b['trial']}</b> (dev EER {b['dev_eer']:.2f} %, test EER "
        f"{b['test_eer']:.2f} %), config <code>{html.escape(summary['best_config'])}</code>. "
        f"{html.escape(summary.get('selection', ''))}</p>",
        _table(summary),
        _img(plots["curves"], "dev EER per epoch of every trial"),
        _img(plots["knobs"], "best dev EER per knob value"),
    ]
    page = html_page("raysv sweep", body)
    path = os.path.join(folder, "report.html")
    with open(path + ".tmp", "w") as f:
        f.write(page)
    os.replace(path + ".tmp", path)
    return {"report": path, "plots": plots}
