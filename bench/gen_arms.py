"""The generation benchmark's baseline arms: the SPIN recipe's loop and transformers' own two faster routes.

Every arm takes the same prompt texts, sampling settings (``temperature``, ``top_p``, ``top_k=0`` i.e. off,
``max_new_tokens``), dtype and batch of ``batch_size`` rows, and counts tokens the same way: generated
tokens up to and including the first EOS (``count_until_eos``), nothing after it. Each returns ``tokens``
and ``seconds`` (and what else it measured).

- ``spin_recipe_generate``: SPIN's HF script, ``model.generate`` in fixed left-padded batches.
- ``compiled_static_generate``: the route transformers documents for fast decoding (docs "Optimizing
  inference", ``llm_optims.md``, "Static kv-cache and torch.compile"): ``cache_implementation="static"`` and
  ``model.forward = torch.compile(model.forward, mode="reduce-overhead", fullgraph=True)``, here in the
  recipe's fixed batches. Compilation happens in ``compiled_static_warmup``, outside the timed runs.
- ``hf_continuous_generate``: transformers' continuous batching, ``model.generate_batch``.

An arm that cannot run here (no C++ compiler for inductor, an unsupported device, ...) is reported with
its reason (``describe_failure``) instead of stopping the benchmark.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterable
from typing import Any

from selfplay.models import eos_token_ids  # the ids our sampler stops at, so every arm counts tokens alike


def count_until_eos(rows: Iterable[list[int]], eos_ids: set[int]) -> int:
    """Generated tokens up to and including each row's first EOS (the whole row where there is none)."""
    return sum(next((i + 1 for i, t in enumerate(row) if t in eos_ids), len(row)) for row in rows)


def describe_failure(error: BaseException, limit: int = 400) -> str:
    """``Type: first line of the message`` (shortened), the reason string an unavailable arm reports."""
    lines = [line.strip() for line in str(error).strip().splitlines() if line.strip()]
    text = f"{type(error).__name__}: {lines[0] if lines else ''}".strip()
    return text if len(text) <= limit else text[:limit - 3] + "..."


def spin_recipe_generate(model: Any, tokenizer: Any, prompts: list[str], *, batch_size: int, max_new_tokens: int,
                         temperature: float, top_p: float, seed: int, **generate_kwargs: Any) -> dict[str, float]:
    """SPIN's HF loop: dataset-order batches, left padding, ``model.generate``.

    Returns real generated ``tokens``, ``seconds``, and ``row_steps`` (rows x decode steps actually
    computed, finished rows included). ``generate_kwargs`` go to ``model.generate`` as they are (the
    recipe passes none; ``compiled_static_generate`` passes its static cache).

    ``top_k=0`` switches off transformers' default top-k of 50 so the distribution matches ours exactly
    (temperature 1, top_p 1 = plain sampling).
    """
    import torch

    eos_ids = eos_token_ids(model, tokenizer)
    torch.manual_seed(seed)
    tokens = row_steps = 0
    t0 = time.perf_counter()
    for start in range(0, len(prompts), batch_size):
        tokenizer.padding_side = "left"
        enc = tokenizer(prompts[start:start + batch_size], return_tensors="pt", padding="longest",
                        truncation=False, pad_to_multiple_of=8, add_special_tokens=False)
        with torch.inference_mode():
            out = model.generate(**enc, max_new_tokens=max_new_tokens, do_sample=True, temperature=temperature,
                                 top_p=top_p, top_k=0, pad_token_id=tokenizer.pad_token_id, **generate_kwargs)
        generated = out[:, enc["input_ids"].shape[1]:]
        row_steps += generated.numel()  # every row is computed until the batch's longest row stops
        tokens += count_until_eos(generated.tolist(), eos_ids)
    return {"tokens": float(tokens), "seconds": time.perf_counter() - t0, "row_steps": float(row_steps)}


def recipe_batch_shapes(tokenizer: Any, prompts: list[str], batch_size: int) -> list[tuple[int, int]]:
    """(rows, padded prompt length) of each of the recipe's batches: the input shapes a compiled forward meets."""
    lengths = [len(ids) for ids in tokenizer(prompts, add_special_tokens=False)["input_ids"]]
    return [(len(chunk), 8 * math.ceil(max(chunk) / 8))
            for chunk in (lengths[i:i + batch_size] for i in range(0, len(lengths), batch_size))]


