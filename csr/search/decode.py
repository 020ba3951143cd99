"""Decode one sentence per row, for many rows at once, from KV caches that hold their context.

A row stops at EOS, at a sentence delimiter, after `max_new_tokens` tokens, or when its answer
reaches its token budget. Rows that stop leave the batch once they are a share of it
(`compact_fraction`: dropping rows copies every layer's cache), so they soon cost no more compute. After a
delimiter a row is decoded for one more token only to learn whether the model would end its
answer there (EOS): then the sentence is final; that token is never part of the text.

A row marked `keep` (its sentence may be continued) leaves with a `Continuation`: its sentence's
own KV and the logits of the next token, so the next step starts from there without re-reading the
sentence. A kept row cut at `max_new_tokens` stays one step longer to feed its last token.

The token choice runs where the logits are (on the GPU in a real run): per step only the chosen ids and
their log-probs come to the host, where the per-row bookkeeping lives.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from functools import lru_cache

import torch

from csr.reward.tree import FINISH_BUDGET, FINISH_DELIMITER, FINISH_EOS, FINISH_TOKENS
from csr.search import kv


@dataclass
class DecodeSettings:
    strategy: str  # diverse_greedy | sample
    end_ids: frozenset[int]  # tokens that end an answer: eos, the chat template's end of turn
    delimiter_ids: frozenset[int]
    suppress_ids: list[int]  # special tokens the model must never write (image, pad, bos, ...)
    max_new_tokens: int
    diversity_penalty: float = 3.0
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0
    generator: torch.Generator | None = None  # on the logits' device
    compact_fraction: float = 0.25  # search.compact_fraction: finished rows leave once they are this share


@dataclass
class Rows:
    """The state of the rows to decode: one row = one candidate sentence of one node."""

    cache: kv.DynamicCache
    attention_mask: torch.Tensor  # [R, L]
    next_logits: torch.Tensor  # [R, V], logits for each row's first new token
    next_position: torch.Tensor  # [R], position id of each row's first new token
    budget: list[int]  # answer tokens each row may still write
    group: list[int]  # candidate index within its node (diversity is across groups of a node)
    node: list[int]  # which node the row expands
    keep: list[bool] | None = None  # rows whose sentence may be continued (None: no row)
    # Per row, what turns a token's count of real tokens before it into its position id (multimodal RoPE
    # offsets), and the family's rule for it (Family.decode_positions); None: the count is the position.
    offset: torch.Tensor | None = None  # [R]
    to_positions: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] | None = None


@dataclass
class Continuation:
    """What continuing a sentence needs: its own keys/values and the logits of the token after it."""

    segment: kv.Segment
    next_logits: torch.Tensor  # [V]


@dataclass
class Sentence:
    token_ids: list[int] = field(default_factory=list)
    logprobs: list[float] = field(default_factory=list)  # raw model log-probs (temperature 1)
    finish: str | None = None
    state: Continuation | None = None  # set for kept rows that did not end the answer


def _sample(scores: torch.Tensor, s: DecodeSettings) -> torch.Tensor:
    scores = scores / s.temperature
    if s.top_k > 0:
        kth = torch.topk(scores, min(s.top_k, scores.shape[-1])).values[:, -1:]
        scores = scores.masked_fill(scores < kth, float("-inf"))
    if s.top_p < 1.0:
        sorted_scores, order = torch.sort(scores, descending=True)
        cumulative = sorted_scores.softmax(-1).cumsum(-1)
        drop = cumulative - sorted_scores.softmax(-1) > s.top_p  # keep the token that crosses top_p
        scores = scores.masked_fill(drop.scatter(1, order, drop), float("-inf"))
    return torch.multinomial(scores.softmax(-1), 1, generator=s.generator).squeeze(1)


@lru_cache(maxsize=256)
def _index(values: tuple[int, ...], device: torch.device) -> torch.Tensor:
    """`values` on `device`, copied once per distinct batch make-up (it changes only when rows finish,
    start peeking or feeding), not once per step."""
    return kv.device_index(values, device)


@lru_cache(maxsize=64)
def _group_plan(groups: tuple[int, ...], nodes: tuple[int, ...], device: torch.device
                ) -> tuple[int, list[tuple[int, torch.Tensor, torch.Tensor]]]:
    """The number of nodes, and per group in the order groups choose: (group, its rows, each row's node
    index), on `device`."""
    node_index = {n: i for i, n in enumerate(dict.fromkeys(nodes))}
    rows_by_group: dict[int, list[int]] = {}
    for r, g in enumerate(groups):
        rows_by_group.setdefault(g, []).append(r)
    plan = [(g, _index(tuple(rows_by_group[g]), device), _index(tuple(node_index[nodes[r]] for r in rows_by_group[g]),
                                                                 device))
            for g in sorted(rows_by_group)]
    return len(node_index), plan


def _diverse_greedy(scores: torch.Tensor, groups: Sequence[int], nodes: Sequence[int], penalty: float,
                    exempt: list[int]) -> torch.Tensor:
    """Group beam search with one beam per group: group g pays `penalty` for every token that groups
    before it chose for the same node at this step (Hamming diversity, as the reference used).
    Group -1 (rows that only peek for EOS after their delimiter) picks first, unpenalised, and adds
    nothing to the penalty.

    Ending tokens (EOS, delimiters) are `exempt`: candidates should differ in what they say, and
    penalising the end pushes later groups to ramble on past the point where they are done.

    Runs where `scores` are: one pass per group (K of them), each vectorised over the group's rows."""
    device = scores.device
    n_nodes, plan = _group_plan(tuple(groups), tuple(nodes), device)
    chosen = torch.empty(len(groups), dtype=torch.long, device=device)
    counts = torch.zeros(n_nodes, scores.shape[-1], device=device)
    exempt_t = _index(tuple(exempt), device)
    for g, rows, idx in plan:
        picks = (scores[rows] - penalty * counts[idx]).argmax(-1)
        chosen[rows] = picks
        if g < 0:  # a finished candidate only peeks; like a done group in group beam search, it costs no one
            continue
        counts.index_put_((idx, picks), torch.ones(len(rows), device=device), accumulate=True)
        counts[:, exempt_t] = 0.0
    return chosen


