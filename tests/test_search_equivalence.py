"""The fast search engine against the reference algorithm (experiments/bench_search/reference.py).

The reference expands one node at a time from a full forward over image + prompt + answer; the engine
prefills each prompt once, batches all nodes of all prompts, and continues every node from its
parent's cache. In deterministic mode both must write the same trees with the same scores.
"""

from __future__ import annotations

from dataclasses import replace

import pytest
import torch
from reference_search import (
    ReferenceSearch,  # the reference algorithm: a test oracle, not part of the package
)

from csr.data.images import load_image
from csr.data.prompts import load_prompts
from csr.data.tiny import write_tiny_prompts
from csr.models.checkpoint import load_model, special_token_ids
from csr.models.clip import ClipScorer, load_clip
from csr.models.families import get_family
from csr.reward.tree import FINISH_DELIMITER, FINISH_TOKENS, Node
from csr.search import kv
from csr.search.decode import DecodeSettings, _diverse_greedy
from csr.search.engine import SearchSettings, TreeSearch, prefill


@pytest.fixture(scope="module")
def setup(tiny_models, tmp_path_factory):
    data = tmp_path_factory.mktemp("data")
    write_tiny_prompts(data, n=3)  # the three prompt templates: three prompt lengths
    model, processor = load_model(tiny_models.llava)
    clip = load_clip(tiny_models.clip_arch, tiny_models.clip_weights, tiny_models.clip_config)
    records, _ = load_prompts(str(data / "prompts.json"), str(data / "images"))
    images = [load_image(str(data / "images"), r.image) for r in records]
    tok = processor.tokenizer
    search = SearchSettings(
        beam_width=3, candidates_per_step=4, keep_top=1, keep_bottom=2, max_sentences=3, max_answer_tokens=12,
        prune_by="calibrated", lam=0.9, calibration="rank", text_score="mean_logprob",
        max_batch_rows=1024, max_batch_tokens=10**9,
    )
    # With random weights '.' hardly ever comes, so a quarter of the vocabulary ends a sentence: rows
    # then finish at different steps (delimiter, peek, cap, budget) and answers differ in length.
    decode = DecodeSettings(
        strategy="diverse_greedy", end_ids=frozenset({tok.eos_token_id}), delimiter_ids=frozenset(range(0, len(tok), 4)),
        suppress_ids=special_token_ids(processor), max_new_tokens=5,
    )
    inputs = ([r.prompt for r in records], images, [r.image for r in records])
    return model, processor, clip, search, decode, inputs


def fast(setup, **caps) -> list[list[Node]]:
    model, processor, clip, search, decode, inputs = setup
    return TreeSearch(model, processor, get_family("llava"), replace(search, **caps), decode, ClipScorer(clip).relevance).search(*inputs)


def assert_same(a: list[list[Node]], b: list[list[Node]]) -> None:
    for x, y in zip(a, b, strict=True):
        assert [n.token_ids for n in x] == [n.token_ids for n in y]
        assert [(n.parent, n.finish, n.final, n.kept) for n in x] == [(n.parent, n.finish, n.final, n.kept) for n in y]
        for m, n in zip(x[1:], y[1:], strict=True):
            assert m.r_t == pytest.approx(n.r_t, abs=1e-5)
            assert m.r_i == pytest.approx(n.r_i, abs=1e-4)
            assert m.reward == pytest.approx(n.reward, abs=1e-6)


def test_fast_engine_writes_the_reference_trees(setup):
    model, processor, clip, search, decode, inputs = setup
    reference = ReferenceSearch(model, processor, search, decode, clip).search(*inputs)
    assert_same(fast(setup), reference)


def test_the_edge_cases_are_exercised(setup):
    *_, inputs = setup
    prefix = prefill(setup[0], setup[1], get_family("llava"), inputs[0], inputs[1])
    assert len(set(prefix.length.tolist())) > 1  # prompts of different lengths: left padding in the batch
    trees = fast(setup)
    finishes = {n.finish for t in trees for n in t[1:]}
    assert {FINISH_DELIMITER, FINISH_TOKENS} <= finishes  # rows left the batch at different steps
    for tree in trees:
        live = [n for n in tree if n.kept and n.depth == 2]
        assert len({n.answer_tokens for n in live}) > 1  # answers of different lengths: holes in the batch


def test_batching_changes_nothing(setup):
    model, processor, clip, search, decode, inputs = setup
    together = fast(setup)
    assert_same(together, fast(setup, max_batch_rows=search.candidates_per_step))  # one node per batch
    assert_same(together, fast(setup, max_batch_tokens=1))  # the token cap also leaves one node per batch
    engine = TreeSearch(model, processor, get_family("llava"), search, decode, ClipScorer(clip).relevance)
    alone = [engine.search(*(x[i : i + 1] for x in inputs))[0] for i in range(len(inputs[0]))]
    assert_same(together, alone)


def test_a_peeking_row_costs_its_siblings_nothing():
    # Row 0 wrote its delimiter and only peeks; rows 1 and 2 are groups 0 and 1 of the same node.
    scores = torch.tensor([[0.0, 3.0, 2.9, 0.0], [0.0, 3.0, 2.9, 0.0], [0.0, 3.0, 2.9, 0.0]])
    picks = _diverse_greedy(scores, groups=[-1, 0, 1], nodes=[0, 0, 0], penalty=3.0, exempt=[3])
    assert picks.tolist() == [1, 1, 2]  # group 0 is not pushed off token 1 by the peek; group 1 is, by group 0


@pytest.mark.parametrize("fraction", [0.0, 1.0])
def test_when_finished_rows_leave_the_batch_changes_nothing(setup, fraction, monkeypatch):
    # 0: a row leaves as soon as it finishes; 1: finished rows stay until the whole batch is done.
    model, processor, clip, search, decode, inputs = setup
    assert decode.compact_fraction == 0.25  # the default, as in conf/search/default.yaml
    compactions = []
    keep_rows = kv.keep_rows
    monkeypatch.setattr(kv, "keep_rows", lambda cache, rows: compactions.append(len(rows)) or keep_rows(cache, rows))
    default = fast(setup)
    by_default = len(compactions)
    other = TreeSearch(model, processor, get_family("llava"), search, replace(decode, compact_fraction=fraction), ClipScorer(clip).relevance)
    assert_same(default, other.search(*inputs))
    if fraction == 0.0:
        assert len(compactions) > 2 * by_default > 0  # it did compact more often
    else:
        assert len(compactions) == by_default  # never
