"""Commands' summaries as short human text: what ``raysv COMMAND`` prints without ``--json``.

Pure functions over the summary dict each library command returns (no Ray, no I/O).
"""

from __future__ import annotations

from raysv.reporting.summary import demo_summary


def synth_text(s: dict) -> str:
    sp = s["speakers"]
    return (
        f"wrote {s['utterances']} utterances ({s['audio_hours']} h) of {sp['train']}+{sp['dev']}+{sp['test']} "
        f"train/dev/test speakers to {s['out']}\n"
        f"{s['dialogues']} dialogues ({s['multi_speaker_dialogues']} multi-speaker); "
        f"trials: dev {s['trials']['dev']}, test {s['trials']['test']}; {s['seconds']}s on {s['workers']} processes"
    )


def ingest_text(s: dict) -> str:
    lines = [f"{s['format']}: wrote {s['rows']} rows to {s['out']}"]
    if s.get("relative_paths_base"):
        lines.append(
            f"{s['relative_paths']} relative path(s) in wav.scp taken relative to "
            f"{s['relative_paths_base']} (stored absolute; --wav-root to choose)"
        )
    if "speakers" in s:
        lines[0] += f" ({s['speakers']} speakers, {s['hours']} h)"
    if "dialogues" in s:
        lines.append(f"{s['dialogues']} dialogues -> {s['dialogues_out']}")
    lines += [f"warning: {p}" for p in s["problems"]]
    if "skipped_list" in s:
        lines.append(f"all skipped rows listed in {s['skipped_list']}")
    return "\n".join(lines)


def validate_text(s: dict) -> str:
    head = "OK" if s["ok"] else "PROBLEMS FOUND"
    lines = [
        f"{head}: {s['utterances']} valid utterances"
        + (f", {s['dialogues']} dialogues" if "dialogues" in s else "")
    ]
    lines += [f"  {p}" for p in s["problems"]]
    return "\n".join(lines)


def embed_text(s: dict) -> str:
    if s.get("skipped"):
        text = f"embeddings in {s['out']} already complete (use --force to recompute)"
    else:
        text = f"embedded {s['rows']} utterances into {s['out']} in {s['seconds']}s ({s['utts_per_s']}/s)"
        if s.get("unreadable"):
            first = s["unreadable_examples"][0]
            text += (
                f"\nskipped {s['unreadable']} with missing or unreadable audio (first: {first['path']}: "
                f"{first['reason']}); all listed in {s['out']}/_skipped-*.jsonl"
            )
    sess = s.get("sessions")
    if sess:
        text += f"\nsession means in {sess['out']}" + (
            f": {sess['sessions']} sessions" if "sessions" in sess else " (already complete)"
        )
    return text


def evaluate_text(s: dict) -> str:
    if "clustering" in s:
        c = s["clustering"]
        return "\n".join(
            f"{part}: NMI {c[part]['nmi']:.3f}  ARI {c[part]['ari']:.3f}  reliable {100 * c[part]['reliable_share']:.1f}%  "
            f"({c[part]['n_samples']} utterances, {c[part]['n_clusters']} clusters)"
            for part in ("all", "kept")
            if part in c
        )
    lines = [
        f"EER {s['eer']:.2f}%  minDCF(0.01) {s['min_dcf_0.01']:.3f}  minDCF(0.05) {s['min_dcf_0.05']:.3f}  "
        f"({s['n_target']} target / {s['n_nontarget']} non-target trials)"
    ]
    if "merge_threshold" in s:
        lines.append(
            f"merge threshold for automatic k: {s['merge_threshold']:.4f} (from dev trials: "
            f"raysv cluster --k auto --merge-threshold)"
        )
    lines += [f"warning: {p}" for p in s["skipped_examples"]]
    return "\n".join(lines)


