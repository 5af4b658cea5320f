"""Throttled progress logging for long loops (imports, synthesis, scoring)."""

from __future__ import annotations

import json
import logging
import os
import threading
import time


class Progress:
    """Log ``done/total`` with a rate at most every ``every_s`` seconds, and at the end.

    Usage: ``p = Progress("probing audio", total); p.update(n); p.close()``.
    ``total`` may be None when unknown (a folder walk).
    """

    def __init__(
        self,
        what: str,
        total: int | None = None,
        every_s: float = 2.0,
        logger: logging.Logger | None = None,
    ):
        self.what, self.total, self.every_s = what, total, every_s
        self.log = logger or logging.getLogger("raysv")
        self.done = 0
        self.t0 = self._last = time.monotonic()

    def update(self, n: int = 1) -> None:
        self.done += n
        now = time.monotonic()
        if now - self._last >= self.every_s:
            self._last = now
            self._emit(now)

    def _emit(self, now: float) -> None:
        rate = self.done / max(now - self.t0, 1e-9)
        if self.total:
            eta = (self.total - self.done) / rate if rate > 0 else float("inf")
            self.log.info(
                "%s: %d/%d (%.0f/s, ~%.0fs left)", self.what, self.done, self.total, rate, eta
            )
        else:
            self.log.info("%s: %d (%.0f/s)", self.what, self.done, rate)

    def close(self) -> float:
        """Log the final count; return elapsed seconds."""
        now = time.monotonic()
        elapsed = now - self.t0
        if elapsed >= self.every_s:
            self._emit(now)
        return elapsed


# Training epochs: rank 0 of a Ray Train run appends one JSON line per epoch to
# ``<run folder>/_progress.jsonl`` (:func:`record_epoch`); the driver, blocked in
# ``trainer.fit()``, follows that file in a thread (:class:`EpochFollower`) and
# logs a line per epoch with the time left. A local Ray keeps its workers' own
# logs out of the terminal, so a newcomer sees raysv's lines only.
EPOCHS_FILE = "_progress.jsonl"


def record_epoch(out: str, metrics: dict) -> None:
    """Append ``epoch``, ``loss`` and ``dev_eer`` (where present) of one epoch (rank 0)."""
    keep = {k: metrics[k] for k in ("epoch", "loss", "dev_eer", "gate_pass_share") if k in metrics}
    with open(os.path.join(out, EPOCHS_FILE), "a") as f:
        f.write(json.dumps({**keep, "time": time.time()}, default=float) + "\n")


ESTIMATE_FILE = "_estimate.json"


def record_estimate(
    out: str,
    per_step_s: float,
    steps_per_epoch: int,
    epochs_left: int,
    token: str | None = None,
) -> None:
    """Rank 0, once per invocation: seconds per step timed on the first steps, and the
    steps left (:class:`raysv.training.stream.StepTimer`); ``token`` names the
    invocation (the driver shows only its own invocation's estimate)."""
    rec = {
        "per_step_s": per_step_s,
        "steps_per_epoch": steps_per_epoch,
        "epochs_left": epochs_left,
        "time": time.time(),
        "token": token,
    }
    tmp = os.path.join(out, f".{ESTIMATE_FILE}.{os.getpid()}")
    with open(tmp, "w") as f:
        json.dump(rec, f)
    os.replace(tmp, os.path.join(out, ESTIMATE_FILE))


def duration(seconds: float) -> str:
    """``"40 s"``, ``"3.5 min"``, ``"2.1 h"``."""
    if seconds < 90:
        return f"{seconds:.0f} s"
    if seconds < 90 * 60:
        return f"{seconds / 60:.1f} min"
    return f"{seconds / 3600:.1f} h"


def estimate_line(label: str, rec: dict) -> str:
    """``"Stage I: about 3.2 min of training steps (0.41 s/step x 12 steps x 40 epochs ...)"``."""
    steps = int(rec["steps_per_epoch"]) * int(rec["epochs_left"])
    total = float(rec["per_step_s"]) * steps
    return (
        f"{label}: about {duration(total)} of training steps ({rec['per_step_s']:.2f} s/step, "
        f"timed on the first steps, x {rec['steps_per_epoch']} steps x {rec['epochs_left']} "
        "epochs); dev scoring after each epoch comes on top"
    )


