"""Answer generation shared by the evals: load a model once, answer chat conversations with its template."""

from __future__ import annotations

from pathlib import Path
from typing import Any

Messages = list[dict[str, str]]

# Files that hold answers rather than a model (a model is a directory, an alias or a hub id).
ANSWER_SUFFIXES = (".jsonl", ".json")


def is_answer_file(spec: str) -> bool:
    """True when ``--model``/``--baseline`` names a file of answers instead of a model to generate with."""
    path = Path(spec).expanduser()
    return path.is_file() and path.suffix in ANSWER_SUFFIXES


def generate_chat(sampler: Any, conversations: list[Messages], *, max_new_tokens: int, temperature: float = 0.0,
                  seed: int = 0, progress: bool = True) -> list[str]:
    """One answer per conversation through the model's chat template (temperature 0 = greedy)."""
    from selfplay.core.samplers import format_prompt

    if not conversations:
        return []
    prompts = [format_prompt(sampler.tokenizer, c, "chat") for c in conversations]
    outputs = sampler.generate(prompts, n=1, temperature=temperature, top_p=1.0,
                               max_new_tokens=max_new_tokens, seed=seed, progress=progress)
    return [o[0] for o in outputs]


# Directory names that say nothing about which model it is (a loop run saves iter_k/model).
_GENERIC_NAMES = ("model", "merged", "adapter", "final")


def model_label(spec: str) -> str:
    """A short name for tables and default output directories: the directory's or file's name (with its
    parent's for generic names such as ``iter_1/model`` -> ``iter_1-model``), or the alias itself."""
    path = Path(spec).expanduser()
    if path.is_file():
        return path.stem
    if path.name in _GENERIC_NAMES or path.name.startswith("checkpoint"):
        return f"{path.resolve().parent.name}-{path.name}"
    return path.name or spec


def model_identity(spec: str) -> str:
    """What identifies the model behind answers saved for resuming: a directory's absolute path, else
    the alias or hub id as given."""
    path = Path(spec).expanduser()
    return str(path.resolve()) if path.exists() else spec


def fingerprint(*texts: str) -> str:
    """A short hash of the answers a judgment was made on, so a rerun reuses it only for the same answers."""
    import hashlib

    return hashlib.sha256("\0".join(texts).encode()).hexdigest()[:16]