def compile_forward(model: Any, backend: str = "inductor") -> None:
    """transformers' documented recipe: ``model.forward = torch.compile(model.forward, mode="reduce-overhead",
    fullgraph=True)`` (``reduce-overhead`` adds CUDA graphs on a GPU; inductor skips them on a CPU).

    ``backend="eager"`` (the tests) keeps what decides graphs and recompiles (dynamo's tracing and guards) and
    skips inductor's C++ code generation: 23 of a cold-cache test's 30 s on a 2-core CPU (measured)."""
    import torch

    if backend == "inductor":
        model.forward = torch.compile(model.forward, mode="reduce-overhead", fullgraph=True)
    else:
        model.forward = torch.compile(model.forward, backend=backend, fullgraph=True)


def compiled_graphs() -> int:
    """Graphs torch.compile has built in this process so far (grows on every compile and recompile)."""
    from torch._dynamo.utils import counters

    return int(counters["stats"]["unique_graphs"])


def compiled_static_warmup(model: Any, tokenizer: Any, prompts: list[str], *, batch_size: int,
                           max_cache_len: int, temperature: float, top_p: float) -> dict[str, float]:
    """Compile every shape the measured runs meet, untimed: one ``generate`` of 4 new tokens per distinct
    (rows, padded length) batch of the recipe, on the static cache of ``max_cache_len`` positions the
    measured runs use (one cache size for all batches, so the decode graph is shared). The prefill graph
    of each prompt length and the decode graph (whose attention mask grows each step) are built here.

    Returns ``seconds`` (the whole warm-up) and ``graphs`` (graphs compiled by it). Raises whatever
    ``torch.compile`` raises (the caller reports it as the arm's reason).
    """
    graphs, t0 = compiled_graphs(), time.perf_counter()
    seen: set[tuple[int, int]] = set()
    for start in range(0, len(prompts), batch_size):
        chunk = prompts[start:start + batch_size]
        shape = recipe_batch_shapes(tokenizer, chunk, batch_size)[0]
        if shape not in seen:
            seen.add(shape)
            compiled_static_generate(model, tokenizer, chunk, batch_size=batch_size, max_new_tokens=4,
                                     max_cache_len=max_cache_len, temperature=temperature, top_p=top_p, seed=0)
    return {"seconds": time.perf_counter() - t0, "graphs": float(compiled_graphs() - graphs)}


def compiled_static_generate(model: Any, tokenizer: Any, prompts: list[str], *, batch_size: int,
                             max_new_tokens: int, max_cache_len: int, temperature: float, top_p: float,
                             seed: int) -> dict[str, float]:
    """The recipe's loop (same batches, padding to a multiple of 8 as the docs advise for compiled
    forwards, same sampling) on a static KV cache of ``max_cache_len`` positions, through a forward
    compiled by ``compile_forward``. ``recompiles`` = graphs compiled during this call (0 once warm)."""
    graphs = compiled_graphs()
    out = spin_recipe_generate(model, tokenizer, prompts, batch_size=batch_size, max_new_tokens=max_new_tokens,
                               temperature=temperature, top_p=top_p, seed=seed, cache_implementation="static",
                               max_cache_len=max_cache_len)
    return {**out, "recompiles": float(compiled_graphs() - graphs)}


def hf_continuous_config(prompt_lengths: list[int], *, batch_size: int, max_new_tokens: int, seed: int) -> Any:
    """transformers' ``ContinuousBatchingConfig`` for at most ``batch_size`` rows at once, sized explicitly.

    - ``max_requests_per_batch=batch_size``: the scheduler puts at most that many requests into one forward
      pass (decoding requests first, FIFO), so at most ``batch_size`` rows decode at once, as in the other arms.
    - ``num_blocks``: cache pages (of ``page_size`` = 256 tokens, the default) for ``batch_size`` requests of
      the longest prompt + ``max_new_tokens``, over 0.85 (the FIFO scheduler stops admitting new prompts when
      under 15% of the pages are free) plus one. Left unset, the library sizes the cache to 60% of the free
      RAM on a CPU and zero-fills it.
    - ``max_batch_tokens``: ``batch_size`` x the longest prompt, so ``batch_size`` prompts can be prefilled
      in one forward pass, like one recipe batch (unset: 8192, with an attention mask to match).
    - ``seed``: the sampling seed (the library calls ``torch.manual_seed`` with it).
    """
    from transformers import ContinuousBatchingConfig

    pages_per_request = math.ceil((max(prompt_lengths) + max_new_tokens) / ContinuousBatchingConfig.page_size)
    return ContinuousBatchingConfig(max_requests_per_batch=batch_size,
                                    num_blocks=math.ceil(batch_size * pages_per_request / 0.85) + 1,
                                    max_batch_tokens=batch_size * max(prompt_lengths), seed=seed)


