"""Sequence log-probabilities of responses given prompts, for training and reference precompute.

Layout choice (why not TRL's): every (prompt, response) sequence is LEFT-padded, so all responses end at
the last position. The model is then asked for logits of the last ``max_response_len + 1`` positions only
(``logits_to_keep``), which skips the vocabulary projection for prompt tokens — for a small model with a
large vocabulary (SmolLM2: 49k × 576) that projection is a fifth of the forward FLOPs. Position ids are
derived from the attention mask so left padding does not shift positions for any architecture.

Memory: the [N, R, V] logits (and their gradient) are the largest activations of a small model with a
large vocabulary. For an HF causal LM we therefore run the decoder alone and project only the response
positions to the vocabulary, a chunk of tokens at a time, recomputing each chunk in the backward pass
(activation checkpointing) — the idea of Liger's fused linear cross-entropy and TRL's chunked
log-softmax, written here because neither applies to left-padded ``logits_to_keep`` batches. Models that
transform their logits take the plain path; a one-time numeric check per model guards the split.

Training batches take the padding-free layout of :mod:`selfplay.core.packing` where the model allows it
(each prompt once, no padding; :func:`training_batch`); the left-padded layout stays for every other model and
for evaluation. Both go through :func:`sequence_logps` and give the same log-probs.

Distributed training wraps :class:`SequenceLogps` (not the HF model) in DDP/FSDP/DeepSpeed, so the
decoder call and the head chunks run inside the wrapper's own forward: DDP's gradient reduction, FSDP's
and ZeRO-3's parameter gathering all see them, and no distributed run materialises the logits either.
"""

from __future__ import annotations

import weakref
from collections.abc import Callable
from typing import TYPE_CHECKING

import torch
from torch.utils.checkpoint import checkpoint

from selfplay.core.packing import block_attention_mask, collate_packed, is_packed, packable, packed_example_batch, unpack

if TYPE_CHECKING:
    from selfplay.core.examples import TokenizedExample

# Vocabulary rows projected at once in the chunked path: chunk tokens x V floats ~ 64 MiB in fp32 (a chunk's
# backward holds its logits, their bf16 copy under autocast and their gradient: ~3x that at once).
_CHUNK_FLOATS = 2**24
_MIN_CHUNK_TOKENS = 64
# Per model: whether the decoder + lm_head split reproduced the model's own log-probs (checked once), and
# whether the packed layout did.
_SPLIT_OK: weakref.WeakKeyDictionary[torch.nn.Module, bool] = weakref.WeakKeyDictionary()
_PACKED_OK: weakref.WeakKeyDictionary[torch.nn.Module, bool] = weakref.WeakKeyDictionary()


def collate_left_padded(prompts: list[list[int]], responses: list[list[int]], pad_id: int,
                        masks: list[list[bool]] | None = None) -> dict[str, torch.Tensor]:
    """Concatenate prompt+response per row and left-pad to a batch.

    Returns ``input_ids``/``attention_mask``/``position_ids`` [N, T], and ``labels``/``label_mask`` [N, R]
    aligned with the last R positions (R = longest response): ``label_mask`` marks the response tokens
    whose log-prob counts — all of them, or those ``masks`` (one bool per response token) marks trained;
    tokens of context inside a response (tool observations) are fed to the model but never scored.
    """
    seqs = [p + r for p, r in zip(prompts, responses)]
    T = max(len(s) for s in seqs)
    R = max(len(r) for r in responses)
    n = len(seqs)
    input_ids = torch.full((n, T), pad_id, dtype=torch.long)
    attention_mask = torch.zeros((n, T), dtype=torch.long)
    labels = torch.full((n, R), pad_id, dtype=torch.long)
    label_mask = torch.zeros((n, R), dtype=torch.bool)
    for i, (s, r) in enumerate(zip(seqs, responses)):
        input_ids[i, T - len(s):] = torch.tensor(s)
        attention_mask[i, T - len(s):] = 1
        labels[i, R - len(r):] = torch.tensor(r)
        label_mask[i, R - len(r):] = torch.tensor(masks[i]) if masks is not None else True
    position_ids = (attention_mask.cumsum(-1) - 1).clamp(min=0)
    return {"input_ids": input_ids, "attention_mask": attention_mask, "position_ids": position_ids,
            "labels": labels, "label_mask": label_mask}


