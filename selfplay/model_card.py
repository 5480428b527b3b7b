"""Model cards (``README.md`` with YAML metadata) for every model selfplay saves: full, LoRA adapter, merged.

The Hub and the tools around it read a model directory's ``README.md``: ``base_model``, ``library_name``
(``transformers`` for full and merged weights, ``peft`` for an adapter), ``tags``, ``datasets``,
``license``. selfplay writes one after training (:func:`write_model_cards`, from the train stage) and
rewrites it once the iteration's held-out evaluation is known (:func:`add_evaluation`, from the loop). The
facts a card is rendered from are kept in its own metadata under ``selfplay:``, so the second call needs
nothing but the directory.

``base_model`` is the model self-play started from (``selfplay_model.json`` beside the weights names it
through every round, see :mod:`selfplay.model_meta`; else the run's ``model.name_or_path``) as the Hub knows
it: a hub id as given, the hub id behind an offline alias, or the ``base_model`` of that model's own card. A model
known only by a local path gets no ``base_model`` (the Hub accepts only model ids there); its body says
where training started. ``license`` is copied from the starting model's card, or from the metadata of the
GGUF file behind an alias.
"""

from __future__ import annotations

import functools
import re
from pathlib import Path
from typing import Any

from selfplay.io import read_json

CARD = "README.md"
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")
# The training settings a card lists (config section, key).
SETTINGS = [("train", k) for k in ("loss", "beta", "lr", "epochs", "batch_size", "grad_accum", "optimizer",
                                   "scheduler", "warmup_ratio", "max_length")] + \
           [("generate", k) for k in ("n", "temperature", "top_p", "max_new_tokens", "prompt_format")]
# Held-out metrics worth a line in the card (the loop's row carries timings and counts too).
SKIP_METRICS = {"iteration", "model", "seconds", "iteration_seconds", "steps", "pairs", "stats", "train_loss",
                "train_reward_acc", "train_margin", "kept"}


def _is_hub_id(name: str | None) -> bool:
    return bool(name) and bool(_HUB_ID.match(name)) and not Path(name).exists()


def _read_card(model_dir: Path) -> Any | None:
    from huggingface_hub import ModelCard

    path = Path(model_dir) / CARD
    try:
        return ModelCard.load(path) if path.is_file() else None
    except Exception:  # a hand-written README without valid metadata: nothing to copy
        return None


# GGUF metadata value types: fixed-size scalars by struct format; 8 = string, 9 = array.
_GGUF_SCALARS = {0: "B", 1: "b", 2: "H", 3: "h", 4: "I", 5: "i", 6: "f", 7: "?", 10: "Q", 11: "q", 12: "d"}


@functools.lru_cache(maxsize=8)
def gguf_metadata_string(path: Path, key: str) -> str | None:
    """One string of a GGUF file's key-value header (e.g. ``general.license``), read without loading the file
    (gguf's GGUFReader maps and indexes every tensor first: seconds, for one string)."""
    import struct

    def read(f: Any, fmt: str) -> Any:
        size = struct.calcsize("<" + fmt)
        return struct.unpack("<" + fmt, f.read(size))[0]

    def skip(f: Any, vtype: int) -> None:
        if vtype in _GGUF_SCALARS:
            f.seek(struct.calcsize("<" + _GGUF_SCALARS[vtype]), 1)
        elif vtype == 8:
            f.seek(read(f, "Q"), 1)
        elif vtype == 9:
            etype, count = read(f, "I"), read(f, "Q")
            for _ in range(count):
                skip(f, etype)
        else:
            raise ValueError(f"unknown GGUF value type {vtype}")

    try:
        with open(path, "rb") as f:
            if f.read(4) != b"GGUF":
                return None
            read(f, "I")  # version
            read(f, "Q")  # tensor count
            for _ in range(read(f, "Q")):
                name = f.read(read(f, "Q")).decode("utf-8", "replace")
                vtype = read(f, "I")
                if name == key and vtype == 8:
                    return f.read(read(f, "Q")).decode("utf-8", "replace")
                skip(f, vtype)
    except (OSError, ValueError, struct.error):
        return None
    return None


