"""Run under ``accelerate launch`` (2 processes, gloo) by tests/test_distributed.py:
``python -m distributed_checks MODEL_DIR OUT_DIR``.

Each rank wraps :class:`SequenceLogps` in DDP through ``accelerator.prepare`` and scores its own batch
(rank 0 has more response tokens than rank 1, so more head chunks) along the chunked path, then along the
full-logits path, with a backward pass each. It writes what the test checks to OUT_DIR/rank{r}.json:
log-probs and gradients of both paths, the shapes the LM head was called with, and how many times.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import torch


def main() -> None:
    from accelerate import Accelerator
    from transformers import AutoModelForCausalLM

    import selfplay.core.logprobs as lp
    from selfplay.core.examples import TokenizedExample

    model_dir, out = sys.argv[1], Path(sys.argv[2])
    accelerator = Accelerator()
    rank = accelerator.process_index
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    lp._CHUNK_FLOATS, lp._MIN_CHUNK_TOKENS = 3 * model.config.vocab_size, 1  # 3 tokens per chunk
    if rank == 0:  # 11 response tokens -> 4 chunks
        examples = [TokenizedExample("a", [5, 6, 7, 8, 9], [[10, 11, 12], [13, 14]], [[True] * 3, [True] * 2]),
                    TokenizedExample("b", [20, 21], [[22], [23, 24, 25, 26, 27]], [[True], [True] * 5])]
    else:  # 4 response tokens -> 2 chunks
        examples = [TokenizedExample("c", [30, 31, 32], [[33, 34], [35, 36]], [[True] * 2, [True] * 2])]
    batch = lp.example_batch(examples, pad_id=0)
    weights = torch.arange(1, batch["labels"].shape[0] + 1, dtype=torch.float32) * (1 if rank == 0 else -3)

    head_inputs: list[list[int]] = []
    model.get_output_embeddings().register_forward_hook(lambda m, args, o: head_inputs.append(list(args[0].shape)))
    scorer = accelerator.prepare(lp.SequenceLogps(model, sync=True))
    assert isinstance(scorer, torch.nn.parallel.DistributedDataParallel), type(scorer)

    def run() -> tuple[list[float], list[float]]:
        model.zero_grad()
        head_inputs.clear()
        logps, _ = scorer(**batch)
        (logps * weights).sum().backward()
        grads = torch.cat([p.grad.flatten() for p in model.parameters()])
        return logps.tolist(), grads.tolist()

    with torch.no_grad():
        scorer(**batch)  # the first call checks the split once against the model's own forward
    split_ok = lp._SPLIT_OK.get(model)
    chunked, chunked_grads = run()
    chunked_heads = list(head_inputs)  # forward + checkpoint recompute in backward
    lp._SPLIT_OK[model] = False  # the same wrapped model along the full [N, R + 1, V] logits path
    full, full_grads = run()
    result = {"rank": rank, "processes": accelerator.num_processes, "split_ok": split_ok, "chunked": chunked,
              "full": full, "chunked_heads": chunked_heads, "full_heads": list(head_inputs),
              "chunked_grads": chunked_grads, "full_grads": full_grads}
    (out / f"rank{rank}.json").write_text(json.dumps(result))
    accelerator.wait_for_everyone()


if __name__ == "__main__":
    main()