class SequenceLogps(torch.nn.Module):
    """The module distributed training wraps: its forward is :func:`sequence_logps` of the HF model inside.

    DDP prepares gradient reduction in the wrapped module's forward, and ZeRO-3/FSDP gather parameters
    around each submodule call made under it; calling the wrapped model's decoder and lm_head from outside
    would bypass both. With this module wrapped instead, the chunked path runs inside the wrapper.
    ``sync=True`` (several processes) makes every rank take the same path and project the same number of
    chunks, so ZeRO-3/FSDP issue the same parameter gathers on every rank.
    """

    def __init__(self, model: torch.nn.Module, sync: bool = False) -> None:
        super().__init__()
        self.model, self.sync = model, sync
        # What accelerate reads off the model it prepares: the config (DeepSpeed's "auto" bucket sizes) and the
        # decoder layer classes FSDP wraps one by one (TRANSFORMER_BASED_WRAP; PEFT keeps them on the base model).
        self.config = getattr(model, "config", None)
        inner = model.get_base_model() if hasattr(model, "get_base_model") else model
        self._no_split_modules = getattr(inner, "_no_split_modules", None)

    def forward(self, **batch: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Batch of :func:`collate_left_padded` or :func:`~selfplay.core.packing.collate_packed` (as keyword
        tensors) -> (``logps`` [N], ``num_tokens`` [N])."""
        return sequence_logps(self.model, batch, sync=self.sync)


def sequence_logps(model: torch.nn.Module, batch: dict[str, torch.Tensor],
                   sync: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """Summed log-probs of each row's response and its token count.

    batch: output of :func:`collate_left_padded` or of :func:`~selfplay.core.packing.collate_packed` (on the
    model's device). Returns ``logps`` [N] (float32, differentiable when grad is on) and ``num_tokens`` [N].
    ``sync``: called on every rank of an initialised process group at once (see :class:`SequenceLogps`).
    """
    if is_packed(batch):
        return _packed_sequence_logps(model, batch, sync)
    parts = _decoder_and_head(model)
    if parts is not None and model not in _SPLIT_OK:
        probe = {k: v[:1] for k, v in batch.items()}
        _SPLIT_OK[model] = _agrees_with_model(model, probe, lambda: _chunked_logps(*parts, probe, sync=sync), sync)
    if parts is not None and _SPLIT_OK[model]:
        return _chunked_logps(*parts, batch, sync=sync)
    return _full_logits_logps(model, batch)


def _agrees_with_model(model: torch.nn.Module, padded: dict[str, torch.Tensor],
                       fast: Callable[[], tuple[torch.Tensor, torch.Tensor]], sync: bool) -> bool:
    """Whether ``fast()`` gives the model's own log-probs of the left-padded ``padded`` batch (the same
    rows), in eval mode without grad; under ``sync`` only if it does on every rank."""
    training = model.training
    model.eval()  # dropout would make the two passes differ for no fault of the fast path
    with torch.no_grad():
        plain, mine = _full_logits_logps(model, padded)[0], fast()[0]
    model.train(training)
    # bf16 autocast rounds differently along the two paths; a real mismatch is orders larger.
    ok = bool(torch.allclose(plain, mine, rtol=1e-3, atol=0.05))
    return bool(_all_ranks(torch.tensor(int(ok), device=plain.device), "min")) if sync else ok


def _all_ranks(value: torch.Tensor, op: str) -> int:
    """``value`` reduced over the ranks of the default process group (itself when there is none)."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        value = value.clone()
        dist.all_reduce(value, op=dist.ReduceOp.MIN if op == "min" else dist.ReduceOp.MAX)
    return int(value.item())


def _decoder_and_head(model: torch.nn.Module) -> tuple[torch.nn.Module, torch.nn.Module] | None:
    """(decoder, lm_head) of a plain HF causal LM (PEFT unwrapped), else None."""
    from transformers import PreTrainedModel

    inner = model.get_base_model() if hasattr(model, "get_base_model") else model  # PEFT: LoRA layers stay in
    if not isinstance(inner, PreTrainedModel):  # DDP / FSDP / DeepSpeed wrappers, or not an HF model
        return None
    cfg = inner.config
    # Architectures that cap or scale logits after lm_head (Gemma 2/3, Cohere, Granite) keep the plain path.
    if any(getattr(cfg, k, None) not in (None, 1, 1.0) for k in ("final_logit_softcapping", "logit_scale",
                                                                   "logits_scaling")):
        return None
    decoder, head = inner.get_decoder(), inner.get_output_embeddings()
    # A plain Linear head only: wrapped heads (PEFT modules_to_save, tensor-parallel) keep the full path.
    if decoder is None or decoder is inner or type(head) is not torch.nn.Linear:
        return None
    return decoder, head


def _chunk_token_logps(head: torch.nn.Module, hidden: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """hidden [M, H], labels [M] -> log p(label) [M] in float32."""
    logits = head(hidden).float()
    return torch.gather(logits, 1, labels.unsqueeze(-1)).squeeze(-1) - torch.logsumexp(logits, dim=-1)


def _chunked_logps(decoder: torch.nn.Module, head: torch.nn.Module, batch: dict[str, torch.Tensor],
                   sync: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    labels, label_mask = batch["labels"], batch["label_mask"]
    R = labels.shape[1]
    hidden = decoder(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                     position_ids=batch["position_ids"], use_cache=False).last_hidden_state
    # Positions -R-1 .. -2 predict the R label slots; only real response tokens are projected (no padding).
    picked_hidden = hidden[:, -R - 1:-1, :][label_mask]  # [M, H]
    flat = _head_logps(head, picked_hidden, labels[label_mask], sync)
    token_logps = torch.zeros(label_mask.shape, dtype=torch.float32, device=flat.device).masked_scatter(label_mask, flat)
    return token_logps.sum(-1), label_mask.sum(-1)


def _head_logps(head: torch.nn.Module, picked_hidden: torch.Tensor, picked_labels: torch.Tensor,
                sync: bool) -> torch.Tensor:
    """log p(label) [M] float32 of hidden states [M, H], projected to the vocabulary a chunk at a time."""
    # out_features, not weight.shape: ZeRO-3 leaves partitioned weights empty outside their module's forward.
    chunk = max(_MIN_CHUNK_TOKENS, _CHUNK_FLOATS // head.out_features)
    chunks = -(-picked_labels.shape[0] // chunk)
    if sync:  # the same number of head calls on every rank (trailing chunks may be empty)
        chunks = _all_ranks(torch.tensor(chunks, device=picked_labels.device), "max")
    parts = []
    for i in range(0, chunks * chunk, chunk):
        h, y = picked_hidden[i:i + chunk], picked_labels[i:i + chunk]
        if torch.is_grad_enabled():
            parts.append(checkpoint(_chunk_token_logps, head, h, y, use_reentrant=False))
        else:
            parts.append(_chunk_token_logps(head, h, y))
    return torch.cat(parts) if parts else picked_hidden.new_zeros(0, dtype=torch.float32)


def uses_packing(model: torch.nn.Module) -> bool:
    """Whether training batches for ``model`` take the packed layout: a plain decoder + head (the chunked
    path) whose attention takes a block mask. Every rank of a run gets the same answer (same model)."""
    parts = _decoder_and_head(model)
    return parts is not None and packable(parts[0].config)


def training_batch(model: torch.nn.Module, examples: list[TokenizedExample], pad_id: int) -> dict[str, torch.Tensor]:
    """The batch the trainer scores ``examples`` with: packed where :func:`uses_packing`, else left-padded."""
    return packed_example_batch(examples) if uses_packing(model) else example_batch(examples, pad_id)


def _packed_sequence_logps(model: torch.nn.Module, batch: dict[str, torch.Tensor],
                           sync: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """:func:`sequence_logps` of a packed batch. Checked once per model against the model's own forward on
    the first row alone (left-padded layout); a model that fails it scores the batch unpacked."""
    parts = _decoder_and_head(model)
    if parts is not None and model not in _PACKED_OK:
        prompts, responses, masks = unpack(batch)
        device = batch["input_ids"].device
        padded = {k: v.to(device) for k, v in collate_left_padded(prompts[:1], responses[:1], 0, masks[:1]).items()}
        packed = {k: v.to(device) for k, v in collate_packed(prompts[:1], [responses[:1]], [masks[:1]]).items()}
        _PACKED_OK[model] = _agrees_with_model(model, padded, lambda: _packed_logps(*parts, packed, sync=sync), sync)
    if parts is not None and _PACKED_OK[model]:
        return _packed_logps(*parts, batch, sync=sync)
    prompts, responses, masks = unpack(batch)
    padded = collate_left_padded(prompts, responses, 0, masks)
    return sequence_logps(model, {k: v.to(batch["input_ids"].device) for k, v in padded.items()}, sync=sync)


def _packed_logps(decoder: torch.nn.Module, head: torch.nn.Module, batch: dict[str, torch.Tensor],
                  sync: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """Decoder over the packed rows with their block mask, then the chunked head over the M scored tokens."""
    dtype = decoder.get_input_embeddings().weight.dtype
    mask = block_attention_mask(decoder.config, batch, dtype)
    hidden = decoder(input_ids=batch["input_ids"], attention_mask=mask, position_ids=batch["position_ids"],
                     use_cache=False).last_hidden_state  # [R, C, H]
    hidden = hidden.reshape(-1, hidden.shape[-1])  # [R * C, H]: label_index is flat
    flat = _head_logps(head, hidden[batch["label_index"]], batch["label_ids"], sync)
    row_tokens = batch["row_tokens"]
    logps = torch.zeros(row_tokens.shape, dtype=torch.float32, device=flat.device).index_add(0, batch["label_row"], flat)
    return logps, row_tokens


def _full_logits_logps(model: torch.nn.Module, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """The model's own forward with ``logits_to_keep``: [N, R+1, V] logits at once."""
    labels, label_mask = batch["labels"], batch["label_mask"]
    R = labels.shape[1]
    out = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                position_ids=batch["position_ids"], logits_to_keep=R + 1, use_cache=False)
    # logits[:, j] predicts token j+1; the last R+1 kept positions predict the last R tokens + one past the end.
    logits = out.logits[:, :-1, :].float()
    # log p(label) = logit[label] - logsumexp(logits): avoids materialising a second [N, R, V] tensor.
    picked = torch.gather(logits, 2, labels.unsqueeze(-1)).squeeze(-1)
    token_logps = picked - torch.logsumexp(logits, dim=-1)
    token_logps = token_logps * label_mask
    return token_logps.sum(-1), label_mask.sum(-1)


def example_batch(examples: list[TokenizedExample], pad_id: int) -> dict[str, torch.Tensor]:
    """Rows grouped by response slot: every example's first response, then every second one (a pair's
    chosen rows, then its rejected rows), so one forward pass scores all of them ([B * k] rows)."""
    k = len(examples[0].responses)
    prompts = [e.prompt_ids for e in examples] * k
    responses = [e.responses[j] for j in range(k) for e in examples]
    masks = [e.masks[j] for j in range(k) for e in examples]
    return collate_left_padded(prompts, responses, pad_id, masks)


def split_responses(values: torch.Tensor, k: int) -> list[torch.Tensor]:
    """[B * k] -> k tensors of [B], for a batch built by :func:`example_batch`."""
    return list(values.view(k, -1).unbind(0))
