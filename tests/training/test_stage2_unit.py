"""Stage II worker pieces without Ray: learning rates, the L2 anchor, the gate schedule."""

import numpy as np
import pytest
import torch

from raysv.config import load_config
from raysv.training.stage2_config import Stage2Config
from raysv.training.stage2_worker import first_tau, l2_distance, next_tau, set_learning_rate


def _cfg(**over) -> Stage2Config:
    return load_config(Stage2Config, None, [f"{k}={v}" for k, v in over.items()])


def test_learning_rates_of_encoder_and_head():
    cfg = _cfg(**{"optim.lr": 0.01, "encoder_lr_scale": 0.1, "head_warmup_epochs": 1})
    enc, head = torch.nn.Linear(2, 2), torch.nn.Linear(2, 2)
    opt = torch.optim.Adam([{"params": enc.parameters()}, {"params": head.parameters()}])
    set_learning_rate(cfg, opt, step=0, epoch=0)
    assert opt.param_groups[0]["lr"] == 0.0 and opt.param_groups[1]["lr"] == 0.01
    set_learning_rate(cfg, opt, step=5, epoch=1)
    assert opt.param_groups[0]["lr"] == pytest.approx(0.001)
    assert opt.param_groups[1]["lr"] == 0.01


def test_l2_anchor_is_zero_at_start_and_pulls_back():
    enc = torch.nn.Linear(3, 2)
    anchor = [p.detach().clone() for p in enc.parameters()]
    assert float(l2_distance(enc, anchor)) == 0.0
    with torch.no_grad():
        enc.weight.add_(0.5)
    d = l2_distance(enc, anchor)
    assert float(d) == pytest.approx(6 * 0.25)
    d.backward()
    assert torch.allclose(enc.weight.grad, torch.full_like(enc.weight, 1.0))  # 2 * 0.5


def test_gate_threshold_schedule():
    losses = np.r_[np.random.default_rng(0).normal(1, 0.2, 300), np.full(100, 9.0)]
    assert next_tau(_cfg(), 3, losses) is None  # gate none
    lgl = _cfg(**{"gate.name": "lgl", "gate.tau": 2.5, "gate.warmup_epochs": 2})
    # 1 head-only epoch (the default) + 2 epochs on all labels: the gate closes at epoch 3
    assert lgl.gate_closes_at == 3 and first_tau(lgl) is None
    assert next_tau(lgl, 0, losses) is None and next_tau(lgl, 1, losses) is None
    assert next_tau(lgl, 2, losses) == 2.5
    dlg = _cfg(**{"gate.name": "dlg", "gate.warmup_epochs": 1, "head_warmup_epochs": 0})
    assert 1.5 < next_tau(dlg, 0, losses) < 9.0


def test_raysv_train_defaults_train_the_encoder_on_all_labels_before_the_gate():
    """The head-only epoch and the gate's warm-up no longer coincide (issue #21)."""
    cfg = _cfg(**{"gate.name": "lgl"})  # raysv train --gate lgl with every other default
    assert cfg.head_warmup_epochs == 1 and cfg.gate.warmup_epochs == 1
    assert next_tau(cfg, 0, np.ones(4)) is None  # epoch 1: encoder and head, all labels
    assert next_tau(cfg, 1, np.ones(4)) == cfg.gate.tau  # epoch 2: gated


def test_lgl_warmup_0_gates_from_the_first_step():
    """``gate.warmup_epochs: 0`` without a head-only epoch gates epoch 0 (it acted as 1)."""
    cfg = _cfg(
        **{"gate.name": "lgl", "gate.tau": 2.0, "gate.warmup_epochs": 0, "head_warmup_epochs": 0}
    )
    assert first_tau(cfg) == 2.0 and next_tau(cfg, 0, np.ones(4)) == 2.0
    from raysv.errors import ConfigError

    with pytest.raises(ConfigError, match="gate.share sets each gated epoch"):
        _cfg(
            **{
                "gate.name": "lgl",
                "gate.share": 0.5,
                "gate.warmup_epochs": 0,
                "head_warmup_epochs": 0,
            }
        )


def test_stage2_config_rejects_bad_values():
    from raysv.errors import ConfigError

    with pytest.raises(ConfigError, match="encoder_lr_scale"):
        _cfg(encoder_lr_scale=0)
    with pytest.raises(ConfigError, match="head_warmup_epochs"):
        _cfg(head_warmup_epochs=6)
    with pytest.raises(ConfigError, match="tau2"):
        _cfg(**{"gate.tau2": 1.5})