def base_identity(name_or_path: str) -> dict[str, Any]:
    """{'base_model', 'license'} of a starting model, as far as they are known (missing keys: unknown)."""
    from selfplay import models

    facts: dict[str, Any] = {}
    if name_or_path.lower() == models.SMOLLM2_ALIAS:  # the offline alias: the hub model its GGUF file ships
        facts["base_model"] = models.SMOLLM2_HUB_ID
        try:
            facts["license"] = gguf_metadata_string(models._smollm2_gguf(), "general.license")
        except Exception:
            pass
    elif _is_hub_id(name_or_path):
        facts["base_model"] = name_or_path
    path = Path(name_or_path)
    card = _read_card(path) if path.is_dir() else None
    if card is not None:  # the starting model's own card: a hub model's, or a previous iteration's
        data = card.data.to_dict()
        base = data.get("base_model")
        if isinstance(base, list):
            base = base[0] if base else None
        if _is_hub_id(base) and "base_model" not in facts:
            facts["base_model"] = base
        if data.get("license"):
            facts["license"] = data["license"]
    return {k: v for k, v in facts.items() if v}


def _datasets(source: str | None) -> list[str]:
    """The data source as a hub dataset id (``owner/name[:config]``), when it is one."""
    name = (source or "").split(":", 1)[0] if not (source or "").startswith("synth:") else ""
    return [name] if _is_hub_id(name) else []


def write_model_cards(out_dir: Path, cfg: Any, start_model: str, data_path: Path | None = None) -> list[Path]:
    """Cards for ``out_dir/model`` (full model or adapter) and ``out_dir/merged`` after training.

    ``cfg``: the training config; ``start_model``: what training started from (a path, hub id or alias).
    """
    from selfplay import __version__
    from selfplay.config import to_dict
    from selfplay.methods import get_method, loss_of

    out_dir = Path(out_dir)
    summary = read_json(out_dir / "summary.json") if (out_dir / "summary.json").is_file() else {}
    settings = {f"{section}.{key}": to_dict(cfg)[section][key] for section, key in SETTINGS}
    settings["train.loss"] = loss_of(cfg)
    if cfg.model.lora.enabled:
        lora = cfg.model.lora
        settings.update({"lora.r": lora.r, "lora.alpha": lora.alpha, "lora.dropout": lora.dropout})
    from selfplay.model_meta import read_model_meta

    method = get_method(cfg.method)
    # selfplay_model.json (the train stage writes it beside the weights) names the base self-play started
    # from, as the user named it, through every round; without it, the run's configured model.
    meta = read_model_meta(out_dir / "model") or {}
    origin = base_identity(meta.get("base_model") or cfg.model.name_or_path)
    start = base_identity(start_model)
    in_loop = _iteration(out_dir) is not None
    # In a loop the records were built from the run's data source; a single `selfplay train` knows only its file.
    source = cfg.data.source if in_loop or data_path is None else str(data_path)
    facts = {
        "method": method.name, "method_summary": method.summary,
        "iteration": meta.get("iteration", _iteration(out_dir)), "base_revision": meta.get("base_revision"),
        "base_model": origin.get("base_model") or start.get("base_model"),
        "license": start.get("license") or origin.get("license"),
        "start_model": str(start_model), "run_model": cfg.model.name_or_path, "data_source": source,
        "training_records": str(data_path) if data_path else None, "examples": summary.get("examples"),
        "steps": summary.get("steps"), "train_metrics": summary.get("metrics") or {}, "settings": settings,
        "kept": summary.get("kept"),
        "selfplay_version": __version__, "lora": cfg.model.lora.enabled,
    }
    written = []
    for name, kind in (("model", "adapter" if cfg.model.lora.enabled else "full"), ("merged", "merged")):
        model_dir = out_dir / name
        if (model_dir / "config.json").is_file() or (model_dir / "adapter_config.json").is_file():
            written.append(_write(model_dir, {**facts, "kind": kind}))
    return written


def add_evaluation(out_dir: Path, iteration: int | None, metrics: dict[str, Any]) -> list[Path]:
    """Rewrite the cards under ``out_dir`` with the held-out metrics of the model's evaluation."""
    written = []
    for name in ("model", "merged"):
        card = _read_card(Path(out_dir) / name)
        facts = card.data.to_dict().get("selfplay") if card is not None else None
        if not isinstance(facts, dict):
            continue
        held_out = {k: v for k, v in metrics.items() if k not in SKIP_METRICS and isinstance(v, (int, float))
                    and not isinstance(v, bool)}
        intervals = {k: [s.get("lo"), s.get("hi")] for k, s in (metrics.get("stats") or {}).items()
                     if isinstance(s, dict) and s.get("lo") is not None and k in held_out}
        facts.update(held_out=held_out, held_out_intervals=intervals)
        if iteration is not None:
            facts["iteration"] = iteration
        written.append(_write(Path(out_dir) / name, facts))
    return written


