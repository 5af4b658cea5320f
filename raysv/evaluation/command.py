"""``raysv evaluate`` as a library call: verification scores of a trial list, or
clustering metrics of a pseudo-label table."""

from __future__ import annotations

from raysv.errors import RaysvError


def run_evaluate(
    trials: str | None = None,
    embeddings: str | None = None,
    *,
    pseudo_labels: str | None = None,
    manifest: str | None = None,
    strict: bool = False,
    center: bool = False,
    cohort: str | None = None,
    top_k: int = 300,
    model: str | None = None,
) -> dict:
    """EER and minDCF of ``trials`` scored on ``embeddings`` (``cohort``: AS-norm on
    that embeddings table), or with ``pseudo_labels``, NMI/ARI/reliable share against
    the speakers of ``manifest`` (as ``{"clustering": ...}``)."""
    from raysv.evaluation.evaluate import evaluate, evaluate_clusters

    if pseudo_labels:
        if not manifest:
            raise RaysvError("--pseudo-labels needs --manifest (the speakers come from it)")
        return {"clustering": evaluate_clusters(pseudo_labels, manifest)}
    if not (trials and embeddings):
        raise RaysvError(
            "give --trials and --embeddings (verification) or --pseudo-labels and --manifest (clustering)"
        )
    return evaluate(
        trials,
        embeddings,
        manifest,
        strict=strict,
        center=center,
        cohort_uri=cohort,
        top_k=top_k,
        model=model,
    )