def _choose(logits: torch.Tensor, logprobs: torch.Tensor, empty: Sequence[int], groups: Sequence[int],
            nodes: Sequence[int], s: DecodeSettings) -> torch.Tensor:
    """The next token of each row of `logits` / `logprobs` [N, V], on their device. `empty`: the rows
    whose sentence has no token yet; `groups` (-1: the row only peeks for EOS) and `nodes` per row."""
    scores = logprobs.clone() if s.strategy == "diverse_greedy" else logits.clone()
    scores[:, _index(tuple(s.suppress_ids), scores.device)] = float("-inf")
    ends = _index(tuple(sorted(s.end_ids)), scores.device)
    scores[_index(tuple(empty), scores.device)[:, None], ends] = float("-inf")  # a sentence has at least one token
    if s.strategy != "diverse_greedy":
        return _sample(scores, s)
    return _diverse_greedy(scores, groups, nodes, s.diversity_penalty, [*sorted(s.end_ids), *s.delimiter_ids])


def choose_step(logits: torch.Tensor, choosing: Sequence[int], empty: Sequence[int], groups: Sequence[int],
                nodes: Sequence[int], s: DecodeSettings) -> tuple[torch.Tensor, list[int], list[float]]:
    """One decode step's token choice, where `logits` [B, V] are. The batch rows `choosing` choose
    (the others get token 0: they only feed, or have finished). Returns every batch row's token (on the
    device, to feed the next forward) and, on the host, each choosing row's token and raw log-prob: the
    step's one transfer to the host, 2 numbers per row instead of its logits."""
    pick = _index(tuple(choosing), logits.device)
    picked = logits[pick]
    logprobs = torch.log_softmax(picked, dim=-1)
    chosen = _choose(picked, logprobs, empty, groups, nodes, s)
    tokens = torch.zeros(logits.shape[0], dtype=torch.long, device=logits.device)
    tokens[pick] = chosen
    # float64 holds both a token id and a float32 log-prob exactly
    host = torch.stack([chosen.double(), logprobs.gather(1, chosen[:, None])[:, 0].double()]).cpu()
    ids, lps = host.tolist()
    return tokens, [int(t) for t in ids], lps


