"""Padding-free batches with one prompt pass per record: the training batch layout of :mod:`selfplay.core.logprobs`.

A batch of B records with k responses each (a pair: chosen and rejected) is laid out as ONE row of L tokens::

    [prompt_0 | response_0,0 | response_0,1 | prompt_1 | response_1,0 | ...]

Each prompt appears once; each response attends to its own prompt and to itself (causally), never to a
sibling response or to another record (a block attention mask); position ids restart at the prompt
length for every response, so a response sees exactly the positions it would see after its prompt alone.
Nothing is padding. Measured on the SPIN benchmark pairs the left-padded layout spent 17% of its attention
positions on padding and 20% of its tokens on the second copy of each prompt (bench/RESULTS.md); this
layout spends neither, and the decoder's activations (most of a small model's training memory) shrink
with it.

The hidden state predicting the first token of a response is the prompt's last one, shared by the k
responses; every later response token is predicted from the token before it.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import torch

if TYPE_CHECKING:
    from selfplay.core.examples import TokenizedExample

# Attention implementations that take an arbitrary 4D mask (transformers builds it in their own format).
MASKABLE_ATTENTION = ("sdpa", "eager")
PACKED_KEYS = ("input_ids", "position_ids", "block", "branch", "scored", "label_index", "label_ids", "label_row",
               "row_tokens")


def collate_packed(prompts: list[list[int]], responses: list[list[list[int]]],
                   masks: list[list[list[bool]]] | None = None) -> dict[str, torch.Tensor]:
    """Pack B records (a prompt and k responses each) into one row; see the module docstring.

    ``responses[b][j]`` is response j of record b, ``masks[b][j][t]`` whether its token t is scored (all
    are when ``masks`` is None). Output rows (the log-probs' order) are response-major, row ``j * B + b``,
    as :func:`selfplay.core.logprobs.example_batch` orders them. Returns

    * ``input_ids``, ``position_ids`` [1, L]; ``block`` [1, L] (record of each token), ``branch`` [1, L]
      (0 = prompt, j + 1 = response j), ``scored`` [1, L] (bool: a response token whose log-prob counts);
    * ``label_index`` [M] (position whose hidden state predicts each scored token), ``label_ids`` [M],
      ``label_row`` [M] (its output row) for the M scored tokens; ``row_tokens`` [N = B * k] scored tokens per row.
    """
    n_records, k = len(prompts), len(responses[0])
    ids: list[int] = []
    pos: list[int] = []
    block: list[int] = []
    branch: list[int] = []
    scored: list[bool] = []
    label_index: list[int] = []
    label_ids: list[int] = []
    label_row: list[int] = []
    row_tokens = [0] * (n_records * k)
    for b, prompt in enumerate(prompts):
        if not prompt:
            raise ValueError("a packed record needs at least one prompt token (it predicts the response's first)")
        p = len(prompt)
        ids += prompt
        pos += range(p)
        block += [b] * p
        branch += [0] * p
        scored += [False] * p
        last_prompt = len(ids) - 1
        for j, response in enumerate(responses[b]):
            start, row = len(ids), j * n_records + b
            keep = masks[b][j] if masks is not None else [True] * len(response)
            ids += response
            pos += range(p, p + len(response))
            block += [b] * len(response)
            branch += [j + 1] * len(response)
            scored += keep
            for t, (token, m) in enumerate(zip(response, keep)):
                if m:
                    label_index.append(last_prompt if t == 0 else start + t - 1)
                    label_ids.append(token)
                    label_row.append(row)
                    row_tokens[row] += 1
    long = torch.long
    return {"input_ids": torch.tensor([ids], dtype=long), "position_ids": torch.tensor([pos], dtype=long),
            "block": torch.tensor([block], dtype=long), "branch": torch.tensor([branch], dtype=long),
            "scored": torch.tensor([scored], dtype=torch.bool), "label_index": torch.tensor(label_index, dtype=long),
            "label_ids": torch.tensor(label_ids, dtype=long), "label_row": torch.tensor(label_row, dtype=long),
            "row_tokens": torch.tensor(row_tokens, dtype=long)}


def packed_example_batch(examples: list[TokenizedExample]) -> dict[str, torch.Tensor]:
    """:func:`collate_packed` of training examples (rows ordered as ``example_batch`` orders them)."""
    return collate_packed([e.prompt_ids for e in examples], [e.responses for e in examples],
                          [e.masks for e in examples])


def is_packed(batch: dict[str, Any]) -> bool:
    return "label_index" in batch


def sequence_tokens(examples: list[TokenizedExample]) -> int:
    """Tokens of the batch as separate (prompt + response) sequences, k per record: the work the padded
    layout and TRL do and every benchmark counts, whichever layout runs it."""
    return sum(len(e.prompt_ids) * len(e.responses) + sum(len(r) for r in e.responses) for e in examples)


def packable(config: Any) -> bool:
    """Whether a model with this config takes the packed layout: its attention accepts a 4D mask, and every
    layer is full attention (a 4D mask would replace a sliding-window layer's own mask)."""
    if getattr(config, "_attn_implementation", None) not in MASKABLE_ATTENTION:
        return False
    layer_types = getattr(config, "layer_types", None)
    if layer_types is not None:
        return all(t == "full_attention" for t in layer_types)
    return getattr(config, "sliding_window", None) is None


def block_mask_function(block: torch.Tensor, branch: torch.Tensor) -> Callable[..., torch.Tensor]:
    """transformers mask function (ANDed with causality): q attends kv within its record, to the prompt or
    to its own response. block, branch: [1, L]."""
    block, branch = block[0], branch[0]

    def attend(batch_idx: Any, head_idx: Any, q_idx: torch.Tensor, kv_idx: torch.Tensor) -> torch.Tensor:
        same_branch = (branch[kv_idx] == 0) | (branch[kv_idx] == branch[q_idx])
        return (block[q_idx] == block[kv_idx]) & same_branch

    return attend


def block_attention_mask(config: Any, batch: dict[str, torch.Tensor], dtype: torch.dtype) -> Any:
    """The 4D mask [1, 1, L, L] of a packed batch in the format the model's attention implementation takes
    (bool for SDPA, additive ``dtype`` for eager), built by transformers' own mask factory."""
    from transformers.masking_utils import create_causal_mask

    ids = batch["input_ids"]
    shape_only = torch.empty((1, ids.shape[1], 0), dtype=dtype, device=ids.device)  # batch, length, dtype, device
    return create_causal_mask(config=config, inputs_embeds=shape_only, attention_mask=None, cache=None,
                              position_ids=None, and_mask_function=block_mask_function(batch["block"], batch["branch"]))


def unpack(batch: dict[str, torch.Tensor]) -> tuple[list[list[int]], list[list[int]], list[list[bool]]]:
    """The separate (prompt, response, mask) rows of a packed batch, in output-row order: what
    :func:`selfplay.core.logprobs.collate_left_padded` takes to score it the padded way."""
    ids, block, branch, scored = (batch[key][0].tolist() for key in ("input_ids", "block", "branch", "scored"))
    n_rows = batch["row_tokens"].shape[0]
    n_records = max(block) + 1
    prompts: list[list[int]] = [[] for _ in range(n_records)]
    responses: list[list[int]] = [[] for _ in range(n_rows)]
    masks: list[list[bool]] = [[] for _ in range(n_rows)]
    for token, b, j, s in zip(ids, block, branch, scored):
        if j == 0:
            prompts[b].append(token)
        else:
            responses[(j - 1) * n_records + b].append(token)
            masks[(j - 1) * n_records + b].append(s)
    return [prompts[r % n_records] for r in range(n_rows)], responses, masks
