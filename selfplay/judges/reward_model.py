"""``reward-model:PATH``: a Bradley–Terry reward model: any HF sequence classifier with one output, or a
value-head checkpoint of width 1 (the GPM repo's Bradley–Terry format, which ``selfplay train --method bt-rm``
writes), scored with its own encoding through :class:`~selfplay.judges.gpm.GPMJudge`."""

from __future__ import annotations

from typing import Literal

from selfplay.errors import UserError
from selfplay.judges.base import JudgeItem, JudgeResult, resolve_device


def load_tokenizer_with_template(path: str, what: str):
    """The checkpoint's tokenizer; it must carry a chat template (we score whole conversations)."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(path)
    if not tokenizer.chat_template:
        raise UserError(f"{what} '{path}': the tokenizer has no chat template, so prompts and responses "
                        "cannot be formatted the way the model was trained")
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


class RewardModelJudge:
    """Scores each (prompt, sample) conversation with ``AutoModelForSequenceClassification``.

    The conversation is formatted with the model's own chat template, ``batch_size`` conversations
    per forward pass; the score is the single logit (the classifier reads the last non-pad token).
    """

    kind: Literal["scores"] = "scores"
    needs_reference = False

    def __init__(self, path: str, *, batch_size: int = 8, device: str = "auto", max_length: int = 4096) -> None:
        import torch
        from transformers import AutoModelForSequenceClassification

        from selfplay.core.preference_model import find_head_weights
        from selfplay.models import freeze_import_time_objects, resolve_model

        local = resolve_model(path)
        heads = find_head_weights(local)
        self._head_judge = None
        if heads is not None:  # a value-head checkpoint: pooled and scaled exactly as it was trained
            width = heads["value_head.weight"].shape[0]
            if width != 1:
                raise UserError(f"'{path}' is a General Preference Model (value head of width {width}), not a "
                                f"scalar reward model: use --judge gpm:{path}")
            from selfplay.judges.gpm import GPMJudge

            self._head_judge = GPMJudge(local, batch_size=batch_size, device=device, max_length=max_length)
            return
        self.device = resolve_device(device)
        self.batch_size = batch_size
        self.max_length = max_length
        self.tokenizer = load_tokenizer_with_template(local, "reward model")
        dtype = torch.bfloat16 if self.device.startswith("cuda") else torch.float32
        freeze_import_time_objects()  # as load_model does before a process's first model
        self.model = AutoModelForSequenceClassification.from_pretrained(local, dtype=dtype)
        if self.model.config.num_labels != 1:
            raise UserError(f"reward model '{path}' has {self.model.config.num_labels} outputs; a reward "
                            "model has exactly one (num_labels=1)")
        if self.model.config.pad_token_id is None:
            self.model.config.pad_token_id = self.tokenizer.pad_token_id
        self.model.to(self.device).eval()

    def _score_conversations(self, conversations: list[list[dict[str, str]]]) -> list[float]:
        """Rewards [N] for N conversations, ``batch_size`` at a time."""
        import torch

        rewards: list[float] = []
        for start in range(0, len(conversations), self.batch_size):
            batch = self.tokenizer.apply_chat_template(
                conversations[start:start + self.batch_size], tokenize=True, return_dict=True,
                return_tensors="pt", padding=True, truncation=True, max_length=self.max_length,
            )
            batch = {k: v.to(self.device) for k, v in batch.items()}
            with torch.inference_mode():
                logits = self.model(**batch).logits  # [B, 1]
            rewards.extend(logits[:, 0].float().cpu().tolist())
        return rewards

    def score(self, items: list[JudgeItem]) -> list[JudgeResult]:
        """Flattens every (prompt, sample) of every item into one batched pass; scores [K] per item."""
        if self._head_judge is not None:
            return self._head_judge.score(items)
        conversations = [item["prompt_messages"] + [{"role": "assistant", "content": sample}]
                         for item in items for sample in item["samples"]]
        rewards = self._score_conversations(conversations)
        results: list[JudgeResult] = []
        offset = 0
        for item in items:
            k = len(item["samples"])
            results.append({"scores": rewards[offset:offset + k], "errors": 0})
            offset += k
        return results
