"""The exported graphs (ONNX Runtime, TorchScript) give ``raysv embed``'s embeddings:
same audio reading, length policy, front-end and encoder, at 0.5 s to 20 s, batch 1 and 8."""

import numpy as np
import pytest
import torch

from raysv.audio import features
from raysv.embedding.torch_embedder import TorchEmbedder
from raysv.evaluation.scoring import l2_normalise
from raysv.export import frontend
from raysv.export.bundle import export_model
from raysv.export.runtime import ExportedModel, embed_waves, torch_forward
from raysv.models import build_encoder
from raysv.models.checkpoint import encoder_spec, save_encoder
from tests.conftest import write_wav

TOL = 1e-4  # max abs difference of L2-normalised embeddings
SECONDS = (0.5, 2.37, 5.0, 10.0, 20.0)
TINY = {
    "ecapa": {"channels": 16, "embed_dim": 16, "attn_bottleneck": 16},
    "resnet": {"channels": [4, 8], "blocks": [1, 1], "embed_dim": 16},
    "lstm": {"hidden": 16, "layers": 2, "embed_dim": 16},
}


def tiny_checkpoint(path, name: str, n_mels: int = 24, seed: int = 0) -> str:
    """A checkpoint of a tiny encoder with random weights and batch-norm statistics
    (so that eval-mode batch norm is not an identity the export could get wrong)."""
    torch.manual_seed(seed)
    model = build_encoder(name, n_mels, **TINY[name])
    for m in model.modules():
        if isinstance(m, (torch.nn.BatchNorm1d, torch.nn.BatchNorm2d)):
            m.running_mean.normal_(0, 0.5)
            m.running_var.uniform_(0.5, 2.0)
    return save_encoder(str(path), model.state_dict(), encoder_spec(name, n_mels, TINY[name]))


@pytest.fixture(scope="module")
def wavs(tmp_path_factory):
    """``{seconds: [8 paths]}``: eight different noise files at each length (speech-like
    scale; the 2.37 s ones are not a multiple of the 0.1 s bucket)."""
    root = tmp_path_factory.mktemp("wavs")
    return {
        s: [write_wav(root / f"{s}_{i}.wav", s, seed=int(s * 100) + i) for i in range(8)]
        for s in SECONDS
    }


def reference(checkpoint: str, paths: list[str]) -> np.ndarray:
    """``raysv embed``'s embeddings (its Ray Data callable, called in this process)."""
    emb = TorchEmbedder(checkpoint, device="cpu")
    n = len(paths)
    batch = {
        "utt_id": np.array([f"u{i}" for i in range(n)]),
        "path": np.array(paths),
        "start_s": np.array([None] * n),
        "end_s": np.array([None] * n),
    }
    out = emb(batch)
    return np.stack(out["embedding"].to_numpy(zero_copy_only=False)).astype(np.float32)


def max_diff(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.abs(l2_normalise(a) - l2_normalise(b)).max())


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """``name -> (checkpoint, exported folder)`` for each tiny encoder."""
    out = {}
    for name in sorted(TINY):
        root = tmp_path_factory.mktemp(name)
        ckpt = tiny_checkpoint(root / "best_model.pt", name)
        export_model(ckpt, str(root / "model"))
        out[name] = (ckpt, str(root / "model"))
    return out


@pytest.mark.parametrize("name", sorted(TINY))
def test_onnx_and_torchscript_match_raysv_embed(name, exported, wavs):
    ckpt, folder = exported[name]
    onnx = ExportedModel(folder, threads=1)
    ts = torch_forward(torch.jit.load(f"{folder}/model.ts"))
    worst = {"onnx": 0.0, "torchscript": 0.0}
    for paths in wavs.values():
        for group in ([paths[0]], paths):  # batch 1, then batch 8 of one length
            ref = reference(ckpt, group)
            waves = [onnx.read(p) for p in group]
            assert len({w.shape[0] for w in waves}) == 1  # one (B, T) batch
            got = {"onnx": onnx.embed(waves), "torchscript": embed_waves(ts, waves)}
            for k, v in got.items():
                assert v.shape == ref.shape
                worst[k] = max(worst[k], max_diff(v, ref))
    assert max(worst.values()) <= TOL, worst


def test_length_policy_is_raysv_embeds(wavs):
    """prepare_wave keeps what utterance_fbank keeps: 20 s -> the centre 10 s, 2.37 s ->
    the centre 2.3 s, 0.05 s -> repeated to 0.1 s."""
    rng = np.random.default_rng(1)
    for n, kept in ((320000, 160000), (37920, 36800), (800, 1600), (16000, 16000)):
        w = rng.standard_normal(n).astype(np.float32)
        out = frontend.prepare_wave(w)
        assert out.shape == (kept,)
        if n >= kept:
            off = (n - min(n, 160000)) // 2
            capped = w[off : off + min(n, 160000)]
            np.testing.assert_array_equal(out, features.crop(capped, kept))


def test_front_end_matches_kaldi_fbank():
    """The convolutional front-end against torchaudio's Kaldi fbank (what raysv embed uses)."""
    rng = np.random.default_rng(2)
    fb = frontend.build_fbank(40)
    for n in (400, 1600, 37920, 160000):
        w = (rng.standard_normal(n) * 0.1).astype(np.float32)
        ref = features.fbank(w, n_mels=40)
        got = fb(torch.from_numpy(w)[None])[0].detach().numpy()
        assert got.shape == ref.shape == (features.num_frames(n), 40)
        assert np.abs(got - ref).max() < 2e-4  # log-mel units; values span ~ +-10


@pytest.mark.parametrize("name", sorted(TINY))
def test_the_graph_takes_any_batch_and_length(name, exported):
    """Dynamic axes: lengths the export never saw (not bucket multiples), batch 3."""
    ckpt, folder = exported[name]
    onnx = ExportedModel(folder)
    from raysv.models.checkpoint import load_encoder

    enc, spec = load_encoder(ckpt)
    eager = torch_forward(frontend.build_wave_encoder(enc.eval(), spec["n_mels"]))
    rng = np.random.default_rng(3)
    for n in (400, 12345, 99999):
        x = (rng.standard_normal((3, n)) * 0.1).astype(np.float32)
        assert max_diff(onnx.forward(x), eager(x)) <= TOL
