"""Epoch lines: what rank 0 records is what the driver shows, once, with the time left."""

import logging

from raysv.progress import EpochFollower, epoch_line, record_epoch


def test_epoch_lines_follow_the_record_once_each(tmp_path, caplog):
    out = str(tmp_path)
    record_epoch(out, {"epoch": 0, "loss": 9.0})  # an earlier invocation's epoch (resume)
    level = caplog.at_level(logging.INFO, logger="raysv")
    with level, EpochFollower(out, "Stage I", 4, every_s=0.05) as follower:
        record_epoch(out, {"epoch": 1, "loss": 1.5, "dev_eer": 30.25, "step": 7})
        follower.poll()
        with open(tmp_path / "_progress.jsonl", "a") as f:
            f.write('{"epoch": 2, "lo')  # half a line: not shown until complete
        follower.poll()
        with open(tmp_path / "_progress.jsonl", "a") as f:
            f.write('ss": 1.2, "gate_pass_share": 0.5}\n')
    lines = [r.getMessage() for r in caplog.records if "Stage I epoch" in r.getMessage()]
    assert len(lines) == 2, lines
    assert lines[0].startswith("Stage I epoch 2/4: loss 1.5, dev EER 30.2 %") and "left" in lines[0]
    assert lines[1].startswith("Stage I epoch 3/4: loss 1.2, 50 % through the gate")


def test_epoch_line_of_the_last_epoch_has_no_time_left():
    assert epoch_line("Stage II (round1)", {"epoch": 5, "loss": 0.3}, 6, 12.0) == (
        "Stage II (round1) epoch 6/6: loss 0.3"
    )
    assert "~2.0 min left" in epoch_line("S", {"epoch": 0, "loss": 1.0}, 11, 12.0)
