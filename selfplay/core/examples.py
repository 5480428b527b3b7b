"""Training examples: a prompt that is context, and one or two responses whose tokens carry a loss mask.

Records on disk (JSONL, one per line), read by :func:`load_examples` for an objective's record kind:

* ``pair``   ``{id, prompt: [messages], chosen, rejected, chosen_prob?, rejected_prob?}`` (SPIN, SPPO, DPO)
* ``single`` ``{id, prompt: [messages], response, weight?, reward?}`` (SFT, RISE's reward-weighted turns);
  canonical SFT records ``{id, messages, reference, meta: {weight?}}`` (a prepared data directory) are read
  as single responses too, so a weighted source (the RISE anchor's ``finetune.json``) trains with its weights

The prompt is never trained: for a multi-turn conversation (RISE) it holds every earlier turn, and only
the response, its last assistant turn, is learned. A response is a string (every token trained) or a
list of segments ``{"text", "train"}``: an agent trajectory interleaves the model's own Thought/Action
text (trained) with tool observations (context, never trained). The masks travel with the token ids
through truncation and collation (:func:`selfplay.core.logprobs.collate_left_padded`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from selfplay.data.schema import RowRef, check_messages
from selfplay.errors import DataError, UserError
from selfplay.io import iter_jsonl

RecordKind = Literal["pair", "single"]
# The response fields of each record kind, in the order their rows are batched.
RESPONSE_FIELDS: dict[str, tuple[str, ...]] = {"pair": ("chosen", "rejected"), "single": ("response",)}
# Optional numeric fields each kind may carry (the objective says which its loss requires).
VALUE_FIELDS: dict[str, tuple[str, ...]] = {"pair": ("chosen_prob", "rejected_prob"), "single": ("weight", "reward")}


@dataclass(frozen=True)
class Segment:
    """A piece of a response: ``train`` False marks context inside it (a tool observation)."""

    text: str
    train: bool = True


@dataclass
class TrainRecord:
    """A validated training record: prompt messages, responses as segments, numeric values."""

    id: str
    prompt: list[dict[str, str]]
    responses: list[list[Segment]]
    values: dict[str, float] = field(default_factory=dict)


@dataclass
class TokenizedExample:
    """Token ids of one record. ``masks[i][t]`` says whether token t of response i is trained."""

    id: str
    prompt_ids: list[int]
    responses: list[list[int]]
    masks: list[list[bool]]
    values: dict[str, float] = field(default_factory=dict)
    truncated: bool = False

    @property
    def length(self) -> int:
        """Tokens of the longest row this example puts in a batch (prompt + longest response)."""
        return len(self.prompt_ids) + max(len(r) for r in self.responses)


def response_text(segments: list[Segment]) -> str:
    """The full text of a response, context segments included."""
    return "".join(s.text for s in segments)


def as_segments(value: str | list[Segment]) -> list[Segment]:
    """A plain string is one trained segment."""
    return [Segment(value)] if isinstance(value, str) else value


def segments_to_json(segments: list[Segment]) -> str | list[dict[str, Any]]:
    """The on-disk form: a string when everything is trained, else the segment list."""
    if all(s.train for s in segments):
        return response_text(segments)
    return [{"text": s.text, "train": s.train} for s in segments]


def _parse_response(value: Any, ref: RowRef, name: str) -> list[Segment]:
    if isinstance(value, str):
        if not value.strip():
            raise ref.error("the answer is empty", name)
        return [Segment(value)]
    if not isinstance(value, list) or not value:
        raise ref.error(f"expected a string or a non-empty list of segments, got {type(value).__name__}", name)
    segments = []
    for i, seg in enumerate(value):
        if not isinstance(seg, dict) or not isinstance(seg.get("text"), str):
            raise ref.error("each segment needs a string 'text' (and optional boolean 'train')", f"{name}[{i}]")
        train = seg.get("train", True)
        if not isinstance(train, bool):
            raise ref.error(f"'train' must be true or false, got {train!r}", f"{name}[{i}].train")
        segments.append(Segment(seg["text"], train))
    if not any(s.train and s.text.strip() for s in segments):
        raise ref.error("no segment is trained (all are context or empty)", name)
    return segments


def load_examples(path: Path, kind: RecordKind, required: tuple[str, ...] = ()) -> list[TrainRecord]:
    """Read and validate a training-record JSONL of ``kind``; ``required`` names numeric fields the loss
    needs. Every problem names the file, the line and the field, before any model is loaded."""
    path = Path(path)
    if path.is_dir():
        candidates = sorted(path.glob("*.jsonl"))
        if (path / "pairs.jsonl").exists():
            path = path / "pairs.jsonl"
        elif (path / "examples.jsonl").exists():
            path = path / "examples.jsonl"
        elif kind == "single" and (path / "metadata.json").exists() and (path / "train.jsonl").exists():
            path = path / "train.jsonl"  # a prepared data directory: its training split
        elif len(candidates) == 1:
            path = candidates[0]
        else:
            raise UserError(f"{path}: expected a JSONL file of training records (or a directory holding one)")
    fields = RESPONSE_FIELDS[kind]
    records, seen = [], set()
    for line, row in enumerate(iter_jsonl(path), start=1):
        ref = RowRef(str(path), line - 1, line=line)
        if "samples" in row and not any(f in row for f in fields):
            raise UserError(
                f"{path}: line {line} is a sample-set record (it has 'samples'), but training needs "
                f"{_shape(kind)}. Build them first (selfplay loop does this), or pass such a file.")
        if kind == "single" and "chosen" in row and "response" not in row:
            raise ref.error("this method trains on single responses {id, prompt, response}, "
                            "but the record is a pair (chosen/rejected)", "response")
        if kind == "pair" and "response" in row and "chosen" not in row:
            raise ref.error("this method trains on pairs {id, prompt, chosen, rejected}, "
                            "but the record has a single 'response'", "chosen")
        if kind == "single" and "response" not in row and "messages" in row and "reference" in row:
            row = sft_as_single(row, ref)
        for key in ("prompt", *fields):
            if key not in row:
                raise DataError("missing required field", path=path, line=line, field=key)
        prompt = check_messages(row["prompt"], "prompt", ref)
        if not any(m["content"].strip() for m in prompt):
            raise ref.error("the prompt is empty", "prompt")
        responses = [_parse_response(row[f], ref, f) for f in fields]
        values = {}
        for key in VALUE_FIELDS[kind]:
            value = row.get(key)
            if value is None:
                if key in required:
                    raise ref.error("this loss needs a number here (from `selfplay rank` or the method's "
                                    "example builder)", key)
                continue
            if not isinstance(value, (int, float)) or isinstance(value, bool):
                raise ref.error(f"expected a number, got {value!r}", key)
            values[key] = float(value)
        record_id = str(row.get("id", f"line-{line}"))
        if record_id in seen:
            raise ref.error(f"duplicate id '{record_id}'", "id")
        seen.add(record_id)
        records.append(TrainRecord(record_id, prompt, responses, values))
    if not records:
        raise DataError("no training records in file", path=path)
    return records


def sft_as_single(row: dict[str, Any], ref: RowRef) -> dict[str, Any]:
    """A canonical SFT record ``{id, messages, reference, meta}`` (a prepared data file) as a single-response
    training record: the messages are the prompt, the reference the response, and a ``meta.weight`` (a
    weighted ShareGPT source such as the RISE anchor's finetune.json) its ``weight``."""
    meta = row.get("meta") or {}
    if not isinstance(meta, dict):
        raise ref.error(f"expected an object, got {type(meta).__name__}", "meta")
    single = {"id": row.get("id"), "prompt": row["messages"], "response": row["reference"]}
    if "weight" in meta:
        single["weight"] = meta["weight"]
    return single


def _shape(kind: RecordKind) -> str:
    return "pairs {id, prompt, chosen, rejected}" if kind == "pair" else "examples {id, prompt, response}"


def tokenize_segments(tokenizer: Any, segments: list[Segment]) -> tuple[list[int], list[bool]]:
    """Token ids and train mask of a response. Each segment is encoded on its own, so a mask boundary is
    exactly a segment boundary; an EOS follows a response that ends in a trained segment, so the model
    learns to stop there (a trajectory ending in an observation has no EOS to learn)."""
    ids: list[int] = []
    mask: list[bool] = []
    for seg in segments:
        piece = tokenizer(seg.text, add_special_tokens=False)["input_ids"]
        ids += piece
        mask += [seg.train] * len(piece)
    if segments and segments[-1].train:
        ids.append(tokenizer.eos_token_id)
        mask.append(True)
    return ids, mask


def truncate(prompt_ids: list[int], responses: list[list[int]], max_length: int,
             max_prompt_length: int) -> tuple[list[int], list[list[int]], bool]:
    """Keep the END of the prompt (its question is last) and the START of each response.

    The prompt is cut to ``max_prompt_length`` only when prompt + longest response exceeds ``max_length``
    (the rule TRL and the SPIN anchor use); responses are then cut to fit. Returns (prompt, responses, cut?).
    """
    longest = max(len(r) for r in responses)
    cut = False
    if len(prompt_ids) + longest > max_length and len(prompt_ids) > max_prompt_length:
        prompt_ids = prompt_ids[-max_prompt_length:]
        cut = True
    room = max(1, max_length - len(prompt_ids))
    if longest > room:
        responses = [r[:room] for r in responses]
        cut = True
    return prompt_ids, responses, cut


def tokenize_records(records: list[TrainRecord], tokenizer: Any, *, prompt_format: str, max_length: int,
                     max_prompt_length: int) -> tuple[list[TokenizedExample], int]:
    """Tokenize records with the sampler's prompt format; returns (examples, how many were truncated)."""
    from selfplay.core.samplers import encode_prompt, format_prompt

    examples, n_cut = [], 0
    for rec in records:
        prompt_ids = encode_prompt(tokenizer, format_prompt(tokenizer, rec.prompt, prompt_format))
        encoded = [tokenize_segments(tokenizer, segs) for segs in rec.responses]
        prompt_ids, responses, cut = truncate(prompt_ids, [ids for ids, _ in encoded], max_length, max_prompt_length)
        masks = [mask[:len(ids)] for (_, mask), ids in zip(encoded, responses)]
        n_cut += int(cut)
        examples.append(TokenizedExample(rec.id, prompt_ids, responses, masks, dict(rec.values), cut))
    return examples, n_cut
