"""Analysis of rejection weights: which speakers a step's draw of a dialogue mixes."""

import numpy as np
import pyarrow as pa
import pytest
import torch

from raysv.training.pretrain import dialogue_speakers
from raysv.training.pretrain_worker import Analysis, drawn_mixed


def _table_and_manifest():
    table = pa.table(  # dialogue_table's shape: paths in dialogue order
        {
            "dialogue_id": ["d0", "d1", "d2"],
            "paths": [["a1", "a2"], ["a3", "b1", "b2"], ["c1", "c2", "c3"]],
            "starts": [[None] * 2, [None] * 3, [None] * 3],
            "ends": [[None] * 2, [None] * 3, [None] * 3],
        }
    )
    utts = pa.table(
        {
            "utt_id": ["a1", "a2", "a3", "b1", "b2", "c1", "c2", "c3"],
            "path": ["a1", "a2", "a3", "b1", "b2", "c1", "c2", "c3"],
            "start_s": pa.array([None] * 8, pa.float64()),
            "end_s": pa.array([None] * 8, pa.float64()),
            "speaker": ["A", "A", "A", "B", "B", "C", "C", "C"],
        }
    )
    return table, utts


def test_dialogue_speakers_and_mixed_draws():
    table, utts = _table_and_manifest()
    flat, offsets = dialogue_speakers(table, utts)
    assert offsets.tolist() == [0, 2, 5, 8]
    assert flat.tolist() == [0, 0, 0, 1, 1, 2, 2, 2]  # A, B, C coded in sorted order
    idx = np.array([0, 1, 1, 1, 2])
    pick = np.array([[0, 1], [0, 1], [1, 2], [2, 0], [2, 2]])
    assert drawn_mixed(flat, offsets, idx, pick).tolist() == [False, True, False, True, False]
    # segments of one recording (a Kaldi segments file) keep their own speakers
    rec = pa.table(
        {
            "paths": [["r.wav"] * 3],
            "starts": [[0.0, 2.0, 4.0]],
            "ends": [[2.0, 4.0, 6.0]],
        }
    )
    seg = pa.table(
        {
            "path": ["r.wav"] * 3,
            "start_s": [4.0, 0.0, 2.0],
            "end_s": [6.0, 2.0, 4.0],
            "speaker": ["A", "A", "B"],
        }
    )
    assert dialogue_speakers(rec, seg)[0].tolist() == [0, 1, 0]
    # without a speaker for every utterance there is nothing to analyse
    unknown = utts.set_column(4, "speaker", pa.array(["A"] * 7 + [None], pa.string()))
    assert dialogue_speakers(table, unknown) is None
    assert dialogue_speakers(table, utts.drop_columns(["speaker"])) is None


def test_analysis_reports_auc_against_dialogue_truth_and_against_the_draw():
    """Dialogue d1 mixes two speakers, but a draw of two of its utterances mixes them only
    sometimes. Weights that drop exactly the mixed draws score 1.0 against the draws and
    less against the dialogue truth, which cannot see which utterances were drawn."""
    table, utts = _table_and_manifest()
    truth = np.array([False, True, False])
    a = Analysis(truth, dialogue_speakers(table, utts))
    idx = torch.tensor([0, 1, 1, 1, 2, 2])
    pick = torch.tensor([[0, 1], [0, 1], [1, 2], [2, 0], [0, 1], [1, 2]])
    mixed = np.array([False, True, False, True, False, False])
    w = torch.tensor(np.where(mixed, 0.1, 0.9), dtype=torch.float32)
    a.add(idx[:3], w[:3], torch.zeros(3), pick[:3])
    a.add(idx[3:], w[3:], torch.zeros(3), pick[3:])
    s = a.summary()
    assert s["rejection_auc_drawn"] == 1.0 and s["mixed_draw_share"] == 2 / 6
    # against the dialogue truth the unmixed draw of d1 (w 0.9) ties with the singles
    assert s["rejection_auc"] == pytest.approx((2 * 3 + 0.5 * 3) / (3 * 3))
    # these weights detect every mixed draw, so they reach the dialogue-level ceiling
    assert s["rejection_auc_ceiling"] == pytest.approx(s["rejection_auc"])
    a.reset()
    a.add(idx, 1 - w, torch.zeros(6), pick)  # the inverse detector: ceiling unchanged
    assert a.summary()["rejection_auc_drawn"] == 0.0
    assert a.summary()["rejection_auc_ceiling"] == pytest.approx(1 - 0.5 / 3)
    none = Analysis(truth)  # no speakers known: the dialogue-level AUC only
    none.add(idx, w, torch.zeros(6), pick)
    assert "rejection_auc_drawn" not in none.summary() and "rejection_auc" in none.summary()