def cluster_text(s: dict) -> str:
    if "elbow" in s:
        lines = [f"{'k':>8}  {'objective':>14}  {'per point':>10}  {'seconds':>8}"]
        lines += [
            f"{r['k']:>8}  {r['objective']:>14.6g}  {r['objective_per_point']:>10.4g}  {r['seconds']:>8}"
            for r in s["elbow"]
        ]
        lines.append(
            f"suggested k: {s['suggested_k']} ({s['rule']})"
            if s["suggested_k"] is not None
            else "suggested k: none (needs at least 3 values of k and a bend in the curve)"
        )
        lines.append(f"table and plot: {s['files']['csv']}, {s['files']['png']}")
        return "\n".join(lines + _mlflow_line(s))
    cs = s["cluster_sizes"]
    lines = [
        f"k-means: {s['embeddings']} embeddings, k={s['k']}, {s['iterations']} of at most "
        f"{s.get('max_iterations', s['iterations'])} iterations, objective {s['objective']:.6g}, "
        f"{s['seconds']}s",
        f"cluster sizes: min {cs['min']}, median {cs['median']:g}, max {cs['max']}, empty {cs['empty']}",
        f"purification kept {100 * s['kept_share']:.1f}% in {s['clusters_after_purification']} clusters -> {s['out']}",
        *(f"warning: {w}" for w in s.get("warnings", [])),
    ]
    if s.get("auto_k"):
        auto = s["auto_k"]
        if auto.get("method") == "merge":
            curve = ", ".join(f"{r['threshold']:.3f}: {r['k']}" for r in auto["table"][::4])
            lines.append(
                f"k = {auto['k']} chosen from the embeddings: {auto['rule']} "
                f"(k at other thresholds: {curve}); plot {auto['plot']}"
            )
        else:
            lines.append(
                f"k = {auto['k']} chosen from the embeddings: best silhouette over k = "
                + ", ".join(f"{r['k']} ({r['silhouette']:.3f})" for r in auto["table"])
                + f"; plot {auto['plot']}"
            )
    for part, r in s.get("analysis", {}).items():
        if isinstance(r, dict):
            lines.append(
                f"{part}: NMI {r['nmi']:.3f}  ARI {r['ari']:.3f}  reliable {100 * r['reliable_share']:.1f}%"
            )
    return "\n".join(lines + _mlflow_line(s))


def _mlflow_line(s: dict) -> list[str]:
    m = s.get("mlflow")
    return [f"MLflow: {m['tracking_uri']} run {m['run_id']}"] if m else []


def demo_text(s: dict) -> str:
    return demo_summary(s)


def _unreadable_line(s: dict) -> list[str]:
    """A warning line for training rows skipped as unreadable, if any."""
    if not s.get("unreadable_rows"):
        return []
    return [
        f"WARNING: skipped {s['unreadable_rows']} training rows with unreadable audio "
        f"(first: {s['unreadable_examples'][0]})"
    ]


def pretrain_text(s: dict) -> str:
    lines = [f"run folder: {s['out']}  ({s['epochs']} epochs, {s['steps']} steps, {s['seconds']}s)"]
    if "train_utterances" in s:
        lines.append(
            f"trained on {s['train_utterances']} utterances; "
            f"{s['held_out_utterances']} held out for evaluation"
        )
    f = s["final"]
    for split in ("dev", "test"):
        if f"best.{split}.eer" in f:
            lines.append(
                f"{split}: untrained EER {f[f'untrained.{split}.eer']:.2f}% minDCF(0.01) {f[f'untrained.{split}.min_dcf_0.01']:.3f}"
                f"  ->  best checkpoint EER {f[f'best.{split}.eer']:.2f}% minDCF(0.01) {f[f'best.{split}.min_dcf_0.01']:.3f}"
            )
    last = s["history"][-1] if s["history"] else {}
    if "rejection_auc" in last:
        text = f"rejection weights vs multi-speaker truth: ROC AUC {last['rejection_auc']:.3f}"
        if "rejection_auc_ceiling" in last:
            text += f" (at most {last['rejection_auc_ceiling']:.3f} with these draws)"
        if "rejection_auc_drawn" in last:
            text += f"; vs draws that mix speakers: {last['rejection_auc_drawn']:.3f}"
        lines.append(text + " (last epoch)")
    lines.append(
        f"best model: {s['best_model']}   MLflow: {s['mlflow']['tracking_uri']} run {s['mlflow']['run_id']}"
    )
    return "\n".join(lines + _unreadable_line(s))


