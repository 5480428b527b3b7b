"""General Preference Models (GPM, arXiv 2410.02197) and Bradley-Terry reward models on a causal LM's decoder.

One module for everything that must agree between training (``selfplay train --method gpm | bt-rm``), the
judges (``gpm:PATH``, ``reward-model:PATH``) and ``selfplay eval preference``, so a trained judge scores a pair
exactly as the trainer did:

* the encoding (the GPM repo's ``GeneralRewardDataset`` and ``GPMPipeline``): prompt + response rendered by
  the chat template, tokenized (the tokenizer's own special tokens), the start kept when too long, the LAST
  token forced to EOS; the prompt length is that of the prompt alone, rendered the same way;
* the layout: left padding, position ids from the attention mask, so every row ends at the last column;
* the head: the decoder's last hidden state at the last position -> ``value_head`` Linear(H, D, bias=False)
  -> L2-normalised v (D = 2m) or a scalar reward r (D = 1, Bradley-Terry); optionally ``prompt_head``
  Linear(H, m, bias=False) on the last prompt token's state -> gates b = softmax (the anchor's inference
  code; its training HEAD divides by an undefined ``sqrt(hidden_dim)``). Heads start N(0, 1/(H+1)) as theirs.

Checkpoint (the GPM repo's format, which its ``GPMPipeline`` and our judges load): the backbone's weights
under the causal LM's prefix (``model.layers...``; no ``lm_head``: a scorer never uses it), ``value_head.weight``
[D, H], ``prompt_head.weight`` [m, H], and in ``config.json`` a ``preference_head`` record
``{value_head_dim, prompt_head, tau, normalize}`` that the judges read (published GPM checkpoints have none:
tau 0.1, or 1 for width 1, and normalised embeddings, as their run scripts).
"""

from __future__ import annotations

import copy
import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from selfplay.core.examples import TokenizedExample, TrainRecord, response_text
from selfplay.errors import ConfigError, UserError

HEAD_RECORD = "preference_head"  # the config.json key of a checkpoint's head settings
HEAD_WEIGHTS = ("value_head.weight", "prompt_head.weight")


@dataclass(frozen=True)
class HeadSpec:
    """What the head computes; saved into the checkpoint's config and read back by every loader."""

    value_head_dim: int = 6  # D: 2m for a GPM, 1 for a Bradley-Terry reward
    prompt_head: bool = False
    tau: float = 0.1
    normalize: bool = True  # L2-normalise v (GPM only)

    @property
    def blocks(self) -> int:
        """m, the number of 2x2 blocks (0 for a scalar reward)."""
        return self.value_head_dim // 2 if self.value_head_dim > 1 else 0


def check_head(value_head_dim: int, prompt_head: bool, tau: float, where: str = "train.gpm") -> None:
    """ConfigError for a head that cannot exist: width < 1, odd width > 1, a gate on a scalar, tau <= 0."""
    if value_head_dim < 1:
        raise ConfigError(f"{where}.value_head_dim must be at least 1, got {value_head_dim}")
    if value_head_dim > 1 and value_head_dim % 2:
        raise ConfigError(f"{where}.value_head_dim={value_head_dim} is odd: a GPM embeds into 2x2 blocks, so the "
                          "width must be even (2m), or 1 for a Bradley-Terry reward")
    if prompt_head and value_head_dim == 1:
        raise ConfigError(f"{where}.prompt_head gates the 2x2 blocks of a GPM; a width-1 (Bradley-Terry) head "
                          "has none")
    if tau <= 0:
        raise ConfigError(f"{where}.tau must be positive, got {tau}")


