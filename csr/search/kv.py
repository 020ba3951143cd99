"""Everything that touches the transformers KV-cache and attention APIs lives here (being renamed in v5).

The search prefills each prompt once. A decode batch then holds, per row, only that row's answer so
far and the sentence it is writing; the prompt prefix (image included, ~600 tokens for LLaVA-1.5) stays
one copy per prompt, shared by all its rows. Attention over it is one batched matrix product for all
prompts and rows instead of one read of a private copy per row: decoding on a long image prefix is bound
by reading keys and values, so this is what makes many candidates cheap. Every sentence keeps only its
own keys/values (a `Segment`); a node's rows are assembled from the segments on its path.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager, nullcontext
from contextvars import ContextVar
from dataclasses import dataclass

import torch
from transformers import AttentionInterface, DynamicCache
from transformers.cache_utils import DynamicLayer
from transformers.integrations.sdpa_attention import sdpa_attention_forward
from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

from csr.models.compat import cache_kwargs, cache_of

# One sentence's cache: per layer (keys, values), each [heads, tokens, head_dim].
Segment = list[tuple[torch.Tensor, torch.Tensor]]

_NAME = "csr_shared_prefix"
_ACTIVE: ContextVar[DynamicCache | None] = ContextVar("csr_shared_prefix_cache", default=None)
# Per row and cache column, how many real tokens back from the new token the column's token is: a
# sliding-window layer must count real positions, not columns (holes sit between a prefix and its answer).
_DISTANCE: ContextVar[torch.Tensor | None] = ContextVar("csr_shared_prefix_distance", default=None)


def device_index(values: Sequence[int], device: torch.device | str) -> torch.Tensor:
    """A long tensor of `values` on `device`. On a GPU it is copied from pinned memory without waiting:
    a plain host-to-device copy makes the host wait for every kernel queued before it."""
    if torch.device(device).type != "cuda":
        return torch.tensor(values, dtype=torch.long, device=device)
    return torch.tensor(values, dtype=torch.long).pin_memory().to(device, non_blocking=True)


@dataclass(frozen=True)
class Blocks:
    """Where a decode batch's rows sit when they are padded into one block of `width` slots per prompt,
    for prompts `first` .. `first + count - 1` of the prefix (a slice of it: a view, no copy). Rows come
    prompt by prompt (a batch is a run of consecutive live nodes), so few slots are padding.

    Built on the host from the host's list of owners, once per batch make-up, and shared by every layer."""

    owner: tuple[int, ...]  # owner[r]: the prefix row (prompt) that row r continues
    first: int
    count: int
    width: int  # slots per prompt: the most rows any prompt has
    prompt: torch.Tensor  # [R] on the device: owner[r] - first
    slot: torch.Tensor  # [R] on the device: row r's slot within its prompt's block


def blocks(owner: Sequence[int], device: torch.device | str) -> Blocks:
    first = min(owner)
    seen: dict[int, int] = {}
    slot = []
    for p in owner:
        slot.append(seen.get(p, 0))
        seen[p] = slot[-1] + 1
    index = device_index([p - first for p in owner] + slot, device)  # one copy for both
    return Blocks(owner=tuple(owner), first=first, count=max(owner) - first + 1, width=max(seen.values()),
                  prompt=index[: len(owner)], slot=index[len(owner) :])