def train_text(s: dict) -> str:
    lines = [
        f"run folder: {s['out']}  ({s['epochs']} epochs, {s['steps']} steps, {s['seconds']}s; "
        f"{s['n_classes']} classes, {s['train_utterances']} utterances)"
    ]
    f = s["final"]
    for split in ("dev", "test"):
        if f"best.{split}.eer" in f:
            before = (
                f"initial EER {f[f'init.{split}.eer']:.2f}%  ->  "
                if f"init.{split}.eer" in f
                else ""
            )
            lines.append(
                f"{split}: {before}best EER {f[f'best.{split}.eer']:.2f}% "
                f"minDCF(0.01) {f[f'best.{split}.min_dcf_0.01']:.3f}"
            )
    last = s["history"][-1] if s["history"] else {}
    if "gate_pass_share" in last:
        text = f"gate (last epoch): {100 * last['gate_pass_share']:.1f}% passed"
        if last.get("gate_relabel_share"):
            text += f", {100 * last['gate_relabel_share']:.1f}% relabelled"
        if "reliable_share_passed" in last:
            text += (
                f"; reliable labels among passed {100 * last['reliable_share_passed']:.1f}% "
                f"vs all {100 * last['reliable_share_all']:.1f}% (analysis)"
            )
        lines.append(text)
    lines.append(
        f"best model: {s['best_model']}   MLflow: {s['mlflow']['tracking_uri']} run {s['mlflow']['run_id']}"
    )
    return "\n".join(lines + _unreadable_line(s))


def _scores_line(name: str, scores: dict) -> list[str]:
    return [
        f"{name} {split}: EER {r['eer']:.2f}%  minDCF(0.01) {r['min_dcf_0.01']:.3f}  "
        f"minDCF(0.05) {r['min_dcf_0.05']:.3f}"
        for split, r in scores.items()
    ]


def _round_scores(r: dict) -> dict:
    """``{"test.eer": ..}`` entries of a round -> ``{"test": {"eer": ..}}``."""
    out: dict = {}
    for key, v in r.items():
        split, _, metric = key.partition(".")
        if split in ("dev", "test"):
            out.setdefault(split, {})[metric] = v
    return out


def tune_text(s: dict) -> str:
    counts = ", ".join(f"{n} {k}" for k, n in s.get("counts", {}).items() if n)
    lines = [f"sweep folder: {s['out']}  ({len(s['trials'])} trials: {counts}; {s['seconds']}s)"]

    def pct(r: dict, key: str) -> str:
        v = r.get(key)
        return f"{v:6.2f}%" if isinstance(v, (int, float)) and v == v else "     - "

    for r in s["trials"]:
        params = ", ".join(f"{k}={v}" for k, v in r["params"].items())
        status = r["status"] + (f" after {r['epochs']} ep" if r.get("epochs") else "")
        lines.append(
            f"  trial {r['trial']:3d}  {status:<22} dev EER {pct(r, 'dev_eer')}  "
            f"test EER {pct(r, 'test_eer')}  {params}"
        )
    lines += [f"  failed: {e}" for e in s["failed_trials"]]
    b = s["best"]
    lines.append(
        f"best (lowest dev EER): trial {b['trial']}  dev {b['dev_eer']:.2f}%  test {b['test_eer']:.2f}%  "
        f"model {b['best_model']}"
    )
    lines.append(f"best config: {s['best_config']}")
    if s.get("report"):
        lines.append(f"report: {s['report']}")
    lines.append(f"MLflow: {s['mlflow']['tracking_uri']} run {s['mlflow']['run_id']}")
    return "\n".join(lines)