def hf_continuous_generate(model: Any, tokenizer: Any, prompts: list[str], *, batch_size: int, max_new_tokens: int,
                           temperature: float, top_p: float, seed: int) -> dict[str, float]:
    """All prompts through one ``model.generate_batch`` call (transformers' continuous batching: finished
    rows leave, waiting prompts take their place; paged KV cache), at most ``batch_size`` rows at once
    (``hf_continuous_config``). Sampling as the recipe's: the model's generation config updated with
    ``do_sample``, ``temperature``, ``top_p``, ``top_k=0``, ``max_new_tokens``. The attention stays the
    model's own (``sdpa`` for Llama-style models; 5.24 accepts ``sdpa``, ``paged|eager`` or a flash kernel,
    and switches to flash only where a flash kernel is installed). Timed (``seconds``): tokenization, the
    manager's set-up (cache allocation, its generation thread), the generation and the tear-down (joining the
    thread, two ``gc.collect()``: ~0.4 s per call on the tiny model, more with a larger Python heap);
    ``seconds_to_last_token`` stops when the last request finished, before the tear-down. ``generate_batch``
    logs failures instead of raising; a missing or failed request raises here. On a CPU it needs ``psutil``
    (in the dev extras).
    """
    import copy
    import importlib.util

    if model.device.type == "cpu" and importlib.util.find_spec("psutil") is None:
        raise RuntimeError("transformers' continuous batching checks its cache against the free RAM that psutil "
                           "reports on a CPU (without psutil it sees none and raises MemoryError): pip install psutil")
    config = copy.deepcopy(model.generation_config)
    config.update(do_sample=True, temperature=temperature, top_p=top_p, top_k=0, max_new_tokens=max_new_tokens,
                  pad_token_id=tokenizer.pad_token_id)
    eos_ids = eos_token_ids(model, tokenizer)
    t0 = time.perf_counter()
    inputs = tokenizer(prompts, add_special_tokens=False)["input_ids"]
    cb_config = hf_continuous_config([len(ids) for ids in inputs], batch_size=batch_size,
                                     max_new_tokens=max_new_tokens, seed=seed)
    results = model.generate_batch(inputs, generation_config=config, continuous_batching_config=cb_config)
    seconds = time.perf_counter() - t0
    failed = [r.error for r in results.values() if r.error is not None]
    if failed or len(results) != len(inputs):
        raise RuntimeError(f"generate_batch returned {len(results)} of {len(inputs)} requests"
                           + (f"; first error: {failed[0]}" if failed else ""))
    tokens = count_until_eos((r.generated_tokens for r in results.values()), eos_ids)
    last_token = max(r.lifespan[1] for r in results.values())  # perf_counter stamp of the last request's end
    return {"tokens": float(tokens), "seconds": seconds, "seconds_to_last_token": last_token - t0}


class Guarded:
    """An arm for ``alternate`` that records its first failure instead of raising: ``reason`` is then set and
    every later call returns ``{}`` (the caller drops the arm's runs and reports the reason)."""

    def __init__(self, arm: Callable[[int], dict[str, float]], reason: str | None = None) -> None:
        self.arm, self.reason = arm, reason

    def __call__(self, rep: int) -> dict[str, float]:
        if self.reason is not None:
            return {}
        try:
            return self.arm(rep)
        except Exception as e:  # noqa: BLE001 - any failure of a baseline is reported, not fatal
            self.reason = describe_failure(e)
            return {}


def first_failure(probe: Callable[[], Any]) -> str | None:
    """Run ``probe``; ``None`` when it works, else its ``describe_failure`` reason."""
    try:
        probe()
    except Exception as e:  # noqa: BLE001 - see Guarded
        return describe_failure(e)
    return None
