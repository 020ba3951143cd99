"""Everything that touches the transformers KV-cache and attention APIs lives here (being renamed in v5).

The search prefills each prompt once. A decode batch then holds, per row, only that row's answer so
far and the sentence it is writing; the prompt prefix (image included, ~600 tokens for LLaVA-1.5) stays
one copy per prompt, shared by all its rows. Attention over it is one matrix product per prompt for
all its rows instead of one read of a private copy per row: decoding on a long image prefix is bound by
reading keys and values, so this is what makes many candidates cheap. Every sentence keeps only its own
keys/values (a `Segment`); a node's rows are assembled from the segments on its path.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager, nullcontext
from contextvars import ContextVar

import torch
from transformers import AttentionInterface, DynamicCache
from transformers.cache_utils import DynamicLayer
from transformers.integrations.sdpa_attention import repeat_kv, sdpa_attention_forward
from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

# One sentence's cache: per layer (keys, values), each [heads, tokens, head_dim].
Segment = list[tuple[torch.Tensor, torch.Tensor]]

_NAME = "csr_shared_prefix"
_ACTIVE: ContextVar[DynamicCache | None] = ContextVar("csr_shared_prefix_cache", default=None)


class _SharedPrefixLayer(DynamicLayer):
    """One layer of a decode batch: the prompts' prefix keys/values [P, H, Lp, D], shared by the rows of
    each prompt, and per row its own tokens [R, H, n, D] with spare room, written in place (a plain
    DynamicLayer re-allocates and copies the whole cache at every token)."""

    def __init__(self, prefix_k: torch.Tensor, prefix_v: torch.Tensor, owner: torch.Tensor, keys: torch.Tensor,
                 values: torch.Tensor, length: int):
        super().__init__()
        self.device, self.is_initialized = keys.device, True
        self.prefix_k, self.prefix_v, self.owner = prefix_k, prefix_v, owner  # owner[r]: row r's prompt
        self._k, self._v, self._n = keys, values, length
        self._views()
        self._runs()

    def _views(self) -> None:
        self.keys, self.values = self._k[:, :, : self._n], self._v[:, :, : self._n]

    def _runs(self) -> None:
        """(prompt, first row, end row) of each run of rows of one prompt: nodes come prompt by prompt, so
        a prompt's rows are usually one run, and a run is a slice (a view, no copy)."""
        self.runs: list[tuple[int, int, int]] = []
        for r, p in enumerate(self.owner.tolist()):
            if self.runs and self.runs[-1][0] == p:
                self.runs[-1] = (p, self.runs[-1][1], r + 1)
            else:
                self.runs.append((p, r, r + 1))

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

    def batch_select_indices(self, indices: torch.Tensor) -> None:
        indices = indices.to(self._k.device)
        self._k, self._v = self._k.index_select(0, indices), self._v.index_select(0, indices)
        self.owner = self.owner.index_select(0, indices)
        self._views()
        self._runs()


def _shared_prefix_attention(module, query, key, value, attention_mask, dropout=0.0, scaling=None, **kwargs):
    """Attention of each row over [its prompt's shared prefix | its own tokens], as one softmax.

    Any other call (a prefill, the vision tower, training) goes to sdpa unchanged."""
    cache = _ACTIVE.get()
    layer_idx = getattr(module, "layer_idx", None)
    layer = cache.layers[layer_idx] if cache is not None and layer_idx is not None else None
    if not isinstance(layer, _SharedPrefixLayer):
        return sdpa_attention_forward(module, query, key, value, attention_mask, dropout=dropout, scaling=scaling,
                                      **kwargs)
    groups = getattr(module, "num_key_value_groups", 1)
    pk, pv = repeat_kv(layer.prefix_k, groups), repeat_kv(layer.prefix_v, groups)
    key, value = repeat_kv(key, groups), repeat_kv(value, groups)
    rows, heads, q, dim = query.shape
    lp = pk.shape[2]
    scale = scaling if scaling is not None else dim**-0.5

    def run(a: int, b: int, x: torch.Tensor) -> torch.Tensor:  # rows a..b of [R, H, q, *] as [H, n*q, *]
        return x[a:b].transpose(0, 1).reshape(heads, (b - a) * q, x.shape[-1])

    scores = query.new_empty(rows, heads, q, lp + key.shape[2], dtype=torch.float32)
    for p, a, b in layer.runs:  # the prefix is read once per run of rows, not once per row
        s = torch.matmul(run(a, b, query), pk[p].transpose(-1, -2))
        scores[a:b, :, :, :lp] = s.reshape(heads, b - a, q, lp).transpose(0, 1)
    scores[..., lp:] = torch.matmul(query, key.transpose(-1, -2))
    scores *= scale
    if attention_mask is not None:
        if attention_mask.dtype == torch.bool:
            scores.masked_fill_(~attention_mask, float("-inf"))
        else:
            scores += attention_mask
    weights = scores.softmax(-1).to(value.dtype)
    out = torch.matmul(weights[..., lp:], value)
    for p, a, b in layer.runs:
        o = torch.matmul(run(a, b, weights[..., :lp]), pv[p])
        out[a:b] += o.reshape(heads, b - a, q, dim).transpose(0, 1)
    return out.transpose(1, 2).contiguous(), None


AttentionInterface.register(_NAME, _shared_prefix_attention)
AttentionMaskInterface.register(_NAME, sdpa_mask)


@contextmanager
def _shared_prefix(model: torch.nn.Module, cache: DynamicCache) -> Iterator[None]:
    """Route the language model's attention through `_shared_prefix_attention` for one forward."""
    config = model.get_decoder().config
    before, token = config._attn_implementation, _ACTIVE.set(cache)
    config._attn_implementation = _NAME
    try:
        yield
    finally:
        config._attn_implementation = before
        _ACTIVE.reset(token)


def keep_rows(cache: DynamicCache, rows: torch.Tensor) -> None:
    """Drop every row of `cache` not in `rows`, in place (rows that finished leave the batch)."""
    cache.batch_select_indices(rows)


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
    owner = torch.tensor(prompt_rows).repeat_interleave(repeats)
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
        cache.layers.append(_SharedPrefixLayer(pk, pv, owner.to(pk.device), k_buf, v_buf, width))
    return cache


def forward(
    model: torch.nn.Module,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    position_ids: torch.Tensor,
    cache: DynamicCache | None = None,
    pixel_values: torch.Tensor | None = None,
) -> tuple[torch.Tensor, DynamicCache]:
    """One cached forward; returns the float32 logits of each row's last input position (on the CPU,
    where the search's bookkeeping lives) and the grown cache (on the model's device).

    Positions are passed explicitly because rows carry padding (left before the prompt, holes
    after answers of different lengths), and the model cannot infer them from the cache length.
    """
    device = getattr(model, "device", None)

    def to(x: torch.Tensor | None) -> torch.Tensor | None:
        return x.to(device) if x is not None and device is not None else x

    shared = cache is not None and bool(cache.layers) and isinstance(cache.layers[0], _SharedPrefixLayer)
    kwargs = {"logits_to_keep": 1} if input_ids.shape[1] > 1 else {}  # a prefill needs its last logits only
    with _shared_prefix(model, cache) if shared else nullcontext():
        out = model(
            input_ids=to(input_ids),
            attention_mask=to(attention_mask),
            position_ids=to(position_ids),
            pixel_values=to(pixel_values),
            cache=cache if cache is not None else DynamicCache(),
            use_cache=True,
            **kwargs,
        )
    return out.logits[:, -1].float().cpu(), out.cache
