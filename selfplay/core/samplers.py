"""Generation backends behind one interface: ``Sampler.generate(prompts, n=..., ...) -> n texts per prompt``.

* :class:`HFSampler` — transformers on CPU or one GPU, through the continuous-batching loop of
  :mod:`selfplay.core.decoding` (its docstring says why ``model.generate`` is not used).
* :class:`VLLMSampler` — vLLM (optional ``gpu`` extra), imported lazily.

Reproducibility guarantee (both backends): the random stream of each sample is a pure function of
``(seed, prompt text, sample index)`` — not of batch size, prompt order, sharding or resuming. With the
HF backend this makes a sample identical across those changes up to floating-point differences of
batched kernels (which can flip a near-tied token, more often in bf16); vLLM seeds per prompt.
"""

from __future__ import annotations

import hashlib
import time
from abc import ABC, abstractmethod
from collections.abc import Callable, Hashable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

from selfplay.core.prefix_cache import PrefixStore
from selfplay.errors import MissingExtraError, UserError, suggest

if TYPE_CHECKING:
    from selfplay.config import ModelConfig

PROMPT_FORMATS = ("chat", "spin-instruct", "alpaca")
# The Alpaca wrapper the FireAct / SPIN-for-agents anchors prompt with (generation_fireact.py).
ALPACA_PROMPT = ("Below is an instruction that describes a task. Write a response that appropriately completes "
                 "the request.\n\n### Instruction:\n{prompt}\n\n### Response:\n")
BACKENDS = ("hf", "vllm")
# Architectures whose attention is plain scaled-dot-product (no softcapping, no sinks): on CPU they decode
# faster with selfplay.core.decoding.grouped_query_attention than with SDPA or eager attention.
GROUPED_ATTENTION_MODELS = {"llama", "mistral", "qwen2", "qwen3"}
# Called with (prompt index, its n completions) as soon as a prompt is finished: resumable writers hook here.
OnResult = Callable[[int, list[str]], None]


def format_prompt(tokenizer: Any, messages: list[dict[str, str]], prompt_format: str = "chat") -> str:
    """Render prompt turns (ending with a user turn) as the text the model continues.

    ``chat``: the tokenizer's chat template with the generation prompt. ``spin-instruct``: the SPIN
    anchor's ``### Instruction: {prompt}\\n\\n### Response: `` with the last user turn as the prompt and
    any earlier turns folded in front of it as ``Role: content`` paragraphs. ``alpaca``: the Alpaca wrapper
    of the FireAct and SPIN-for-agents anchors, turns folded the same way.
    """
    if prompt_format == "chat":
        if not getattr(tokenizer, "chat_template", None):
            raise UserError("the model's tokenizer has no chat template; use --prompt-format spin-instruct.")
        return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    if prompt_format in ("spin-instruct", "alpaca"):
        *earlier, last = messages
        context = "".join(f"{m['role'].capitalize()}: {m['content']}\n\n" for m in earlier)
        if prompt_format == "alpaca":
            return ALPACA_PROMPT.format(prompt=f"{context}{last['content'].rstrip()}")
        return f"### Instruction: {context}{last['content']}\n\n### Response: "
    raise UserError(f"unknown prompt format '{prompt_format}'; choose one of {', '.join(PROMPT_FORMATS)}."
                    f"{suggest(prompt_format, PROMPT_FORMATS)}")


def encode_prompt(tokenizer: Any, text: str) -> list[int]:
    """Token ids of a formatted prompt, adding BOS only where the text does not already start with it
    (chat templates usually include it; a second BOS degrades many models)."""
    bos = getattr(tokenizer, "bos_token", None)
    add_special = not (bos and text.startswith(bos))
    return tokenizer(text, add_special_tokens=add_special)["input_ids"]


def sample_seed(seed: int, prompt: str, index: int) -> int:
    """A 63-bit seed for sample ``index`` of ``prompt``: independent of batching and order."""
    digest = hashlib.blake2b(f"{seed}\0{index}\0{prompt}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") >> 1


