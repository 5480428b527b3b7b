"""``gpm:PATH``: a General Preference Model (Zhang et al., arXiv 2410.02197).

GPM embeds each (prompt, response) into a unit vector v ∈ R^{2m} and scores a pair with the block
skew-symmetric operator R: S(i, j) = v_iᵀ Rᵀ v_j / τ, so S(i, j) = −S(j, i) by construction and
cyclic (intransitive) preferences can be expressed. R has 2×2 blocks [[0, −b_k], [b_k, 0]], with
b = softmax(prompt_head(h_prompt)) when the checkpoint has a prompt head, else b_k = 1.

A GPM checkpoint is a causal-LM directory whose weights add ``value_head.weight`` [2m, hidden]
(and optionally ``prompt_head.weight`` [m, hidden]): the GPM repo's format, and what ``selfplay train
--method gpm`` writes. Loading, encoding and pooling are :mod:`selfplay.core.preference_model`'s, shared with
the trainer (the GPM repo's ``GPMPipeline``: chat template, left padding, last token forced to EOS, its
hidden state projected by the value head and L2-normalised). τ comes from the checkpoint's
``preference_head`` record (selfplay-trained), else the published checkpoints' 0.1. A value head of
width 1 is GPM's Bradley–Terry variant; it yields scores r / τ (τ = 1 unless recorded).
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from selfplay.judges.base import JudgeItem, JudgeResult, resolve_device


class GPMJudge:
    """K×K raw skew-symmetric GPM scores per prompt (``win_matrix_kind = "skew_score"``), S = s / τ.

    GPO uses the score raw; SPPO turns it into P(i beats j) = sigmoid(S(i, j) − S(j, i)) in
    :mod:`selfplay.methods.sppo`, as the GPM repo's SPPO scripts (``compute_prob_from_raw.py``) do.
    """

    needs_reference = False

    def __init__(self, path: str, *, batch_size: int = 8, device: str = "auto", tau: float | None = None,
                 max_length: int = 4096) -> None:
        import torch

        from selfplay.core.preference_model import load_preference_model
        from selfplay.models import resolve_model

        local = Path(resolve_model(path))
        self.device = resolve_device(device)
        self.batch_size, self.max_length = batch_size, max_length
        dtype = torch.bfloat16 if self.device.startswith("cuda") else torch.float32
        self.model, self.tokenizer = load_preference_model(local, self.device, dtype)
        self.spec = self.model.spec
        self.tau = self.spec.tau if tau is None else tau
        self.dim = self.spec.value_head_dim
        self.kind: Literal["scores", "matrix"] = "scores" if self.dim == 1 else "matrix"

    def score(self, items: list[JudgeItem]) -> list[JudgeResult]:
        """Embeds all (prompt, sample) pairs ``batch_size`` at a time, then S[i][j] = s(i ≻ j) / τ per prompt."""
        from selfplay.core.judge_losses import gpm_score
        from selfplay.core.preference_model import embed

        conversations = [(item["prompt_messages"], sample) for item in items for sample in item["samples"]]
        values, gates = embed(self.model, self.tokenizer, conversations, batch_size=self.batch_size,
                              max_length=self.max_length)
        results: list[JudgeResult] = []
        offset = 0
        for item in items:
            k = len(item["samples"])
            v = values[offset:offset + k]  # [K, D]
            if self.dim == 1:
                results.append({"scores": (v[:, 0] / self.tau).tolist(), "errors": 0})
            else:
                # One gate per prompt, from the first sample's prompt-end state: a causal model sees the same
                # prompt prefix in every sample, and one shared gate keeps S exactly skew-symmetric.
                s = gpm_score(v[:, None, :], v[None, :, :], gates[offset]) / self.tau  # [K, K]
                results.append({"win_matrix": s.tolist(), "win_matrix_kind": "skew_score", "errors": 0})
            offset += k
        return results
