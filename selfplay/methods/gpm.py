"""Training the judges: a General Preference Model (``gpm``, arXiv 2410.02197) and a Bradley-Terry reward
model (``bt-rm``), with the ``scorer`` objective (a head on the decoder, no reference pass).

They are trained once, with ``selfplay train``, on preference pairs (:mod:`selfplay.data.preference_pairs`), and
then judge SPPO / GPO samples as ``rank.judge: gpm:PATH`` (or ``reward-model:PATH`` for ``bt-rm``); ``loop``
refuses them (a judge's checkpoint is no policy to sample the next iteration from). Their ``build`` turns
ranked samples (``selfplay rank`` output) into every strictly preferred pair.

Presets are the anchor's (general-preference/general-preference-model ``scripts/train_rm_general_preference.py``
and the reward models named in ``run_gpo_llama-3_table_gp.sh``: batch 32, tau 0.1 (GPM) or 1 (BT), lr 1e-5 for
Gemma-2B, 2 epochs, value head 6): AdamW betas (0.9, 0.95), weight decay 0, cosine with 3% warm-up; gradient
clipping at 1.0 is the trainer's own.
"""

from __future__ import annotations

from typing import Any

from selfplay.data.preference_pairs import pairs_from_ranked
from selfplay.methods.base import Method


def build_ranked_pairs(rows: list[dict[str, Any]], iteration: int, cfg: Any) -> tuple[list[dict[str, Any]], dict]:
    """Every strictly preferred pair of every ranked record (K(K-1)/2 at most per prompt)."""
    records, same = [], 0
    for row in rows:
        pairs, n_same = pairs_from_ranked(row)
        records += pairs
        same += n_same
    return records, {"pairs": len(records), "prompts": len(rows), "dropped_same_text": same}


def _anchor_preset(value_head_dim: int, tau: float) -> dict[str, Any]:
    return {"train": {"optimizer": "adamw", "adam_betas": [0.9, 0.95], "weight_decay": 0.0, "scheduler": "cosine",
                      "warmup_ratio": 0.03, "batch_size": 32, "epochs": 2.0, "lr": 1e-5,
                      "gpm": {"value_head_dim": value_head_dim, "tau": tau}}}


GPM = Method(
    name="gpm",
    summary="train a General Preference Model: skew-symmetric pair scores from 2m-wide embeddings (arXiv 2410.02197)",
    collects="ranked",
    build=build_ranked_pairs,
    objective="scorer",
    default_loss="gpm",
    preset=_anchor_preset(6, 0.1),
    iterates=False,
)
BT_RM = Method(
    name="bt-rm",
    summary="train a Bradley-Terry reward model (a width-1 head; TRL's reward loss at tau 1)",
    collects="ranked",
    build=build_ranked_pairs,
    objective="scorer",
    default_loss="bt",
    preset=_anchor_preset(1, 1.0),
    iterates=False,
)