@dataclass(frozen=True)
class Completion:
    """One sample: its text (a stop sequence that ended it is not included), why it ended ("eos", "stop",
    "length") and how many tokens it took."""

    text: str
    finish_reason: str
    num_tokens: int


class Sampler(Protocol):
    """n completions per prompt, in input order; temperature 0 = greedy (then the n copies are equal).

    ``stop``: texts that end a sample (excluded from it), e.g. ``["\nObservation:"]`` for a ReAct step.
    ``complete`` returns :class:`Completion` objects, ``generate`` only their texts. ``cache_keys`` (one per
    prompt, unique, e.g. an episode's id) let a backend keep what it computed for a prompt and its samples until
    the same key's next prompt, which extends it (an agent's next step, a RISE turn): the HF backend keeps the
    rows' KV caches (:mod:`selfplay.core.prefix_cache`), vLLM finds shared prefixes itself (prefix caching);
    ``release(keys)`` says the episodes ended. Samples do not depend on them.
    """

    tokenizer: Any

    def complete(self, prompts: list[str], *, n: int, temperature: float, top_p: float, max_new_tokens: int,
                 seed: int, stop: list[str] | None = None, progress: bool | GenerationProgress = True,
                 on_result: Callable[[int, list[Completion]], None] | None = None,
                 cache_keys: list[Hashable] | None = None) -> list[list[Completion]]: ...

    def generate(self, prompts: list[str], *, n: int, temperature: float, top_p: float, max_new_tokens: int,
                 seed: int, stop: list[str] | None = None, progress: bool | GenerationProgress = True,
                 on_result: OnResult | None = None, cache_keys: list[Hashable] | None = None) -> list[list[str]]: ...

    def release(self, keys: Iterable[Hashable]) -> None:
        """Forget what ``complete(cache_keys=...)`` kept for ``keys`` (their episodes ended)."""


class _Texts(ABC):
    """``generate`` = ``complete`` keeping only the texts (shared by the backends)."""

    @abstractmethod
    def complete(self, prompts: list[str], **kwargs: Any) -> list[list[Completion]]:
        """Each backend's own sampling (see :class:`Sampler`)."""

    def generate(self, prompts: list[str], *, on_result: OnResult | None = None, **kwargs: Any) -> list[list[str]]:
        texts_of = _texts_callback(on_result)
        return [[c.text for c in cs] for cs in self.complete(prompts, on_result=texts_of, **kwargs)]


def _texts_callback(on_result: OnResult | None) -> Callable[[int, list[Completion]], None] | None:
    if on_result is None:
        return None
    return lambda i, completions: on_result(i, [c.text for c in completions])


def cut_at_stop(text: str, stop: list[str]) -> str:
    """``text`` up to the earliest occurrence of any stop sequence (all of it when none occurs)."""
    cuts = [i for i in (text.find(s) for s in stop) if i >= 0]
    return text[:min(cuts)] if cuts else text


def _check_params(n: int, temperature: float, top_p: float, max_new_tokens: int,
                  stop: list[str] | None = None) -> None:
    if stop is not None and (not isinstance(stop, list) or not all(isinstance(x, str) and x for x in stop)):
        raise UserError(f"stop must be a list of non-empty strings, got {stop!r}")
    if n < 1:
        raise UserError(f"n (samples per prompt) must be at least 1, got {n}")
    if temperature < 0:
        raise UserError(f"temperature must be >= 0, got {temperature}")
    if not 0 < top_p <= 1:
        raise UserError(f"top_p must be in (0, 1], got {top_p}")
    if max_new_tokens < 1:
        raise UserError(f"max_new_tokens must be at least 1, got {max_new_tokens}")


