"""What the search costs the host per layer and per token, apart from the model's arithmetic (CPU).

    .venv/bin/python experiments/bench_search/host_costs.py            # this checkout's engine
    PYTHONPATH=/tmp/csr_before .venv/bin/python experiments/bench_search/host_costs.py   # another one
    .venv/bin/python experiments/bench_search/host_costs.py --tiny   # checks it runs (a second)

- attention: one shared-prefix attention call of one layer (4 prompts x 15 rows, or 12 runs of 5 rows
  alternating between the prompts, one new token each): the ops it dispatches that are not views (on a
  GPU each is at least one kernel launch) and its time with small tensors, where the time is the host's
  (with the mid model's tensors the arithmetic shows too), and with Qwen2.5-VL-7B's grouped heads;
- decode step: `decode_sentences` for 60 rows on a stub model that returns stored logits (32064-entry
  vocabulary): the time per step of everything but the model (token choice, bookkeeping, copies).
Prints one JSON line; it uses only what both engine versions share (kv.assemble, decode_sentences).
"""

from __future__ import annotations

import argparse
import json
import time
from types import SimpleNamespace

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from transformers import DynamicCache

from csr.models.compat import cache_kwargs, cache_of
from csr.search import kv
from csr.search.decode import DecodeSettings, Rows, decode_sentences

VOCAB, ROWS, K = 32064, 60, 5


class CountOps(TorchDispatchMode):
    """Counts the aten ops dispatched that are not views (views launch nothing)."""

    def __init__(self):
        super().__init__()
        self.ops = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.ops += not func.is_view
        return func(*args, **(kwargs or {}))


def _best_ms(fn, repeats: int) -> float:
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return best * 1e3


def attention(heads: int, dim: int, lp: int, prompt_rows: list[int], repeats: int = 200, kv_heads: int | None = None,
              own: int = 20) -> dict:
    """Ops and best time of one attention call of one layer for rows continuing `prompt_rows` (5 each), each
    row with `own` tokens of its own before the new one; `kv_heads` < `heads`: grouped-query attention."""
    kv_heads = kv_heads or heads
    torch.manual_seed(0)
    prefix = DynamicCache()
    prefix.update(torch.randn(4, kv_heads, lp, dim), torch.randn(4, kv_heads, lp, dim), 0)
    answer = [[[(torch.randn(kv_heads, own, dim), torch.randn(kv_heads, own, dim))]] for _ in prompt_rows]  # 1 segment, 1 layer
    cache = kv.assemble(prefix, prompt_rows, answer, K, own, spare=4)
    rows = len(prompt_rows) * K
    key, value = cache.layers[0].update(torch.randn(rows, kv_heads, 1, dim), torch.randn(rows, kv_heads, 1, dim))
    query = torch.randn(rows, 1, heads, dim).transpose(1, 2)
    mask = torch.ones(rows, 1, 1, lp + own + 1, dtype=torch.bool)
    module = SimpleNamespace(layer_idx=0, num_key_value_groups=heads // kv_heads)

    def call():
        kv._shared_prefix_attention(module, query, key, value, mask, scaling=dim**-0.5)

    token = kv._ACTIVE.set(cache)
    try:
        with torch.inference_mode():
            call()
            with CountOps() as count:
                call()
            ms = _best_ms(call, repeats)
    finally:
        kv._ACTIVE.reset(token)
    return {"ops": count.ops, "ms": round(ms, 4)}


class StubModel(torch.nn.Module):
    """Returns stored logits for each row (its batch position), and grows a plain cache: no arithmetic."""

    def __init__(self, logits: torch.Tensor):
        super().__init__()
        self.logits = logits

    def forward(self, input_ids, attention_mask, position_ids, use_cache, pixel_values=None, **cache_arg):
        cache = cache_of(SimpleNamespace(**cache_arg))  # by the installed transformers' name (csr/models/compat.py)
        r = input_ids.shape[0]
        cache.update(torch.zeros(r, 1, 1, 1), torch.zeros(r, 1, 1, 1), 0)
        return SimpleNamespace(logits=self.logits[:r, None], **cache_kwargs(cache))


def decode_step(steps: int = 16, repeats: int = 5) -> dict:
    """Host time per decode step of 60 rows (12 nodes x K=5), diverse greedy, 32k vocabulary."""
    torch.manual_seed(0)
    logits = torch.randn(ROWS, VOCAB)
    logits[:, :4] = -1e4  # eos/specials never win: every row writes `steps` tokens
    s = DecodeSettings(strategy="diverse_greedy", end_ids=frozenset({2}), delimiter_ids=frozenset({3}), suppress_ids=[0, 1],
                       max_new_tokens=steps)

    def run():
        cache = DynamicCache()
        cache.update(torch.zeros(ROWS, 1, 3, 1), torch.zeros(ROWS, 1, 3, 1), 0)
        rows = Rows(cache=cache, attention_mask=torch.ones(ROWS, 3, dtype=torch.long), next_logits=logits.clone(),
                    next_position=torch.full((ROWS,), 3), budget=[100] * ROWS, group=[r % K for r in range(ROWS)],
                    node=[r // K for r in range(ROWS)])
        decode_sentences(StubModel(logits), rows, s)

    run()
    return {"ms_per_step": round(_best_ms(run, repeats) / steps, 3)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tiny", action="store_true", help="each measurement once, small shapes only")
    args = parser.parse_args()
    torch.set_num_threads(1)
    runs_of_one_prompt = [0, 1, 2, 3] * 3  # 12 nodes; consecutive nodes of one prompt form one run
    if args.tiny:
        print(json.dumps({"attention_small_12_runs": attention(2, 8, 16, runs_of_one_prompt, repeats=1),
                          "attention_grouped": attention(6, 8, 16, runs_of_one_prompt, repeats=1, kv_heads=2),
                          "decode_step": decode_step(steps=2, repeats=1)}))
        return
    out = {
        "attention_mid_4_runs": attention(8, 64, 600, sorted(runs_of_one_prompt)),
        "attention_mid_12_runs": attention(8, 64, 600, runs_of_one_prompt),
        "attention_small_4_runs": attention(2, 8, 16, sorted(runs_of_one_prompt)),
        "attention_small_12_runs": attention(2, 8, 16, runs_of_one_prompt),
        # Qwen2.5-VL-7B's heads (28 query heads, 4 key/value heads of 128), 600-token prefix, rows 128 tokens in
        "attention_qwen7b_heads_12_runs": attention(28, 128, 600, runs_of_one_prompt, repeats=10, kv_heads=4, own=128),
        "decode_step": decode_step(),
    }
    print(json.dumps(out))


if __name__ == "__main__":
    main()
