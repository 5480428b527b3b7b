"""The anchors' rollout loops, written here from their code, on a plain ``from_pretrained`` model.

* :func:`fireact_agent` — ReinholdM/SPIN ``spin/generation_fireact.py`` with its ``LlamaInterface``
  (``spin/models/llama.py``): every step, every live question one at a time through ``model.generate``
  (greedy, ``num_return_sequences=1``) on the whole trajectory so far, stopped by a ``StoppingCriteria`` on
  the last token ids of ``"\\nObservation:"``; the step text is cut at the stop. Steps without an action
  become ``finish[]`` after no retry (our rollout's rule with ``agent.retries=0``, so both arms do the same
  work); the tool registry answers the actions (the replay search), as in our loop.
* :func:`rise_episodes` — cmu-mind/RISE ``workflow_gen.py`` with ``FastChatPolicy``: problem after problem,
  turn after turn, each of the turn's ``num_samples`` candidates one ``generate`` call on the conversation
  (FastChat's worker serves one request at a time; temperature 1.0, top_p 1.0), degenerate candidates dropped,
  the best kept, stop at a correct answer.
* :func:`sequential_eval` — cmu-mind/RISE ``workflow_eval.py``: each problem's T turns one at a time, one
  sample per turn, the oracle-free retry feedback and the context window.

Every arm returns ``episodes``, generated ``tokens`` (up to and including EOS, or up to the stop text) and
``seconds``. Prompts are rendered exactly as our stages render them (chat template or the Alpaca wrapper),
so the two sides decode the same conversations.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from bench.gen_arms import count_until_eos
from selfplay.models import eos_token_ids


class _StopOn:
    """The anchor's ``KeywordsStoppingCriteria``: stop when the generated ids end with the stop text's last
    (up to 5) token ids (batch of one)."""

    def __init__(self, tokenizer: Any, stop: str) -> None:
        import torch

        self.ids = torch.tensor(tokenizer.encode(stop, add_special_tokens=False)[-5:])

    def __call__(self, input_ids: Any, scores: Any, **kwargs: Any) -> Any:
        import torch

        n = len(self.ids)
        done = input_ids.shape[1] >= n and torch.equal(input_ids[0, -n:].cpu(), self.ids)
        return torch.full((input_ids.shape[0],), done, dtype=torch.bool, device=input_ids.device)


def _generate_one(model: Any, tokenizer: Any, prompt: str, *, max_new_tokens: int, temperature: float,
                  stop: str | None = None) -> tuple[str, int]:
    """One ``model.generate`` call on one prompt: (text, tokens generated up to EOS)."""
    import torch
    from transformers import StoppingCriteriaList

    from selfplay.core.samplers import encode_prompt

    ids = torch.tensor([encode_prompt(tokenizer, prompt)])
    sampling = {"do_sample": True, "temperature": temperature, "top_p": 1.0, "top_k": 0} if temperature > 0 \
        else {"do_sample": False}
    criteria = StoppingCriteriaList([_StopOn(tokenizer, stop)]) if stop else None
    with torch.inference_mode():
        out = model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), max_new_tokens=max_new_tokens,
                             stopping_criteria=criteria, pad_token_id=tokenizer.pad_token_id, **sampling)
    new = out[0, ids.shape[1]:].tolist()
    tokens = count_until_eos([new], eos_token_ids(model, tokenizer))
    text = tokenizer.decode(new[:tokens], skip_special_tokens=True)
    if stop and stop in text:
        text = text[:text.index(stop)]
    return text, tokens


def fireact_agent(model: Any, tokenizer: Any, agent: Any, records: list[dict[str, Any]], *,
                  render: Callable[[list[dict[str, str]]], str], max_steps: int, max_new_tokens: int) -> dict[str, float]:
    """generation_fireact.py's loop (see the module docstring) over ``records``; greedy."""
    from selfplay.envs.agent_episodes import new_episodes
    from selfplay.envs.react import FAILED_STEP, OBSERVATION_STOP, Step, parse_action, split_thought_action

    t0 = time.perf_counter()
    episodes = new_episodes(records, render, fewshot=agent.fewshot, samples=1, seed=0)
    live, tokens, steps = list(episodes), 0, 0
    for _ in range(max_steps):
        if not live:
            break
        still = []
        for ep in live:  # one question at a time
            text, n = _generate_one(model, tokenizer, ep.text() + "Thought:", max_new_tokens=max_new_tokens,
                                    temperature=0.0, stop=OBSERVATION_STOP)
            tokens, steps = tokens + n, steps + 1
            thought, action = split_thought_action(text) or split_thought_action(FAILED_STEP)
            step = Step(thought, action)
            call = parse_action(action)
            tool = agent.tools.get(call[0]) if call else None
            observation = tool.run(call[1], ep.record) if tool is not None else None
            step.observation = observation.text if observation is not None else f"Invalid action: {action[:200]}."
            ep.steps.append(step)
            if observation is not None and observation.done:
                ep.finished = True
            else:
                still.append(ep)
        live = still
    return {"episodes": float(len(episodes)), "tokens": float(tokens), "steps": float(steps),
            "seconds": time.perf_counter() - t0}


def rise_episodes(model: Any, tokenizer: Any, env: Any, records: list[dict[str, Any]], *, max_turns: int,
                  num_samples: list[int], max_new_tokens: int, temperature: float, prompt_format: str,
                  max_repeats: int) -> dict[str, float]:
    """workflow_gen.py's loop (see the module docstring): one problem, one turn, one candidate at a time."""
    from selfplay.core.samplers import format_prompt
    from selfplay.envs.answer_envs import is_degenerate

    t0, tokens, samples = time.perf_counter(), 0, 0
    for record in records:
        conversation = env.reset(record)
        for turn in range(max_turns):
            prompt = format_prompt(tokenizer, conversation, prompt_format)
            candidates = []
            for _ in range(num_samples[min(turn, len(num_samples) - 1)]):
                text, n = _generate_one(model, tokenizer, prompt, max_new_tokens=max_new_tokens,
                                        temperature=temperature)
                tokens, samples = tokens + n, samples + 1
                if not is_degenerate(text, max_repeats):
                    candidates.append(text)
            if not candidates:
                break
            results = [env.step(record, text) for text in candidates]
            best = max(range(len(results)), key=lambda i: (results[i].reward, -i))
            if results[best].done:
                break
            conversation = conversation + [{"role": "assistant", "content": candidates[best]},
                                           {"role": "user", "content": results[best].feedback}]
    return {"episodes": float(len(records)), "tokens": float(tokens), "samples": float(samples),
            "seconds": time.perf_counter() - t0}


def sequential_eval(model: Any, tokenizer: Any, env: Any, records: list[dict[str, Any]], *, turns: int,
                    context_window: int, max_new_tokens: int, temperature: float,
                    prompt_format: str) -> dict[str, float]:
    """workflow_eval.py's sequential evaluation: each problem's turns one at a time, one sample each."""
    from selfplay.core.samplers import format_prompt
    from selfplay.evals.multiturn import sequential_prompt

    t0, tokens = time.perf_counter(), 0
    for record in records:
        answers: list[str] = []
        for _ in range(turns):
            prompt = format_prompt(tokenizer, sequential_prompt(env, record, answers, context_window), prompt_format)
            text, n = _generate_one(model, tokenizer, prompt, max_new_tokens=max_new_tokens, temperature=temperature)
            tokens += n
            answers.append(text)
    return {"episodes": float(len(records)), "tokens": float(tokens), "samples": float(len(records) * turns),
            "seconds": time.perf_counter() - t0}