class PreferenceModel(nn.Module):
    """A decoder (a causal LM's backbone, LoRA layers included) plus the value and prompt heads.

    ``forward`` takes a :func:`collate_conversations` batch and returns ``(values [N, D], gates [N, m])``, float32:
    v (normalised) or r, and b (ones without a prompt head; [N, 0] for a scalar reward).
    """

    def __init__(self, decoder: nn.Module, spec: HeadSpec, *, prefix: str = "model",
                 causal_class: str | None = None, peft_model: Any = None) -> None:
        super().__init__()
        check_head(spec.value_head_dim, spec.prompt_head, spec.tau)
        self.decoder, self.spec, self.prefix, self.causal_class = decoder, spec, prefix, causal_class
        self.config = decoder.config  # what accelerate reads off a prepared model (DeepSpeed "auto" sizes)
        hidden = decoder.config.hidden_size
        self.value_head = nn.Linear(hidden, spec.value_head_dim, bias=False)
        self.prompt_head = nn.Linear(hidden, spec.blocks, bias=False) if spec.prompt_head else None
        for head in (self.value_head, self.prompt_head):
            if head is not None:
                nn.init.normal_(head.weight, mean=0.0, std=1 / (hidden + 1))  # the anchor's initialisation
        # The PEFT model the decoder's LoRA layers belong to (merged on save), kept off the module tree so its
        # lm_head is not a parameter of this model (DDP would find it unused).
        self._peft = [peft_model] if peft_model is not None else []

    @classmethod
    def from_causal_lm(cls, model: Any, spec: HeadSpec) -> PreferenceModel:
        """Wrap a (possibly PEFT-wrapped) HF causal LM: its decoder, fresh heads."""
        peft = model if hasattr(model, "get_base_model") else None
        inner = model.get_base_model() if peft is not None else model
        decoder = inner.base_model
        if decoder is inner:
            raise UserError(f"{type(inner).__name__} has no separate decoder to put a preference head on")
        return cls(decoder, spec, prefix=inner.base_model_prefix, causal_class=type(inner).__name__, peft_model=peft)

    def load_heads(self, heads: dict[str, torch.Tensor], where: str) -> None:
        """Start from a checkpoint's heads (continued training, or inference); shapes must match the spec."""
        for name, param in (("value_head.weight", self.value_head.weight),
                            ("prompt_head.weight", None if self.prompt_head is None else self.prompt_head.weight)):
            if (name in heads) != (param is not None):
                raise ConfigError(f"{where} {'has' if name in heads else 'has no'} '{name}', but the configured head "
                                  f"{'has none' if param is None else 'needs one'} (train.gpm.prompt_head)")
            if param is not None:
                if tuple(heads[name].shape) != tuple(param.shape):
                    raise ConfigError(f"{where}: '{name}' is {tuple(heads[name].shape)}, the configured head "
                                      f"{tuple(param.shape)} (train.gpm.value_head_dim={self.spec.value_head_dim})")
                with torch.no_grad():
                    param.copy_(heads[name].to(param.dtype))

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, position_ids: torch.Tensor,
                prompt_index: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        hidden = self.decoder(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids,
                              use_cache=False).last_hidden_state  # [N, T, H]
        values = self.value_head(hidden[:, -1, :]).float()  # left padding: every row ends at the last column
        if self.spec.value_head_dim > 1 and self.spec.normalize:
            values = F.normalize(values, p=2, dim=-1)
        if self.prompt_head is not None:
            rows = torch.arange(hidden.shape[0], device=hidden.device)
            gates = torch.softmax(self.prompt_head(hidden[rows, prompt_index]).float(), dim=-1)
        else:
            gates = values.new_ones(values.shape[0], self.spec.blocks)
        return values, gates

    # ---- saving: the GPM repo's checkpoint layout (see the module docstring)

    def merge_and_unload(self) -> PreferenceModel:
        """Fold LoRA adapters into the decoder's weights (in place, once); returns this model."""
        if self._peft:
            self._peft.pop().merge_and_unload()  # replaces each LoRA layer by its merged base layer, in place
        return self

    def save_pretrained(self, save_dir: str | Path, state_dict: dict[str, torch.Tensor] | None = None,
                        **_: Any) -> None:
        """Write the checkpoint. ``state_dict``: this model's, gathered across processes (ZeRO-3/FSDP); with
        LoRA the adapters are merged first and the merged weights saved, heads included (a scorer is only
        ever loaded whole: ``gpm:PATH`` cannot apply an adapter)."""
        from huggingface_hub import save_torch_state_dict

        if self._peft:
            self.merge_and_unload()
            state_dict = None
        sd = state_dict if state_dict is not None else self.state_dict()
        weights = {}
        for key, value in sd.items():
            if key.startswith("decoder."):
                weights[f"{self.prefix}.{key.removeprefix('decoder.')}"] = value
            elif key in HEAD_WEIGHTS:
                weights[key] = value
        save_dir = Path(save_dir)
        save_dir.mkdir(parents=True, exist_ok=True)
        save_torch_state_dict({k: v.detach().contiguous() for k, v in weights.items()}, save_dir)
        config = copy.deepcopy(self.decoder.config)
        if self.causal_class:
            config.architectures = [self.causal_class]
        setattr(config, HEAD_RECORD, asdict(self.spec))
        config.save_pretrained(save_dir)


