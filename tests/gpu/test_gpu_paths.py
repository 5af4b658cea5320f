"""GPU paths: NCCL DDP with bf16 autocast (Stage I and II), k-means shards and embedding
actors on the GPU. Marked ``gpu``: deselected by default; run with ``pytest -m gpu tests/gpu``
on a machine with a CUDA GPU (they fail, not skip, without one)."""

import os

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch
import yaml

from raysv.config import from_dict
from raysv.data.corpus import prepare_corpus
from raysv.pipeline.iterate import split_manifest
from raysv.training.config import PretrainConfig
from raysv.training.pretrain import run_pretrain
from raysv.training.stage2 import run_train
from raysv.training.stage2_config import Stage2Config
from tests.clustering.test_kmeans import _objective, _skewed, _write_shards
from tests.training.test_stage2 import noisy_labels, tiny_encoder

pytestmark = pytest.mark.gpu
ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _yaml(name: str) -> dict:
    with open(os.path.join(ROOT, "configs", name)) as f:
        return yaml.safe_load(f)


@pytest.fixture(scope="module")
def ray_gpu():
    import ray

    from raysv.runtime import ensure_ray

    assert torch.cuda.is_available(), "these tests need a CUDA GPU"
    ensure_ray()  # every core and the GPU
    assert ray.cluster_resources().get("GPU", 0) >= 1
    yield ray


@pytest.fixture(scope="module")
def inputs(tiny_corpus, tmp_path_factory):
    d = tmp_path_factory.mktemp("gpu")
    man, _ = prepare_corpus(tiny_corpus, str(d / "manifests"))
    split = split_manifest(man.utterances, man.trials, str(d / "split"))
    return {
        "man": man,
        "pool": split["pool"],
        "labels": noisy_labels(split["pool"], str(d / "labels.parquet")),
        "init": tiny_encoder(str(d / "init.pt")),
        "dir": d,
    }


def test_pretrain_on_gpu_uses_nccl_and_learns(tiny_corpus, inputs, ray_gpu):
    raw = _yaml("pretrain_smoke.yaml")
    raw.update(out=str(inputs["dir"] / "pt"), data={**raw["data"], "data": tiny_corpus})
    raw["train"] = {**raw["train"], "use_gpu": True, "amp": True, "epochs": 2}
    s = run_pretrain(from_dict(PretrainConfig, raw))
    h = s["history"]
    assert [(e["device"].split(":")[0], e["backend"]) for e in h] == [("cuda", "nccl")] * 2
    assert all(np.isfinite(e["loss"]) for e in h) and h[-1]["samples_per_s"] > 0
    assert 0 <= s["final"]["best.test.eer"] <= 100 and os.path.isfile(s["best_model"])


def test_stage2_on_gpu_uses_nccl(inputs, ray_gpu):
    raw = _yaml("train_smoke.yaml")
    raw.update(out=str(inputs["dir"] / "s2"), init_checkpoint=inputs["init"])
    raw["data"] = {
        **raw["data"],
        "labels": inputs["labels"],
        "utterances": inputs["man"].utterances,
        "dev_trials": inputs["man"].trials["dev"],
        "test_trials": inputs["man"].trials["test"],
    }
    raw["train"] = {**raw["train"], "use_gpu": True}
    s = run_train(from_dict(Stage2Config, raw))
    assert [(e["device"].split(":")[0], e["backend"]) for e in s["history"]] == [
        ("cuda", "nccl")
    ] * 2
    assert 0 <= s["final"]["best.test.eer"] <= 100


def test_kmeans_shards_on_gpu_match_cpu(tmp_path, ray_gpu):
    from raysv.clustering.driver import cluster
    from raysv.clustering.sharded import KMeansSpec

    x, _ = _skewed(n=20000, d=32, k=40)
    emb = _write_shards(x, str(tmp_path / "emb"))
    spec = KMeansSpec(iterations=15, seed=1, max_points_per_centroid=10**9)
    gpu = cluster(emb, str(tmp_path / "gpu"), 40, spec, device="gpu", shards=2)
    cpu = cluster(emb, str(tmp_path / "cpu"), 40, spec, device="cpu", shards=2)
    assert (gpu["device"], cpu["device"]) == ("gpu", "cpu")
    og = _objective(x, np.load(tmp_path / "gpu" / "_centroids.npy"))
    oc = _objective(x, np.load(tmp_path / "cpu" / "_centroids.npy"))
    assert og <= oc * 1.01, (og, oc)
    t = pq.read_table(str(tmp_path / "gpu"))
    assert t.num_rows == 20000


def test_embed_actors_use_the_gpu(inputs, tmp_path, ray_gpu):
    from raysv.embedding.extract import embed_manifest
    from raysv.embedding.torch_embedder import TorchEmbedder
    from raysv.evaluation.scoring import embedding_matrix

    man, ck = inputs["man"].utterances, {"checkpoint": inputs["init"]}
    g = embed_manifest(man, str(tmp_path / "g"), TorchEmbedder, ck, concurrency=2, device="gpu")
    c = embed_manifest(man, str(tmp_path / "c"), TorchEmbedder, ck, concurrency=2, device="cpu")
    assert g["gpus_per_actor"] > 0 and c["gpus_per_actor"] == 0
    ig, eg = embedding_matrix(pq.read_table(str(tmp_path / "g")))
    ic, ec = embedding_matrix(pq.read_table(str(tmp_path / "c")))
    eg = eg[np.argsort(ig)]
    ec = ec[np.argsort(ic)]
    cos = (eg * ec).sum(1) / np.linalg.norm(eg, axis=1) / np.linalg.norm(ec, axis=1)
    assert cos.min() > 0.99, cos.min()
