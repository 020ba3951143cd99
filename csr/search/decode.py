"""Decode one sentence per row, for many rows at once, from KV caches that hold their context.

A row stops at EOS, at a sentence delimiter, after `max_new_tokens` tokens, or when its answer
reaches its token budget. Rows that stop leave the batch, so they cost no more compute. After a
delimiter a row is decoded for one more token only to learn whether the model would end its
answer there (EOS): then the sentence is final; that token is never part of the text.

A row marked `keep` (its sentence may be continued) leaves with a `Continuation`: its sentence's
own KV and the logits of the next token, so the next step starts from there without re-reading the
sentence. A kept row cut at `max_new_tokens` stays one step longer to feed its last token.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import torch

from csr.reward.tree import FINISH_BUDGET, FINISH_DELIMITER, FINISH_EOS, FINISH_TOKENS
from csr.search import kv


@dataclass
class DecodeSettings:
    strategy: str  # diverse_greedy | sample
    eos_id: int
    delimiter_ids: frozenset[int]
    suppress_ids: list[int]  # special tokens the model must never write (image, pad, bos, ...)
    max_new_tokens: int
    diversity_penalty: float = 3.0
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0
    generator: torch.Generator | None = None


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


def _diverse_greedy(scores: torch.Tensor, groups: Sequence[int], nodes: Sequence[int], penalty: float,
                    exempt: list[int]) -> torch.Tensor:
    """Group beam search with one beam per group: group g pays `penalty` for every token that groups
    before it chose for the same node at this step (Hamming diversity, as the reference used).
    Group -1 (rows that only peek for EOS after their delimiter) picks first, unpenalised, and adds
    nothing to the penalty.

    Ending tokens (EOS, delimiters) are `exempt`: candidates should differ in what they say, and
    penalising the end pushes later groups to ramble on past the point where they are done."""
    chosen = torch.empty(len(groups), dtype=torch.long)
    node_index = {n: i for i, n in enumerate(dict.fromkeys(nodes))}
    counts = torch.zeros(len(node_index), scores.shape[-1])
    rows_by_group: dict[int, list[int]] = {}
    for r, g in enumerate(groups):
        rows_by_group.setdefault(g, []).append(r)
    for g in sorted(rows_by_group):
        rows = torch.tensor(rows_by_group[g])
        idx = torch.tensor([node_index[nodes[r]] for r in rows_by_group[g]])
        picks = (scores[rows] - penalty * counts[idx]).argmax(-1)
        chosen[rows] = picks
        if g < 0:  # a finished candidate only peeks; like a done group in group beam search, it costs no one
            continue
        counts.index_put_((idx, picks), torch.ones(len(rows)), accumulate=True)
        counts[:, exempt] = 0.0
    return chosen


def _choose(logits: torch.Tensor, logprobs: torch.Tensor, rows: Rows, active: list[int], out: list[Sentence],
            peeking: list[bool], s: DecodeSettings) -> torch.Tensor:
    """The next token of each of the `active` rows."""
    scores = logprobs.clone() if s.strategy == "diverse_greedy" else logits.clone()
    scores[:, s.suppress_ids] = float("-inf")
    empty = torch.tensor([not out[r].token_ids for r in active])
    scores[empty, s.eos_id] = float("-inf")  # a sentence has at least one token
    if s.strategy != "diverse_greedy":
        return _sample(scores, s)
    # Rows that only peek for EOS after a delimiter take no part in the diversity penalty.
    groups = [-1 if peeking[r] else rows.group[r] for r in active]
    return _diverse_greedy(scores, groups, [rows.node[r] for r in active], s.diversity_penalty,
                           [s.eos_id, *s.delimiter_ids])


@torch.inference_mode()
def decode_sentences(model: torch.nn.Module, rows: Rows, s: DecodeSettings) -> list[Sentence]:
    n = len(rows.budget)
    keep = rows.keep or [False] * n
    out = [Sentence() for _ in range(n)]
    active = list(range(n))  # original row index of each row still in the batch
    peeking = [False] * n  # wrote a delimiter: the next token only tells whether the answer ends
    feeding = [False] * n  # kept row cut at max_new_tokens: in the batch only to feed its last token
    start = rows.attention_mask.shape[1]  # the cache column of each row's first new token
    cache, mask, logits, position = rows.cache, rows.attention_mask, rows.next_logits.float(), rows.next_position
    while active:
        logprobs = torch.log_softmax(logits, dim=-1)
        # Rows that only feed choose nothing, so the others choose (and sample) exactly as without them.
        choosing = [i for i, r in enumerate(active) if not feeding[r]]
        tokens = torch.zeros(len(active), dtype=torch.long)
        if choosing:
            pick = torch.tensor(choosing)
            tokens[pick] = _choose(logits[pick], logprobs[pick], rows, [active[i] for i in choosing], out, peeking, s)
        stay = []
        for i, r in enumerate(active):
            token, sentence = int(tokens[i]), out[r]
            if peeking[r] or feeding[r]:
                sentence.finish = FINISH_TOKENS if feeding[r] else FINISH_EOS if token == s.eos_id else FINISH_DELIMITER
                if keep[r] and sentence.finish != FINISH_EOS:
                    end = start + len(sentence.token_ids)
                    sentence.state = Continuation(kv.segment(cache, i, start, end), logits[i].clone())
                continue
            if token == s.eos_id:
                sentence.finish = FINISH_EOS
                continue
            sentence.token_ids.append(token)
            sentence.logprobs.append(float(logprobs[i, token]))
            if len(sentence.token_ids) >= rows.budget[r]:
                sentence.finish = FINISH_BUDGET
            elif token in s.delimiter_ids:
                peeking[r] = True
                stay.append(i)
            elif len(sentence.token_ids) >= s.max_new_tokens:
                if keep[r]:
                    feeding[r] = True
                    stay.append(i)
                else:
                    sentence.finish = FINISH_TOKENS
            else:
                stay.append(i)
        if not stay:
            break
        stay_t = torch.tensor(stay)
        if len(stay) < len(active):  # finished rows leave the batch
            kv.keep_rows(cache, stay_t)
            mask, position = mask[stay_t], position[stay_t]
        active = [active[i] for i in stay]
        mask = torch.cat([mask, mask.new_ones(len(stay), 1)], dim=1)
        logits, cache = kv.forward(model, tokens[stay_t].unsqueeze(1), mask, position.unsqueeze(1), cache=cache)
        position = position + 1
    return out
