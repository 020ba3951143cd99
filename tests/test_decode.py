"""The sentence decoder on a scripted bigram model: where sentences stop and what they contain."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch
from transformers import DynamicCache

from csr.models.compat import cache_kwargs, cache_of
from csr.search.decode import DecodeSettings, Rows, choose_step, decode_sentences

V, EOS, DOT, IMAGE = 12, 2, 9, 4


class Bigram(torch.nn.Module):
    """Next token = table[last token]; ignores everything else. Grows a real DynamicCache."""

    def __init__(self, table: dict[int, int]):
        super().__init__()
        self.table = table

    def forward(self, input_ids, attention_mask, position_ids, use_cache, pixel_values=None, **cache_arg):
        cache = cache_of(SimpleNamespace(**cache_arg))  # by the installed transformers' name (csr/models/compat.py)
        assert attention_mask.shape[1] == cache.get_seq_length() + input_ids.shape[1]  # mask covers cache + new
        r, t = input_ids.shape
        cache.update(torch.zeros(r, 1, t, 1), torch.zeros(r, 1, t, 1), 0)
        logits = torch.zeros(r, t, V)
        for i in range(r):
            logits[i, -1, self.table.get(int(input_ids[i, -1]), 0)] = 5.0
        return SimpleNamespace(logits=logits, **cache_kwargs(cache))


def one_hot(token: int, second: int | None = None) -> torch.Tensor:
    x = torch.zeros(V)
    x[token] = 5.0
    if second is not None:
        x[second] = 4.0
    return x


def rows(first: list[torch.Tensor], budget: list[int], groups=None, nodes=None) -> Rows:
    n = len(first)
    cache = DynamicCache()
    cache.update(torch.zeros(n, 1, 3, 1), torch.zeros(n, 1, 3, 1), 0)  # a 3-token "prompt"
    return Rows(cache=cache, attention_mask=torch.ones(n, 3, dtype=torch.long), next_logits=torch.stack(first),
                next_position=torch.full((n,), 3), budget=budget, group=groups or [0] * n, node=nodes or list(range(n)))


def settings(max_new_tokens: int = 10, **kw) -> DecodeSettings:
    return DecodeSettings(strategy="diverse_greedy", end_ids=frozenset({EOS}), delimiter_ids=frozenset({DOT}), suppress_ids=[IMAGE],
                          max_new_tokens=max_new_tokens, **kw)


def test_stops_at_eos_and_never_keeps_it():
    model = Bigram({5: 6, 6: EOS, EOS: 7})  # would go on past EOS if allowed
    (s,) = decode_sentences(model, rows([one_hot(5)], [100]), settings())
    assert s.token_ids == [5, 6]
    assert s.finish == "eos"
    assert len(s.logprobs) == 2


def test_delimiter_ends_the_sentence_and_peeks_for_eos():
    ends = decode_sentences(Bigram({5: DOT, DOT: EOS}), rows([one_hot(5)], [100]), settings())[0]
    goes_on = decode_sentences(Bigram({5: DOT, DOT: 7}), rows([one_hot(5)], [100]), settings())[0]
    assert ends.token_ids == goes_on.token_ids == [5, DOT]  # the peeked token is never part of the text
    assert ends.finish == "eos"
    assert goes_on.finish == "delimiter"


def test_budget_counts_answer_tokens_only():
    # The rows carry a 3-token prompt in their cache; a budget of 2 still allows 2 answer tokens.
    model = Bigram({5: 6, 6: 7, 7: 8, 8: 5})
    (s,) = decode_sentences(model, rows([one_hot(5)], [2]), settings())
    assert s.token_ids == [5, 6]
    assert s.finish == "answer_budget"


def test_sentence_cut_at_max_new_tokens():
    model = Bigram({5: 6, 6: 7, 7: 8, 8: 5})
    (s,) = decode_sentences(model, rows([one_hot(5)], [100]), settings(max_new_tokens=3))
    assert s.token_ids == [5, 6, 7]
    assert s.finish == "max_tokens_per_sentence"


def test_special_tokens_and_leading_eos_are_suppressed():
    model = Bigram({5: EOS, 6: EOS})
    image_first, eos_first = decode_sentences(
        model, rows([one_hot(IMAGE, second=5), one_hot(EOS, second=6)], [100, 100]), settings()
    )
    assert image_first.token_ids == [5]  # <image> was the argmax but may never be written
    assert eos_first.token_ids == [6]  # a sentence has at least one token


def test_rows_finishing_early_do_not_disturb_the_others():
    model = Bigram({5: EOS, 6: 7, 7: 8, 8: EOS})
    short, long = decode_sentences(model, rows([one_hot(5), one_hot(6)], [100, 100]), settings())
    assert (short.token_ids, short.finish) == ([5], "eos")
    assert (long.token_ids, long.finish) == ([6, 7, 8], "eos")


def test_diverse_greedy_gives_each_group_a_different_first_token():
    first = torch.tensor([0, 0, 0, 0, 0, 3.0, 2.9, 2.8, 0, 0, 0, 0])
    model = Bigram({5: EOS, 6: EOS, 7: EOS})
    out = decode_sentences(model, rows([first] * 3, [100] * 3, groups=[0, 1, 2], nodes=[0, 0, 0]),
                           settings(diversity_penalty=3.0))
    assert [s.token_ids for s in out] == [[5], [6], [7]]
    # Without the penalty every group takes the argmax.
    same = decode_sentences(model, rows([first] * 3, [100] * 3, groups=[0, 1, 2], nodes=[0, 0, 0]),
                            settings(diversity_penalty=0.0))
    assert [s.token_ids for s in same] == [[5], [5], [5]]


def test_logprobs_are_the_raw_model_distribution():
    model = Bigram({5: EOS})
    (s,) = decode_sentences(model, rows([one_hot(5)], [100]), settings())
    expected = torch.log_softmax(one_hot(5), -1)[5].item()  # 5 - log(e^5 + 11)
    assert s.logprobs == [expected]


def test_ending_is_never_penalised_for_diversity():
    # All three groups want to end now; the penalty must not force the later ones to go on.
    model = Bigram({5: EOS, 6: EOS, 7: EOS})
    first = torch.tensor([0, 0, 0, 0, 0, 3.0, 2.9, 2.8, 0, 0, 0, 0])
    out = decode_sentences(model, rows([first] * 3, [100] * 3, groups=[0, 1, 2], nodes=[0, 0, 0]),
                           settings(diversity_penalty=3.0))
    assert [s.finish for s in out] == ["eos"] * 3


# The token choice before it moved to the logits' device (commit 4299347): on the host, one row at a time
# for the bookkeeping. The device version must choose exactly the same tokens with the same log-probs.
def _host_sample(scores: torch.Tensor, s: DecodeSettings) -> torch.Tensor:
    scores = scores / s.temperature
    if s.top_k > 0:
        kth = torch.topk(scores, min(s.top_k, scores.shape[-1])).values[:, -1:]
        scores = scores.masked_fill(scores < kth, float("-inf"))
    if s.top_p < 1.0:
        sorted_scores, order = torch.sort(scores, descending=True)
        cumulative = sorted_scores.softmax(-1).cumsum(-1)
        drop = cumulative - sorted_scores.softmax(-1) > s.top_p
        scores = scores.masked_fill(drop.scatter(1, order, drop), float("-inf"))
    return torch.multinomial(scores.softmax(-1), 1, generator=s.generator).squeeze(1)


def _host_diverse_greedy(scores, groups, nodes, penalty, exempt):
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
        if g < 0:
            continue
        counts.index_put_((idx, picks), torch.ones(len(rows)), accumulate=True)
        counts[:, exempt] = 0.0
    return chosen


def _host_step(logits, choosing, empty, groups, nodes, s):
    """Tokens and log-probs of the `choosing` rows as the host loop computed them."""
    logits = logits.cpu()
    logprobs = torch.log_softmax(logits, dim=-1)  # over the whole batch, as before
    pick = torch.tensor(choosing)
    scores = logprobs[pick].clone() if s.strategy == "diverse_greedy" else logits[pick].clone()
    scores[:, s.suppress_ids] = float("-inf")
    scores[torch.tensor([j in empty for j in range(len(choosing))])[:, None] & torch.isin(torch.arange(scores.shape[1]), torch.tensor(sorted(s.end_ids)))] = float("-inf")
    if s.strategy == "diverse_greedy":
        tokens = _host_diverse_greedy(scores, groups, nodes, s.diversity_penalty, [*sorted(s.end_ids), *s.delimiter_ids])
    else:
        tokens = _host_sample(scores, s)
    return [int(t) for t in tokens], [float(logprobs[i, int(t)]) for i, t in zip(choosing, tokens, strict=True)]


@pytest.mark.parametrize("strategy, top_k, top_p", [("diverse_greedy", 0, 1.0), ("sample", 0, 1.0),
                                                    ("sample", 50, 1.0), ("sample", 0, 0.9)])
def test_device_token_choice_equals_the_host_choice(strategy, top_k, top_p):
    torch.manual_seed(0)
    vocab, k = 1000, 5
    # 4 nodes x K candidates; row 3 only feeds (chooses nothing), rows 0 and 7 peek, rows 5..9 are empty.
    # Sharpened logits: candidates of one node often want the same tokens, so the penalty has work to do.
    logits = (torch.randn(4 * k, vocab) * 4).float()
    logits[:, 7] += 12.0
    choosing = [r for r in range(4 * k) if r != 3]
    groups = [-1 if r in (0, 7) else r % k for r in choosing]
    nodes = [r // k for r in choosing]
    empty = [j for j, r in enumerate(choosing) if 5 <= r < 10]
    for trial in range(3):
        settings = DecodeSettings(strategy=strategy, end_ids=frozenset({EOS}), delimiter_ids=frozenset({DOT, 11}),
                                  suppress_ids=[IMAGE, 7 + trial], max_new_tokens=10, top_k=top_k, top_p=top_p,
                                  temperature=0.7, diversity_penalty=3.0)
        settings.generator = torch.Generator().manual_seed(trial)
        expected = _host_step(logits, choosing, empty, groups, nodes, settings)
        settings.generator = torch.Generator().manual_seed(trial)
        tokens, ids, lps = choose_step(logits, choosing, empty, groups, nodes, settings)
        assert (ids, lps) == expected  # exact: same ops, same order, float32
        assert tokens.tolist() == [ids[choosing.index(r)] if r in choosing else 0 for r in range(4 * k)]
        assert len(set(ids)) > 1 and IMAGE not in ids and 7 + trial not in ids