class HeadScorer(nn.Module):
    """The module training wraps (DDP/FSDP/DeepSpeed), as :class:`~selfplay.core.logprobs.SequenceLogps` is for
    log-probs: its forward is the preference model's, so gradient reduction and parameter gathering see it."""

    def __init__(self, model: PreferenceModel) -> None:
        super().__init__()
        self.model = model
        self.config = model.config
        self._no_split_modules = getattr(model.decoder, "_no_split_modules", None)

    def forward(self, **batch: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.model(**batch)


# --------------------------------------------------------------------------- encoding and batches


@dataclass
class ConversationExample(TokenizedExample):
    """A scored pair: ``responses`` hold WHOLE conversations (prompt + response, as encoded), ``prompt_ids`` is
    empty, and ``prompt_lengths`` say where each conversation's prompt ends."""

    prompt_lengths: list[int] = field(default_factory=list)


def require_chat_template(tokenizer: Any, where: str) -> None:
    if not getattr(tokenizer, "chat_template", None):
        raise UserError(f"{where}: the tokenizer has no chat template, so prompts and responses cannot be rendered "
                        "the way a preference model reads them")


def encode_conversation(tokenizer: Any, prompt: list[dict[str, str]], response: str,
                        max_length: int) -> tuple[list[int], int, bool]:
    """(token ids, prompt length, cut?) of prompt + response, as the GPM repo encodes it (module docstring)."""
    text = tokenizer.apply_chat_template([*prompt, {"role": "assistant", "content": response}], tokenize=False)
    ids = tokenizer(text)["input_ids"]
    cut = len(ids) > max_length
    ids = ids[:max_length]
    ids[-1] = tokenizer.eos_token_id  # as the anchor: truncation can never drop the pooled EOS
    prompt_len = len(tokenizer(tokenizer.apply_chat_template(prompt, tokenize=False))["input_ids"])
    return ids, min(prompt_len, len(ids)), cut


def collate_conversations(rows: list[list[int]], prompt_lengths: list[int], pad_id: int) -> dict[str, torch.Tensor]:
    """Left-padded ``input_ids``/``attention_mask``/``position_ids`` [N, T] and ``prompt_index`` [N]: the column
    of each row's last prompt token (the prompt head's input)."""
    T = max(len(r) for r in rows)
    input_ids = torch.full((len(rows), T), pad_id, dtype=torch.long)
    mask = torch.zeros((len(rows), T), dtype=torch.long)
    prompt_index = torch.zeros(len(rows), dtype=torch.long)
    for i, (row, plen) in enumerate(zip(rows, prompt_lengths)):
        input_ids[i, T - len(row):] = torch.tensor(row)
        mask[i, T - len(row):] = 1
        prompt_index[i] = T - len(row) + max(plen, 1) - 1
    position_ids = (mask.cumsum(-1) - 1).masked_fill(mask == 0, 1)  # as GPMPipeline / the anchor's forward
    return {"input_ids": input_ids, "attention_mask": mask, "position_ids": position_ids, "prompt_index": prompt_index}


def tokenize_conversations(records: list[TrainRecord], tokenizer: Any,
                           max_length: int) -> tuple[list[ConversationExample], int]:
    """Encode each pair's two conversations; returns (examples, how many were cut to ``max_length``)."""
    require_chat_template(tokenizer, "preference-model training")
    examples, n_cut = [], 0
    for rec in records:
        encoded = [encode_conversation(tokenizer, rec.prompt, response_text(r), max_length) for r in rec.responses]
        cut = any(c for _, _, c in encoded)
        n_cut += int(cut)
        examples.append(ConversationExample(rec.id, [], [ids for ids, _, _ in encoded],
                                            [[True] * len(ids) for ids, _, _ in encoded], dict(rec.values), cut,
                                            prompt_lengths=[p for _, p, _ in encoded]))
    return examples, n_cut


def conversation_batch(examples: list[ConversationExample], pad_id: int) -> dict[str, torch.Tensor]:
    """Every pair's chosen conversation, then every rejected one ([2B] rows), as the log-prob batches are."""
    k = len(examples[0].responses)
    rows = [e.responses[j] for j in range(k) for e in examples]
    lengths = [e.prompt_lengths[j] for j in range(k) for e in examples]
    return collate_conversations(rows, lengths, pad_id)


# --------------------------------------------------------------------------- loading for inference


def find_head_weights(path: Path) -> dict[str, torch.Tensor] | None:
    """``value_head.weight`` and, if present, ``prompt_head.weight`` from a checkpoint's safetensors; None when
    it has no safetensors weights or no value head (a plain causal LM)."""
    from safetensors import safe_open

    path = Path(path)
    index = path / "model.safetensors.index.json"
    if index.is_file():
        weight_map = json.loads(index.read_text())["weight_map"]
        files = {name: path / weight_map[name] for name in HEAD_WEIGHTS if name in weight_map}
    elif (path / "model.safetensors").is_file():
        files = {name: path / "model.safetensors" for name in HEAD_WEIGHTS}
    else:
        return None
    heads = {}
    for name, file in files.items():
        with safe_open(str(file), framework="pt") as f:
            if name in f.keys():
                heads[name] = f.get_tensor(name)
    return heads if "value_head.weight" in heads else None


def load_head_weights(path: Path) -> dict[str, torch.Tensor]:
    """:func:`find_head_weights`, required: a checkpoint without heads is a UserError naming it."""
    heads = find_head_weights(path)
    if heads is None:
        raise UserError(f"'{path}' is not a GPM or Bradley-Terry head checkpoint: its weights have no "
                        "'value_head.weight' (train one with `selfplay train --method gpm` or `--method bt-rm`)")
    return heads


def head_record(path: Path) -> dict[str, Any] | None:
    """The ``preference_head`` record of a checkpoint's config.json (None: not written by selfplay)."""
    config = Path(path) / "config.json"
    if not config.is_file():
        return None
    return json.loads(config.read_text()).get(HEAD_RECORD)


def head_spec(path: Path, heads: dict[str, torch.Tensor]) -> HeadSpec:
    """The head a checkpoint holds: its record where it has one, else the published GPM defaults."""
    width = heads["value_head.weight"].shape[0]
    record = head_record(path) or {}
    spec = HeadSpec(value_head_dim=width, prompt_head="prompt_head.weight" in heads,
                    tau=float(record.get("tau", 0.1 if width > 1 else 1.0)),
                    normalize=bool(record.get("normalize", True)))
    try:
        check_head(spec.value_head_dim, spec.prompt_head, spec.tau, where=f"checkpoint '{path}'")
    except ConfigError as e:
        raise UserError(str(e)) from None
    return spec


def load_preference_model(path: str | Path, device: str, dtype: torch.dtype) -> tuple[PreferenceModel, Any]:
    """(model in eval mode on ``device``, tokenizer) of a GPM / BT head checkpoint; the heads must be there."""
    from transformers import AutoModel, AutoTokenizer
    from transformers.utils import logging as hf_logging

    from selfplay.models import freeze_import_time_objects

    freeze_import_time_objects()  # as load_model does before a process's first model
    path = Path(path)
    heads = load_head_weights(path)
    spec = head_spec(path, heads)
    previous = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()  # the head weights are (expected) unused by the bare decoder
    try:
        decoder = AutoModel.from_pretrained(path, dtype=dtype)
    finally:
        hf_logging.set_verbosity(previous)
    model = PreferenceModel(decoder, spec)
    model.load_heads(heads, f"checkpoint '{path}'")
    tokenizer = AutoTokenizer.from_pretrained(path)
    require_chat_template(tokenizer, f"preference model '{path}'")
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return model.to(device=device, dtype=dtype).eval(), tokenizer


@torch.inference_mode()
def embed(model: PreferenceModel, tokenizer: Any, conversations: list[tuple[list[dict[str, str]], str]], *,
          batch_size: int, max_length: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(values [N, D], gates [N, m]) float32 on the CPU for N (prompt, response) pairs, ``batch_size`` at a time."""
    device = next(model.parameters()).device
    values, gates = [], []
    for start in range(0, len(conversations), batch_size):
        encoded = [encode_conversation(tokenizer, p, r, max_length) for p, r in conversations[start:start + batch_size]]
        batch = collate_conversations([ids for ids, _, _ in encoded], [n for _, n, _ in encoded],
                                      tokenizer.pad_token_id)
        v, b = model(**{k: t.to(device) for k, t in batch.items()})
        values.append(v.float().cpu())
        gates.append(b.float().cpu())
    return torch.cat(values), torch.cat(gates)