def iterate_text(s: dict) -> str:
    lines = [f"run folder: {s['out']}  ({s['seconds']}s)"]
    lines += _scores_line("initial encoder", s["initial"])
    for r in s["rounds"]:
        text = f"round {r['round']}: {r['clusters']} clusters, kept {100 * r['kept_share']:.1f}%"
        if "all.nmi" in r:
            text += f", NMI {r['all.nmi']:.3f}"
        if "gate.gate_pass_share" in r:
            text += f", gate passed {100 * r['gate.gate_pass_share']:.1f}%"
        lines.append(text)
        lines += _scores_line(f"  round {r['round']}", _round_scores(r))
    fc = s.get("final_clustering", {}).get("analysis", {}).get("all")
    if fc:
        lines.append(f"clustering with the final encoder: NMI {fc['nmi']:.3f}")
    if "reference" in s:
        lines += _scores_line("supervised reference (true labels)", s["reference"]["scores"])
    lines.append(f"MLflow: {s['mlflow']['tracking_uri']} run {s['mlflow']['run_id']}")
    return "\n".join(lines)


def report_text(s: dict) -> str:
    lines = [f"report: {s['report']}", f"plots: {', '.join(sorted(s['plots']))}"]
    if "mlflow" in s:
        lines.append(f"logged to MLflow run {s['mlflow']['run_id']} (artifacts/report)")
    return "\n".join(lines)


def bench_text(s: dict) -> str:
    return "\n".join(f"{k}: {v}" for k, v in s.items())


def config_text(s: dict) -> str:
    """``raysv config``: one entry per setting (key = value, type and range, why)."""
    if "markdown" in s:
        return s["markdown"].rstrip("\n")  # print adds the last newline
    source = f"; values from {s['config']}" if s.get("config") else ""
    lines = [f"raysv {s['command']} settings ({s['class']}{source}):"]
    for r in s["rows"]:
        kind = r["type"] + (f", {r['range']}" if r["range"] else "")
        lines.append(f"  {r['key']} = {r['default']}    ({kind})")
        if r["why"]:
            lines.append(f"      {r['why']}")
    return "\n".join(lines)


def export_text(s: dict) -> str:
    lines = [
        f"exported {s['encoder']} ({s['embedding_dim']}-d) to {s['out']}: "
        f"{', '.join(s['files'])} in {s['seconds']}s",
        f"centre: {s['centre_from'].get('utterances', 0)} utterances "
        f"({s['centre_from']['source']})",
        "parity with PyTorch (max abs diff, normalised): "
        + ", ".join(f"{k} {v:.1e}" for k, v in s["parity_max_abs_diff"].items()),
    ]
    d = s.get("dev") or {}
    if d:
        t = d["thresholds"]
        dcf = "none" if t["min_dcf_0.01"] is None else f"{t['min_dcf_0.01']:.4f}"
        lines.append(
            f"dev (centred on the model): EER {d['eer']:.2f}%  minDCF(0.01) {d['min_dcf_0.01']:.3f}; "
            f"thresholds: EER {t['eer']:.4f}, minDCF(0.01) {dcf}"
        )
    else:
        lines.append(
            "no dev trials found: the card has no thresholds (give --dev-trials/--dev-utts)"
        )
    if s.get("test"):
        lines.append(
            f"test (centred on the model): EER {s['test']['eer']:.2f}%  "
            f"minDCF(0.01) {s['test']['min_dcf_0.01']:.3f}"
        )
    return "\n".join(lines)


def verify_text(s: dict) -> str:
    if "decision" in s:
        return (
            f"{s['decision'].upper()}: score {s['score']:.4f} "
            f"(threshold {s['threshold']:.4f}, {s['operating_point']})"
        )
    text = (
        f"EER {s['eer']:.2f}%  minDCF(0.01) {s['min_dcf_0.01']:.3f}  minDCF(0.05) {s['min_dcf_0.05']:.3f}  "
        f"({s['n_target']} target / {s['n_nontarget']} non-target trials, {s['files']} files)"
    )
    if "threshold" in s:
        text += (
            f"\nat threshold {s['threshold']:.4f}: miss {100 * s['miss_rate']:.2f}%, "
            f"false accept {100 * s['false_accept_rate']:.2f}%"
        )
    return text