def test_rounds_continue_from_or_restart_the_previous_encoder(tmp_path):
    from raysv.models.checkpoint import read_checkpoint, save_encoder
    from raysv.pipeline.iterate import _with_init
    from raysv.training.stage2_worker import build_classifier
    from tests.training.test_stage2 import tiny_encoder

    state, spec = read_checkpoint(tiny_encoder(str(tmp_path / "init.pt")))
    trained = {k: v + 0.01 if v.dtype.is_floating_point else v for k, v in state.items()}
    ckpt = save_encoder(str(tmp_path / "prev.pt"), trained, spec)  # "trained" weights
    base = _cfg()
    cont = _with_init(base, ckpt, "continue")
    scratch = _with_init(base, ckpt, "scratch")
    assert cont.init_checkpoint == ckpt and scratch.init_checkpoint is None
    assert cont.model == scratch.model and scratch.model.kwargs["channels"] == 16
    assert cont.data.n_mels == scratch.data.n_mels == 24
    prev = torch.load(ckpt, weights_only=False)["model"]
    a = build_classifier(cont, 3).encoder.state_dict()
    b = build_classifier(scratch, 3).encoder.state_dict()
    key = next(k for k in prev if prev[k].dtype.is_floating_point and prev[k].numel() > 16)
    assert torch.equal(a[key], prev[key]) and not torch.equal(b[key], prev[key])


def test_class_directions_are_unit_means_and_count_empty_classes():
    from raysv.training.stage2 import class_directions

    emb = np.array([[2.0, 0.0], [0.0, 3.0], [1.0, 1.0], [0.0, -1.0]], np.float32)  # (4, 2)
    labels = np.array([0, 0, 2, 0])  # class 1 has no rows
    rows = np.array([0, 1, 2, -1])  # the last row has no embedding
    w, empty = class_directions(labels, 3, rows, emb)
    assert w.shape == (3, 2) and empty == 1
    np.testing.assert_allclose(w[0], np.array([1.0, 1.0]) / np.sqrt(2), rtol=1e-6)
    np.testing.assert_allclose(w[2], np.array([1.0, 1.0]) / np.sqrt(2), rtol=1e-6)
    assert not w[1].any()  # left for the random initialisation


def test_head_init_sets_the_class_directions_and_keeps_random_rows(tmp_path):
    from raysv.training.stage2_worker import build_classifier

    cfg = load_config(
        Stage2Config,
        None,
        ["data.n_mels=20", "model.name=ecapa", "model.kwargs={channels: 16, embed_dim: 8}"],
    )
    w = np.zeros((3, 8), np.float32)
    w[0, 0], w[2, 5] = 1.0, 1.0
    np.save(tmp_path / "w.npy", w)
    random_head = build_classifier(cfg, 3).head.weight.detach()
    head = build_classifier(cfg, 3, str(tmp_path / "w.npy")).head.weight.detach()
    direction = torch.nn.functional.normalize(head, dim=1)
    assert torch.allclose(direction[0], torch.eye(8)[0], atol=1e-6)
    assert torch.allclose(direction[2], torch.eye(8)[5], atol=1e-6)
    assert torch.equal(head[1], random_head[1])  # same seed: the class without rows is untouched
    np.save(tmp_path / "bad.npy", np.ones((4, 8), np.float32))
    with pytest.raises(ValueError, match="data.head_init: class directions of shape"):
        build_classifier(cfg, 3, str(tmp_path / "bad.npy"))


def test_the_objectives_first_epoch_is_gated_when_the_gate_closes_at_once():
    """The worker skeleton starts from ``initial_state()``: epoch 0 gets LGL's tau."""
    from raysv.training.stage2 import resolve
    from raysv.training.stage2_worker import GatedAAMObjective

    over = {"gate.name": "lgl", "gate.tau": 2.0, "gate.warmup_epochs": 0, "head_warmup_epochs": 0}
    obj = GatedAAMObjective(resolve(_cfg(**over)), {"n_classes": 3}, "cpu", lambda m: m)
    assert obj.initial_state().tau == 2.0
    late = GatedAAMObjective(
        resolve(_cfg(**{"gate.name": "lgl"})), {"n_classes": 3}, "cpu", lambda m: m
    )
    assert late.initial_state().tau is None and late.initial_state().epoch == 0


def test_training_workers_fit_on_a_node_and_leave_each_node_a_cpu():
    """A CPU training worker's default share: placeable on the cluster's nodes with one
    CPU left on each for featurisation (two 3-CPU nodes, one worker: 2 CPUs, not the 5
    no node has, which left a round of ``raysv iterate`` waiting forever)."""
    from raysv.training.driver import worker_cpus

    for nodes, workers in [([2.0], 1), ([2.0], 2), ([3.0, 3.0], 1), ([3.0, 3.0], 2), ([16.0], 4)]:
        c = worker_cpus(nodes, workers)
        assert sum(int((n - 1.0) / c + 1e-9) for n in nodes) >= workers, (nodes, workers, c)
        assert c * workers <= sum(nodes) - 1.0 + 1e-9
    assert worker_cpus([2.0], 1) == 1.0 and worker_cpus([2.0], 2) == 0.5  # one node: as before
    assert worker_cpus([3.0, 3.0], 1) == 2.0
    assert worker_cpus([2.0, 16.0], 1) == 15.0  # the big node hosts it
    assert worker_cpus([1.0], 1) == 0.25  # the floor
