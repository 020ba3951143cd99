"""The shared-prefix attention (one batched product for all prompts) against the loop it replaced."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode
from transformers import DynamicCache
from transformers.integrations.sdpa_attention import repeat_kv

from csr.search import kv


def loop_attention(layer, owner, groups, query, key, value, mask, scale):
    """The attention before the one-call version (commit 4299347): each run of one prompt's rows scored against that prompt's
    prefix in its own matrix product, the prefix repeated for grouped-query heads."""
    runs: list[tuple[int, int, int]] = []
    for r, p in enumerate(owner):
        if runs and runs[-1][0] == p:
            runs[-1] = (p, runs[-1][1], r + 1)
        else:
            runs.append((p, r, r + 1))
    pk, pv = repeat_kv(layer.prefix_k, groups), repeat_kv(layer.prefix_v, groups)
    key, value = repeat_kv(key, groups), repeat_kv(value, groups)
    rows, heads, q, dim = query.shape
    lp = pk.shape[2]

    def run(a, b, x):
        return x[a:b].transpose(0, 1).reshape(heads, (b - a) * q, x.shape[-1])

    scores = query.new_empty(rows, heads, q, lp + key.shape[2], dtype=torch.float32)
    for p, a, b in runs:
        s = torch.matmul(run(a, b, query), pk[p].transpose(-1, -2))
        scores[a:b, :, :, :lp] = s.reshape(heads, b - a, q, lp).transpose(0, 1)
    scores[..., lp:] = torch.matmul(query, key.transpose(-1, -2))
    scores *= scale
    scores.masked_fill_(~mask, float("-inf"))
    weights = scores.softmax(-1).to(value.dtype)
    out = torch.matmul(weights[..., lp:], value)
    for p, a, b in runs:
        o = torch.matmul(run(a, b, weights[..., :lp]), pv[p])
        out[a:b] += o.reshape(heads, b - a, q, dim).transpose(0, 1)
    return out.transpose(1, 2).contiguous()


class OutputShapes(TorchDispatchMode):
    """Records the shape of every tensor an op returns (views included)."""

    def __init__(self):
        super().__init__()
        self.shapes: list[tuple[int, ...]] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for t in out if isinstance(out, tuple | list) else (out,):
            if isinstance(t, torch.Tensor):
                self.shapes.append(tuple(t.shape))
        return out


@pytest.mark.parametrize("owner", [[0, 0, 1, 1, 1, 2], [1, 1, 0, 2, 2, 1, 1], [2, 2, 2], [1, 3, 3]])
@pytest.mark.parametrize("q", [1, 2])
@pytest.mark.parametrize("groups", [1, 3, 7])  # query heads per key head: 7 is Qwen2.5-VL-7B's (28 / 4)
def test_one_call_attention_equals_the_loop_over_runs(owner, q, groups):
    torch.manual_seed(0)
    prompts, kv_heads, lp, own, dim = 4, 2, 17, 5, 8
    rows = len(owner)
    prefix = DynamicCache()
    prefix.update(torch.randn(prompts, kv_heads, lp, dim), torch.randn(prompts, kv_heads, lp, dim), 0)
    layer = kv._SharedPrefixLayer(prefix.layers[0].keys, prefix.layers[0].values, kv.blocks(owner, "cpu"),
                                  torch.randn(rows, kv_heads, own + q, dim), torch.randn(rows, kv_heads, own + q, dim),
                                  own)
    cache = DynamicCache()
    cache.layers.append(layer)
    key, value = layer.update(torch.randn(rows, kv_heads, q, dim), torch.randn(rows, kv_heads, q, dim))
    query = torch.randn(rows, q, kv_heads * groups, dim).transpose(1, 2)  # the model's (non-contiguous) layout
    mask = torch.rand(rows, 1, q, lp + own + q) > 0.3  # left padding and holes, anywhere
    mask[..., -1] = True  # every query sees at least its own token
    module = SimpleNamespace(layer_idx=0, num_key_value_groups=groups)
    token = kv._ACTIVE.set(cache)
    try:
        with OutputShapes() as made:
            out, _ = kv._shared_prefix_attention(module, query, key, value, mask, scaling=dim**-0.5)
    finally:
        kv._ACTIVE.reset(token)
    expected = loop_attention(layer, owner, groups, query, key, value, mask, dim**-0.5)
    assert out.shape == (rows, q, kv_heads * groups, dim)
    torch.testing.assert_close(out, expected, rtol=0, atol=1e-6)
    # The rows' own keys and values are read as stored: nothing of their size per query head (repeat_kv's
    # copy, [rows, heads, tokens, dim]) is made. With one group that is the keys' own shape.
    if groups > 1:
        assert (rows, kv_heads * groups, own + q, dim) not in made.shapes


def test_blocks_pad_rows_into_per_prompt_slots():
    layout = kv.blocks([3, 3, 1, 3, 2], "cpu")
    assert (layout.first, layout.count, layout.width) == (1, 3, 3)  # prompts 1..3 (a view of the prefix)
    assert layout.prompt.tolist() == [2, 2, 0, 2, 1]
    assert layout.slot.tolist() == [0, 1, 0, 2, 0]


def test_keep_rows_rebuilds_the_layout_once_for_all_layers():
    prefix = DynamicCache()
    for i in range(3):
        prefix.update(torch.randn(3, 1, 4, 2), torch.randn(3, 1, 4, 2), i)
    cache = kv.assemble(prefix, [0, 1, 2], [[], [], []], repeats=2, width=0, spare=3)
    for layer in cache.layers:  # the spare room is uninitialised memory (NaN compares unequal): give it values
        layer._k.normal_()
    rows_k = [layer._k.clone() for layer in cache.layers]
    kv.keep_rows(cache, [1, 2, 5])
    assert cache.layers[0].layout is cache.layers[2].layout
    assert cache.layers[0].layout.owner == (0, 1, 2)
    for layer, before in zip(cache.layers, rows_k, strict=True):
        assert torch.equal(layer._k, before[[1, 2, 5]])