class _SharedPrefixLayer(DynamicLayer):
    """One layer of a decode batch: the prompts' prefix keys/values [P, H, Lp, D], shared by the rows of
    each prompt, and per row its own tokens [R, H, n, D] with spare room, written in place (a plain
    DynamicLayer re-allocates and copies the whole cache at every token)."""

    def __init__(self, prefix_k: torch.Tensor, prefix_v: torch.Tensor, layout: Blocks, keys: torch.Tensor,
                 values: torch.Tensor, length: int):
        super().__init__()
        self.device, self.is_initialized = keys.device, True
        self.prefix_k, self.prefix_v, self.layout = prefix_k, prefix_v, layout
        self._k, self._v, self._n = keys, values, length
        self._views()

    def _views(self) -> None:
        self.keys, self.values = self._k[:, :, : self._n], self._v[:, :, : self._n]

    @property
    def prefix_length(self) -> int:
        return self.prefix_k.shape[2]

    def get_seq_length(self) -> int:
        return self.prefix_length + self._n

    def get_mask_sizes(self, query_length: int) -> tuple[int, int]:
        return self.get_seq_length() + query_length, 0

    def update(self, key_states: torch.Tensor, value_states: torch.Tensor, *args, **kwargs):
        t = key_states.shape[-2]
        if self._n + t > self._k.shape[-2]:  # out of room: grow (never happens within a sentence budget)
            more = max(t, self._k.shape[-2] // 2)
            self._k = torch.cat([self._k, self._k.new_zeros(*self._k.shape[:2], more, self._k.shape[-1])], dim=2)
            self._v = torch.cat([self._v, self._v.new_zeros(*self._v.shape[:2], more, self._v.shape[-1])], dim=2)
        self._k[:, :, self._n : self._n + t] = key_states
        self._v[:, :, self._n : self._n + t] = value_states
        self._n += t
        self._views()
        return self.keys, self.values

    def select(self, indices: torch.Tensor, layout: Blocks) -> None:
        """Keep the rows `indices` (on the device), whose layout the caller built once for all layers."""
        self._k, self._v = self._k.index_select(0, indices), self._v.index_select(0, indices)
        self.layout = layout
        self._views()


def _by_kv_head(x: torch.Tensor, kv_heads: int) -> torch.Tensor:
    """Rows [R, H, q, *] -> [R, Hkv, H/Hkv * q, *]. Query head h reads key head h // (H/Hkv) (as repeat_kv
    lays them out), so the queries of one key head are one matrix: grouped-query attention reads keys and
    values as stored, [*, Hkv, n, D], never copied once per query head."""
    rows, heads, q, last = x.shape
    return x.reshape(rows, kv_heads, heads // kv_heads * q, last)


def _by_head(x: torch.Tensor, heads: int, q: int) -> torch.Tensor:
    """The inverse of `_by_kv_head`: [R, Hkv, H/Hkv * q, *] -> [R, H, q, *]."""
    return x.reshape(x.shape[0], heads, q, x.shape[-1])


def _to_blocks(x: torch.Tensor, layout: Blocks) -> torch.Tensor:
    """Rows [R, Hkv, m, *] (by key head) -> per-prompt blocks [P, Hkv, width * m, *], padding slots zero:
    a block's rows are one matrix against its prompt's one copy of the prefix."""
    _, kv_heads, m, last = x.shape
    out = x.new_zeros(layout.count, kv_heads, layout.width, m, last)
    out[layout.prompt, :, layout.slot] = x
    return out.view(layout.count, kv_heads, -1, last)


def _from_blocks(x: torch.Tensor, layout: Blocks, heads: int, q: int) -> torch.Tensor:
    """The inverse of `_to_blocks`, back to rows by query head: [P, Hkv, width * m, *] -> [R, H, q, *]."""
    count, kv_heads, _, last = x.shape
    rows = x.view(count, kv_heads, layout.width, -1, last)[layout.prompt, :, layout.slot]
    return rows.view(len(layout.owner), heads, q, last)


def _shared_prefix_attention(module, query, key, value, attention_mask, dropout=0.0, scaling=None, **kwargs):
    """Attention of each row over [its prompt's shared prefix | its own tokens], as one softmax.

    The prefix part is one batched product for all prompts (rows padded into per-prompt blocks), a fixed
    number of kernels per layer whatever the batch's make-up. Any other call (a prefill, the vision
    tower, training) goes to sdpa unchanged."""
    cache = _ACTIVE.get()
    layer_idx = getattr(module, "layer_idx", None)
    layer = cache.layers[layer_idx] if cache is not None and layer_idx is not None else None
    if not isinstance(layer, _SharedPrefixLayer):
        return sdpa_attention_forward(module, query, key, value, attention_mask, dropout=dropout, scaling=scaling,
                                      **kwargs)
    layout = layer.layout
    prompts = slice(layout.first, layout.first + layout.count)
    pk, pv = layer.prefix_k[prompts], layer.prefix_v[prompts]  # [P, Hkv, Lp, D], views
    _, heads, q, dim = query.shape
    kv_heads = key.shape[1]
    scale = scaling if scaling is not None else dim**-0.5

    grouped_query = _by_kv_head(query, kv_heads)  # a copy of the few queries; keys and values read as stored
    prefix_scores = torch.matmul(_to_blocks(grouped_query, layout), pk.transpose(-1, -2))
    own_scores = torch.matmul(grouped_query, key.transpose(-1, -2))
    scores = torch.cat([_from_blocks(prefix_scores, layout, heads, q), _by_head(own_scores, heads, q)], dim=-1).float()
    scores *= scale
    if attention_mask is not None:
        if attention_mask.dtype == torch.bool:
            scores.masked_fill_(~attention_mask, float("-inf"))
        else:
            scores += attention_mask
    window = kwargs.get("sliding_window")
    if window:  # this layer sees the last `window` real positions only (Mistral, Gemma 3, Qwen2 sliding layers)
        scores.masked_fill_((_DISTANCE.get() >= window)[:, None, None, :], float("-inf"))
    weights = _by_kv_head(scores.softmax(-1).to(value.dtype), kv_heads)  # a view
    lp = pk.shape[2]
    out = _by_head(torch.matmul(weights[..., lp:], value), heads, q)
    out += _from_blocks(torch.matmul(_to_blocks(weights[..., :lp], layout), pv), layout, heads, q)
    return out.transpose(1, 2).contiguous(), None


AttentionInterface.register(_NAME, _shared_prefix_attention)
AttentionMaskInterface.register(_NAME, sdpa_mask)


@contextmanager
def _shared_prefix(model: torch.nn.Module, cache: DynamicCache, distance: torch.Tensor) -> Iterator[None]:
    """Route the language model's attention through `_shared_prefix_attention` for one forward."""
    config = model.get_decoder().config
    before, token, dist = config._attn_implementation, _ACTIVE.set(cache), _DISTANCE.set(distance)
    config._attn_implementation = _NAME
    try:
        yield
    finally:
        config._attn_implementation = before
        _ACTIVE.reset(token)
        _DISTANCE.reset(dist)


def keep_rows(cache: DynamicCache, rows: Sequence[int]) -> None:
    """Drop every row of `cache` not in `rows`, in place (rows that finished leave the batch). The new
    layout is worked out once on the host, not once per layer."""
    layers = cache.layers
    device = layers[0].keys.device if layers else "cpu"
    indices = device_index(rows, device)
    if not layers or not isinstance(layers[0], _SharedPrefixLayer):
        cache.batch_select_indices(indices)
        return
    owner = layers[0].layout.owner
    layout = blocks([owner[r] for r in rows], device)
    for layer in layers:
        layer.select(indices, layout)


def segment(cache: DynamicCache, row: int, start: int, stop: int) -> Segment:
    """A copy of one row's positions [start, stop) (counted from the prompt's first column)."""
    return [(layer._k[row, :, start - layer.prefix_length : stop - layer.prefix_length].clone(),
             layer._v[row, :, start - layer.prefix_length : stop - layer.prefix_length].clone())
            for layer in cache.layers]


def assemble(prefix: DynamicCache, prompt_rows: Sequence[int], answers: Sequence[Sequence[Segment]], repeats: int,
             width: int, spare: int) -> DynamicCache:
    """A decode cache of len(answers) * repeats rows. Rows i*repeats .. (i+1)*repeats-1 continue prefix
    row prompt_rows[i] (shared, not copied) with the segments answers[i] (an answer so far, sentence by
    sentence), right-padded to `width` tokens (holes the attention mask hides), then room for `spare`."""
    rows = len(answers) * repeats
    layout = blocks([p for p in prompt_rows for _ in range(repeats)], prefix.layers[0].keys.device)
    cache = DynamicCache()
    for layer, prompt_layer in enumerate(prefix.layers):
        pk, pv = prompt_layer.keys, prompt_layer.values
        # Holes must hold finite numbers (a masked weight of 0 times a NaN is still NaN); the spare
        # room is written before it is ever read.
        k_buf = pk.new_empty(rows, pk.shape[1], width + spare, pk.shape[3])
        v_buf = pv.new_empty(rows, pv.shape[1], width + spare, pv.shape[3])
        k_buf[:, :, :width], v_buf[:, :, :width] = 0, 0
        for i, path in enumerate(answers):
            block, at = slice(i * repeats, (i + 1) * repeats), 0  # a node's K rows share their context
            for seg in path:
                k, v = seg[layer]
                k_buf[block, :, at : at + k.shape[1]] = k
                v_buf[block, :, at : at + v.shape[1]] = v
                at += k.shape[1]
        cache.layers.append(_SharedPrefixLayer(pk, pv, layout, k_buf, v_buf, width))
    return cache


def forward(
    model: torch.nn.Module,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    position_ids: torch.Tensor,
    cache: DynamicCache | None = None,
    inputs: dict[str, torch.Tensor] | None = None,
) -> tuple[torch.Tensor, DynamicCache]:
    """One cached forward; returns the float32 logits of each row's last input position and the grown
    cache, both on the model's device: the token choice runs there, so nothing waits for the host.

    Positions are passed explicitly because rows carry padding (left before the prompt, holes
    after answers of different lengths), and the model cannot infer them from the cache length.
    `inputs`: the family's other forward inputs (images, token types), for a prefill.
    """
    device = getattr(model, "device", None)

    def to(x: torch.Tensor | None) -> torch.Tensor | None:
        return x.to(device) if x is not None and device is not None else x

    shared = cache is not None and bool(cache.layers) and isinstance(cache.layers[0], _SharedPrefixLayer)
    kwargs = {"logits_to_keep": 1} if input_ids.shape[1] > 1 else {}  # a prefill needs its last logits only
    kwargs.update((key, to(value)) for key, value in (inputs or {}).items())
    distance = None
    if shared and input_ids.shape[1] == 1:
        attention_mask = to(attention_mask)
        real = attention_mask.cumsum(-1)
        distance = real[:, -1:] - real  # the new token is the last column
        # One new token per row sees all of its row but the holes: its mask is the padding mask. Given as
        # the 4D mask the attention reads, transformers builds none (its builder asks the device whether
        # any position is padded: a wait for the GPU at every token).
        attention_mask = attention_mask[:, None, None, :].bool()
    with _shared_prefix(model, cache, distance) if shared else nullcontext():
        out = model(
            input_ids=to(input_ids),
            attention_mask=to(attention_mask),
            position_ids=to(position_ids),
            **cache_kwargs(cache if cache is not None else DynamicCache()),
            use_cache=True,
            **kwargs,
        )
    return out.logits[:, -1].float(), cache_of(out)