def epoch_line(label: str, rec: dict, epochs: int, per_epoch_s: float | None) -> str:
    """``"Stage I epoch 3/30: loss 1.52, dev EER 30.2 % (6 s/epoch, ~3 min left)"``."""
    done = int(rec["epoch"]) + 1
    parts = [f"loss {rec['loss']:.3g}"] if "loss" in rec else []
    if rec.get("dev_eer") is not None:
        parts.append(f"dev EER {rec['dev_eer']:.1f} %")
    if "gate_pass_share" in rec and rec["gate_pass_share"] < 1:
        parts.append(f"{100 * rec['gate_pass_share']:.0f} % through the gate")
    text = f"{label} epoch {done}/{epochs}: {', '.join(parts)}"
    if per_epoch_s:
        left = per_epoch_s * (epochs - done)
        eta = f"~{left / 60:.1f} min left" if left >= 90 else f"~{left:.0f} s left"
        text += f" ({per_epoch_s:.0f} s/epoch, {eta})" if done < epochs else ""
    return text


class EpochFollower:
    """Context manager: log each epoch line that rank 0 records while the block runs."""

    def __init__(
        self, out: str, label: str, epochs: int, every_s: float = 1.0, token: str | None = None
    ):
        self.path = os.path.join(out, EPOCHS_FILE)
        self.label, self.epochs, self.every_s = label, epochs, every_s
        self.log = logging.getLogger("raysv")
        # a resumed run appends: only what this invocation adds is shown
        self.offset = os.path.getsize(self.path) if os.path.exists(self.path) else 0
        self.t0 = time.time()
        self.done = 0
        self.estimate_path = os.path.join(out, ESTIMATE_FILE)
        self.estimate: dict | None = None  # this invocation's, once shown
        self.token = token  # this invocation's (else: by time, on this machine's clock)
        self._lock = threading.Lock()  # the thread and a final poll() never read twice

    def __enter__(self):
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True, name="raysv-epochs")
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join(timeout=5)
        self.poll()  # the last epoch's line, if it landed after the final wait
        return False

    def _run(self) -> None:
        while not self._stop.wait(self.every_s):
            self.poll()

    def poll(self) -> None:
        """Log the lines appended since the last poll (complete lines only)."""
        with self._lock:
            self._poll()

    def _poll(self) -> None:
        if self.estimate is None and not self.done:
            self._estimate()
        if not os.path.exists(self.path):
            return
        with open(self.path) as f:
            f.seek(self.offset)
            chunk = f.read()
        end = chunk.rfind("\n")
        if end < 0:
            return
        self.offset += len(chunk[: end + 1].encode())
        for line in chunk[: end + 1].splitlines():
            try:
                rec = json.loads(line)
            except json.JSONDecodeError:
                continue
            self.done += 1
            now = rec.get("time", time.time())
            if self.done == 1:  # since the start, workers' start included: rough
                self.first, per_epoch = now, now - self.t0
                if self.estimate:  # better: the timed steps (dev scoring not included)
                    per_epoch = self.estimate["per_step_s"] * self.estimate["steps_per_epoch"]
            else:  # from the epochs themselves
                per_epoch = (now - self.first) / (self.done - 1)
            self.log.info(epoch_line(self.label, rec, self.epochs, per_epoch))

    def _estimate(self) -> None:
        """Log the estimate rank 0 recorded in this invocation (an older one is stale)."""
        try:
            with open(self.estimate_path) as f:
                rec = json.load(f)
        except (OSError, json.JSONDecodeError):
            return
        fresh = rec.get("token") == self.token if self.token else rec.get("time", 0) >= self.t0 - 1
        if fresh:
            self.estimate = rec
            self.log.info(estimate_line(self.label, rec))