def _iteration(out_dir: Path) -> int | None:
    """k for a loop's ``RUN/iter_k/train`` directory (RUN holds state.json), else None (a single ``selfplay train``)."""
    it_dir = Path(out_dir).resolve().parent
    m = re.fullmatch(r"iter_(\d+)", it_dir.name)
    return int(m.group(1)) if m and (it_dir.parent / "state.json").is_file() else None


def _write(model_dir: Path, facts: dict[str, Any]) -> Path:
    from huggingface_hub import ModelCard, ModelCardData

    data = ModelCardData(
        base_model=facts.get("base_model"), library_name="peft" if facts["kind"] == "adapter" else "transformers",
        license=facts.get("license"), datasets=_datasets(facts.get("data_source")) or None,
        tags=["selfplay", facts["method"], *(["lora"] if facts.get("lora") else [])],
        pipeline_tag="text-generation", selfplay=facts)
    card = ModelCard(f"---\n{data.to_yaml()}\n---\n\n{_body(model_dir, facts)}")
    card.save(model_dir / CARD)
    return model_dir / CARD


def _fmt(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:.4g}"
    return "–" if v is None else str(v)


def _kept_line(kept: dict[str, Any] | None) -> list[str]:
    """The table line saying which evaluation inside training the weights are (loop.select: best)."""
    if not kept:
        return []
    from selfplay.model_meta import kept_text

    stopped = f", stopped early at step {kept['trained_steps']}" if kept.get("stopped_early") else ""
    return [f"| weights kept | {kept_text(kept)}: the best validation {kept['metric']} ({_fmt(kept['value'])}) of "
            f"{kept['evaluations']} evaluations{stopped} |"]


def _body(model_dir: Path, f: dict[str, Any]) -> str:
    what = {"full": "fine-tuned weights (a full model)", "adapter": "a LoRA adapter (PEFT)",
            "merged": "LoRA adapter merged into its base weights (a full model)"}[f["kind"]]
    it = f"iteration {f['iteration']}" if f.get("iteration") is not None else "one round of `selfplay train`"
    lines = [f"# {f['method']} — {it}", "",
             f"Self-play fine-tuning with selfplay {f['selfplay_version']}: {what}, trained with the "
             f"`{f['method']}` method ({f['method_summary']}).", "",
             "| | |", "|---|---|",
             f"| method | `{f['method']}` |", f"| iteration | {_fmt(f.get('iteration'))} |",
             f"| base model | {_fmt(f.get('base_model') or f.get('run_model'))}"
             + (f" at revision `{f['base_revision']}`" if f.get("base_revision") else "") + " |",
             f"| started from | `{f['start_model']}` |",
             f"| data | `{f['data_source']}` → {_fmt(f.get('examples'))} training records"
             + (f" (`{f['training_records']}`)" if f.get("training_records") else "") + " |",
             f"| optimizer steps | {_fmt(f.get('steps'))} |", *_kept_line(f.get("kept")),
             f"| license | {_fmt(f.get('license'))} (of the base model) |",
             "", "## Key settings", "", "| setting | value |", "|---|---|"]
    lines += [f"| `{k}` | {_fmt(v)} |" for k, v in f["settings"].items()]
    train = {k: v for k, v in (f.get("train_metrics") or {}).items() if k in ("loss", "rewards/accuracies",
                                                                                "rewards/margins", "nll")}
    if train:
        lines += ["", "Last logged training metrics: " + ", ".join(f"{k} {_fmt(v)}" for k, v in train.items()) + "."]
    lines += ["", "## Held-out evaluation", ""]
    if f.get("held_out"):
        lines += ["| metric | value | 95% interval |", "|---|---|---|"]
        for k, v in f["held_out"].items():
            lo_hi = (f.get("held_out_intervals") or {}).get(k)
            lines.append(f"| {k} | {_fmt(v)} | {'[' + ', '.join(_fmt(x) for x in lo_hi) + ']' if lo_hi else '–'} |")
    else:
        lines.append("Not evaluated yet (`selfplay loop` adds the iteration's held-out metrics here).")
    loader = ("from peft import PeftModel\nfrom transformers import AutoModelForCausalLM\n\n"
              "base = AutoModelForCausalLM.from_pretrained(BASE)  # the model training started from\n"
              f"model = PeftModel.from_pretrained(base, \"{model_dir}\")" if f["kind"] == "adapter" else
              "from transformers import AutoModelForCausalLM, AutoTokenizer\n\n"
              f"model = AutoModelForCausalLM.from_pretrained(\"{model_dir}\")  # or the hub id it is uploaded as\n"
              f"tokenizer = AutoTokenizer.from_pretrained(\"{model_dir}\")")
    lines += ["", "## Use", "", "```python", loader, "```", ""]
    return "\n".join(lines)