def _compact(finished: int, rows: int, fraction: float) -> bool:
    """Whether to drop the finished rows from the batch now. Dropping copies every layer's cache, and
    until then a finished row only costs its share of the batch's compute, which a GPU runs in the
    same time as long as the batch does not fill it; so they go once they are `fraction` of the rows
    (0: as soon as one finishes)."""
    return finished > 0 and finished >= fraction * rows


@torch.inference_mode()
def decode_sentences(model: torch.nn.Module, rows: Rows, s: DecodeSettings) -> list[Sentence]:
    n = len(rows.budget)
    keep = rows.keep or [False] * n
    out = [Sentence() for _ in range(n)]
    batch = list(range(n))  # original row index of each row of the batch (cache, mask, logits)
    done = [False] * n  # finished: waits in the batch, ignored, until the batch is compacted
    peeking = [False] * n  # wrote a delimiter: the next token only tells whether the answer ends
    feeding = [False] * n  # kept row cut at max_new_tokens: in the batch only to feed its last token
    start = rows.attention_mask.shape[1]  # the cache column of each row's first new token
    logits = rows.next_logits.float()
    cache, mask, position = rows.cache, rows.attention_mask.to(logits.device), rows.next_position.to(logits.device)
    offset = rows.offset.to(logits.device) if rows.offset is not None else None
    while True:
        # Rows that only feed choose nothing, so the others choose (and sample) exactly as without them.
        choosing = [i for i, r in enumerate(batch) if not done[r] and not feeding[r]]
        chosen: list[int] = []
        lps: list[float] = []
        if choosing:
            tokens, chosen, lps = choose_step(
                logits, choosing, [j for j, i in enumerate(choosing) if not out[batch[i]].token_ids],
                [-1 if peeking[batch[i]] else rows.group[batch[i]] for i in choosing],
                [rows.node[batch[i]] for i in choosing], s)
        else:
            tokens = torch.zeros(len(batch), dtype=torch.long, device=logits.device)
        picked = dict(zip(choosing, zip(chosen, lps, strict=True), strict=True))
        for i, r in enumerate(batch):
            if done[r]:
                continue
            sentence = out[r]
            if peeking[r] or feeding[r]:
                token = picked[i][0] if peeking[r] else None
                sentence.finish = FINISH_TOKENS if feeding[r] else FINISH_EOS if token in s.end_ids else FINISH_DELIMITER
                if keep[r] and sentence.finish != FINISH_EOS:
                    end = start + len(sentence.token_ids)
                    sentence.state = Continuation(kv.segment(cache, i, start, end), logits[i].clone())
                done[r] = True
                continue
            token, logprob = picked[i]
            if token in s.end_ids:
                sentence.finish, done[r] = FINISH_EOS, True
                continue
            sentence.token_ids.append(token)
            sentence.logprobs.append(logprob)
            if len(sentence.token_ids) >= rows.budget[r]:
                sentence.finish, done[r] = FINISH_BUDGET, True
            elif token in s.delimiter_ids:
                peeking[r] = True
            elif len(sentence.token_ids) >= s.max_new_tokens:
                if keep[r]:
                    feeding[r] = True
                else:
                    sentence.finish, done[r] = FINISH_TOKENS, True
        stay = [i for i, r in enumerate(batch) if not done[r]]
        if not stay:
            break
        if _compact(len(batch) - len(stay), len(batch), s.compact_fraction):
            kv.keep_rows(cache, stay)
            index = _index(tuple(stay), logits.device)
            mask, position, tokens = mask[index], position[index], tokens[index]
            offset = offset[index] if offset is not None else None
            batch = [batch[i] for i in stay]
        mask = torch.cat([mask, mask.new_ones(len(batch), 1)], dim=1)
        step = position.unsqueeze(1)
        if rows.to_positions is not None:
            step = rows.to_positions(step, offset)
        logits, cache = kv.forward(model, tokens.unsqueeze(1), mask, step, cache=cache)
        position = position + 1
    return out
