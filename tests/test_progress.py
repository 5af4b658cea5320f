"""Epoch lines: what rank 0 records is what the driver shows, once, with the time left."""

import json
import logging
import time

from raysv.progress import (
    EpochFollower,
    duration,
    epoch_line,
    estimate_line,
    record_epoch,
    record_estimate,
)
from raysv.training.stream import StepTimer


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


def test_the_step_timer_skips_the_warm_up_and_reports_once():
    got = []
    timer = StepTimer(got.append, skip=1, steps=2)
    timer.tick()  # batch 1 asked for
    time.sleep(0.3)  # step 1: the pipeline's start (skipped)
    for _ in range(3):  # steps 2 and 3 are timed, then nothing more
        timer.tick()
        time.sleep(0.05)
    timer.tick()
    timer.end()
    assert len(got) == 1 and 0.04 <= got[0] < 0.2, got


def test_a_first_epoch_shorter_than_the_timing_still_gives_an_estimate():
    got = []
    timer = StepTimer(got.append, skip=1, steps=3)
    timer.tick()
    time.sleep(0.05)
    timer.tick()
    time.sleep(0.05)
    timer.end()  # two steps in all: the second is timed
    assert len(got) == 1 and 0.04 <= got[0] < 0.2, got
    ran_out = StepTimer(got.append, skip=1, steps=3)  # the stream ends after 3 steps
    for _ in range(4):  # the 4th tick asks for a batch there is none of
        ran_out.tick()
        time.sleep(0.05)
    ran_out.end(last_step_done=False)  # no phantom step: steps 2 and 3 are timed
    assert len(got) == 2 and 0.04 <= got[1] < 0.2, got
    failing = StepTimer(lambda s: 1 / 0, skip=0, steps=1)  # a failing estimate is logged only
    failing.tick()
    failing.tick()
    assert failing.done


def test_the_estimate_is_shown_once_before_the_epoch_lines_and_never_a_stale_one(tmp_path, caplog):
    out = str(tmp_path)
    stale = {"per_step_s": 9.0, "steps_per_epoch": 10, "epochs_left": 3, "time": 100.0}
    (tmp_path / "_estimate.json").write_text(json.dumps(stale))  # an earlier invocation's
    level = caplog.at_level(logging.INFO, logger="raysv")
    with level, EpochFollower(out, "Stage I", 4, every_s=0.05, token="now") as follower:
        follower.poll()
        record_estimate(out, 0.9, 12, 4, token="before")  # fresh clock, other invocation
        follower.poll()
        record_estimate(out, 0.5, 12, 4, token="now")
        follower.poll()
        record_estimate(out, 0.7, 12, 4, token="now")  # shown once: not this one
        record_epoch(out, {"epoch": 0, "loss": 2.0})
    said = [r.getMessage() for r in caplog.records if r.getMessage().startswith("Stage I")]
    assert said[0] == estimate_line(
        "Stage I", {"per_step_s": 0.5, "steps_per_epoch": 12, "epochs_left": 4}
    )
    assert "about 24 s of training steps (0.50 s/step" in said[0] and len(said) == 2, said
    # the first epoch's time left comes from the timed steps (0.5 s x 12 a epoch), not
    # from the time since the follower started (which includes the workers' start)
    assert said[1].startswith("Stage I epoch 1/4") and "(6 s/epoch, ~18 s left)" in said[1]
    assert [duration(s) for s in (40, 210, 3 * 3600)] == ["40 s", "3.5 min", "3.0 h"]
