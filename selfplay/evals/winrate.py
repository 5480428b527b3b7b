"""Pairwise win rate of a model against a baseline, AlpacaEval-style, judged in both orders.

The model and the baseline are each a model (answers generated greedily here) or a file of answers.
Each prompt is judged twice with FastChat's ``pair-v2`` template (model as A, then as B); a verdict that
flips with the order is a tie. Raw and length-controlled win rates with standard errors come from
:mod:`selfplay.evals.winrate_stats`. Answers and judgments are appended to JSONL files in the output
directory as they are made, so a rerun continues where a killed one stopped.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from selfplay.errors import DataError, UserError
from selfplay.evals.judging import ChatJudge, combine_orders, judge_conversation, parse_verdict, preference
from selfplay.evals.mt_bench_prompts import JUDGE_PROMPTS
from selfplay.io import JsonlAppender, iter_jsonl, write_json
from selfplay.progress import progress_bar

if TYPE_CHECKING:
    from selfplay.config import ModelConfig, RemoteConfig

Prompt = dict[str, Any]  # {"id": str, "messages": [...], "instruction": str}
OUTPUT_FIELDS = ("output", "answer", "response", "completion")
RESULTS_FILE = "winrate.json"
JUDGMENTS_FILE = "judgments.jsonl"


def _prompt_messages(row: dict[str, Any], ref: Any) -> list[dict[str, str]]:
    """The prompt turns of one row in any of the accepted shapes (see :func:`load_prompts`)."""
    messages = row.get("messages") if isinstance(row.get("messages"), list) else row.get("prompt")
    if isinstance(messages, list):
        from selfplay.data.schema import check_messages

        turns = check_messages(messages, "messages" if "messages" in row else "prompt", ref)
        while turns and turns[-1]["role"] == "assistant":  # a full conversation: keep the question
            turns = turns[:-1]
        return turns
    for field in ("instruction", "prompt", "question"):
        text = row.get(field)
        if isinstance(text, str) and text.strip():
            extra = row.get("input") if field == "instruction" else None
            return [{"role": "user", "content": f"{text}\n\n{extra}" if extra else text}]
    turns = row.get("turns")
    if isinstance(turns, list) and turns and isinstance(turns[0], str):
        return [{"role": "user", "content": turns[0]}]
    raise ref.error("no prompt: expected 'messages', 'instruction', 'prompt', 'question' or 'turns'")


def _row_id(row: dict[str, Any], index: int) -> str:
    for field in ("id", "question_id", "prompt_id"):
        if isinstance(row.get(field), (str, int)) and not isinstance(row.get(field), bool):
            return str(row[field])
    return str(index)


def load_prompts(source: str, *, limit: int | None = None) -> list[Prompt]:
    """Prompts from a prepared data dir, a JSON/JSONL file (AlpacaEval ``instruction``, canonical SFT
    ``messages``, ``prompt``, ``question`` or MT-Bench ``turns``) or a hub dataset id."""
    from selfplay.data.records import is_prepared_dir, load_sft
    from selfplay.data.sources import read_rows

    if is_prepared_dir(source):
        split = "test" if (Path(source) / "test.jsonl").is_file() else "train"
        rows = [(None, r) for r in load_sft(source, split)]
    else:
        rows = read_rows(source, split="train")
    prompts, seen = [], set()
    for index, (ref, row) in enumerate(rows):
        if isinstance(row, DataError):
            raise row
        pid = _row_id(row, index)
        if pid in seen:
            raise (ref.error(f"duplicate id '{pid}'", "id") if ref else DataError(f"duplicate id '{pid}'"))
        seen.add(pid)
        messages = row["messages"] if ref is None else _prompt_messages(row, ref)
        prompts.append({"id": pid, "messages": messages, "instruction": _as_text(messages)})
    return prompts[:limit] if limit is not None else prompts


def _as_text(messages: list[dict[str, str]]) -> str:
    """The question shown to the judge: the user turn, or the whole conversation when there are several."""
    if len(messages) == 1:
        return messages[0]["content"]
    return "\n\n".join(f"{m['role'].upper()}: {m['content']}" for m in messages)


def load_answers(path: str | Path) -> dict[str, str]:
    """Answers keyed by id *and* by instruction text: ``{id|question_id, instruction?, output}`` rows
    (AlpacaEval outputs, ours) or FastChat answer rows (``choices[0].turns[0]``)."""
    from selfplay.data.sources import read_rows

    answers: dict[str, str] = {}
    for index, (ref, row) in enumerate(read_rows(str(path))):
        if isinstance(row, DataError):
            raise row
        text = next((row[f] for f in OUTPUT_FIELDS if isinstance(row.get(f), str)), None)
        if text is None and isinstance(row.get("choices"), list) and row["choices"]:
            turns = row["choices"][0].get("turns") if isinstance(row["choices"][0], dict) else None
            text = turns[0] if isinstance(turns, list) and turns and isinstance(turns[0], str) else None
        if text is None:
            raise ref.error(f"no answer: expected one of {', '.join(OUTPUT_FIELDS)} or choices[0].turns")
        answers[_row_id(row, index)] = text
        if isinstance(row.get("instruction"), str):
            answers.setdefault(row["instruction"], text)
    return answers


def _match(prompts: list[Prompt], answers: dict[str, str], source: str | Path) -> dict[str, str]:
    matched = {p["id"]: answers.get(p["id"], answers.get(p["instruction"])) for p in prompts}
    missing = [pid for pid, text in matched.items() if text is None]
    if missing:
        raise DataError(f"no answers for prompts {missing[:10]}{' ...' if len(missing) > 10 else ''} "
                        "(matched by id, then by instruction text)", path=source)
    return matched  # type: ignore[return-value]


def get_answers(spec: str, prompts: list[Prompt], path: Path, *, max_new_tokens: int, batch_size: int,
                model_cfg: ModelConfig | None = None, seed: int = 0) -> dict[str, str]:
    """Answers of ``spec`` to every prompt: read from an answer file, or generated greedily into ``path``
    (resumable; answers of another model found there are an error, not reused)."""
    from selfplay.core.samplers import make_sampler
    from selfplay.evals.generation import generate_chat, is_answer_file, model_identity, model_label

    if is_answer_file(spec):
        return _match(prompts, load_answers(spec), spec)
    identity = model_identity(spec)
    done: dict[str, str] = {}
    for row in iter_jsonl(path, tolerate_torn_tail=True) if path.is_file() else []:
        if row.get("model") != identity:
            raise UserError(f"{path} holds answers of '{row.get('model')}', not '{identity}'; "
                            "pass another --out directory.")
        done[row["id"]] = row["output"]
    todo = [p for p in prompts if p["id"] not in done]
    if todo:
        sampler = make_sampler("hf", spec, batch_size=batch_size, model_cfg=model_cfg)
        with progress_bar(f"answers of {model_label(spec)}", total=len(prompts),
                          completed=len(prompts) - len(todo)) as bar, JsonlAppender(path) as out:
            for start in range(0, len(todo), batch_size):
                chunk = todo[start:start + batch_size]
                texts = generate_chat(sampler, [p["messages"] for p in chunk],
                                      max_new_tokens=max_new_tokens, seed=seed, progress=False)
                for p, text in zip(chunk, texts):
                    out.write({"id": p["id"], "instruction": p["instruction"], "output": text,
                               "generator": model_label(spec), "model": identity})
                    done[p["id"]] = text
                    bar.advance()
    return {p["id"]: done[p["id"]] for p in prompts}


def judge_both_orders(prompts: list[Prompt], model_answers: dict[str, str], baseline_answers: dict[str, str],
                      judge: ChatJudge, path: Path, *, max_tokens: int = 1024,
                      batch_size: int = 8) -> list[dict[str, Any]]:
    """Judge every prompt in both orders; returns one row per prompt, in order.

    Resumable: a judgment in ``path`` is reused when it is by the same judge of the same two answers.
    """
    from selfplay.evals.generation import fingerprint

    template = JUDGE_PROMPTS["pair-v2"]
    prints = {p["id"]: fingerprint(model_answers[p["id"]], baseline_answers[p["id"]]) for p in prompts}
    rows = {r["id"]: r for r in (iter_jsonl(path, tolerate_torn_tail=True) if path.is_file() else [])
            if r.get("judge") == judge.name and r.get("answers_fingerprint") == prints.get(r["id"])}
    todo = [p for p in prompts if p["id"] not in rows]
    with progress_bar("win-rate judging", total=len(prompts), completed=len(prompts) - len(todo)) as bar, \
            JsonlAppender(path, lazy=True) as out:
        for start in range(0, len(todo), batch_size):
            chunk = todo[start:start + batch_size]
            conversations, labels = [], []
            for p in chunk:
                mine, theirs = model_answers[p["id"]], baseline_answers[p["id"]]
                for a, b, first in ((mine, theirs, "model"), (theirs, mine, "baseline")):
                    user = template.prompt_template.format(question=p["instruction"], answer_a=a, answer_b=b)
                    conversations.append(judge_conversation(template.system_prompt, user))
                    labels.append(f"prompt '{p['id']}' ({first} as A)")
            replies = judge.complete(conversations, max_tokens=max_tokens, labels=labels)
            for i, p in enumerate(chunk):
                first, second = replies[2 * i], replies[2 * i + 1]
                verdicts = parse_verdict(first), parse_verdict(second)
                row = {"id": p["id"], "judge": judge.name, "g1_judgment": first, "g2_judgment": second,
                       "g1_verdict": verdicts[0], "g2_verdict": verdicts[1], "outcome": combine_orders(*verdicts),
                       "len_model": len(model_answers[p["id"]]), "len_baseline": len(baseline_answers[p["id"]]),
                       "answers_fingerprint": prints[p["id"]]}
                out.write(row)
                rows[p["id"]] = row
                bar.advance()
    return [rows[p["id"]] for p in prompts]


def run_winrate(model: str, baseline: str, prompts_source: str, judge: str, out_dir: str | Path, *,
                judge_model: str = "default", judge_api_key_env: str = "OPENAI_API_KEY", limit: int | None = None,
                max_new_tokens: int = 1024,
                judge_max_tokens: int = 1024, batch_size: int = 16, judge_batch_size: int = 8,
                bootstrap: int = 500, model_cfg: ModelConfig | None = None, seed: int = 0,
                remote: RemoteConfig | None = None) -> dict[str, Any]:
    """Answers, judgments in both orders, raw and length-controlled win rates; writes ``winrate.json``."""
    from selfplay.evals.generation import model_label
    from selfplay.evals.judging import make_chat_judge
    from selfplay.evals.report import print_table
    from selfplay.evals.winrate_stats import summarize_preferences

    out = Path(out_dir).expanduser()
    out.mkdir(parents=True, exist_ok=True)
    prompts = load_prompts(prompts_source, limit=limit)
    kw = {"max_new_tokens": max_new_tokens, "batch_size": batch_size, "model_cfg": model_cfg, "seed": seed}
    mine = get_answers(model, prompts, out / "answers_model.jsonl", **kw)
    theirs = get_answers(baseline, prompts, out / "answers_baseline.jsonl", **kw)
    the_judge = make_chat_judge(judge, judge_model=judge_model, api_key_env=judge_api_key_env,
                                batch_size=judge_batch_size, remote=remote)
    rows = judge_both_orders(prompts, mine, theirs, the_judge, out / JUDGMENTS_FILE, max_tokens=judge_max_tokens,
                             batch_size=judge_batch_size)
    valid = [r for r in rows if r["outcome"] != "error"]
    if not valid:
        raise UserError(f"every judgment was unparsable (no [[A]]/[[B]]/[[C]] verdict); see {out / JUDGMENTS_FILE}")
    stats = summarize_preferences([preference(r["outcome"]) for r in valid], [r["len_model"] for r in valid],
                                  [r["len_baseline"] for r in valid], bootstrap=bootstrap, seed=seed)
    summary = {"model": model_label(model), "baseline": model_label(baseline), "judge": the_judge.name,
               "prompts": len(prompts), "errors": len(rows) - len(valid), **stats}
    write_json(out / RESULTS_FILE, summary)
    print_table(f"Win rate: {summary['model']} vs {summary['baseline']} (judge {the_judge.name})",
                ["metric", "value"],
                [["win rate %", f"{stats['win_rate']:.1f} ± {stats['win_rate_se']:.1f}"],
                 ["length-controlled win rate %", f"{stats['lc_win_rate']:.1f} ± {stats['lc_win_rate_se']:.1f}"],
                 ["wins / losses / ties", f"{stats['wins']} / {stats['losses']} / {stats['ties']}"],
                 ["judge errors", str(summary["errors"])],
                 ["avg length (chars) model / baseline",
                  f"{stats['avg_len_model']:.0f} / {stats['avg_len_baseline']:.0f}"]])
    return summary
