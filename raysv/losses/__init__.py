"""Stage I objectives' losses: contrastive (AvA, A-Proto, GE2E, NT-Xent), DINO
self-distillation (:mod:`raysv.losses.dino`), and soft rejection of noisy dialogues."""

from __future__ import annotations

from raysv.errors import ConfigError

LOSSES = ("ava", "aproto", "ge2e", "ntxent", "dino")
DIALOGUE_LOSSES = ("ava", "aproto", "ge2e")


def build_loss(name: str, **kwargs):
    """Contrastive loss module by name; unknown names raise ConfigError listing the valid
    ones. (``dino`` is built by its objective with its head: ``raysv.losses.dino``.)"""
    from raysv.losses import contrastive

    table = {
        "ava": contrastive.AllVersusAll,
        "aproto": contrastive.AngularPrototypical,
        "ge2e": contrastive.GE2E,
        "ntxent": contrastive.NTXent,
    }
    if name not in table:
        raise ConfigError(f"unknown loss {name!r}; valid: {', '.join(LOSSES)}")
    return table[name](**kwargs)