class GenerationProgress:
    """Rich progress over prompts with prompts/s and tokens/s; also keeps totals for benchmarks."""

    def __init__(self, progress: Any, task: Any) -> None:
        self._progress, self._task = progress, task
        self.prompts = self.tokens = 0
        self.start = time.perf_counter()

    def add(self, prompts: int = 0, tokens: int = 0) -> None:
        self.prompts += prompts
        self.tokens += tokens
        elapsed = max(time.perf_counter() - self.start, 1e-9)
        self._progress.update(self._task, advance=prompts, prompt_rate=f"{self.prompts / elapsed:.2f}",
                              token_rate=f"{self.tokens / elapsed:.1f}")

    @property
    def seconds(self) -> float:
        return time.perf_counter() - self.start


@contextmanager
def generation_progress(total: int, enabled: bool | GenerationProgress = True,
                        description: str = "generate") -> Iterator[GenerationProgress]:
    """A rich bar over ``total`` prompts showing prompts/s and tokens/s (a silent counter when disabled).

    ``enabled`` may be a bar already shown: a caller feeding the prompts in chunks passes its one bar, and
    every chunk advances it."""
    if isinstance(enabled, GenerationProgress):
        yield enabled
        return
    from rich.progress import BarColumn, MofNCompleteColumn, TextColumn, TimeElapsedColumn, TimeRemainingColumn

    from selfplay.progress import logged_progress

    columns = [TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
               TextColumn("{task.fields[prompt_rate]} prompts/s  {task.fields[token_rate]} tok/s"),
               TimeElapsedColumn(), TimeRemainingColumn()]
    # stderr, so a command's stdout stays clean for its result.
    with logged_progress(*columns, disable=not enabled) as bar:
        task = bar.add_task(description, total=total, prompt_rate="-", token_rate="-")
        yield GenerationProgress(bar, task)


# --------------------------------------------------------------------------- transformers backend


