"""The demo's closing summary as text: one results table and the lines around it.

Pure functions over the demo's ``summary.json`` dict (no Ray, no I/O), so the
CLI only prints what :func:`demo_summary` returns and tests check it without a
run.
"""

from __future__ import annotations

STAGE_NAMES = {
    "baseline": "baseline (log-mel)",
    "stage1": "Stage I",
    "supervised_reference": "supervised reference",
}

OWN_CORPUS = "next: your own corpus with `raysv demo --data DIR` (layout: `raysv demo --help`)"
CLUSTER = (
    "bigger runs on a GPU cluster: the README's 'On a cluster in three steps', docs/operations.md"
)


def stage_name(stage: str) -> str:
    """``round2`` -> ``Stage II round 2``; the fixed stages by their short names."""
    return STAGE_NAMES.get(stage, stage.replace("round", "Stage II round "))


def _cell(value: float | None, fmt: str) -> str:
    return "-" if value is None else format(value, fmt)


def results_lines(results: dict) -> list[str]:
    """The results table: one row per stage, dev and test EER / minDCF(0.01), NMI.

    ``results`` is ``{stage: {"dev": {eer, min_dcf_0.01, ..}, "test": {..},
    "nmi": .., "nmi_after": ..}}`` in pipeline order (``demo.results_table``).
    NMI is that round's pseudo labels (clustered with the previous encoder);
    a trailing ``->`` figure is the clustering with the round's own encoder.
    """
    head = ("stage", "dev EER %", "dev minDCF", "test EER %", "test minDCF", "NMI")
    rows = []
    for stage, row in results.items():
        dev, test = row.get("dev", {}), row.get("test", {})
        nmi = _cell(row.get("nmi"), ".3f")
        if "nmi_after" in row:
            nmi += f" -> {row['nmi_after']:.3f}"
        rows.append(
            (
                stage_name(stage),
                _cell(dev.get("eer"), ".2f"),
                _cell(dev.get("min_dcf_0.01"), ".3f"),
                _cell(test.get("eer"), ".2f"),
                _cell(test.get("min_dcf_0.01"), ".3f"),
                nmi,
            )
        )
    widths = [max(len(r[i]) for r in (head, *rows)) for i in range(len(head))]

    def line(cells: tuple) -> str:
        first = cells[0].ljust(widths[0])
        rest = [
            c.rjust(w) if i < 4 else c.ljust(w)
            for i, (c, w) in enumerate(zip(cells[1:], widths[1:], strict=True))
        ]
        return "  ".join([first, *rest]).rstrip()

    return [line(head), *(line(r) for r in rows)]


def round_kept_line(r: dict) -> str | None:
    """One line when Stage II round ``r`` kept the encoder it started from, with why."""
    if r.get("train.best_epoch") != -1:
        return None
    init, best = r.get("train.init_dev_eer"), r.get("train.best_epoch_dev_eer")
    why = (
        f"no training epoch beat its dev EER of {init:.2f}%"
        if init is not None
        else "no training epoch beat it on the dev trials"
    )
    if best is not None:
        why += f", the best reached {best:.2f}%"
    return (
        f"round {r['round']}: kept the encoder it started from ({why}; "
        f"{r.get('train_epochs', '?')} epochs trained): its figures repeat the previous row's"
    )


def label_free_ratio(results: dict) -> str | None:
    """``label-free / supervised`` test EER of the last stage against the reference."""
    ref = results.get("supervised_reference", {}).get("test")
    rounds = [k for k in results if k.startswith("round")]
    last = results.get(rounds[-1] if rounds else "stage1", {}).get("test")
    if not ref or not last or not ref.get("eer"):
        return None
    return (
        f"label-free / supervised test EER: {last['eer'] / ref['eer']:.2f}x "
        f"({stage_name(rounds[-1] if rounds else 'stage1')} {last['eer']:.2f}% vs "
        f"{ref['eer']:.2f}% with the true speakers)"
    )


def trials_line(baseline: dict) -> str | None:
    """How many target + non-target trials each split's EER rests on."""
    parts = [
        f"{split} {r['n_target']}+{r['n_nontarget']}"
        for split, r in baseline.items()
        if "n_target" in r
    ]
    return "trials (target+non-target): " + ", ".join(parts) if parts else None


def demo_summary(s: dict) -> str:
    """The text ``raysv demo`` prints at its end, from its summary dict."""
    lines = [f"run folder: {s['out']}  ({s['seconds']}s)"]
    ing = s.get("ingest", {})
    if "train_utterances" in ing:
        lines.append(
            f"corpus: {ing['utterances']} utterances; training on {ing['train_utterances']}, "
            f"{ing['held_out_utterances']} held out for evaluation"
            + (f"; {sum(ing['skipped'].values())} files skipped" if ing.get("skipped") else "")
        )
    st2 = s.get("stage2", {})
    for r in st2.get("rounds", []):
        if r.get("k_auto"):
            lines.append(f"round {r['round']}: k = {r['k']} chosen from the embeddings")
    lines.append("")
    lines += results_lines(s["results"])
    if any("nmi" in row for row in s["results"].values()):
        lines.append(
            "NMI: a round's pseudo labels against the true speakers (analysis only, never "
            "trained on); after ->: clustered again with that round's encoder"
        )
    trials = trials_line(s.get("baseline", {}))
    if trials:
        lines.append(trials)
    lines.append("")
    for r in st2.get("rounds", []):
        kept = round_kept_line(r)
        if kept:
            lines.append(kept)
    if st2.get("reference_skipped"):
        lines.append(f"no supervised reference: {st2['reference_skipped']}")
    ratio = label_free_ratio(s["results"])
    if ratio:
        lines.append(ratio)
    s1 = s.get("stage1", {})
    if s1.get("rejection_auc") is not None:
        text = f"rejection weights vs multi-speaker dialogues: ROC AUC {s1['rejection_auc']:.3f}"
        if s1.get("rejection_auc_ceiling") is not None:
            text += f" (at most {s1['rejection_auc_ceiling']:.3f} with these draws)"
        if s1.get("rejection_auc_drawn") is not None:
            text += f"; vs draws that mix speakers: {s1['rejection_auc_drawn']:.3f}"
        lines.append(text)
    if s.get("report"):
        lines.append(f"report: {s['report']}")
    if s.get("mlflow"):
        lines.append(f"MLflow: {s['mlflow']['tracking_uri']} run {s['mlflow']['run_id']}")
    if "synth" in s:  # a generated corpus: point at the user's own
        lines.append(OWN_CORPUS)
    lines.append(CLUSTER)
    return "\n".join(lines)
