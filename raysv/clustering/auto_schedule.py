"""The round schedule's purification p and S, and LGL's selected share, derived
from the corpus instead of copied from a recipe (``auto`` in ``schedule``).

Label-free: only the number of utterances being clustered (N) and the round's
k (given, or chosen from the embeddings) enter, as the mean cluster size
m = N / k.

- **S** (smallest cluster kept) = round(sqrt(m)), clipped to [2, 10]. The
  iterative framework (seed 001, Table 1) uses S = 6..10 on VoxCeleb2
  (~1.09 M utterances, 6000 clusters: m ~ 180, sqrt(m) ~ 13 -> 10); a corpus
  of 40 speakers x 12 utterances with k ~ 50 (m ~ 10) gets 3, the value the
  demo was tuned with.
- **p** (share of the farthest points dropped): as aggressive as the paper's
  first rounds (0.6, then 0.4, then 0.3 from round 5: Table 1 of seed 001,
  p = 0.6 for the CSL labels, 0.4 in rounds 1-3, 0.3 in round 4) where the
  clusters are large, but never so much that fewer than ``KEEP_PER_CLUSTER``
  (9) utterances per cluster remain on average: p = clip(1 - 9 / m, 0.1,
  cap_r). On small corpora that is the floor 0.1 (the demo's value).
  Deviation: the paper fixes p per round for one corpus; this rule is ours.
- **LGL share** (``tau: auto``): the LGL paper (seed 002) sets its threshold
  per iteration (1, 3, 3, 5, 6) "to guarantee that the number of selected
  data increases by at least 10 % in each iteration". A fixed loss threshold
  does not carry over to another corpus, encoder or number of classes (on the
  demo corpus tau = 3 let only 4-25 % of the samples through), so ``auto``
  states the paper's aim directly: in a gated epoch the threshold is the
  quantile of the previous epoch's per-sample losses that selects
  0.5 + 0.1 (r - 1) of the samples in round r (at most 0.9).
"""

from __future__ import annotations

import math

KEEP_PER_CLUSTER = 9  # utterances per cluster that p leaves at least, on average
P_FLOOR = 0.1
S_RANGE = (2, 10)


def p_cap(round_: int) -> float:
    """The paper's drop share for round ``round_`` (1 = the first pseudo labels)."""
    return 0.6 if round_ <= 1 else 0.4 if round_ <= 4 else 0.3


def auto_purification(rows: int, k: int, round_: int) -> tuple[float, int]:
    """``(p, S)`` for ``rows`` utterances clustered into ``k`` groups in round ``round_``."""
    if rows < 1 or k < 1:
        raise ValueError(f"need rows >= 1 and k >= 1, got {rows}, {k}")
    m = rows / k
    s = min(max(round(math.sqrt(m)), S_RANGE[0]), S_RANGE[1])
    p = min(max(1.0 - KEEP_PER_CLUSTER / m, P_FLOOR), p_cap(round_))
    return round(p, 3), int(s)


def lgl_share(round_: int) -> float:
    """Share of samples LGL's threshold lets through in round ``round_`` (``tau: auto``)."""
    return round(min(0.5 + 0.1 * (max(round_, 1) - 1), 0.9), 3)