class HFSampler(_Texts):
    """Sampling with transformers through the continuous-batching loop of :mod:`selfplay.core.decoding`.

    Prompts are admitted longest first (similar lengths share a prefill, little padding); up to
    ``batch_size`` prompts (n rows each) decode at once while their KV cache fits ``cache_bytes``
    (:func:`selfplay.core.memory.kv_cache_budget`), finished rows leave and waiting prompts take
    their place. Results come back in input order; ``on_result`` fires as each prompt finishes.
    """

    def __init__(self, model: Any, tokenizer: Any, batch_size: int = 16, cache_bytes: int | None = None) -> None:
        from selfplay.core.memory import kv_cache_budget
        from selfplay.models import eos_token_ids, pad_token_id

        if batch_size < 1:
            raise UserError(f"batch size must be at least 1, got {batch_size}")
        self.model, self.tokenizer, self.batch_size = model, tokenizer, batch_size
        # The KV cache of a decode call and the caches kept between an episode's calls (cache_keys; at most half
        # of it) stay within this together: prompts wait for room, one always runs.
        self.cache_bytes = cache_bytes if cache_bytes is not None else kv_cache_budget(str(model.device))
        self.prefix_store = PrefixStore(self.cache_bytes // 2)
        self.eos_ids = eos_token_ids(model, tokenizer)
        self.pad_id = pad_token_id(tokenizer)
        # Totals of the last generate call (prompts, tokens, seconds), for benchmarks and logs.
        self.last_stats: dict[str, float] = {}
        # Which decode step the last call used (the lean CPU step, or the model's forward and why).
        self.decode_step = ""

    @classmethod
    def from_loaded(cls, model: Any, tokenizer: Any, batch_size: int = 16, cache_bytes: int | None = None) -> HFSampler:
        """Wrap an already loaded (model, tokenizer) pair, e.g. the policy being evaluated."""
        return cls(model, tokenizer, batch_size, cache_bytes)

    def complete(self, prompts: list[str], *, n: int, temperature: float, top_p: float, max_new_tokens: int,
                 seed: int, stop: list[str] | None = None, progress: bool | GenerationProgress = True,
                 on_result: Callable[[int, list[Completion]], None] | None = None,
                 cache_keys: list[Hashable] | None = None) -> list[list[Completion]]:
        """n completions per prompt (special tokens, the final EOS and a stop text removed), in input order;
        ``progress``: show a bar, or advance the caller's (:func:`generation_progress`); ``cache_keys``: see
        :class:`Sampler` (each prompt continues the cached row of its key it shares the most tokens with, and its
        rows' caches are kept under the key for the next call)."""
        from selfplay.core.decoding import decode
        from selfplay.core.prefix_cache import CachedRow

        _check_params(n, temperature, top_p, max_new_tokens, stop)
        encoded = [encode_prompt(self.tokenizer, p) for p in prompts]
        if any(not ids for ids in encoded):
            raise UserError("a prompt encodes to no tokens; check the data for empty prompts.")
        if cache_keys is not None and (len(cache_keys) != len(prompts) or len(set(cache_keys)) != len(cache_keys)):
            raise ValueError("cache_keys needs one distinct key per prompt")
        prefixes = {}
        for i, key in enumerate(cache_keys or []):
            hit = self.prefix_store.take(key, encoded[i])
            if hit is not None:
                prefixes[i] = hit
        reused = sum(m for _, m in prefixes.values())
        kept: dict[int, list[CachedRow]] = {}
        greedy = temperature == 0
        results: list[list[Completion]] = [[] for _ in prompts]
        with generation_progress(len(prompts), progress) as bar:
            def keep(row: Any, layers: list[Any]) -> None:
                kept.setdefault(row.prompt, []).append(CachedRow(encoded[row.prompt] + row.tokens[:-1], layers))

            def done(i: int, rows: list[Any]) -> None:
                if cache_keys is not None:
                    self.prefix_store.put(cache_keys[i], kept.pop(i))
                completions = [self._completion(row.tokens, row.finish, stop) for row in rows]
                results[i] = completions * n if greedy else completions  # greedy decodes one row and copies it
                if on_result is not None:
                    on_result(i, results[i])
                bar.add(prompts=1)

            self.decode_step = decode(
                self.model, encoded, sorted(range(len(prompts)), key=lambda i: -len(encoded[i])),
                n=1 if greedy else n, temperature=temperature, top_p=top_p, max_new_tokens=max_new_tokens,
                max_prompts=self.batch_size, cache_bytes=self.cache_bytes - self.prefix_store.nbytes,
                eos_ids=self.eos_ids, pad_id=self.pad_id,
                seeds=lambda i, j: sample_seed(seed, prompts[i], j), on_tokens=lambda k: bar.add(tokens=k),
                on_done=done, stopped=self._stop_matcher(stop) if stop else None, prefixes=prefixes,
                on_cache=keep if cache_keys is not None else None)
            self.last_stats = {"prompts": bar.prompts, "tokens": bar.tokens, "seconds": bar.seconds,
                               "prompt_tokens": sum(map(len, encoded)), "reused_prompt_tokens": reused}
        return results

    def release(self, keys: Iterable[Hashable]) -> None:
        """Drop the KV caches kept for ``keys`` (their episodes ended)."""
        self.prefix_store.release(keys)

    def _stop_matcher(self, stop: list[str]) -> Callable[[list[int]], bool]:
        """Whether a row's text ends in a stop sequence. Only the last few tokens are decoded: a stop of L
        characters spans at most L tokens, and earlier steps already checked everything before them."""
        window = max(len(s) for s in stop) + 2

        def stopped(tokens: list[int]) -> bool:
            tail = self.tokenizer.decode(tokens[-window:], skip_special_tokens=True)
            return any(s in tail for s in stop)

        return stopped

    def _completion(self, token_ids: list[int], finish: str, stop: list[str] | None) -> Completion:
        count = len(token_ids)
        if token_ids and token_ids[-1] in self.eos_ids:
            token_ids = token_ids[:-1]
        text = self.tokenizer.decode(token_ids, skip_special_tokens=True)
        return Completion(cut_at_stop(text, stop) if stop and finish == "stop" else text, finish, count)


# --------------------------------------------------------------------------- vLLM backend

# Prompts per ``LLM.generate`` call: large enough for vLLM's own scheduling, small enough that a
# resumable caller gets results written regularly.
VLLM_CHUNK = 512


def _import_vllm() -> Any:
    try:
        import vllm
    except ImportError:
        raise MissingExtraError("vllm", "gpu", "The vLLM generation backend (--backend vllm)") from None
    return vllm


class VLLMSampler(_Texts):
    """vLLM generation: one ``LLM`` engine, per-prompt seeded ``SamplingParams``, token-id prompts."""

    def __init__(self, model: str, *, tensor_parallel_size: int = 1, gpu_memory_utilization: float = 0.9,
                 seed: int = 0, dtype: str = "auto", trust_remote_code: bool = False) -> None:
        from transformers import AutoTokenizer

        self._vllm = _import_vllm()
        kwargs: dict[str, Any] = {"trust_remote_code": True} if trust_remote_code else {}
        # Our own tokenizer encodes prompts, so both backends see exactly the same token ids.
        self.tokenizer = AutoTokenizer.from_pretrained(model, **kwargs)
        # Prefix caching: an agent's next step or a RISE turn extends the previous prompt, and the engine then
        # reuses the KV blocks it already holds for that prefix instead of prefilling it again.
        self.llm = self._vllm.LLM(model=model, tensor_parallel_size=tensor_parallel_size,
                                  gpu_memory_utilization=gpu_memory_utilization, seed=seed, dtype=dtype,
                                  enable_prefix_caching=True, **kwargs)

    def complete(self, prompts: list[str], *, n: int, temperature: float, top_p: float, max_new_tokens: int,
                 seed: int, stop: list[str] | None = None, progress: bool | GenerationProgress = True,
                 on_result: Callable[[int, list[Completion]], None] | None = None,
                 cache_keys: list[Hashable] | None = None) -> list[list[Completion]]:
        # cache_keys: nothing to do, the engine's prefix caching finds every shared prompt prefix by itself.
        _check_params(n, temperature, top_p, max_new_tokens, stop)
        greedy = temperature == 0
        bar = progress if isinstance(progress, GenerationProgress) else None  # a caller's bar: advance it
        results: list[list[Completion]] = []
        for start in range(0, len(prompts), VLLM_CHUNK):
            chunk = prompts[start:start + VLLM_CHUNK]
            inputs = [{"prompt_token_ids": encode_prompt(self.tokenizer, p)} for p in chunk]
            params = [self._vllm.SamplingParams(n=1 if greedy else n, temperature=temperature, top_p=top_p,
                                                max_tokens=max_new_tokens, seed=sample_seed(seed, p, 0),
                                                stop=stop or None)
                      for p in chunk]
            outputs = self.llm.generate(inputs, params, use_tqdm=progress is True)
            for offset, out in enumerate(outputs):
                completions = [Completion(o.text, _vllm_finish(o), len(o.token_ids))
                               for o in sorted(out.outputs, key=lambda o: o.index)]
                results.append(completions * n if greedy else completions)
                if bar is not None:
                    bar.add(prompts=1, tokens=sum(c.num_tokens for c in completions))
                if on_result is not None:
                    on_result(start + offset, results[-1])
        return results

    def release(self, keys: Iterable[Hashable]) -> None:
        """Nothing to drop: vLLM evicts cached prefix blocks itself when it needs the room."""


def _vllm_finish(output: Any) -> str:
    """vLLM's finish_reason/stop_reason as ours: "length", "stop" (a stop text) or "eos"."""
    if output.finish_reason == "length":
        return "length"
    return "stop" if isinstance(getattr(output, "stop_reason", None), str) else "eos"


# --------------------------------------------------------------------------- factory

# Prompts decoded at once (n rows each) when ``generate.batch_size`` is unset. On a CPU a decode step reads
# every weight once whatever the rows, so in bf16 more rows are nearly free until their KV-cache reads and the
# vocabulary-sized sampling per row catch up with the weights (SmolLM2-135M in bf16: 270 MB of weights, ~7 MB
# of KV cache per row at 300 positions); the KV budget bounds the rows in any case. bench/ sweeps 16-128: in
# bf16 (Intel Xeon with AMX) 64 rows were the fastest. In fp32 (what dtype auto picks on CPUs without bf16
# units) the weights are not the bound: at 16 rows the lean step's linears read them at 10.5 GB/s of a measured
# 34 (the bound is the small-row GEMM kernels' efficiency), so rows are not nearly free, and wider batches
# attend over more padding. On an AMD EPYC with AVX2, three sweeps (2 rounds each; README "Tests and
# benchmarks"): 32 rows the fastest in two, 64 rows at 0.86 (0.69-1.03) and 0.87 (0.81-0.92) of their tokens/s;
# in the third (bench/RESULTS-avx2.md) 64 rows the fastest and 32 at 0.96 (0.91-1.01) of it. Within this CPU's
# noise the two are close; 32 keeps half the KV cache.
CPU_BATCH_SIZE = 64
CPU_FP32_BATCH_SIZE = 32
GPU_BATCH_SIZE = 256


def default_batch_size(device: str = "auto", dtype: Any = None) -> int:
    """Prompts a decode call runs at once on ``device`` when the config leaves ``generate.batch_size`` unset;
    ``dtype`` (a torch dtype or its name) is the sampling model's, where known (None: the half-precision
    default, which only sizes how much work a stage hands out at a time)."""
    from selfplay.models import resolve_device

    if resolve_device(device).startswith("cuda"):
        return GPU_BATCH_SIZE
    return CPU_FP32_BATCH_SIZE if str(dtype).replace("torch.", "") == "float32" else CPU_BATCH_SIZE


def batch_size_for(batch_size: int | None, device: str = "auto", dtype: Any = None) -> int:
    """``batch_size`` as configured, or the device's default when unset (None)."""
    return batch_size if batch_size is not None else default_batch_size(device, dtype)



def make_sampler(backend: str, model: str, *, model_cfg: ModelConfig | None = None, batch_size: int | None = None,
                 tensor_parallel_size: int = 1, gpu_memory_utilization: float = 0.9, seed: int = 0,
                 device: str = "auto") -> Sampler:
    """A sampler for ``model`` (directory, hub id or alias); ``model_cfg`` gives dtype, revision, remote code."""
    from selfplay.config import ModelConfig
    from selfplay.models import load_model, resolve_model

    cfg = model_cfg or ModelConfig()
    if backend == "hf":
        loaded, tokenizer = load_model(model, dtype=cfg.dtype, device=device, revision=cfg.revision,
                                       trust_remote_code=cfg.trust_remote_code)
        if loaded.device.type == "cpu" and loaded.config.model_type in GROUPED_ATTENTION_MODELS:
            from selfplay.core.decoding import use_grouped_attention

            use_grouped_attention(loaded)
        return HFSampler(loaded, tokenizer, batch_size=batch_size_for(batch_size, str(loaded.device), loaded.dtype))
    if backend == "vllm":
        return VLLMSampler(resolve_model(model, cfg.revision), tensor_parallel_size=tensor_parallel_size,
                           gpu_memory_utilization=gpu_memory_utilization, seed=seed, dtype=cfg.dtype,
                           trust_remote_code=cfg.trust_remote_code)
    raise UserError(f"unknown generation backend '{backend}'; choose one of {', '.join(BACKENDS)}."
                    f"{suggest(backend, BACKENDS)}")
