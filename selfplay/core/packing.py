"""Padding-free batches with one prompt pass per record: the training batch layout of :mod:`selfplay.core.logprobs`.

A batch of B records with k responses each (a pair: chosen and rejected) is laid out as a few rows of C
tokens, C the longest record (its prompt plus its k responses)::

    [prompt_0 | response_0,0 | response_0,1 | prompt_2 | response_2,0 | response_2,1 | pad]
    [prompt_1 | response_1,0 | response_1,1 | pad ...                                    ]

Each prompt appears once; each response attends to its own prompt and to itself (causally), never to a
sibling response or to another record (a block attention mask); position ids restart at the prompt
length for every response, so a response sees exactly the positions it would see after its prompt alone.
Records are placed first-fit in decreasing length, so padding is only what is left at the end of a row.
Why rows and not one row for the whole batch: attention over a row costs its length squared, and a
single row of B records costs B² times one record's (measured on the RISE quickstart, 8 records of ~300
tokens in one row: 1.45x the time and 1.1x the memory of the left-padded layout). Measured on the SPIN
benchmark pairs the left-padded layout spent 17% of its attention positions on padding and 20% of its
tokens on the second copy of each prompt (bench/RESULTS.md).

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


def _rows_first_fit(lengths: list[int]) -> tuple[list[list[int]], int]:
    """Records (by index) per row, first-fit in decreasing length into rows of capacity max(lengths)."""
    capacity = max(lengths)
    rows: list[list[int]] = []
    free: list[int] = []
    for b in sorted(range(len(lengths)), key=lambda i: (-lengths[i], i)):
        row = next((r for r, room in enumerate(free) if room >= lengths[b]), None)
        if row is None:
            rows.append([])
            free.append(capacity)
            row = len(rows) - 1
        rows[row].append(b)
        free[row] -= lengths[b]
    return rows, capacity


def collate_packed(prompts: list[list[int]], responses: list[list[list[int]]],
                   masks: list[list[list[bool]]] | None = None) -> dict[str, torch.Tensor]:
    """Pack B records (a prompt and k responses each) into R rows of C tokens; see the module docstring.

    ``responses[b][j]`` is response j of record b, ``masks[b][j][t]`` whether its token t is scored (all
    are when ``masks`` is None). Output rows (the log-probs' order) are response-major, row ``j * B + b``,
    as :func:`selfplay.core.logprobs.example_batch` orders them. Returns

    * ``input_ids``, ``position_ids`` [R, C]; ``block`` [R, C] (record of each token, -1 = padding),
      ``branch`` [R, C] (0 = prompt or padding, j + 1 = response j), ``scored`` [R, C] (bool: a response
      token whose log-prob counts);
    * ``label_index`` [M] (flat index into R * C of the position whose hidden state predicts each scored
      token), ``label_ids`` [M], ``label_row`` [M] (its output row) for the M scored tokens;
      ``row_tokens`` [N = B * k] scored tokens per output row.
    """
    n_records = len(prompts)
    if any(not prompt for prompt in prompts):
        raise ValueError("a packed record needs at least one prompt token (it predicts the response's first)")
    lengths = [len(prompts[b]) + sum(len(r) for r in responses[b]) for b in range(n_records)]
    rows, capacity = _rows_first_fit(lengths)
    width = len(rows) * capacity
    ids, pos, block, branch = [0] * width, [0] * width, [-1] * width, [0] * width
    scored = [False] * width
    label_index: list[int] = []
    label_ids: list[int] = []
    label_row: list[int] = []
    row_tokens = [0] * (n_records * len(responses[0]))
    for r, records in enumerate(rows):
        at = r * capacity  # next free flat position of this row
        for b in records:
            prompt, p = prompts[b], len(prompts[b])
            ids[at:at + p], pos[at:at + p], block[at:at + p] = prompt, range(p), [b] * p
            last_prompt = at + p - 1
            at += p
            for j, response in enumerate(responses[b]):
                n, out_row = len(response), j * n_records + b
                keep = masks[b][j] if masks is not None else [True] * n
                ids[at:at + n], pos[at:at + n] = response, range(p, p + n)
                block[at:at + n], branch[at:at + n], scored[at:at + n] = [b] * n, [j + 1] * n, keep
                for t, (token, m) in enumerate(zip(response, keep)):
                    if m:
                        label_index.append(last_prompt if t == 0 else at + t - 1)
                        label_ids.append(token)
                        label_row.append(out_row)
                        row_tokens[out_row] += 1
                at += n
    shape = (len(rows), capacity)
    long = torch.long
    return {"input_ids": torch.tensor(ids, dtype=long).view(shape), "position_ids": torch.tensor(pos, dtype=long).view(shape),
            "block": torch.tensor(block, dtype=long).view(shape), "branch": torch.tensor(branch, dtype=long).view(shape),
            "scored": torch.tensor(scored, dtype=torch.bool).view(shape),
            "label_index": torch.tensor(label_index, dtype=long), "label_ids": torch.tensor(label_ids, dtype=long),
            "label_row": torch.tensor(label_row, dtype=long), "row_tokens": torch.tensor(row_tokens, dtype=long)}


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
    to its own response; padding (block -1, branch 0, at the end of a row) attends the padding before it, so
    no query row is all masked. block, branch: [R, C]."""

    def attend(batch_idx: Any, head_idx: Any, q_idx: torch.Tensor, kv_idx: torch.Tensor) -> torch.Tensor:
        kv_branch = branch[batch_idx, kv_idx]
        same_branch = (kv_branch == 0) | (kv_branch == branch[batch_idx, q_idx])
        return (block[batch_idx, q_idx] == block[batch_idx, kv_idx]) & same_branch

    return attend


def block_attention_mask(config: Any, batch: dict[str, torch.Tensor], dtype: torch.dtype) -> Any:
    """The 4D mask [R, 1, C, C] of a packed batch in the format the model's attention implementation takes
    (bool for SDPA, additive ``dtype`` for eager), built by transformers' own mask factory."""
    from transformers.masking_utils import create_causal_mask

    ids = batch["input_ids"]
    shape_only = torch.empty((ids.shape[0], ids.shape[1], 0), dtype=dtype, device=ids.device)  # batch, length, dtype, device
    return create_causal_mask(config=config, inputs_embeds=shape_only, attention_mask=None, cache=None,
                              position_ids=None, and_mask_function=block_mask_function(batch["block"], batch["branch"]))


def unpack(batch: dict[str, torch.Tensor]) -> tuple[list[list[int]], list[list[int]], list[list[bool]]]:
    """The separate (prompt, response, mask) rows of a packed batch, in output-row order: what
    :func:`selfplay.core.logprobs.collate_left_padded` takes to score it the padded way."""
    ids, block, branch, scored = (batch[key].flatten().tolist() for key in ("input_ids", "block", "branch", "scored"))
    n_rows = batch["row_tokens"].shape[0]
    n_records = max(block) + 1
    prompts: list[list[int]] = [[] for _ in range(n_records)]
    responses: list[list[int]] = [[] for _ in range(n_rows)]
    masks: list[list[bool]] = [[] for _ in range(n_rows)]
    for token, b, j, s in zip(ids, block, branch, scored):
        if b < 0:  # padding
            continue
        if j == 0:
            prompts[b].append(token)
        else:
            responses[(j - 1) * n_records + b].append(token)
            masks[(j - 1) * n_records + b].append(s)
    return [prompts[r % n_records] for r in range(n_rows)], responses, masks
